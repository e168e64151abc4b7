"""The COR at any detector row, with infer's finder, in memory (for CamRot and the drift check).

Same steps as phases A and B: the try grid around the detector centre (or
around Vo's sinogram estimate when the axis is far off), FBP of the row at
every candidate, the classical sharpness score and
:func:`tomocorioc.core.cor.choose` with its sub-grid refinement.  Nothing is
written to disk.  ``rotate_deg`` rotates the projections first, exactly as a
reconstruction with ``rotate_proj_angle`` does, so a caller can check that an
applied tilt removed the drift.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from tomocorioc.core import layout
from tomocorioc.core.cor import choose
from tomocorioc.core.params import DEFAULT_METRIC, ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.cor import classical
from tomocorioc.worker.cor.vo import find_center_vo
from tomocorioc.worker.recon import fbp
from tomocorioc.worker.recon.preprocess import preprocess
from tomocorioc.worker.recon.rotate import rotated_sinograms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowCor:
    """The COR found at one detector row."""

    row: int
    cor: float
    estimate: Optional[float]   # Vo's sinogram estimate at that row (None when it could not be made)
    confidence: float
    at_edge: bool = False       # the peak is within two steps of the grid's ends: no real peak found


def row_sinogram(scan: DXFile, row: int, params: ReconParams, rotate_deg: float = 0.0,
                 device: str = "cpu") -> torch.Tensor:
    """The pre-processed (nproj, ncols) sinogram of one row, projections rotated by ``rotate_deg``."""
    if rotate_deg:
        rot = params.replace(rotate_proj_angle=float(rotate_deg), binning=0, remove_stripe_method="none")
        return rotated_sinograms(scan, row, row + 1, rot, torch.device(device))[0]
    block = scan.read_rows(row, row + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold)[0]


def vo_estimate(sino: torch.Tensor) -> Optional[float]:
    """Vo's estimate from a 180° sinogram, None when it refuses."""
    try:
        return find_center_vo(sino.cpu().numpy())
    except ValueError as exc:
        log.info("no sinogram estimate (%s)", exc)
        return None


def cor_at_row(scan: DXFile, row: int, params: ReconParams, *, rotate_deg: float = 0.0,
               metric: str = DEFAULT_METRIC, device: str = "cpu", batch: int = 64) -> RowCor:
    """The COR of one row by infer's finder (try grid, classical score, sub-grid peak)."""
    if not 0 <= row < scan.nrows:
        raise ValueError(f"row {row} outside the detector (0..{scan.nrows - 1})")
    sino = row_sinogram(scan, row, params, rotate_deg, device)
    estimate = vo_estimate(sino)
    n = sino.shape[-1]
    axis = params.rotation_axis if params.rotation_axis is not None else n / 2.0
    if params.rotation_axis is None and estimate is not None and abs(estimate - axis) > 0.8 * params.search_width:
        axis = round(estimate * 2) / 2.0   # as phase A: centre a far-off grid on the estimate
    centers = layout.candidate_centers(axis, params.search_width, params.search_step)
    geom = fbp.FBPGeometry.create(n, np.deg2rad(scan.theta_deg()), device)
    images: List[np.ndarray] = []
    done: List[float] = []
    for chunk, imgs in fbp.try_batches(sino, geom, params.fbp_filter, centers, batch):
        images.extend(imgs.cpu().numpy())
        done.extend(float(c) for c in chunk)
    scores = classical.score_images(images, done, metric)
    choice = choose(scores.centers, scores.scores, estimate=estimate)
    edge = 2 * params.search_step + 1e-9
    at_edge = bool(choice.grid_cor - min(done) <= edge or max(done) - choice.grid_cor <= edge)
    return RowCor(row=int(row), cor=float(choice.cor), estimate=estimate, confidence=float(choice.confidence),
                  at_edge=at_edge)


def cors_at_rows(scan: DXFile, rows: Sequence[int], params: ReconParams, **kw) -> List[RowCor]:
    """:func:`cor_at_row` for several rows."""
    return [cor_at_row(scan, r, params, **kw) for r in rows]
