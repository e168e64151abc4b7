"""Analytic 3D phantoms: ellipsoids and vertical elliptic cylinders.

Coordinates are detector pixels.  ``x`` and ``y`` are horizontal and measured
from the rotation axis (the line ``x = y = 0``); ``z`` is vertical in detector
rows, so row ``r`` covers ``z`` in ``[r, r + 1)``.  Every shape has a
closed-form chord length for any ray, which is what makes the projections in
:mod:`tomocorioc.sim.project` exact.  Densities add up where shapes overlap;
negative densities carve holes (pores, air bubbles).

The builders place random content with a seeded generator and keep every shape
inside a cylinder of radius ``radius`` around the axis, so nothing leaves the
field of view at any angle.  They also cap the amount of content per detector
pixel (``busy``) because the projection cost grows with it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

Matrix3 = Tuple[Tuple[float, float, float], Tuple[float, float, float], Tuple[float, float, float]]

# Z extent used for "endless" vertical cylinders (containers, matrices).  It
# only has to exceed the slab of rows that is ever projected.
_TALL = 1.0e6


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rotation``."""

    center: Tuple[float, float, float]
    axes: Tuple[float, float, float]
    density: float
    rotation: Matrix3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def quadric(self) -> np.ndarray:
        """Matrix ``A`` with the ellipsoid ``(p - c)^T A (p - c) <= 1``."""
        rot = np.asarray(self.rotation, dtype=np.float64)
        return rot @ np.diag(1.0 / np.asarray(self.axes, dtype=np.float64) ** 2) @ rot.T

    def shape_matrix(self) -> np.ndarray:
        """Inverse of :meth:`quadric`; its diagonal gives the half-extents squared."""
        rot = np.asarray(self.rotation, dtype=np.float64)
        return rot @ np.diag(np.asarray(self.axes, dtype=np.float64) ** 2) @ rot.T

    def bounding_radius(self) -> float:
        """Largest horizontal distance of the ellipsoid from the rotation axis."""
        p = self.shape_matrix()
        # The horizontal extent along any direction e is sqrt(e^T P e) <= sqrt(max eig).
        reach = math.sqrt(float(np.linalg.eigvalsh(p[:2, :2]).max()))
        return math.hypot(self.center[0], self.center[1]) + reach

    def z_extent(self) -> Tuple[float, float]:
        """Lowest and highest ``z`` the ellipsoid reaches."""
        hz = math.sqrt(float(self.shape_matrix()[2, 2]))
        return self.center[2] - hz, self.center[2] + hz


@dataclass(frozen=True)
class Cylinder:
    """Vertical elliptic cylinder between ``z_range``; ``angle`` (rad) turns its ``a`` axis from +x."""

    center: Tuple[float, float]
    axes: Tuple[float, float]
    density: float
    angle: float = 0.0
    z_range: Tuple[float, float] = (-_TALL, _TALL)

    def quadric(self) -> np.ndarray:
        """2x2 matrix ``A`` with the cross-section ``(p - c)^T A (p - c) <= 1``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        return rot @ np.diag(1.0 / np.asarray(self.axes, dtype=np.float64) ** 2) @ rot.T

    def shape_matrix(self) -> np.ndarray:
        """Inverse of :meth:`quadric`."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        return rot @ np.diag(np.asarray(self.axes, dtype=np.float64) ** 2) @ rot.T

    def bounding_radius(self) -> float:
        """Largest horizontal distance of the cross-section from the rotation axis."""
        return math.hypot(self.center[0], self.center[1]) + max(self.axes)

    def z_extent(self) -> Tuple[float, float]:
        """Lowest and highest ``z`` of the cylinder."""
        return float(self.z_range[0]), float(self.z_range[1])


Shape = Union[Ellipsoid, Cylinder]


@dataclass(frozen=True)
class Phantom:
    """A sum of analytic shapes; ``radius`` bounds every shape's distance from the axis."""

    kind: str
    shapes: Tuple[Shape, ...]
    radius: float
    seed: int = 0

    def scaled(self, factor: float) -> "Phantom":
        """Same phantom with every density multiplied by ``factor``."""
        return replace(self, shapes=tuple(replace(s, density=s.density * factor) for s in self.shapes))

    def shifted(self, dz: float) -> "Phantom":
        """Same phantom moved up by ``dz`` rows."""
        out: List[Shape] = []
        for s in self.shapes:
            if isinstance(s, Ellipsoid):
                out.append(replace(s, center=(s.center[0], s.center[1], s.center[2] + dz)))
            else:
                out.append(replace(s, z_range=(s.z_range[0] + dz, s.z_range[1] + dz)))
        return replace(self, shapes=tuple(out))

    def max_radius(self) -> float:
        """Largest horizontal distance any shape reaches from the axis."""
        return max((s.bounding_radius() for s in self.shapes), default=0.0)


