"""Simulated DXfile scans with a known centre of rotation.

A scan is written the way tomoScan and the areaDetector HDF5 plugin write it:
metadata, dark and flat fields, then the projections frame by frame (one
chunk per frame, flushed as they go) and ``/exchange/theta`` last, so an
aborted scan has fewer frames and no theta.  The truth (COR, phantom, noise
...) never enters the HDF5 file; it goes to ``truth.json`` beside it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

import h5py
import numpy as np

from tomocorioc.sim.phantoms import PHANTOMS, Phantom, make_phantom
from tomocorioc.sim.projector import project
from tomocorioc.sim.tilt import cor_rows, project_tilted, tilt_slope

try:  # POSIX advisory lock so concurrent writers do not lose truth entries.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TRUTH_FILE = "truth.json"
FOV_MARGIN = 2.0          # px kept free between the phantom and the detector edge
MIN_FOV_RADIUS = 6.0      # smallest usable phantom radius (px)
MIN_OVERLAP = 8.0         # px both halves of a half-acquisition 360° scan must share
NOISELESS_COUNTS = 30000.0  # flat-field counts when noise is off
MAX_COUNTS = 60000.0      # flat counts that still leave uint16 headroom
READ_NOISE = 2.0          # detector read noise, counts (rms)
_FRAME_ELEMENTS = 1 << 22  # detector pixels projected per work item
_BLOCK_ELEMENTS = 1 << 18  # detector pixels per noise block


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines one simulated scan (the truth is derived from it)."""

    ncols: int = 256
    nrows: int = 16
    nproj: int = 181
    offset: float = 0.0
    noise: Optional[float] = 10000
    phantom: str = "beads"
    rings: float = 0.0
    zingers: float = 0.0
    endpoint: bool = True
    nflat: int = 10
    ndark: int = 10
    seed: int = 0
    aborted: bool = False
    abort_fraction: float = 0.4
    chunked: bool = True
    noise_seed: Optional[int] = None
    radius: Optional[float] = None
    max_attenuation: float = 1.5
    dark_level: float = 100.0
    oversample: Tuple[int, int] = (0, 2)
    theta_range: float = 180.0       # 180 or 360 degrees
    half_acquisition: bool = False   # 360° with the axis near an edge: the sample is wider than the detector
    tilt: float = 0.0   # degrees: tomocupy's --rotate-proj-angle that makes the axis vertical
    fov_ratio: Optional[float] = None   # sample diameter / detector width; > 1 = wider than the field of view

    def __post_init__(self) -> None:
        for name, low in (("ncols", 16), ("nrows", 1), ("nproj", 2), ("nflat", 1), ("ndark", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.phantom not in PHANTOMS:
            raise ValueError(f"unknown phantom {self.phantom!r}; choose one of {', '.join(sorted(PHANTOMS))}")
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be finite, got {self.offset}")
        if self.theta_range not in (180.0, 360.0):
            raise ValueError(f"theta_range must be 180 or 360 degrees, got {self.theta_range!r}")
        if self.half_acquisition and self.theta_range != 360.0:
            raise ValueError("an axis near the detector edge (half acquisition) needs theta_range 360")
        if self.half_acquisition and 0.0 < self.cor < self.ncols \
                and min(self.cor, self.ncols - self.cor) < MIN_OVERLAP / 2.0:
            raise ValueError(f"axis offset {self.offset:+g} puts the rotation axis at column {self.cor:g}: "
                             f"the two halves of the turn overlap by less than {MIN_OVERLAP:g} px")
        if not (math.isfinite(self.tilt) and abs(self.tilt) <= 10.0):
            raise ValueError(f"tilt must be within +-10 degrees, got {self.tilt}")
        if not 0.0 < self.cor < self.ncols:
            raise ValueError(f"offset {self.offset:+g} puts the rotation axis at column {self.cor:g}, "
                             f"outside the detector (0, {self.ncols})")
        if self.fov_radius < MIN_FOV_RADIUS:
            raise ValueError(f"offset {self.offset:+g} puts the rotation axis at column {self.cor:g}, "
                             f"too close to the detector edge (field-of-view radius {self.fov_radius:.1f} px "
                             f"< {MIN_FOV_RADIUS:g})")
        if self.noise is not None and not (0.0 <= self.noise <= MAX_COUNTS):
            raise ValueError(f"noise (flat-field photons) must be in [0, {MAX_COUNTS:g}] or None, got {self.noise}")
        if not 0.0 <= self.rings <= 0.5:
            raise ValueError(f"rings (relative column gain error) must be in [0, 0.5], got {self.rings}")
        if not 0.0 <= self.zingers <= 0.5:
            raise ValueError(f"zingers (fraction of pixels) must be in [0, 0.5], got {self.zingers}")
        if not 0.0 < self.abort_fraction < 1.0:
            raise ValueError(f"abort_fraction must be in (0, 1), got {self.abort_fraction}")
        for name in ("seed", "noise_seed"):
            value = getattr(self, name)
            if value is None and name == "noise_seed":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.radius is not None and not (2.0 < self.radius <= self.fov_radius):
            raise ValueError(f"radius must be in (2, {self.fov_radius:g}] px for this axis position, got {self.radius}")
        if self.fov_ratio is not None and not (0.05 <= self.fov_ratio <= 4.0):
            raise ValueError(f"fov_ratio (sample diameter / detector width) must be in [0.05, 4], got {self.fov_ratio}")
        if not 0.0 < self.max_attenuation <= 5.0:
            raise ValueError(f"max_attenuation must be in (0, 5], got {self.max_attenuation}")
        if not 0.0 <= self.dark_level <= 5000.0:
            raise ValueError(f"dark_level must be in [0, 5000], got {self.dark_level}")
        if len(self.oversample) != 2 or self.oversample[0] < 0 or self.oversample[1] < 1:
            raise ValueError(f"oversample must be (column samples >= 0, row samples >= 1), got {self.oversample}")

    @property
    def cor(self) -> float:
        """Rotation-axis position in detector columns (tomocupy convention)."""
        return self.ncols / 2.0 + float(self.offset)

    @property
    def fov_radius(self) -> float:
        """Largest phantom radius that stays in the field of view at every angle.

        With half acquisition the field of view is the far side's distance
        from the axis: the sample is cut by the near edge at every angle.
        A tilted axis drifts across the rows, which narrows it further.
        """
        drift = abs(tilt_slope(self.tilt)) * self.nrows / 2.0  # the axis moves this far at the top and bottom
        if self.half_acquisition:
            return max(self.cor, self.ncols - self.cor) - FOV_MARGIN - drift
        return min(self.cor, self.ncols - self.cor) - FOV_MARGIN - drift

    @property
    def geometry(self) -> str:
        """The scan geometry as tomocorioc names it: 180, 360 or 360-offset."""
        if self.half_acquisition:
            return "360-offset"
        return "360" if self.theta_range == 360.0 else "180"

    @property
    def sample_radius(self) -> float:
        """Phantom radius: ``fov_ratio`` x half the detector (may exceed the field of view), else ``radius``."""
        if self.fov_ratio is not None:
            return self.fov_ratio * self.ncols / 2.0
        return self.radius if self.radius is not None else self.fov_radius

    @property
    def noisy(self) -> bool:
        """Whether Poisson and read noise are simulated."""
        return bool(self.noise)

    @property
    def nproj_written(self) -> int:
        """Projections actually written (fewer for an aborted scan)."""
        if not self.aborted:
            return self.nproj
        return int(min(self.nproj - 1, max(1, math.floor(self.abort_fraction * self.nproj))))

    def theta_deg(self) -> np.ndarray:
        """Planned rotation angles in degrees over ``theta_range`` (with or without the end point)."""
        return np.linspace(0.0, float(self.theta_range), self.nproj, endpoint=self.endpoint)


# ---------------------------------------------------------------- truth file


def _lock_folder(folder: Path) -> Optional[int]:
    """Exclusive advisory lock on the folder itself (no lock file left behind); returns the fd."""
    if fcntl is None:  # pragma: no cover - Windows: no locking
        return None
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def read_truth(folder: Union[str, Path]) -> Dict[str, Dict[str, Any]]:
    """Contents of ``truth.json`` in ``folder`` ({} when absent)."""
    path = Path(folder) / TRUTH_FILE
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def merge_truth(folder: Union[str, Path], entries: Dict[str, Dict[str, Any]]) -> Path:
    """Merge ``entries`` (file name -> truth) into ``folder/truth.json``, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRUTH_FILE
    lock = _lock_folder(folder)
    try:
        try:
            data = read_truth(folder)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            # A damaged truth file must not block simulation.
            log.warning("ignoring unreadable %s (%s); starting a new one", path, exc)
            data = {}
        data.update(entries)
        # Write beside the target and rename: readers never see a partial file.
        tmp = folder / f".{TRUTH_FILE}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(dict(sorted(data.items())), fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        if lock is not None:
            os.close(lock)
    return path


# ---------------------------------------------------------------- detector model


class _Detector:
    """Beam profile, column gains and noise; the fixed parts depend on ``seed`` only."""

    def __init__(self, config: SimConfig, noise_seed: int) -> None:
        self.config = config
        self.noise_seed = noise_seed
        # Beam and detector defects belong to the instrument, so a series (same
        # seed) shares them while the photon noise differs scan to scan.
        rng = np.random.default_rng([config.seed, 101])
        nrows, ncols = config.nrows, config.ncols
        x = (np.arange(ncols) + 0.5 - ncols / 2.0) / (ncols / 2.0)
        r = np.arange(nrows) + 0.5
        horizontal = (1.0 - 0.04 * x ** 2) * (1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(1.0, 2.5) * x
                                                                    + rng.uniform(0, 2 * np.pi)))
        vertical = 1.0 + 0.01 * np.sin(2 * np.pi * r / max(nrows, 8) * rng.uniform(0.3, 0.8)
                                       + rng.uniform(0, 2 * np.pi))
        self.counts = NOISELESS_COUNTS if not config.noisy else float(config.noise)
        self.flat = self.counts * vertical[:, None] * horizontal[None, :]
        gain = 1.0 + config.rings * rng.standard_normal(ncols)
        self.gain = np.clip(gain, 0.5, 1.5)[None, :]

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.noise_seed, stream])

    def _to_uint16(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add photon and read noise plus the dark offset; clip into uint16."""
        if self.config.noisy:
            counts = rng.poisson(signal).astype(np.float32)
            counts += rng.normal(self.config.dark_level, READ_NOISE, size=signal.shape).astype(np.float32)
        else:
            counts = signal.astype(np.float32) + np.float32(self.config.dark_level)
        return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)

    def darks(self) -> np.ndarray:
        """Dark frames (offset plus read noise)."""
        shape = (self.config.ndark, self.config.nrows, self.config.ncols)
        return self._to_uint16(np.zeros(shape), self._rng(1))

    def flats(self) -> np.ndarray:
        """Flat fields: the beam without sample and without the column gain errors."""
        shape = (self.config.nflat, self.config.nrows, self.config.ncols)
        return self._to_uint16(np.broadcast_to(self.flat, shape), self._rng(2))

    def projections(self, line_integrals: np.ndarray, chunk: int) -> np.ndarray:
        """Beer–Lambert, ring gains, noise and zingers for one chunk of frames."""
        rng = self._rng(1000 + chunk)
        beam = (self.flat * self.gain).astype(np.float32)
        frames = np.empty(line_integrals.shape, dtype=np.uint16)
        # A few frames at a time: small temporaries are much faster than large
        # fresh allocations and keep the memory flat.
        step = max(1, _BLOCK_ELEMENTS // beam.size)
        for f0 in range(0, frames.shape[0], step):
            signal = np.exp(-line_integrals[f0:f0 + step], dtype=np.float32)
            signal *= beam
            frames[f0:f0 + step] = self._to_uint16(signal, rng)
        if self.config.zingers > 0:
            n = int(rng.binomial(frames.size, self.config.zingers))
            where = rng.integers(0, frames.size, size=n)
            flat_view = frames.reshape(-1)
            bright = flat_view[where] + rng.uniform(1.0, 4.0, size=n) * self.counts
            flat_view[where] = np.clip(bright, 0, 65535).astype(np.uint16)
        return frames


# ---------------------------------------------------------------- writing


def build_phantom(config: SimConfig) -> Phantom:
    """The config's phantom, sized to its field of view and scaled to ``max_attenuation``."""
    return make_phantom(config.phantom, config.sample_radius, config.nrows, config.seed,
                        max_attenuation=config.max_attenuation)


def _default_noise_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, 3, index]).generate_state(1)[0])


