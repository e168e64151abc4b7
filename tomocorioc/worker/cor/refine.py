"""The refine pass: the try row again at a finer step around the chosen candidate, in memory.

The try grid (default 0.5 px) plus a parabola gives the curve's peak to a
fraction of a step when the curve is smooth; on few-projection or low-dose
scans it is not, and a 0.1 px curve over +-1 px settles it.  Only the torch
backend can do this cheaply (one filtered row, a few dozen candidates, no
files); it costs about a tenth of the try.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tomocorioc.core.params import ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.cor import classical
from tomocorioc.worker.recon import fbp
from tomocorioc.worker.recon.preprocess import preprocess

HALF_WIDTH = 1.0   # px either side of the coarse peak
STEP = 0.1         # px


def refine_scores(path: Path, params: ReconParams, center: float, metric: str, *,
                  radius: Optional[float] = None, device: str = "cpu", half_width: float = HALF_WIDTH,
                  step: float = STEP) -> classical.ClassicalScores:
    """Score the try row at ``center`` +- ``half_width`` px in ``step`` px steps (same row, filter, metric)."""
    f = 2 ** params.binning
    with DXFile(path) as scan:
        row = scan.row_index(params.nsino)
        r0 = max(0, min(row - row % f, scan.nrows - f))
        block = scan.read_rows(r0, r0 + f, binning=params.binning)
        theta = np.deg2rad(scan.theta_deg())
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold, stripe=params.remove_stripe_method)[0]
    centers = np.round(np.arange(center - half_width, center + half_width + 1e-9, step), 4)
    geom = fbp.FBPGeometry.create(sino.shape[-1], theta, device)
    images = []
    for _, batch in fbp.try_batches(sino, geom, params.fbp_filter, centers / f, len(centers)):
        images.extend(batch.cpu().numpy())
    return classical.score_images(images, [float(c) for c in centers], metric, radius=radius)