# ---------------------------------------------------------------- helpers


def _rot_z(phi: float) -> np.ndarray:
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _as_matrix3(m: np.ndarray) -> Matrix3:
    return tuple(tuple(float(v) for v in row) for row in m)  # type: ignore[return-value]


def _axis_frame(azimuth: float, elevation: float, roll: float) -> np.ndarray:
    """Orthonormal frame whose first column points along (azimuth, elevation)."""
    ca, sa, ce, se = math.cos(azimuth), math.sin(azimuth), math.cos(elevation), math.sin(elevation)
    u = np.array([ca * ce, sa * ce, se])
    h = np.array([-sa, ca, 0.0])
    v = np.cross(u, h)
    cr, sr = math.cos(roll), math.sin(roll)
    return np.stack([u, cr * h + sr * v, -sr * h + cr * v], axis=1)


def _random_in_disk(rng: np.random.Generator, rmax: float) -> Tuple[float, float]:
    """Uniform point in a disk of radius ``rmax`` (zero if ``rmax <= 0``)."""
    if rmax <= 0:
        return 0.0, 0.0
    rho = rmax * math.sqrt(rng.random())
    phi = 2 * math.pi * rng.random()
    return rho * math.cos(phi), rho * math.sin(phi)


def _footprint(half_u: float, half_z: float, nrows: int) -> float:
    """Detector window (pixels) one shape occupies in a projection: the cost proxy."""
    return (2 * half_u + 2) * min(2 * half_z + 2, nrows + 1)


class _Packer:
    """Random non-overlapping placement of spheres/ellipsoids by rejection."""

    def __init__(self, gap: float = 0.5) -> None:
        self.centers: List[np.ndarray] = []
        self.radii: List[float] = []
        self.gap = gap

    def fits(self, center: np.ndarray, radius: float) -> bool:
        if not self.centers:
            return True
        c = np.asarray(self.centers)
        d = np.sqrt(((c - center) ** 2).sum(axis=1))
        return bool(np.all(d >= np.asarray(self.radii) + radius + self.gap))

    def add(self, center: np.ndarray, radius: float) -> None:
        self.centers.append(center)
        self.radii.append(radius)


def _container(rng: np.random.Generator, radius: float, wall: float, wall_density: float,
               fill_density: float) -> Tuple[List[Shape], float, Tuple[float, float]]:
    """Slightly off-axis capillary: wall plus fill; returns shapes, inner radius, centre."""
    off = 0.03 * radius
    cx, cy = _random_in_disk(rng, off)
    outer = radius - math.hypot(cx, cy)
    inner = outer - wall
    shapes: List[Shape] = [
        Cylinder((cx, cy), (outer, outer), wall_density),
        Cylinder((cx, cy), (inner, inner), fill_density - wall_density),
    ]
    return shapes, inner, (cx, cy)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo * 1.0001)))))


# ---------------------------------------------------------------- builders


def shepp3d(radius: float, nrows: int, seed: int = 0) -> Phantom:
    """3D modified Shepp–Logan head; the rows cut a thin slab near its middle."""
    rng = np.random.default_rng(seed)
    # (density, a, b, c, x0, y0, z0, phi_deg) in units of the phantom radius.
    table = [
        (1.0, 0.6900, 0.920, 0.810, 0.0, 0.0, 0.0, 0.0),
        (-0.8, 0.6624, 0.874, 0.780, 0.0, -0.0184, 0.0, 0.0),
        (-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0, 0.0, -18.0),
        (-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0, 0.0, 18.0),
        (0.1, 0.2100, 0.250, 0.410, 0.0, 0.35, -0.15, 0.0),
        (0.1, 0.0460, 0.046, 0.050, 0.0, 0.1, 0.25, 0.0),
        (0.1, 0.0460, 0.046, 0.050, 0.0, -0.1, 0.25, 0.0),
        (0.1, 0.0460, 0.023, 0.050, -0.08, -0.605, 0.0, 0.0),
        (0.1, 0.0230, 0.023, 0.020, 0.0, -0.606, 0.0, 0.0),
        (0.1, 0.0230, 0.046, 0.020, 0.06, -0.605, 0.0, 0.0),
    ]
    # The outer ellipsoid reaches 0.92; scale so it touches ``radius``.
    scale = radius / 0.92
    # Seed 0 is the canonical orientation and slab; other seeds turn the head
    # and move the slab a little so that a series of samples differs.
    spin = 0.0 if seed == 0 else rng.uniform(0, 2 * math.pi)
    z_mid = 0.0 if seed == 0 else rng.uniform(-0.06, 0.06)
    turn = _rot_z(spin)
    shapes: List[Shape] = []
    for dens, a, b, c, x0, y0, z0, phi in table:
        cx, cy, _ = turn @ np.array([x0, y0, 0.0])
        rot = turn @ _rot_z(math.radians(phi))
        shapes.append(Ellipsoid(
            center=(float(cx * scale), float(cy * scale), (z0 - z_mid) * scale + nrows / 2.0),
            axes=(a * scale, b * scale, c * scale), density=dens, rotation=_as_matrix3(rot)))
    return Phantom("shepp3d", tuple(shapes), radius, seed)


