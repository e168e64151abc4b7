"""Exact pixel-integrated parallel-beam projections of analytic phantoms.

Geometry (detector pixels): at angle ``theta`` the ray through the volume
point ``(x, y, z)`` reaches the detector at ``t = cor + x cos(theta) +
y sin(theta)`` and row height ``z``; the ray runs along ``(-sin, cos, 0)``.
Column ``j`` covers ``t`` in ``[j, j + 1)``, row ``r`` covers ``z`` in
``[r, r + 1)``, so ``cor = ncols / 2`` is a centred axis.

A detector pixel records the line integral averaged over its area.  For an
ellipsoid ``(p - c)^T A (p - c) <= 1`` and a ray with direction ``d`` the chord
is ``2 sqrt(alpha - D^T M D) / alpha`` with ``alpha = d^T A d`` and
``M = alpha A - (A d)(A d)^T``; ``D`` only matters in the detector plane, so
at a fixed height the chord is a half-ellipse in ``t``.  Its integral over a
column has a closed form (the area of an ellipse segment), so the column
average is exact; the row average uses ``oversample[1]`` midpoint heights
(exact for vertical cylinders, whose chords do not depend on ``z``).
``oversample[0] > 0`` replaces the exact column integral by that many
midpoint samples (for comparison and tests).
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence, Tuple

import numpy as np

from tomocorioc.sim.phantoms import Cylinder, Ellipsoid, Phantom, Shape

log = logging.getLogger(__name__)

# Elements (angles x height samples x detector positions) evaluated per numpy
# call.  Small temporaries stay in cache and avoid page faults from fresh large
# allocations, which cost more than the arithmetic here.
_BUDGET = 1 << 16
_F32_PEAK = 100.0


def _angle_terms(a: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Per-angle quadratic-form terms of a 2x2 or 3x3 quadric along e=(c,s,0), d=(-s,c,0)."""
    cs = cos * sin
    eae = a[0, 0] * cos * cos + 2 * a[0, 1] * cs + a[1, 1] * sin * sin
    dad = a[0, 0] * sin * sin - 2 * a[0, 1] * cs + a[1, 1] * cos * cos
    ead = (a[1, 1] - a[0, 0]) * cs + a[0, 1] * (cos * cos - sin * sin)
    return eae, dad, ead


class _Terms:
    """Everything about one shape that depends on the angle only."""

    def __init__(self, shape: Shape, cos: np.ndarray, sin: np.ndarray) -> None:
        a = shape.quadric()
        p = shape.shape_matrix()
        eae, dad, ead = _angle_terms(a, cos, sin)
        self.alpha = dad
        self.muu = dad * eae - ead * ead
        self.uc = shape.center[0] * cos + shape.center[1] * sin
        pe, _, _ = _angle_terms(p, cos, sin)
        self.half_u = np.sqrt(pe)
        if isinstance(shape, Ellipsoid):
            eaz = a[0, 2] * cos + a[1, 2] * sin
            daz = -a[0, 2] * sin + a[1, 2] * cos
            self.muz = dad * eaz - ead * daz
            self.mzz = dad * a[2, 2] - daz * daz
            self.z0 = float(shape.center[2])
            # A principal axis along z (spheres, z-turned ellipsoids) keeps the
            # chord profile centred at every height.
            self.z_tilted = bool(np.any(np.abs(self.muz) > 1e-12 * np.abs(self.muu)))
        else:
            self.z_tilted = False
            self.muz = np.zeros_like(cos)
            self.mzz = np.zeros_like(cos)
            self.z0 = 0.0
        self.amp = shape.density * np.sqrt(self.muu) / self.alpha


def _column_window(terms: _Terms, ncols: int, cor: float) -> Tuple[int, np.ndarray]:
    """Common window width and per-angle first column covering the shape's shadow."""
    lo = np.floor(cor + terms.uc - terms.half_u).astype(np.int64)
    hi = np.floor(cor + terms.uc + terms.half_u).astype(np.int64)
    width = int(min(ncols, int((hi - lo).max()) + 1))
    start = np.clip(lo, 0, ncols - width)
    return width, start