def _write_metadata(f: h5py.File, config: SimConfig, theta: np.ndarray) -> None:
    """A little tomoScan-like metadata (never the COR)."""
    f.create_dataset("implements", data="exchange:measurement:process")
    det = f.require_group("measurement/instrument/detector")
    det.create_dataset("dimension_x", data=np.array([config.ncols], dtype=np.int32))
    det.create_dataset("dimension_y", data=np.array([config.nrows], dtype=np.int32))
    f.require_group("measurement/sample").create_dataset("description", data=f"simulated {config.phantom}")
    rot = f.require_group("process/acquisition/rotation")
    step = float(theta[1] - theta[0]) if theta.size > 1 else 0.0
    rot.create_dataset("rotation_start", data=np.array([theta[0]], dtype=np.float64))
    rot.create_dataset("rotation_step", data=np.array([step], dtype=np.float64))
    rot.create_dataset("num_angles", data=np.array([config.nproj], dtype=np.int32))
    acq = f["process/acquisition"]
    acq.require_group("flat_fields").create_dataset("num_flat_fields", data=np.array([config.nflat], dtype=np.int32))
    acq.require_group("dark_fields").create_dataset("num_dark_fields", data=np.array([config.ndark], dtype=np.int32))


def _frame_dataset(group: h5py.Group, name: str, config: SimConfig, n: int, growing: bool) -> h5py.Dataset:
    shape = (n, config.nrows, config.ncols)
    if not config.chunked:
        return group.create_dataset(name, shape=shape, dtype=np.uint16)
    maxshape = (None, config.nrows, config.ncols) if growing else shape
    return group.create_dataset(name, shape=shape, maxshape=maxshape, dtype=np.uint16,
                                chunks=(1, config.nrows, config.ncols))


