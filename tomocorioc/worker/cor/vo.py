"""Sinogram-based COR estimate (Vo, Atwood & Drakopoulos, Opt. Express 2014), numpy only.

A 180° sinogram and its mirror image, shifted by the right amount, form a
consistent 360° sinogram whose 2-D Fourier transform is confined to a
double-wedge; a wrong centre puts a seam in it and energy outside the wedge.
We search the shift that minimises that energy: coarse on a reduced
sinogram, then fine (sub-pixel, by Fourier shift) at full detector resolution.
Used to centre the try grid when the axis is far from the detector centre and
as an independent cross-check of the image-based choice.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np


def _fourier_shift(rows: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shift each of K copies of ``rows`` (nproj, n) by ``shift[k]`` px (positive = right)."""
    n = rows.shape[-1]
    pad = n // 2
    padded = np.pad(rows, ((0, 0), (pad, pad)), mode="edge")
    m = padded.shape[-1]
    f = np.fft.rfftfreq(m)
    spec = np.fft.rfft(padded, axis=-1)
    ramp = np.exp(-2j * math.pi * shift[:, None, None] * f[None, None, :])
    out = np.fft.irfft(spec[None] * ramp, n=m, axis=-1)
    return out[..., pad:pad + n]


def _wedge_mask(nrow: int, ncol: int, ratio: float) -> np.ndarray:
    """Where a consistent 360° sinogram's spectrum should be empty (1) or not (0)."""
    m = np.abs(np.fft.fftfreq(nrow, d=1.0 / nrow))[:, None]         # angular harmonic
    f = np.abs(np.fft.fftfreq(ncol))[None, :]                        # cycles / pixel
    radius = ratio * ncol / 2.0
    allowed = m <= 2 * math.pi * f * radius + 1.0
    mask = (~allowed).astype(np.float64)
    mask[:, 0] = 0.0  # the DC column carries the total mass: not informative
    return mask


def _metric(sino: np.ndarray, flipped_shifted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Energy outside the wedge for each candidate (K,)."""
    k = flipped_shifted.shape[0]
    full = np.concatenate([np.broadcast_to(sino, (k,) + sino.shape), flipped_shifted], axis=1)
    spec = np.abs(np.fft.fft2(full, axes=(1, 2)))
    return (spec * mask[None]).sum(axis=(1, 2)) / (spec.sum(axis=(1, 2)) + 1e-12)


def _reduce(sino: np.ndarray, max_rows: int, max_cols: int) -> Tuple[np.ndarray, int]:
    """Fewer angles (decimate) and columns (block mean) for the coarse search."""
    rstep = max(1, int(math.ceil(sino.shape[0] / max_rows)))
    s = sino[::rstep]
    cstep = max(1, int(math.ceil(s.shape[1] / max_cols)))
    if cstep > 1:
        w = s.shape[1] // cstep * cstep
        s = s[:, :w].reshape(s.shape[0], -1, cstep).mean(axis=2)
    return s, cstep


def find_center_vo(sino: np.ndarray, *, search_radius: Optional[float] = None, ratio: float = 0.5,
                   batch: int = 16) -> float:
    """COR (tomocupy convention: centred axis = width/2) from a 180° sinogram (nproj, ncols)."""
    sino = np.asarray(sino, dtype=np.float64)
    if sino.ndim != 2 or sino.shape[0] < 8 or sino.shape[1] < 16:
        raise ValueError(f"sinogram too small for a centre estimate: {sino.shape}")
    if not np.all(np.isfinite(sino)):
        raise ValueError("sinogram has NaN/Inf values")
    n = sino.shape[1]
    radius = search_radius if search_radius is not None else n / 4.0
    # With g(t) = flip(t - s) and s = 2c - n, the mirrored half matches when c is the COR.
    small, cstep = _reduce(sino, 360, 512)
    ns = small.shape[1]
    mask = _wedge_mask(2 * small.shape[0], ns, ratio)
    flip = small[:, ::-1]
    centers = np.arange(n / 2.0 - radius, n / 2.0 + radius + 1e-9, max(1.0, cstep / 2.0))
    shifts = (2 * centers - n) / cstep
    scores = np.concatenate([_metric(small, _fourier_shift(flip, shifts[i:i + batch]), mask)
                             for i in range(0, len(shifts), batch)])
    best = int(np.argmin(scores))
    if best <= 1 or best >= len(scores) - 2:
        # A minimum on the border of the search range is no minimum: dense samples
        # that fill the field of view defeat the wedge mask. Say so instead of guessing.
        raise ValueError("no minimum inside the search range (sample may fill the field of view)")
    coarse = float(centers[best])
    # Fine: full detector resolution, quarter-pixel steps around the coarse value.
    fine_src, _ = _reduce(sino, 720, n)
    mask = _wedge_mask(2 * fine_src.shape[0], n, ratio)
    flip = fine_src[:, ::-1]
    span = max(2.0, float(cstep))
    fine_c = np.arange(coarse - span, coarse + span + 1e-9, 0.25)
    fs = np.concatenate([_metric(fine_src, _fourier_shift(flip, 2 * fine_c[i:i + batch] - n), mask)
                         for i in range(0, len(fine_c), batch)])
    i = int(np.argmin(fs))
    if 0 < i < len(fs) - 1:
        a, b, c = fs[i - 1], fs[i], fs[i + 1]
        denom = a - 2 * b + c
        if denom > 0:
            return float(fine_c[i] + 0.25 * np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float(fine_c[i])
