"""360° scans with the rotation axis near a detector edge (double field of view).

Each half of such a scan sees one half of the sample: the ray through a
point at signed distance ``s`` from the axis hits column ``c + s`` at angle
``θ`` and column ``c - s`` at ``θ + π``.  So the projection at ``θ + π``,
mirrored about the axis, continues the one at ``θ`` past the detector edge.

* :func:`overlap_estimate` finds the axis from that overlap: the 0–180°
  half against the mirrored 180–360° half, a normalised squared difference
  at every relative shift (the idea of algotom's ``find_center_360`` and of
  nabu's half-acquisition estimators, written here from the geometry).
* :func:`detect_offset` tells a centred 360° scan from an offset one.
* :class:`Stitcher` turns each 360° sinogram into a 180° sinogram twice as
  wide (``2 n``), blending the two views smoothly across their overlap, so
  the usual FBP reconstructs it; the slice is ``2 n`` wide and centred on the
  axis, as tomocupy's ``--file-type double_fov`` (not mirrored for an axis on
  the left, where tomocupy mirrors the slice).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from tomocorioc.core import geometry as geo
from tomocorioc.core import layout
from tomocorioc.core.cor import CorChoice
from tomocorioc.core.params import ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.recon import fbp
from tomocorioc.worker.recon.base import TRY_META, write_json
from tomocorioc.worker.recon.preprocess import preprocess

log = logging.getLogger(__name__)

_MIN_OVERLAP = 8            # px of overlap the estimate needs between the two halves
_EST_ANGLES = 256           # angle pairs the estimate uses (evenly subsampled)
_EDGE_COLS = 3              # detector columns averaged to see a sample cut by the edge
_EDGE_FRACTION = 0.05       # ... as a fraction of the sinogram's 99th percentile
_OFFSET_AGREE = 0.25        # px: a try score this close to the overlap estimate is kept
_GOOD_MATCH = 0.1           # overlap mismatch (0 perfect, ~1 unrelated) below which the estimate is trusted
_OFF_CENTRE = 0.1           # an offset axis is farther than this fraction of the width from the centre ...
_FAR_RATIO = 0.25           # ... or the far edge sees less than this fraction of what the near edge sees


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 -> 1 with zero first and second derivatives at both ends (no seam in the filtered data)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)


def pair_angles(theta_rad: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first half-turn's projections and where each one's opposite (θ + π) lies.

    Returns ``(first, lo, hi, frac)``: indices of the angles in the first half
    turn, and for each the two projections (indices into theta) and the weight
    of ``hi`` that interpolate the projection at ``θ + π``, periodically in 2π
    (so scans that end before 360° or wrap past it work).
    """
    th = np.asarray(theta_rad, dtype=np.float64).reshape(-1)
    if th.size < 4:
        raise ValueError(f"a 360-degree scan needs at least 4 angles, got {th.size}")
    t0 = float(th.min())
    first = np.flatnonzero(th - t0 < math.pi - 1e-9)
    first = first[np.argsort(th[first], kind="stable")]
    phase = np.mod(th - t0, 2 * math.pi)
    order = np.argsort(phase, kind="stable")
    ph = phase[order]
    target = np.mod(th[first] - t0 + math.pi, 2 * math.pi)
    k = np.searchsorted(ph, target, side="right")       # ph[k-1] <= target < ph[k] (periodic)
    lo_pos, hi_pos = (k - 1) % ph.size, k % ph.size
    a, b = ph[lo_pos], ph[hi_pos]
    gap = np.mod(b - a, 2 * math.pi)
    gap = np.where(gap <= 0, 2 * math.pi, gap)
    frac = np.clip(np.mod(target - a, 2 * math.pi) / gap, 0.0, 1.0)
    return first, order[lo_pos], order[hi_pos], frac