def _chunk_frames(config: SimConfig) -> int:
    return int(max(1, min(256, _FRAME_ELEMENTS // (config.nrows * config.ncols))))


def _worker_count(workers: Optional[int]) -> int:
    if workers is None:
        # The projector is a stream of small numpy calls, so threads gain little
        # on few cores; one worker is the predictable default.
        return 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return int(workers)


def write_scan(path: Union[str, Path], config: SimConfig, phantom: Phantom, *,
               noise_seed: Optional[int] = None, labels: Optional[Dict[str, Any]] = None,
               workers: Optional[int] = None,
               on_stage: Optional[Callable[[str], None]] = None,
               on_frames: Optional[Callable[[int], None]] = None,
               should_stop: Optional[Callable[[], bool]] = None,
               write_theta: bool = True,
               chunk_frames: Optional[int] = None) -> Dict[str, Any]:
    """Write one DXfile for an already built phantom and return its truth (no truth.json).

    The optional hooks let a caller (the simulated tomoScan IOC) follow and steer
    the acquisition; all run in the calling thread:

    * ``on_stage(stage)`` before each stage: ``"darks"``, ``"flats"``, ``"projections"``;
    * ``on_frames(n)`` after each chunk of projections is written and flushed,
      ``n`` being the projections in the file so far;
    * ``should_stop()`` before each chunk: True ends the projections there, as
      an abort does (no theta; the truth says ``aborted``);
    * ``write_theta=False`` leaves ``/exchange/theta`` out of a complete scan so
      the caller can add it later with :func:`append_theta` (the truth then
      says ``has_theta: False``);
    * ``chunk_frames`` projections per chunk (default: sized to the detector).
    """
    t_start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise_seed is None:
        noise_seed = config.noise_seed if config.noise_seed is not None else _default_noise_seed(config.seed, 0)
    nworkers = _worker_count(workers)
    detector = _Detector(config, noise_seed)
    theta = config.theta_deg()
    thetas_rad = np.deg2rad(theta)
    n_out = config.nproj_written
    if chunk_frames is not None and (isinstance(chunk_frames, bool) or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames!r}")
    step = int(chunk_frames) if chunk_frames is not None else _chunk_frames(config)
    stopped = False
    n_written = n_out
    peak = 0.0

    def work(chunk: int) -> Tuple[np.ndarray, float]:
        a0 = chunk * step
        angles = thetas_rad[a0:min(n_out, a0 + step)]
        if config.tilt:
            lines = project_tilted(phantom, angles, config.ncols, config.nrows, config.cor, config.tilt,
                                   config.oversample)
        else:
            lines = project(phantom, angles, config.ncols, config.nrows, config.cor, config.oversample)
        return detector.projections(lines, chunk), float(lines.max())

    with h5py.File(path, "w") as f:
        _write_metadata(f, config, theta)
        ex = f.create_group("exchange")
        if on_stage is not None:
            on_stage("darks")
        _frame_dataset(ex, "data_dark", config, config.ndark, False)[...] = detector.darks()
        if on_stage is not None:
            on_stage("flats")
        _frame_dataset(ex, "data_white", config, config.nflat, False)[...] = detector.flats()
        # Like the areaDetector HDF5 plugin: an extendible dataset that grows as
        # frames arrive, so an aborted scan simply ends up shorter.
        data = _frame_dataset(ex, "data", config, 0 if config.chunked else n_out, True)
        f.flush()
        if on_stage is not None:
            on_stage("projections")
        nchunks = -(-n_out // step)
        with ThreadPoolExecutor(max_workers=nworkers) as pool:
            pending: Deque[Future] = deque()
            next_chunk = 0
            for chunk in range(nchunks):
                if should_stop is not None and should_stop():
                    stopped = True
                    n_written = chunk * step if config.chunked else n_out  # contiguous: zeros stay
                    break
                # Keep at most a few chunks in flight: bounded memory.
                while next_chunk < nchunks and len(pending) < nworkers + 1:
                    pending.append(pool.submit(work, next_chunk))
                    next_chunk += 1
                frames, chunk_peak = pending.popleft().result()
                peak = max(peak, chunk_peak)
                a0 = chunk * step
                if config.chunked:
                    data.resize(a0 + frames.shape[0], axis=0)
                data[a0:a0 + frames.shape[0]] = frames
                f.flush()
                if on_frames is not None:
                    on_frames(a0 + frames.shape[0])
            for left in pending:  # stopped early: drop the chunks projected ahead
                left.cancel()
        aborted = config.aborted or stopped
        has_theta = not aborted and write_theta
        if has_theta:
            ex.create_dataset("theta", data=theta.astype(np.float64))
        f.flush()
    elapsed = time.perf_counter() - t_start
    truth: Dict[str, Any] = {
        "file": path.name,
        "cor": config.cor,
        "offset": float(config.offset),
        "ncols": config.ncols,
        "nrows": config.nrows,
        "nproj": config.nproj,
        "nproj_written": n_written,
        "phantom": config.phantom,
        "seed": config.seed,
        "noise_seed": int(noise_seed),
        "noise": float(config.noise) if config.noisy else 0.0,
        "rings": float(config.rings),
        "zingers": float(config.zingers),
        "endpoint": bool(config.endpoint),
        "nflat": config.nflat,
        "ndark": config.ndark,
        "theta_range": float(config.theta_range),
        "geometry": config.geometry,
        "has_theta": has_theta,
        "aborted": bool(aborted),
        "outlier": False,
        "radius": float(phantom.radius),
        "fov_ratio": None if config.fov_ratio is None else float(config.fov_ratio),
        "max_line_integral": round(peak, 6),
        "chunked": bool(config.chunked),
    }
    if config.tilt:
        # tilt_deg is what tomocupy's --rotate-proj-angle needs; cor_rows[r] is the axis in row r.
        truth.update({"tilt_deg": float(config.tilt), "slope_px_per_row": tilt_slope(config.tilt),
                      "cor_rows": [round(c, 6) for c in cor_rows(config.cor, config.tilt, config.nrows)]})
    truth.update(labels or {})
    log.info("wrote %s: %d/%d projections %dx%d, %s, cor %.3f (%.1f s)", path, n_written, config.nproj,
             config.nrows, config.ncols, config.phantom, config.cor, elapsed)
    return truth


def append_theta(path: Union[str, Path], theta: np.ndarray) -> None:
    """Add ``/exchange/theta`` (degrees) to a scan written with ``write_theta=False``.

    This is the last step of a complete scan (tomoScan writes theta after the
    projections); the file is complete once it returns.
    """
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    # No HDF5 file lock, as beamlines run (HDF5_USE_FILE_LOCKING=FALSE): a reader
    # polling the file must not make the scan's last step fail.
    with h5py.File(path, "a", locking=False) as f:
        nproj = int(f["exchange/data"].shape[0])
        if theta.shape[0] != nproj:
            raise ValueError(f"{path}: {theta.shape[0]} angles for {nproj} projections")
        if "exchange/theta" in f:
            raise ValueError(f"{path}: /exchange/theta already present")
        f["exchange"].create_dataset("theta", data=theta)
        f.flush()


def simulate_scan(path: Union[str, Path], config: SimConfig, *, workers: Optional[int] = None) -> Dict[str, Any]:
    """Write one simulated scan to ``path``, merge its truth into ``truth.json`` beside it, return the truth."""
    path = Path(path)
    truth = write_scan(path, config, build_phantom(config), workers=workers)
    merge_truth(path.parent, {path.name: truth})
    return truth


def simulate_series(outdir: Union[str, Path], config: SimConfig, n: int, name: str = "sample",
                    outlier_index: Optional[int] = None, outlier_jump: float = 30.0,
                    aborted_index: Optional[int] = None, offset_jitter: float = 0.3, *,
                    same_sample: bool = True, workers: Optional[int] = None) -> List[Dict[str, Any]]:
    """Write ``name_0001.h5`` ... ``name_{n:04d}.h5`` of one sample with jittered COR; indices are 0-based."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"series length n must be a positive integer, got {n!r}")
    if not name or os.sep in name or name.strip() != name:
        raise ValueError(f"series name must be a plain file-name prefix, got {name!r}")
    for label, index in (("outlier_index", outlier_index), ("aborted_index", aborted_index)):
        if index is not None and not (0 <= index < n):
            raise ValueError(f"{label} must be in [0, {n - 1}] (0-based), got {index}")
    if not (math.isfinite(offset_jitter) and offset_jitter >= 0):
        raise ValueError(f"offset_jitter must be >= 0, got {offset_jitter}")
    if not math.isfinite(outlier_jump):
        raise ValueError(f"outlier_jump must be finite, got {outlier_jump}")
    outdir = Path(outdir)
    rng = np.random.default_rng([config.seed, 2])
    jitter = rng.uniform(-offset_jitter, offset_jitter, size=n) if offset_jitter > 0 else np.zeros(n)
    offsets = [float(config.offset + jitter[i] + (outlier_jump if i == outlier_index else 0.0)) for i in range(n)]
    # Validate every scan first (also the outlier's axis) so nothing is half written.
    configs = [replace(config, offset=off, radius=None) for off in offsets]
    # One sample for the whole series: it must fit the narrowest field of view.
    radius = min(c.fov_radius for c in configs)
    if config.radius is not None:
        radius = min(radius, config.radius)
    if config.fov_ratio is not None:  # the sample's size is fixed by fov_ratio, whatever the axis position
        radius = None
    configs = [replace(c, radius=radius, aborted=config.aborted or i == aborted_index)
               for i, c in enumerate(configs)]
    phantom = build_phantom(configs[0]) if same_sample else None
    truths: List[Dict[str, Any]] = []
    for i, cfg in enumerate(configs):
        if not same_sample:
            cfg = replace(cfg, seed=config.seed + i)
        if config.noise_seed is not None:
            noise_seed = config.noise_seed + i
        else:
            noise_seed = _default_noise_seed(config.seed, i + 1)
        path = outdir / f"{name}_{i + 1:04d}.h5"
        labels: Dict[str, Any] = {"series": name, "index": i, "outlier": i == outlier_index}
        if i == outlier_index:
            labels["outlier_jump"] = float(outlier_jump)
        truth = write_scan(path, cfg, phantom if phantom is not None else build_phantom(cfg),
                           noise_seed=noise_seed, labels=labels, workers=workers)
        merge_truth(outdir, {path.name: truth})
        truths.append(truth)
    return truths

