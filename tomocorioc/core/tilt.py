"""Camera tilt from the COR at several detector rows (pure).

When the camera is rotated about the beam, the rotation axis is a slanted
line on the detector and the COR drifts linearly with the row.  A straight
line through (row, COR) gives the drift per row; the angle that straightens
the axis is what tomocupy's ``--rotate-proj-angle`` takes.  tomocupy rotates
each projection with ``ndimage.rotate(proj, A, axes=(2, 1))``: ``+A`` turns a
vertical line into one whose column grows by ``tan(A)`` per row, so an axis
drifting by ``slope`` px per row is straightened by ``A = -atan(slope)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_FRACTIONS = (0.1, 0.5, 0.9)   # CamRot's rows (tomocupy's nsino: 0 top, 1 bottom)
# Drift (px between the top and the bottom row used) above which infer asks for review.
DRIFT_REVIEW_PX = 1.0


@dataclass(frozen=True)
class TiltFit:
    """A straight line COR(row) = cor + slope * (row - row_mid) and what it means."""

    rows: List[int]
    cors: List[float]
    row_mid: float
    cor: float               # COR at row_mid
    slope_px_per_row: float
    r2: float                # 1 for a perfect line; NaN with two rows (always a perfect line)
    tilt_deg: float          # tomocupy --rotate-proj-angle that makes the axis vertical


def angle_for_slope(slope_px_per_row: float) -> float:
    """``--rotate-proj-angle`` (degrees, counter-clockwise) that straightens an axis drifting by ``slope``."""
    return -math.degrees(math.atan(float(slope_px_per_row)))


def fit_tilt(rows: Sequence[int], cors: Sequence[float], row_mid: float) -> TiltFit:
    """Least-squares line through (row, COR) over the actual row distances."""
    r = np.asarray(rows, dtype=np.float64)
    c = np.asarray(cors, dtype=np.float64)
    if r.shape != c.shape or r.size < 2:
        raise ValueError(f"need the COR at two or more rows, got {r.size} rows and {c.size} CORs")
    if np.unique(r).size < 2:
        raise ValueError("the rows must differ to measure a drift")
    if not np.all(np.isfinite(c)):
        raise ValueError("a COR is not finite")
    slope, intercept = np.polyfit(r - row_mid, c, 1)
    resid = c - (intercept + slope * (r - row_mid))
    ss_tot = float(((c - c.mean()) ** 2).sum())
    if r.size < 3:
        r2 = float("nan")
    elif ss_tot <= 1e-12:
        r2 = 1.0 if float((resid ** 2).sum()) <= 1e-12 else 0.0
    else:
        r2 = float(1.0 - (resid ** 2).sum() / ss_tot)
    return TiltFit(rows=[int(x) for x in r], cors=[float(x) for x in c], row_mid=float(row_mid),
                   cor=float(intercept), slope_px_per_row=float(slope), r2=r2,
                   tilt_deg=angle_for_slope(float(slope)))


def drift_note(rows: Sequence[int], cors: Sequence[Optional[float]], limit: float = DRIFT_REVIEW_PX) -> str:
    """The review reason when the COR drifts by more than ``limit`` px from the first to the last row, else ''.

    ``rows``/``cors`` are the top, (optionally) middle and bottom estimates.
    A tilt moves the three along a line; when the middle one is far off that
    line the estimates disagree for another reason (noise, a sample filling
    the field of view) and no tilt is claimed.
    """
    if len(rows) != len(cors) or len(rows) < 2 or cors[0] is None or cors[-1] is None or rows[-1] == rows[0]:
        return ""
    top, bottom = float(cors[0]), float(cors[-1])
    drift = bottom - top
    if abs(drift) <= limit:
        return ""
    slope = drift / (rows[-1] - rows[0])
    for r, c in zip(rows[1:-1], cors[1:-1]):
        if c is not None and abs(float(c) - (top + slope * (r - rows[0]))) > max(0.5, 0.25 * abs(drift)):
            return ""
    return f"axis tilted by about {angle_for_slope(slope):.2f}°: run CamRot (COR {top:.2f} at row {rows[0]}, " \
           f"{bottom:.2f} at row {rows[-1]})"


def parse_fractions(text: str) -> Tuple[float, ...]:
    """'0.1,0.5,0.9' -> (0.1, 0.5, 0.9): three or more distinct row positions in [0, 1]."""
    try:
        vals = tuple(float(x) for x in str(text).replace(" ", "").split(",") if x != "")
    except ValueError:
        raise ValueError(f"rows must be comma-separated numbers in [0, 1] (0 top, 1 bottom), got {text!r}") from None
    if len(set(vals)) < 3:
        raise ValueError(f"rows needs three or more distinct positions (0 top, 1 bottom), got {text!r}")
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"row positions must be in [0, 1] (0 top, 1 bottom), got {text!r}")
    return tuple(sorted(vals))