def halves(sino: np.ndarray, theta_rad: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first-half projections, their opposite projections, first-half angles) of one (nproj, n) sinogram."""
    first, lo, hi, frac = pair_angles(theta_rad)
    s = np.asarray(sino, dtype=np.float64)
    opposite = s[lo] * (1.0 - frac)[:, None] + s[hi] * frac[:, None]
    return s[first], opposite, np.asarray(theta_rad, dtype=np.float64)[first]


_EMPTY = 0.01               # an overlap with less variance than this fraction of the whole shows nothing


def _mismatch(direct: np.ndarray, flipped: np.ndarray, shift: int, total_var: float) -> float:
    """Normalised squared difference of ``direct[:, j]`` and ``flipped[:, j - shift]`` over their overlap.

    0 is a perfect match, ~1 unrelated data; an overlap of empty beam (air
    against air) would match perfectly and say nothing, so it scores 1.
    """
    n = direct.shape[1]
    a = direct[:, max(0, shift):min(n, n + shift)]
    b = flipped[:, max(0, -shift):min(n, n - shift)]
    den = float(np.var(a) + np.var(b))
    if den <= _EMPTY * total_var:
        return 1.0
    return float(np.mean((a - b) ** 2)) / den


def overlap_estimate(sino: np.ndarray, theta_rad: Sequence[float]) -> Tuple[float, float]:
    """The axis (detector columns) of a 360° sinogram from its two halves; (cor, mismatch at the best shift).

    The direct half matches the mirrored opposite half shifted by ``d = 2 cor - n``;
    the shift is found to a pixel, then to a fraction by a parabola through
    the three best mismatches.
    """
    direct, opposite, _ = halves(sino, theta_rad)
    n = direct.shape[1]
    if n < 2 * _MIN_OVERLAP:
        raise ValueError(f"sinogram too narrow for a 360-degree estimate: {n} columns")
    if direct.shape[0] > _EST_ANGLES:
        pick = np.linspace(0, direct.shape[0] - 1, _EST_ANGLES).round().astype(int)
        direct, opposite = direct[pick], opposite[pick]
    flipped = opposite[:, ::-1]
    shifts = np.arange(-(n - _MIN_OVERLAP), n - _MIN_OVERLAP + 1)
    total = float(np.var(direct) + np.var(flipped)) + 1e-30
    scores = np.array([_mismatch(direct, flipped, int(d), total) for d in shifts])
    i = int(np.argmin(scores))
    d = float(shifts[i])
    if 0 < i < len(scores) - 1:
        y0, y1, y2 = scores[i - 1], scores[i], scores[i + 1]
        curv = y0 - 2 * y1 + y2
        if curv > 0:
            d += float(np.clip(0.5 * (y0 - y2) / curv, -0.5, 0.5))
    return (n + d) / 2.0, float(scores[i])


@dataclass(frozen=True)
class OffsetCheck:
    """What the data say about a 360° scan's axis."""

    offset: bool               # axis near an edge with the sample cut by that edge
    estimate: float            # the overlap estimate of the axis (detector columns)
    mismatch: float            # its normalised mismatch (0 perfect, ~1 no match)
    edge_signal: Tuple[float, float]   # mean line integral at the left and right edge


def detect_offset(sino: np.ndarray, theta_rad: Sequence[float]) -> OffsetCheck:
    """Centred 360° or 360-offset: offset when the edge next to the axis cuts the sample.

    ... and the axis is far from the centre, or the far edge clearly less so
    (a centred scan of a sample wider than the detector cuts it at both edges).
    """
    s = np.asarray(sino, dtype=np.float64)
    n = s.shape[1]
    cor, mismatch = overlap_estimate(s, theta_rad)
    scale = float(np.percentile(s, 99)) or 1.0
    left = float(np.median(s[:, :_EDGE_COLS].mean(axis=1)))
    right = float(np.median(s[:, -_EDGE_COLS:].mean(axis=1)))
    near, far = (right, left) if cor >= n / 2.0 else (left, right)
    off_centre = abs(cor - n / 2.0) > _OFF_CENTRE * n or far < _FAR_RATIO * near
    offset = off_centre and near > _EDGE_FRACTION * abs(scale)
    return OffsetCheck(bool(offset), float(cor), mismatch, (left, right))


