"""Rotate projections in the detector plane, as tomocupy's ``--rotate-proj-angle`` does.

tomocupy (``recon_steps``) calls ``ndimage.rotate(data, A, axes=(2, 1),
reshape=False, order=1)`` on (nproj, rows, columns): each projection turns by
``A`` degrees counter-clockwise about its centre, linear interpolation, zero
outside.  We do the same in torch, on a block of rows at a time: an output row
needs input rows up to ``margin_rows`` away, so a caller reads that many more.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Tuple

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tomocorioc.core.params import ReconParams
    from tomocorioc.data.dxfile import DXFile


def margin_rows(angle_deg: float, ncols: int) -> int:
    """Input rows needed above and below a block of output rows."""
    return int(math.ceil(abs(math.sin(math.radians(angle_deg))) * ncols / 2.0)) + 2


def source_rows(r0: int, r1: int, angle_deg: float, nrows: int, ncols: int) -> Tuple[int, int]:
    """Input rows [a0, a1) that output rows [r0, r1) draw from."""
    m = margin_rows(angle_deg, ncols) if angle_deg else 0
    return max(0, r0 - m), min(nrows, r1 + m)


def rotate_rows(block: torch.Tensor, a0: int, r0: int, r1: int, angle_deg: float, nrows: int) -> torch.Tensor:
    """Rows [r0, r1) of each projection rotated by ``angle_deg``.

    ``block`` is (nproj, rows, ncols) holding input rows ``[a0, a0 + rows)``
    of an ``nrows``-tall detector; returns (nproj, r1 - r0, ncols).
    """
    nproj, nb, ncols = block.shape
    if not angle_deg:
        return block[:, r0 - a0:r1 - a0]
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    cy, cx = (nrows - 1) / 2.0, (ncols - 1) / 2.0
    dev, dt = block.device, torch.float64
    oy = torch.arange(r0, r1, device=dev, dtype=dt)[:, None] - cy
    ox = torch.arange(ncols, device=dev, dtype=dt)[None, :] - cx
    # Inverse map (output -> input) of ndimage.rotate(axes=(2, 1)): measured against scipy in the tests.
    iy = cy + cos * oy + sin * ox - a0
    ix = cx - sin * oy + cos * ox
    y0, x0 = torch.floor(iy), torch.floor(ix)
    wy, wx = (iy - y0), (ix - x0)
    # ndimage's mode='constant': a sample point outside the detector is zero, one inside interpolates.
    inside = (iy + a0 >= 0) & (iy + a0 <= nrows - 1) & (ix >= 0) & (ix <= ncols - 1)
    out = torch.zeros(nproj, r1 - r0, ncols, dtype=block.dtype, device=dev)
    flat = block.reshape(nproj, nb * ncols)
    for dy, wyy in ((0, 1 - wy), (1, wy)):
        for dx, wxx in ((0, 1 - wx), (1, wx)):
            yy, xx = (y0 + dy).to(torch.int64), (x0 + dx).to(torch.int64)
            ok = inside & (yy >= 0) & (yy < nb) & (xx >= 0) & (xx < ncols)
            idx = (yy.clamp(0, nb - 1) * ncols + xx.clamp(0, ncols - 1)).reshape(-1)
            w = (wyy * wxx * ok).to(block.dtype).reshape(1, -1)
            out += (flat[:, idx] * w).reshape(nproj, r1 - r0, ncols)
    return out


def rotated_sinograms(scan: "DXFile", r0: int, r1: int, params: "ReconParams",
                      device: torch.device) -> torch.Tensor:
    """Pre-processed sinograms (rows, nproj, ncols) of rows [r0, r1) after rotating the projections.

    Rows are in unbinned detector units (multiples of 2**binning); the rotation
    happens on the binned, normalised, -log projections (about the binned
    detector's centre, which is the same point), and ring removal after it,
    because rings belong to the detector columns of the rotated image.
    """
    from tomocorioc.worker.recon.preprocess import preprocess, remove_stripes_sort  # local: no cycle

    f = 2 ** params.binning
    nb, ncb = scan.nrows // f, scan.ncols // f
    b0, b1 = r0 // f, max(r0 // f + 1, r1 // f)
    a0, a1 = source_rows(b0, b1, params.rotate_proj_angle, nb, ncb)
    block = scan.read_rows(a0 * f, a1 * f, binning=params.binning)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold)          # (rows, nproj, ncols)
    proj = rotate_rows(sino.permute(1, 0, 2), a0, b0, b1, params.rotate_proj_angle, nb)
    out = proj.permute(1, 0, 2).contiguous()
    if params.remove_stripe_method == "sort":
        out = remove_stripes_sort(out)
    return out