def beads(radius: float, nrows: int, seed: int = 0, busy: float = 6.0) -> Phantom:
    """Spheres of varied density (and a few air bubbles) in a liquid-filled capillary."""
    rng = np.random.default_rng(seed)
    wall = max(2.0, 0.04 * radius)
    fill = 0.12
    shapes, inner, (cx, cy) = _container(rng, radius, wall, 1.0, fill)
    r_min, r_max = 1.5, float(np.clip(0.1 * radius, 3.0, 60.0))
    budget = busy * 2 * radius * nrows
    packer = _Packer()
    used, misses = 0.0, 0
    while used < budget and misses < 400 and len(packer.radii) < 2000:
        r = _log_uniform(rng, r_min, r_max)
        x, y = _random_in_disk(rng, inner - r - 1.0)
        x, y = x + cx, y + cy
        z = rng.uniform(-0.8 * r, nrows + 0.8 * r)
        c = np.array([x, y, z])
        if inner - r - 1.0 <= 0 or not packer.fits(c, r):
            misses += 1
            continue
        misses = 0
        packer.add(c, r)
        used += _footprint(r, r, nrows)
        # One in ten is an air bubble: it cancels the liquid exactly.
        dens = -fill if rng.random() < 0.1 else fill * rng.uniform(2.0, 10.0)
        shapes.append(Ellipsoid((x, y, z), (r, r, r), dens))
    return Phantom("beads", tuple(shapes), radius, seed)


def fibers(radius: float, nrows: int, seed: int = 0, busy: float = 10.0) -> Phantom:
    """Elongated dense ellipsoids at random orientations in a polymer matrix."""
    rng = np.random.default_rng(seed)
    # Elliptic, slightly off-axis matrix so its outline is not rotation invariant.
    cx, cy = _random_in_disk(rng, 0.03 * radius)
    a = radius - math.hypot(cx, cy)
    b = a * rng.uniform(0.8, 0.95)
    matrix_density = 0.25
    shapes: List[Shape] = [Cylinder((cx, cy), (a, b), matrix_density, angle=rng.uniform(0, math.pi))]
    budget = busy * 2 * radius * nrows
    r_thin = max(2.5, min(8.0, 0.03 * radius))
    used, misses = 0.0, 0
    while used < budget and misses < 400 and len(shapes) < 800:
        length = rng.uniform(0.05, 0.25) * radius
        rf = rng.uniform(1.2, r_thin)
        elev = float(np.clip(rng.normal(0.0, math.radians(20)), -1.2, 1.2))
        frame = _axis_frame(rng.uniform(0, math.pi), elev, rng.uniform(0, math.pi))
        ell = Ellipsoid((0.0, 0.0, 0.0), (length, rf, rf * rng.uniform(0.7, 1.0)), 0.0,
                        _as_matrix3(frame))
        reach = ell.bounding_radius()
        if b - reach - 1.0 <= 0:
            misses += 1
            continue
        misses = 0
        # Centred within b - reach of the matrix centre: inside the matrix and the field of view.
        x, y = _random_in_disk(rng, b - reach - 1.0)
        x, y = x + cx, y + cy
        _, hz = ell.z_extent()
        z = rng.uniform(-0.7 * hz, nrows + 0.7 * hz)
        hu = math.sqrt(float(ell.shape_matrix()[:2, :2].trace()))
        used += _footprint(hu, hz, nrows)
        dens = matrix_density * rng.uniform(2.0, 6.0)
        shapes.append(replace(ell, center=(x, y, z), density=dens))
    return Phantom("fibers", tuple(shapes), radius, seed)