class Stitcher:
    """Turns 360° sinograms of an n-wide detector into 180° sinograms 2n wide, for one set of angles."""

    def __init__(self, theta_rad: Sequence[float], ncols: int, device: torch.device | str = "cpu") -> None:
        first, lo, hi, frac = pair_angles(theta_rad)
        self.ncols = int(ncols)
        self.width = geo.stitched_width(self.ncols)
        self.device = torch.device(device)
        self.theta = np.asarray(theta_rad, dtype=np.float64)[first]
        t = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        self._first, self._lo, self._hi = t(first), t(lo), t(hi)
        self._frac = t(frac.astype(np.float32))[:, None]

    @property
    def nangles(self) -> int:
        """Angles of the stitched (180°) sinogram."""
        return int(self.theta.size)

    def fbp_geometry(self) -> fbp.FBPGeometry:
        """FBP geometry of the stitched sinograms."""
        return fbp.FBPGeometry.create(self.width, self.theta, self.device)

    def axis(self, cor: float) -> float:
        """The axis in stitched columns for ``cor`` in detector columns."""
        return geo.stitched_axis(cor, self.ncols)

    def halves(self, sino: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(…, nproj, n) -> the first half turn and the interpolated opposite projections, (…, m, n) each."""
        direct = sino.index_select(-2, self._first)
        frac = self._frac.to(sino.dtype)
        opposite = sino.index_select(-2, self._lo) * (1 - frac) + sino.index_select(-2, self._hi) * frac
        return direct, opposite

    def stitch(self, direct: torch.Tensor, opposite: torch.Tensor, cor: float) -> torch.Tensor:
        """One 2n-wide 180° sinogram (…, m, 2n) for the axis ``cor`` (detector columns)."""
        n, c = self.ncols, float(cor)
        if not 0.0 < c < n:
            raise ValueError(f"rotation axis {c:g} outside the detector (0, {n})")
        start = 0 if c >= n / 2.0 else n          # where the detector sits in the stitched row
        j = np.arange(self.width, dtype=np.float64) - start  # detector column of each stitched column
        if start == 0:   # axis right: the detector fades out across [2c - n, n)
            w_direct = 1.0 - _smoothstep((j + 0.5 - (2 * c - n)) / (2 * (n - c)))
        else:            # axis left: the detector fades in across [0, 2c)
            w_direct = _smoothstep((j + 0.5) / (2 * c))
        w_direct = np.where((j >= 0) & (j < n), w_direct, 0.0)
        # Mirrored opposite view: column j at θ is column 2c - 1 - j at θ + π.
        x = np.clip(2 * c - 1 - j, 0.0, n - 1.0)   # clamped: the mirror's edge value continues outwards
        x0 = np.minimum(np.floor(x).astype(np.int64), n - 2)
        fx = x - x0
        dev, dt = direct.device, direct.dtype
        t = lambda a, d=dt: torch.as_tensor(a, device=dev, dtype=d)  # noqa: E731
        mirrored = (opposite.index_select(-1, t(x0, torch.int64)) * t(1 - fx)
                    + opposite.index_select(-1, t(x0 + 1, torch.int64)) * t(fx))
        jd = t(np.clip(j, 0, n - 1).astype(np.int64), torch.int64)
        wd = t(w_direct)
        return direct.index_select(-1, jd) * wd + mirrored * (1 - wd)

    def reconstruct(self, sino: torch.Tensor, geom: fbp.FBPGeometry, filt: str, cor: float) -> torch.Tensor:
        """FBP of (rows, nproj, n) 360° sinograms at one axis: (rows, 2n, 2n) slices centred on the axis."""
        direct, opposite = self.halves(sino)
        stitched = self.stitch(direct, opposite, cor)
        centers = torch.full((stitched.shape[0],), self.axis(cor), dtype=torch.float64)
        return fbp.reconstruct(stitched, geom, filt, centers)

    def try_batches(self, sino_row: torch.Tensor, geom: fbp.FBPGeometry, filt: str, centers: Sequence[float],
                    batch: int) -> Iterator[Tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(centers_chunk, images)`` for one (nproj, n) row at many axes (detector columns)."""
        direct, opposite = self.halves(sino_row)
        cs = np.asarray(centers, dtype=np.float64)
        for i in range(0, len(cs), max(1, int(batch))):
            chunk = cs[i:i + batch]
            stitched = torch.stack([self.stitch(direct, opposite, float(c)) for c in chunk])
            axes = torch.tensor([self.axis(float(c)) for c in chunk], dtype=torch.float64)
            yield chunk, fbp.reconstruct(stitched, geom, filt, axes)


def estimate_from_rows(sino: np.ndarray, theta_deg: Sequence[float]) -> Optional[OffsetCheck]:
    """:func:`detect_offset` on one row, or None (with a warning) when it cannot be made."""
    try:
        return detect_offset(sino, np.deg2rad(geo.theta_in_degrees(theta_deg)))
    except ValueError as exc:
        log.warning("no 360-degree overlap estimate (%s)", exc)
        return None




# ---------------------------------------------------------------- per scan


def scan_geometry(scan: DXFile, params: ReconParams) -> Tuple[str, Optional[OffsetCheck]]:
    """The scan's geometry and, for a 360° scan, what its two halves' overlap says (else None).

    ``params.geometry`` other than auto wins (a sidecar's override); auto
    reads one row only for a 360° scan, to tell centred from offset.
    """
    want = params.geometry
    if want in (geo.HALF, geo.FULL):
        return want, None
    theta = scan.theta_deg()
    if want == geo.AUTO and not geo.is_full_turn(theta):
        return geo.HALF, None
    row = scan.row_index(params.nsino)
    block = scan.read_rows(row, row + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sino = preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                      dezinger_threshold=params.dezinger_threshold)[0].numpy()
    check = estimate_from_rows(sino, theta)
    if check is not None:
        log.info("%s: 360-degree scan, overlap estimate %.2f (mismatch %.3f), edges %.3f / %.3f -> %s",
                 scan.path, check.estimate, check.mismatch, *check.edge_signal,
                 "offset" if check.offset else "centred")
    if want == geo.OFFSET or (check is not None and check.offset):
        return geo.OFFSET, check
    return geo.FULL, check


def record_geometry(path: Path, geometry: str, check: Optional[OffsetCheck]) -> None:
    """Keep the geometry and the overlap's mismatch beside the try outputs (up-to-date reruns and infer read them)."""
    meta_path = layout.try_dir(path) / TRY_META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return
    meta["geometry"] = geometry
    if check is not None:
        meta["overlap_mismatch"] = round(float(check.mismatch), 6)
    write_json(meta_path, meta)


def prefer_overlap(choice: CorChoice, source: str, folder: Path,
                   estimate: Optional[float]) -> Tuple[CorChoice, str]:
    """For a 360-offset try: the overlap estimate wins when the slices' score is more than a quarter pixel off it.

    The estimate compares the two half turns directly (sub-pixel, errors of
    hundredths of a pixel on simulated scans), while sharpness metrics on
    stitched slices can be nearly flat over several pixels, so there the
    roles of 180° scans are swapped: the score is the cross-check.  Review is
    asked when the halves do not match well (mismatch above ``_GOOD_MATCH``).
    """
    try:
        meta = json.loads((folder / TRY_META).read_text())
    except (OSError, ValueError):
        return choice, source
    if meta.get("geometry") != geo.OFFSET or estimate is None:
        return choice, source
    est, mismatch = float(estimate), meta.get("overlap_mismatch")
    good = isinstance(mismatch, (int, float)) and mismatch <= _GOOD_MATCH
    if abs(choice.cor - est) <= _OFFSET_AGREE:
        return choice, source
    notes = [n for n in choice.notes if not n.startswith(("sinogram estimate", "AI COR"))]
    notes.append(f"360-offset: the {source} score's COR {choice.cor:.2f} is {abs(choice.cor - est):.2f} px from "
                 f"the overlap estimate {est:.2f}; the overlap estimate is used")
    if not good:
        notes.append("the two half turns do not match well (overlap mismatch "
                     f"{mismatch if mismatch is not None else '?'}); check the COR")
    conf = max(0.0, 1.0 - float(mismatch) / (2 * _GOOD_MATCH)) if good else 0.0
    return dataclasses.replace(choice, cor=est, confidence=conf, needs_review=not good, notes=notes), "overlap"


def geometry_for_full(path: Path, params: ReconParams) -> str:
    """The geometry a full reconstruction uses: the override, the try's, or detected now."""
    if params.geometry != geo.AUTO:
        return params.geometry
    try:
        meta = json.loads((layout.try_dir(path) / TRY_META).read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("geometry") in geo.GEOMETRIES[1:]:
        return str(meta["geometry"])
    with DXFile(path) as scan:
        return scan_geometry(scan, params)[0]


__all__ = ["OffsetCheck", "Stitcher", "detect_offset", "estimate_from_rows", "geometry_for_full", "halves",
           "overlap_estimate", "pair_angles", "prefer_overlap", "record_geometry", "scan_geometry"]