def _row_rule(samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """Midpoint heights in ``[0, 1)`` and equal weights for averaging over a row.

    (Gauss–Legendre heights were tried: no better, because the chord has a
    square-root edge at the top and bottom of each shape.)
    """
    return (np.arange(samples) + 0.5) / samples, np.full(samples, 1.0 / samples)


def _segments(s: np.ndarray, samples: int) -> np.ndarray:
    """Twice the integral of ``sqrt(1 - s^2)`` over each detector cell (``s`` in units of ``w``).

    ``s`` holds cell edges (exact mode, ``samples == 0``) or ``samples`` points
    per cell; the last axis is positions.  ``s`` is overwritten.  Sampled mode
    returns the sum of ``2 sqrt(1 - s^2)`` over the samples of each cell.
    """
    h = np.multiply(s, s)
    np.subtract(1.0, h, out=h)
    if samples == 0:
        np.clip(s, -1.0, 1.0, out=s)
        np.maximum(h, 0.0, out=h)
        np.sqrt(h, out=h)
        h *= s
        # 2 x antiderivative of sqrt(1 - s^2) = s sqrt(1 - s^2) + asin(s).
        h += np.arcsin(s, out=s)
        return h[..., 1:] - h[..., :-1]
    np.maximum(h, 0.0, out=h)
    np.sqrt(h, out=h)
    shp = h.shape[:-1] + (h.shape[-1] // samples, samples)
    return 2.0 * h.reshape(shp).sum(axis=-1)


def _add_shape(out: np.ndarray, shape: Shape, cos: np.ndarray, sin: np.ndarray, cor: float,
               col_samples: int, row_samples: int) -> None:
    """Accumulate one shape's pixel-averaged line integrals into ``out``."""
    nproj, nrows, ncols = out.shape
    if not out.flags.c_contiguous:
        raise ValueError("projection buffer must be C-contiguous")
    flat = out.reshape(-1)
    zlo, zhi = shape.z_extent()
    r0 = max(0, int(math.floor(zlo)))
    r1 = min(nrows, int(math.floor(zhi)) + 1)
    if r1 <= r0 or shape.density == 0.0:
        return
    terms = _Terms(shape, cos, sin)
    width, start = _column_window(terms, ncols, cor)
    rows = np.arange(r0, r1)
    nr = r1 - r0
    cylinder = isinstance(shape, Cylinder)
    if cylinder:
        # Chord independent of z: exact row weights are the covered row fractions.
        zeta = np.zeros(1)
        row_weight = np.clip(np.minimum(rows + 1.0, zhi) - np.maximum(rows.astype(float), zlo), 0.0, 1.0)
    else:
        nodes, weights = _row_rule(row_samples)
        zeta = (rows[:, None] + nodes).ravel() - terms.z0
        zweight = np.tile(weights, nr)
        row_weight = None
    # Small shapes are evaluated in float32: the rounding error of the segment
    # integral is ~1e-7 * 2|amp| w^2, kept below 1e-5 of a line integral.
    peak = float(np.max(2.0 * np.abs(terms.amp) * terms.alpha / terms.muu))
    dtype = np.float32 if (not cylinder and peak < _F32_PEAK) else np.float64
    if col_samples == 0:
        offsets = np.arange(width + 1, dtype=np.float64)
        # Exact mode: integral of the chord over a cell = amp w^2 * segment.
        power = 2
    else:
        offsets = (np.arange(width)[:, None] + (np.arange(col_samples) + 0.5) / col_samples).ravel()
        power = 1
    norm = np.ones(1) if cylinder else zweight
    if col_samples:
        norm = norm / col_samples
    nz = zeta.size
    step = max(1, _BUDGET // (nz * offsets.size))
    index_dtype = np.int32 if out.size < 2 ** 31 else np.int64
    # (row, column) part of the flat index; the angle part is added per chunk.
    rc = ((rows * ncols)[:, None] + np.arange(width)).astype(index_dtype).ravel()
    for a0 in range(0, nproj, step):
        a1 = min(nproj, a0 + step)
        n = a1 - a0
        muu = terms.muu[a0:a1, None]
        # Half-width ``w`` and centre ``vm`` of the chord profile at each height.
        w2 = (terms.alpha[a0:a1, None] - (terms.mzz[a0:a1, None] - terms.muz[a0:a1, None] ** 2 / muu)
              * zeta ** 2) / muu
        hit = w2 > 0.0
        w = np.sqrt(np.where(hit, w2, 1.0))
        v = (start[a0:a1, None] + offsets) - (cor + terms.uc[a0:a1, None])
        if cylinder or not terms.z_tilted:
            s = np.multiply(v[:, None, :], (1.0 / w)[:, :, None], dtype=dtype)
        else:
            vm = -terms.muz[a0:a1, None] * zeta / muu
            s = np.subtract(v[:, None, :], vm[:, :, None], dtype=dtype)
            s *= (1.0 / w)[:, :, None].astype(dtype)
        seg = _segments(s, col_samples)
        scale = np.where(hit, terms.amp[a0:a1, None] * w ** power * norm[None, :], 0.0)
        seg *= scale[:, :, None].astype(dtype)
        if cylinder:
            vals = seg * row_weight[None, :, None].astype(dtype)
        elif row_samples == 1:
            vals = seg
        else:
            seg = seg.reshape(n, nr, row_samples, width)
            vals = seg[:, :, 0]
            for k in range(1, row_samples):
                vals += seg[:, :, k]
        # Flat indices: much faster than 3D fancy indexing.  Within one shape
        # and angle every (row, column) occurs once, so ``+=`` loses no sums.
        base = (np.arange(a0, a1) * (nrows * ncols) + start[a0:a1]).astype(index_dtype)
        flat_idx = (base[:, None] + rc[None, :]).ravel()
        flat[flat_idx] += vals.reshape(-1).astype(np.float32, copy=False)


def project(phantom: Phantom, thetas_rad: Iterable[float], ncols: int, nrows: int, cor: float,
            oversample: Sequence[int] = (0, 2)) -> np.ndarray:
    """Pixel-averaged line integrals, float32 (nproj, nrows, ncols); oversample = (column, row) samples, 0 = exact."""
    thetas = np.asarray(list(thetas_rad) if not isinstance(thetas_rad, np.ndarray) else thetas_rad,
                        dtype=np.float64).ravel()
    col_samples, row_samples = int(oversample[0]), int(oversample[1])
    if col_samples < 0 or row_samples < 1:
        raise ValueError(f"oversample must be (>=0 column samples, >=1 row samples), got {tuple(oversample)}")
    if ncols < 1 or nrows < 1:
        raise ValueError(f"detector must have >= 1 column and row, got {ncols}x{nrows}")
    out = np.zeros((thetas.size, int(nrows), int(ncols)), dtype=np.float32)
    if thetas.size == 0:
        return out
    cos, sin = np.cos(thetas), np.sin(thetas)
    for shape in phantom.shapes:
        _add_shape(out, shape, cos, sin, float(cor), col_samples, row_samples)
    return out


def line_integrals(phantom: Phantom, theta_rad: float, t: np.ndarray, z: np.ndarray, cor: float) -> np.ndarray:
    """Exact line integrals of single rays hitting detector points ``(t, z)`` at one angle."""
    t = np.asarray(t, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    t, z = np.broadcast_arrays(t, z)
    cos, sin = np.array([math.cos(theta_rad)]), np.array([math.sin(theta_rad)])
    total = np.zeros(t.shape, dtype=np.float64)
    for shape in phantom.shapes:
        terms = _Terms(shape, cos, sin)
        v = t - cor - terms.uc[0]
        zeta = z - terms.z0
        disc = terms.alpha[0] - terms.muu[0] * v * v - 2 * terms.muz[0] * v * zeta - terms.mzz[0] * zeta * zeta
        chord = 2.0 * np.sqrt(np.maximum(disc, 0.0)) / terms.alpha[0]
        if isinstance(shape, Cylinder):
            chord = np.where((z >= shape.z_range[0]) & (z < shape.z_range[1]), chord, 0.0)
        total += shape.density * chord
    return total


def max_line_integral(phantom: Phantom, nrows: int, nangles: int = 16) -> float:
    """Largest pixel line integral over a few angles (used to scale densities)."""
    ncols = 2 * int(math.ceil(phantom.max_radius())) + 8
    thetas = np.linspace(0.0, math.pi, nangles, endpoint=False)
    return float(project(phantom, thetas, ncols, nrows, ncols / 2.0).max())


def normalised(phantom: Phantom, nrows: int, target: float = 1.5) -> Phantom:
    """Phantom scaled so the largest line integral is about ``target``."""
    peak = max_line_integral(phantom, nrows)
    if not peak > 0:
        log.warning("phantom %s has no positive line integral; left unscaled", phantom.kind)
        return phantom
    return phantom.scaled(target / peak)
