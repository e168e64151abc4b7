"""Scan geometries: 180°, centred 360° and 360° with the axis near an edge (pure).

``180``: the usual half turn.  ``360``: a full turn with the sample in the field
of view at every angle (reconstructed like a 180° scan, both halves averaged).
``360-offset``: a full turn with the rotation axis near one edge of the
detector, so the two halves of the turn see the two halves of the sample
(tomocupy ``--file-type double_fov``; the field of view doubles).  The span
of ``theta`` decides 180 or 360; whether a 360° scan is offset needs the
data (:mod:`tomocorioc.worker.recon.double_fov`).  A sidecar may set the
geometry of one dataset (``"geometry"`` in its params).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

AUTO = "auto"
HALF = "180"
FULL = "360"
OFFSET = "360-offset"
GEOMETRIES: Tuple[str, ...] = (AUTO, HALF, FULL, OFFSET)   # the parameter's choices (auto: detect)

# A 360-offset scan's try grid is centred on the overlap estimate, which is
# good to about a pixel; a narrower grid keeps the twice-as-wide try cheap.
OFFSET_SEARCH_WIDTH = 10.0

_RAD_SPAN = 2 * math.pi + 0.05   # a span this small can only be radians


def theta_in_degrees(theta: Sequence[float]) -> np.ndarray:
    """``theta`` in degrees: values spanning at most ~2π are taken as radians."""
    th = np.asarray(theta, dtype=np.float64).reshape(-1)
    if th.size > 2 and np.ptp(th) <= _RAD_SPAN and np.max(np.abs(th)) <= _RAD_SPAN:
        return np.rad2deg(th)
    return th


def span_deg(theta: Sequence[float]) -> float:
    """Angular range of a scan in degrees (last minus first angle, radians converted)."""
    th = theta_in_degrees(theta)
    return float(np.ptp(th)) if th.size > 1 else 0.0


def is_full_turn(theta: Sequence[float]) -> bool:
    """True when ``theta`` covers about 360° (340..370°)."""
    return 340.0 <= span_deg(theta) <= 370.0


def check_geometry(value: str) -> str:
    """``value`` if it is a geometry name, else ValueError with the choices."""
    if value not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {value!r}")
    return value


def offset_search_width(search_width: float, geometry: str) -> float:
    """The try grid's half width for this geometry (narrower for 360-offset)."""
    return min(float(search_width), OFFSET_SEARCH_WIDTH) if geometry == OFFSET else float(search_width)


def stitched_width(ncols: int) -> int:
    """Width of the stitched (double field of view) sinogram and of its slices: twice the detector."""
    return 2 * int(ncols)


def stitched_axis(cor: float, ncols: int) -> float:
    """Where the axis ``cor`` (original detector columns) sits in the stitched sinogram.

    Axis on the right half: the detector keeps columns [0, n) and the mirrored
    half is appended on the right; on the left half the detector moves to
    [n, 2n) and the mirrored half fills [0, n), so the slice is not mirrored.
    """
    return float(cor) if cor >= ncols / 2.0 else float(cor) + ncols
