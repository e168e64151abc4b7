"""Camera tilt in the simulator: the rotation axis leans in the detector plane.

A camera rotated about the beam by a small angle sees the (vertical) rotation
axis as a slanted line, so the COR drifts linearly with the row.  We model it
as that drift: row ``r`` is projected exactly (pixel-integrated, as
:func:`tomocorioc.sim.projector.project`) with its own axis position
``cor + slope * (r + 0.5 - nrows / 2)``.  The sign follows tomocupy's
``--rotate-proj-angle`` (``ndimage.rotate(..., axes=(2, 1))``, positive
counter-clockwise): rotating a projection by ``+A`` turns a vertical line into
one whose column grows by ``tan(A)`` per row, so a scan simulated with
``tilt = A`` has ``slope = -tan(A)`` and is straightened by
``--rotate-proj-angle A``.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import List, Sequence

import numpy as np

from tomocorioc.sim.phantoms import Phantom
from tomocorioc.sim.projector import project


def tilt_slope(tilt_deg: float) -> float:
    """COR drift in px per row for a scan that ``--rotate-proj-angle tilt_deg`` straightens."""
    return -math.tan(math.radians(float(tilt_deg)))


def cor_rows(cor: float, tilt_deg: float, nrows: int) -> List[float]:
    """The axis position in each detector row (``cor`` is the axis at the detector's mid-height)."""
    slope = tilt_slope(tilt_deg)
    return [float(cor + slope * (r + 0.5 - nrows / 2.0)) for r in range(nrows)]


def project_tilted(phantom: Phantom, thetas_rad: np.ndarray, ncols: int, nrows: int, cor: float,
                   tilt_deg: float, oversample: Sequence[int] = (0, 2)) -> np.ndarray:
    """Line integrals (nproj, nrows, ncols) with the axis drifting row by row."""
    thetas = np.asarray(thetas_rad, dtype=np.float64).ravel()
    out = np.zeros((thetas.size, nrows, ncols), dtype=np.float32)
    extents = [s.z_extent() for s in phantom.shapes]
    for r, c in enumerate(cor_rows(cor, tilt_deg, nrows)):
        # Only the shapes that reach row r, moved down by r rows so that row r is detector row 0.
        hit = tuple(s for s, (lo, hi) in zip(phantom.shapes, extents) if lo < r + 1 and hi > r)
        if hit:
            part = replace(phantom, shapes=hit).shifted(-r)
            out[:, r:r + 1, :] = project(part, thetas, ncols, 1, c, oversample)
    return out