def _porous(kind: str, radius: float, nrows: int, seed: int, busy: float, matrix_density: float,
            r_max: float, grains: float, elongation: float) -> Phantom:
    """Matrix cylinder with non-overlapping pores (holes) and a few dense grains."""
    rng = np.random.default_rng(seed)
    cx, cy = _random_in_disk(rng, 0.03 * radius)
    outer = radius - math.hypot(cx, cy)
    shapes: List[Shape] = [Cylinder((cx, cy), (outer, outer), matrix_density)]
    r_min, r_max = 1.5, float(np.clip(r_max * radius, 3.0, 40.0))
    budget = busy * 2 * radius * nrows
    packer = _Packer(gap=1.0)
    used, misses = 0.0, 0
    while used < budget and misses < 400 and len(packer.radii) < 2000:
        r = _log_uniform(rng, r_min, r_max)
        stretch = rng.uniform(1.0, elongation)
        axes = (r * stretch, r, r / stretch)
        reach = axes[0]
        x, y = _random_in_disk(rng, outer - reach - 1.0)
        z = rng.uniform(-0.8 * reach, nrows + 0.8 * reach)
        c = np.array([x + cx, y + cy, z])
        if outer - reach - 1.0 <= 0 or not packer.fits(c, reach):
            misses += 1
            continue
        misses = 0
        packer.add(c, reach)
        used += _footprint(reach, reach, nrows)
        frame = _axis_frame(rng.uniform(0, 2 * math.pi), rng.uniform(-1.0, 1.0), rng.uniform(0, math.pi))
        is_grain = rng.random() < grains
        dens = matrix_density * rng.uniform(0.8, 1.5) if is_grain else -matrix_density
        shapes.append(Ellipsoid((float(c[0]), float(c[1]), z), axes, dens, _as_matrix3(frame)))
    return Phantom(kind, tuple(shapes), radius, seed)


def foam(radius: float, nrows: int, seed: int = 0, busy: float = 6.0) -> Phantom:
    """Light matrix full of round pores."""
    return _porous("foam", radius, nrows, seed, busy * 1.5, matrix_density=0.5, r_max=0.1, grains=0.0,
                   elongation=1.15)


def rock(radius: float, nrows: int, seed: int = 0, busy: float = 6.0) -> Phantom:
    """Dense core plug with elongated pores and dense mineral grains."""
    return _porous("rock", radius, nrows, seed, busy, matrix_density=1.0, r_max=0.06, grains=0.3,
                   elongation=2.5)


PhantomBuilder = Callable[..., Phantom]

PHANTOMS: Dict[str, PhantomBuilder] = {
    "shepp3d": shepp3d,
    "beads": beads,
    "fibers": fibers,
    "foam": foam,
    "rock": rock,
}


def make_phantom(kind: str, radius: float, nrows: int, seed: int = 0,
                 max_attenuation: Optional[float] = 1.5) -> Phantom:
    """Phantom ``kind`` within ``radius`` px of the axis over ``nrows`` rows, peak line integral ~max_attenuation."""
    try:
        builder = PHANTOMS[kind]
    except KeyError:
        raise ValueError(f"unknown phantom {kind!r}; choose one of {', '.join(sorted(PHANTOMS))}") from None
    if not radius > 2:
        raise ValueError(f"phantom radius must be > 2 px, got {radius}")
    if nrows < 1:
        raise ValueError(f"nrows must be >= 1, got {nrows}")
    phantom = builder(float(radius), int(nrows), seed=int(seed))
    log.debug("phantom %s seed %d: %d shapes, radius %.1f", kind, seed, len(phantom.shapes), radius)
    if max_attenuation is None:
        return phantom
    # Imported here: the projector depends on this module.
    from tomocorioc.sim.projector import normalised
    return normalised(phantom, int(nrows), float(max_attenuation))


def evaluate(phantom: Phantom, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Density of ``phantom`` at volume points (broadcast arrays), e.g. a ground-truth slice."""
    x, y, z = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (x, y, z)))
    total = np.zeros(x.shape, dtype=np.float64)
    for s in phantom.shapes:
        if isinstance(s, Ellipsoid):
            d = np.stack([x - s.center[0], y - s.center[1], z - s.center[2]], axis=-1)
            inside = np.einsum("...i,ij,...j->...", d, s.quadric(), d) <= 1.0
        else:
            d = np.stack([x - s.center[0], y - s.center[1]], axis=-1)
            inside = (np.einsum("...i,ij,...j->...", d, s.quadric(), d) <= 1.0) \
                & (z >= s.z_range[0]) & (z < s.z_range[1])
        total += np.where(inside, s.density, 0.0)
    return total
