"""COR maths on score curves (pure numpy): peak picking, sub-grid refinement, confidence.

A *score curve* is one number per candidate centre, higher = better.  Both
the classical metrics and the AI classifier produce one; everything that turns
a curve into a chosen COR and a confidence lives here so both paths agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

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


# -- all the evidence (issue 16) ------------------------------------------------------
#
# Each source alone fails somewhere: the try curve on samples wider than the field of
# view and with few projections, Vo's estimate on dense or truncated samples, the
# 0/180 pair on smooth samples at low dose.  Two independent sources that agree are
# rarely both wrong, so the expected error is read off their agreement; a COR backed
# by one source only is flagged.  The constants were calibrated on simulated scans
# (benchmarks/bench_cor_accuracy.py --hard; the reliability table in RESULTS.md).

PAIR_STRONG = 0.15     # pair strength above which the 0/180 pair counts as evidence
AGREE_PX = 1.0         # two sources closer than this agree


@dataclass(frozen=True)
class Evidence:
    """An independent COR estimate (``vo``: Vo's sinogram method, ``pair``: the 0/180 views)."""

    name: str
    cor: float
    strength: float = 1.0   # 0..1; the pair's peak clarity, 1 for sources without a measure


def local_peaks(scores: Sequence[float]) -> List[int]:
    """Indices of interior local maxima (plateaus count once, at their middle)."""
    s = np.asarray(scores, dtype=np.float64)
    out = []
    i = 1
    while i < len(s) - 1:
        if not np.isfinite(s[i]):
            i += 1
            continue
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        if j < len(s) - 1 and s[i - 1] < s[i] and s[j + 1] < s[i]:
            out.append((i + j) // 2)
        i = j + 1
    return out


def confidence_from_error(expected: float) -> float:
    """Confidence (share expected within 1 px) from the expected error: 0.5 at exactly 1 px."""
    return float(1.0 / (1.0 + max(0.0, expected) ** 4))


def refined_peak(base: CorChoice, fine_centers: Sequence[float], fine_scores: Sequence[float]) -> Optional[float]:
    """The refine pass's peak (a finer curve around ``base.cor``) when it has one inside its span."""
    fc = np.asarray(fine_centers, dtype=np.float64)
    fs = np.asarray(fine_scores, dtype=np.float64)
    if fc.size < 5 or fc.shape != fs.shape or not np.any(np.isfinite(fs)):
        return None
    order = np.argsort(fc)
    fc, fs = fc[order], fs[order]
    i = middle_of_ties(fs)
    if i in (0, len(fc) - 1):
        return None   # still rising at the edge of the refine span: keep the coarse value
    return parabola_refine(fc, fs, i)


def smooth_curve(centers: Sequence[float], scores: Sequence[float], sigma_px: float) -> np.ndarray:
    """Scores smoothed by a Gaussian of ``sigma_px`` (centres sorted, evenly spaced); NaN stays NaN."""
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if sigma_px <= 0 or c.size < 3:
        return s.copy()
    step = float(np.median(np.diff(c)))
    k = sigma_px / step
    half = int(math.ceil(3 * k))
    w = np.exp(-0.5 * (np.arange(-half, half + 1) / k) ** 2)
    ok = np.isfinite(s)
    filled = np.where(ok, s, 0.0)
    num = np.convolve(np.pad(filled, half, mode="edge"), w, mode="valid")
    den = np.convolve(np.pad(ok.astype(np.float64), half, mode="edge"), w, mode="valid")
    out = num / np.maximum(den, 1e-12)
    out[~ok] = np.nan
    return out


def choose_with_evidence(centers: Sequence[float], scores: Sequence[float], evidence: Sequence[Evidence] = (),
                         *, refine: bool = True, fine: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                         smooth_px: float = 0.0) -> CorChoice:
    """Pick the COR from the try curve and independent estimates; ``needs_review`` iff expected error > 1 px.

    In order: the curve's best interior peak when an estimate agrees with it; else
    the curve peak nearest a strong pair estimate that Vo or the curve confirms;
    else the best single source (a clear curve peak, the pair, Vo), flagged.
    ``fine`` is the refine pass's (centres, scores) around the curve's peak;
    ``smooth_px`` > 0 picks the curve's peak after Gaussian smoothing (a truncated
    scan's curve is a broad hump with pixel-scale jitter on it).
    """
    base = choose(centers, scores, refine=refine)
    if smooth_px > 0:
        order0 = np.argsort(np.asarray(centers, dtype=np.float64))
        c0 = np.asarray(centers, dtype=np.float64)[order0]
        smoothed = choose(c0, smooth_curve(c0, np.asarray(scores, dtype=np.float64)[order0], smooth_px),
                          refine=refine)
        smoothed.peak_confidence = base.peak_confidence   # smoothing hides the jitter the confidence measures
        smoothed.index = int(order0[smoothed.index])
        smoothed.notes.insert(0, f"curve smoothed ({smooth_px:g} px): peak {base.cor:.2f} -> {smoothed.cor:.2f}")
        base = smoothed
        scores = smooth_curve(c0, np.asarray(scores, dtype=np.float64)[order0], smooth_px)
        centers = c0
    if fine is not None:
        better = refined_peak(base, *fine)
        if better is not None:
            base.notes.append(f"refine pass: curve peak {base.cor:.2f} -> {better:.2f}")
            base.cor = float(better)
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(c)
    c, s = c[order], s[order]
    lo, hi = float(c[0]), float(c[-1])
    ev = [e for e in evidence if e is not None and math.isfinite(e.cor)]
    pair = next((e for e in ev if e.name == "pair" and e.strength >= PAIR_STRONG), None)
    vo = next((e for e in ev if e.name == "vo"), None)
    edge = base.index in (0, len(c) - 1) or "best score at the edge of the search grid" in base.notes
    notes = list(base.notes)

    def near_peak(target: float) -> Optional[float]:
        """The refined curve peak within AGREE_PX of ``target``, if the curve has one there."""
        peaks = [i for i in local_peaks(s) if abs(c[i] - target) <= AGREE_PX]
        if not peaks:
            return None
        i = max(peaks, key=lambda k: s[k])
        return parabola_refine(c, s, i) if refine else float(c[i])

    def result(cor: float, expected: float, why: str) -> CorChoice:
        notes.append(why)
        if not lo - 1e-9 <= cor <= hi + 1e-9:
            notes.append(f"COR {cor:.2f} is outside the try grid [{lo:.1f}, {hi:.1f}]")
        conf = confidence_from_error(expected)
        return CorChoice(cor=float(cor), grid_cor=base.grid_cor, index=base.index, peak_confidence=base.peak_confidence,
                         confidence=conf, estimate=vo.cor if vo else (pair.cor if pair else None),
                         needs_review=bool(expected > 1.0), notes=notes)

    curve_ok = not edge and base.peak_confidence > 0.0
    weak = max(0.0, 2 * PAIR_STRONG - pair.strength) * 2.0 if pair else 0.0   # a barely clear pair vouches less
    if curve_ok and pair and abs(base.cor - pair.cor) <= AGREE_PX:
        d = abs(base.cor - pair.cor)
        # Close agreement: the mean of two independent estimates.  Looser: a clear pair, which
        # stays within ~0.3 px where the curve of a few-projection or truncated scan wanders.
        cor = pair.cor if d > 0.5 and pair.strength >= 2 * PAIR_STRONG else 0.5 * (base.cor + pair.cor)
        return result(cor, 0.15 + 0.5 * d + weak, f"try curve {base.cor:.2f} and 0/180 pair {pair.cor:.2f} agree")
    if curve_ok and vo and not pair and abs(base.cor - vo.cor) <= 1.5 * AGREE_PX and base.peak_confidence >= 0.5:
        return result(base.cor, 0.3 + 0.4 * abs(base.cor - vo.cor), f"try curve and Vo's estimate agree ({vo.cor:.2f})")
    if pair:
        local = near_peak(pair.cor)
        if local is not None:
            # The curve confirms the pair, but its highest peak is elsewhere: the curve is the
            # weaker witness here, so the pair's (sub-pixel) value is used.
            return result(pair.cor, 0.3 + 0.5 * abs(local - pair.cor) + weak,
                          f"a try-curve peak {local:.2f} (not the highest) confirms the 0/180 pair {pair.cor:.2f}")
        if vo and abs(vo.cor - pair.cor) <= 1.5 * AGREE_PX:
            return result(pair.cor, 0.5 + 0.3 * abs(vo.cor - pair.cor),
                          f"0/180 pair {pair.cor:.2f} and Vo's estimate {vo.cor:.2f} agree; the try curve does not")
    if vo and curve_ok:
        local = near_peak(vo.cor)
        if local is not None and abs(local - vo.cor) <= AGREE_PX and not pair:
            return result(local, 0.6 + 0.4 * abs(local - vo.cor),
                          f"a try-curve peak {local:.2f} (not the highest) matches Vo's estimate {vo.cor:.2f}")
    # No two sources agree: the best single one, flagged.
    if not ev and curve_ok:
        # Nothing to cross-check against (no 180° view, no estimate): the curve alone, as before.
        expected = 0.6 if base.peak_confidence >= 0.9 else 1.5
        return result(base.cor, expected, "try curve only (no independent estimate)")
    if pair and pair.strength >= 2 * PAIR_STRONG:
        # Calibration (issue 16): every pair this clear landed within 0.35 px (~40 simulated scans).
        return result(pair.cor, 0.9, f"the curve does not confirm it; the clear 0/180 pair {pair.cor:.2f} is used")
    if curve_ok and base.peak_confidence >= 0.5:
        return result(base.cor, 2.0, "sources disagree; the try-curve peak is used")
    if pair:
        return result(pair.cor, 2.5, f"sources disagree; the 0/180 pair {pair.cor:.2f} is used")
    if vo and lo - 1e-9 <= vo.cor <= hi + 1e-9:
        return result(vo.cor, 3.0, f"no clear try-curve peak; Vo's estimate {vo.cor:.2f} is used")
    return result(base.cor, 5.0, "no clear try-curve peak and no usable estimate")
