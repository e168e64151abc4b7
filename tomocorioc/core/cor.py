"""COR maths on score curves (pure numpy): peak picking, sub-grid refinement, confidence.

A *score curve* is one number per candidate centre, higher = better.  Both
the classical metrics and the AI classifier produce one; everything that turns
a curve into a chosen COR and a confidence lives here so both paths agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class CorChoice:
    """The COR picked from a score curve, with how much to trust it."""

    cor: float
    grid_cor: float                # best candidate on the grid
    index: int                     # its index
    peak_confidence: float         # 0..1: how clearly the curve peaks
    confidence: float              # 0..1: peak confidence x agreement with the cross-check
    estimate: Optional[float] = None   # independent sinogram estimate (cross-check)
    needs_review: bool = False
    notes: List[str] = field(default_factory=list)


def middle_of_ties(values: Sequence[float]) -> int:
    """Index of the best value; for an exact tie, the middle of the longest tied run.

    The reference picks the first of equal scores, which biases the COR to
    the low end of a plateau; the plateau's middle is the honest estimate.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.any(np.isfinite(v)):
        raise ValueError("no finite score to choose from")
    best = np.nanmax(v)
    hit = np.flatnonzero(v == best)
    runs = np.split(hit, np.flatnonzero(np.diff(hit) != 1) + 1)
    longest = max(runs, key=len)
    return int(longest[(len(longest) - 1) // 2])


def parabola_refine(centers: Sequence[float], scores: Sequence[float], index: int) -> float:
    """Sub-grid peak by a parabola through the best score and its two neighbours.

    Falls back to the grid value at the edges of the grid, on a non-concave
    triple, or for unevenly spaced neighbours.
    """
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if index <= 0 or index >= len(c) - 1:
        return float(c[index])
    s0, s1, s2 = s[index - 1], s[index], s[index + 1]
    h1, h2 = c[index] - c[index - 1], c[index + 1] - c[index]
    if not (np.isfinite(s0) and np.isfinite(s2)) or abs(h1 - h2) > 1e-6 * max(h1, h2):
        return float(c[index])
    denom = s0 - 2 * s1 + s2
    if denom >= 0:  # flat or convex: no interior maximum
        return float(c[index])
    offset = 0.5 * (s0 - s2) / denom
    return float(c[index] + np.clip(offset, -0.5, 0.5) * h1)


def peak_confidence(scores: Sequence[float], index: int, exclude: int = 2) -> float:
    """0..1 from the gap between the peak and the best score outside its neighbourhood.

    The gap is measured in units of the curve's noise, estimated robustly from
    its second differences (a smooth peak has none; jitter has plenty), so the
    number means the same for any metric: z = gap/noise, confidence =
    1 - exp(-z/3) (z = 3 -> 0.63, z = 10 -> 0.96).
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    if finite.sum() < 5:
        return 0.0
    mask = finite.copy()
    mask[max(0, index - exclude): index + exclude + 1] = False
    if not mask.any():
        return 0.0
    gap = s[index] - s[mask].max()
    if gap <= 0:
        return 0.0
    d2 = np.diff(s[finite], 2)
    noise = 1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0)
    if noise <= 0:
        return 1.0
    return float(1.0 - math.exp(-(gap / noise) / 3.0))


def agreement(cor: float, estimate: Optional[float], tolerance: float) -> float:
    """1 when the cross-check agrees within ``tolerance`` px, falling to 0 at 4x that."""
    if estimate is None or not math.isfinite(estimate):
        return 1.0
    d = abs(cor - estimate)
    if d <= tolerance:
        return 1.0
    return float(max(0.0, 1.0 - (d - tolerance) / (3.0 * tolerance)))


def choose(centers: Sequence[float], scores: Sequence[float], *, estimate: Optional[float] = None,
           agree_tolerance: float = 2.0, review_below: float = 0.3, refine: bool = True) -> CorChoice:
    """Pick the COR from a score curve and grade it against an independent estimate."""
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if c.shape != s.shape or c.size == 0:
        raise ValueError(f"{c.size} centres but {s.size} scores")
    order = np.argsort(c)
    c, s = c[order], s[order]
    idx = middle_of_ties(s)
    notes = []
    if idx in (0, len(c) - 1):
        # A best score on the grid's edge means the metric still rises there, not that
        # the axis is there: entropy grows again far from the axis when the sample
        # fills the field of view.  An interior peak, when there is one, is the answer.
        inner = [i for i in range(1, len(c) - 1)
                 if np.isfinite(s[i]) and s[i] >= s[i - 1] and s[i] >= s[i + 1]]
        if inner:
            j = max(inner, key=lambda i: s[i])
            notes.append(f"the grid edge {c[idx]:.2f} scored higher than the interior peak {c[j]:.2f}; "
                         "the interior peak is used")
            idx = j
    cor = parabola_refine(c, s, idx) if refine else float(c[idx])
    pc = peak_confidence(s, idx)
    ag = agreement(cor, estimate, agree_tolerance)
    conf = pc * ag
    if idx in (0, len(c) - 1):
        notes.append("best score at the edge of the search grid")
        conf *= 0.5
    if ag < 1.0:
        notes.append(f"sinogram estimate {estimate:.2f} disagrees by {abs(cor - estimate):.2f} px")
    review = conf < review_below or ag < 1.0 or idx in (0, len(c) - 1)
    return CorChoice(cor=float(cor), grid_cor=float(c[idx]), index=int(order[idx]), peak_confidence=pc,
                     confidence=float(conf), estimate=estimate, needs_review=bool(review), notes=notes)
