"""COR from the 0°/180° projection pair (numpy only).

In parallel-beam geometry the projection at θ + 180° is the one at θ mirrored
about the rotation axis: ``p(θ + π, t) = p(θ, 2c - t)``.  So the flipped 180°
view is the 0° view shifted by ``s = 2c - n`` and the shift that best
correlates the two gives the COR.  Unlike image metrics this needs no
reconstruction, so it is not fooled by a sample wider than the field of view
(the overlap of the two views is still the same object), nor by streaks from
few projections.

Two details make it work at low dose and with rings: the profiles are
band-passed (a difference of Gaussians, 1 and 10 px) so that neither pixel
noise nor the smooth shadow of a large sample dominates the correlation, and
each row's column stripes (the ring pattern, the same at every angle) are
removed first, using the mean over all angles of the sinogram.  How clearly
the best shift beats the next best one far from it is the estimate's
``strength``, which the finder (:func:`tomocorioc.core.cor.choose_with_evidence`)
uses to weigh it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

_BAND = (1.0, 10.0)     # band-pass (px): measured on simulated low-dose scans (benchmarks, issue 16)
_STRIPE_WINDOW = 11     # median window (columns) separating the ring pattern from the sample profile
_APART = 3              # shifts (1.5 px of COR) a rival peak must lie from the best one
_MIN_OVERLAP = 32       # columns the two views must share


@dataclass(frozen=True)
class PairEstimate:
    """COR from the projection pair and how clearly it was found."""

    cor: float
    strength: float     # (best - rival) / best correlation: 0 = ambiguous, ~0.3+ = clear
    correlation: float  # best normalised correlation


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along the last axis (edge-padded FFT convolution)."""
    n = a.shape[-1]
    pad = int(4 * sigma) + 1
    x = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(pad, pad)], mode="edge")
    m = x.shape[-1]
    f = np.fft.rfftfreq(m)
    g = np.exp(-2.0 * (math.pi * sigma * f) ** 2)
    return np.fft.irfft(np.fft.rfft(x, axis=-1) * g, n=m, axis=-1)[..., pad:pad + n]


def stripe_offsets(sino: np.ndarray, window: int = _STRIPE_WINDOW) -> np.ndarray:
    """Each column's offset from its neighbours in the mean over angles: (..., ncols) for (..., nproj, ncols).

    A column whose gain is off adds the same offset to every angle (a ring in
    the slice); the sample does not.
    """
    mean = np.asarray(sino).mean(axis=-2, dtype=np.float64)
    half = window // 2
    padded = np.pad(mean, [(0, 0)] * (mean.ndim - 1) + [(half, half)], mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(padded, window, axis=-1), axis=-1)
    return mean - med


def find_center_pair(sino: np.ndarray, theta_deg: np.ndarray, *, search_radius: float,
                     center: Optional[float] = None, tolerance_deg: float = 0.05) -> Optional[PairEstimate]:
    """COR (tomocupy convention) from the views at θ0 and θ0 + 180° of (rows, nproj, ncols) sinograms.

    Searches ``center`` (default width/2) +- ``search_radius`` px.  Returns
    None when the scan has no view 180° (within ``tolerance_deg``) after its
    first one.
    """
    s = np.asarray(sino)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3 or s.shape[-1] < 2 * _MIN_OVERLAP:
        raise ValueError(f"sinogram block too small for a pair estimate: {s.shape}")
    th = np.asarray(theta_deg, dtype=np.float64)
    if th.shape != (s.shape[1],):
        raise ValueError(f"{th.size} angles for {s.shape[1]} projections")
    i0 = int(np.argmin(th))
    i1 = int(np.argmin(np.abs(th - (th[i0] + 180.0))))
    if abs(th[i1] - th[i0] - 180.0) > tolerance_deg:
        return None
    views = s[:, [i0, i1]].astype(np.float64)
    if not np.all(np.isfinite(views)):
        raise ValueError("projection pair has NaN/Inf values")
    views -= stripe_offsets(s)[:, None, :]
    lo, hi = _BAND
    band = lambda a: _gauss(a, lo) - _gauss(a, hi)  # noqa: E731
    g0 = band(views[:, 0])
    g1 = band(views[:, 1][:, ::-1])
    n = s.shape[-1]
    c0 = n / 2.0 if center is None else float(center)
    # The flipped 180° view q(t) equals the 0° view at t + s, s = 2c - n.
    smin = int(math.floor(2 * (c0 - search_radius) - n))
    smax = int(math.ceil(2 * (c0 + search_radius) - n))
    smin, smax = max(smin, -(n - _MIN_OVERLAP)), min(smax, n - _MIN_OVERLAP)
    if smax - smin < 2 * _APART + 2:
        return None
    shifts = np.arange(smin, smax + 1)
    scores = np.empty(shifts.size)
    for k, sh in enumerate(shifts):
        x, y = (g0[:, sh:], g1[:, :n - sh]) if sh >= 0 else (g0[:, :n + sh], g1[:, -sh:])
        x = x - x.mean()
        y = y - y.mean()
        scores[k] = float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum() + 1e-30))
    k = int(np.argmax(scores))
    best = float(scores[k])
    far = np.abs(np.arange(scores.size) - k) > _APART
    rival = float(scores[far].max()) if far.any() else -1.0
    offset = 0.0
    if 0 < k < scores.size - 1:
        d = scores[k - 1] - 2 * best + scores[k + 1]
        if d < 0:
            offset = float(np.clip(0.5 * (scores[k - 1] - scores[k + 1]) / d, -0.5, 0.5))
    strength = 0.0 if best <= 0 or k in (0, scores.size - 1) else max(0.0, (best - rival) / best)
    return PairEstimate(cor=float((n + shifts[k] + offset) / 2.0), strength=float(strength), correlation=best)


def is_truncated(sino: np.ndarray, share: float = 0.1) -> bool:
    """Whether the sample reaches past the detector edges (local tomography).

    A sample inside the field of view leaves both detector edges near zero
    attenuation at every angle; a wider one does not.
    """
    s = np.asarray(sino)
    s = s.reshape(-1, s.shape[-1])
    k = max(1, s.shape[-1] // 100)
    edge = np.median(np.minimum(s[:, :k].mean(axis=1), s[:, -k:].mean(axis=1)))
    peak = float(np.percentile(s, 99))
    return bool(peak > 0 and edge > share * peak)
