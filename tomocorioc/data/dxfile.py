"""Reading DXfile HDF5 scans the way tomocupy does, one row range at a time.

A DXfile holds ``/exchange/data`` (nproj, nrows, ncols), ``/exchange/data_white``
(nflat, nrows, ncols), ``/exchange/data_dark`` (ndark, nrows, ncols) and
``/exchange/theta`` in degrees.  Only the rows a phase needs are ever read: a
try reads one sinogram row, a full reconstruction streams row chunks.  A
multi-GB dataset is never loaded whole.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import h5py
import numpy as np

from tomocorioc.core.geometry import theta_in_degrees
from tomocorioc.data.errors import (
    EmptyDataError,
    FlatFieldError,
    MissingDatasetError,
    NonFiniteError,
    NotAFileError,
    NotHDF5Error,
    ShapeError,
    TruncatedFileError,
    UnreadableError,
)
from tomocorioc.data.scansize import HDF5_MAGIC as _HDF5_MAGIC
from tomocorioc.data.scansize import PLANNED_PATH, THETA_PATH, planned_count

log = logging.getLogger(__name__)

DATA = "/exchange/data"
WHITE = "/exchange/data_white"
DARK = "/exchange/data_dark"
PLANNED_ANGLES = PLANNED_PATH
THETA = THETA_PATH


@dataclass(frozen=True)
class RowBlock:
    """Raw rows ``[r0, r1)`` of projections, flats and darks (float32)."""

    r0: int
    r1: int
    proj: np.ndarray   # (nproj, r1-r0, ncols)
    flat: np.ndarray   # (r1-r0, ncols), mean of the flats
    dark: np.ndarray   # (r1-r0, ncols), mean of the darks


def open_h5(path: Path) -> h5py.File:
    """Open read-only, mapping every failure to one typed, one-line error."""
    if not path.exists():
        raise NotAFileError(f"{path}: no such file")
    if not path.is_file():
        raise NotAFileError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except PermissionError:
        raise UnreadableError(f"{path}: permission denied") from None
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(head) < 8 or head != _HDF5_MAGIC:
        # HDF5 may carry a user block before the signature; h5py decides then.
        if not h5py.is_hdf5(str(path)):
            raise NotHDF5Error(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        msg = str(exc)
        if getattr(exc, "errno", None) == errno.EACCES:
            raise UnreadableError(f"{path}: permission denied") from None
        if "truncated" in msg or "eof" in msg.lower() or "signature" in msg or "bad object header" in msg:
            raise TruncatedFileError(f"{path}: truncated or corrupt HDF5 ({msg.splitlines()[0][:120]})") from None
        raise TruncatedFileError(f"{path}: cannot open as HDF5 ({msg.splitlines()[0][:120]})") from None


class DXFile:
    """An open, validated DXfile scan (use as a context manager)."""

    def __init__(self, path: os.PathLike, *, require_flats: bool = True) -> None:
        self.path = Path(path)
        self._h5 = open_h5(self.path)
        try:
            self._validate(require_flats)
        except BaseException:
            self._h5.close()
            raise

    # -- context management -------------------------------------------------
    def __enter__(self) -> "DXFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 handle."""
        self._h5.close()

    # -- validation -------------------------------------------------------
    def _dataset(self, name: str, required: bool = True) -> Optional[h5py.Dataset]:
        try:
            obj = self._h5.get(name)
        except (OSError, RuntimeError, KeyError) as exc:
            raise TruncatedFileError(f"{self.path}: corrupt HDF5 structure at {name} ({exc})") from None
        if obj is None:
            if required:
                raise MissingDatasetError(f"{self.path}: missing dataset {name}")
            return None
        if not isinstance(obj, h5py.Dataset):
            raise MissingDatasetError(f"{self.path}: {name} is a group, not a dataset")
        return obj

    def _validate(self, require_flats: bool) -> None:
        data = self._dataset(DATA)
        if data.ndim != 3:
            raise ShapeError(f"{self.path}: {DATA} must be 3-D (nproj, nrows, ncols), got shape {data.shape}")
        if min(data.shape) == 0:
            raise EmptyDataError(f"{self.path}: {DATA} is empty, shape {data.shape}")
        self.data = data
        self.nproj, self.nrows, self.ncols = (int(s) for s in data.shape)
        self.flats = self._dataset(WHITE, required=require_flats)
        self.darks = self._dataset(DARK, required=require_flats)
        for name, ds in ((WHITE, self.flats), (DARK, self.darks)):
            if ds is None:
                continue
            if ds.ndim != 3:
                raise ShapeError(f"{self.path}: {name} must be 3-D, got shape {ds.shape}")
            if ds.shape[0] == 0:
                raise EmptyDataError(f"{self.path}: {name} holds no frames")
            if ds.shape[1:] != data.shape[1:]:
                raise ShapeError(f"{self.path}: {name} frame {ds.shape[1:]} != data frame {data.shape[1:]}")
        theta_ds = self._dataset(THETA, required=False)
        self.theta_present = theta_ds is not None
        if theta_ds is not None:
            if theta_ds.ndim != 1:
                raise ShapeError(f"{self.path}: {THETA} must be 1-D, got shape {theta_ds.shape}")
            self._theta_len = int(theta_ds.shape[0])
        else:
            self._theta_len = 0

    # -- metadata -----------------------------------------------------------
    @property
    def planned_projections(self) -> Optional[int]:
        """tomoScan's planned projection count (``/process/acquisition/rotation/num_angles``), if recorded."""
        return planned_count(self._h5.get(PLANNED_ANGLES))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(nproj, nrows, ncols) of the projections."""
        return self.nproj, self.nrows, self.ncols

    def is_complete(self) -> bool:
        """True when theta matches the projections and flats/darks are present.

        tomoScan writes theta after the projections and may copy flats later,
        so a file still being written (or an aborted scan) fails this test.
        """
        return (self.theta_present and self._theta_len == self.nproj
                and self.flats is not None and self.darks is not None)

    def theta_deg(self) -> np.ndarray:
        """Projection angles in degrees; evenly spaced over 180° when absent."""
        if not self.theta_present:
            log.warning("%s: no %s; assuming %d angles evenly spaced over [0, 180)", self.path, THETA, self.nproj)
            return np.linspace(0.0, 180.0, self.nproj, endpoint=False)
        theta = np.asarray(self._h5[THETA][...], dtype=np.float64)
        if theta.shape[0] != self.nproj:
            raise ShapeError(f"{self.path}: {THETA} has {theta.shape[0]} angles for {self.nproj} projections")
        if not np.all(np.isfinite(theta)):
            raise NonFiniteError(f"{self.path}: {THETA} contains NaN/Inf")
        degrees = theta_in_degrees(theta)
        if degrees is not theta:
            log.info("%s: %s spans %.3f, taken as radians", self.path, THETA, float(np.ptp(theta)))
        return degrees

    def row_index(self, nsino: float) -> int:
        """The detector row for tomocupy's ``--nsino`` (0 top, 1 bottom), truncated as tomocupy does."""
        return int(float(nsino) * (self.nrows - 1))

    # -- data ---------------------------------------------------------------
    def read_rows(self, r0: int, r1: int, *, binning: int = 0) -> RowBlock:
        """Read rows ``[r0, r1)`` of projections, flats and darks as float32.

        Rows are read as hyperslabs so only those bytes are touched (for a
        contiguous dataset) or only the chunks holding them (chunked).
        """
        if not (0 <= r0 < r1 <= self.nrows):
            raise ShapeError(f"{self.path}: rows [{r0}, {r1}) outside 0..{self.nrows}")
        try:
            proj = np.asarray(self.data[:, r0:r1, :], dtype=np.float32)
            if self.flats is not None and self.darks is not None:
                flat = np.asarray(self.flats[:, r0:r1, :], dtype=np.float32).mean(axis=0)
                dark = np.asarray(self.darks[:, r0:r1, :], dtype=np.float32).mean(axis=0)
            else:
                flat = np.ones(proj.shape[1:], np.float32)
                dark = np.zeros(proj.shape[1:], np.float32)
        except OSError as exc:
            why = str(exc).splitlines()[0][:120]
            raise TruncatedFileError(f"{self.path}: cannot read rows {r0}..{r1} ({why})") from None
        for name, arr in (("data", proj), ("data_white", flat), ("data_dark", dark)):
            if not np.all(np.isfinite(arr)):
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise NonFiniteError(f"{self.path}: /exchange/{name} has {bad} NaN/Inf values in rows {r0}..{r1}")
        if self.flats is not None and self.darks is not None:
            # A flat taken with the shutter closed (or a zeroed dataset) normalises to a clamped constant:
            # the slices still "reconstruct" and the job looked done with a plausible COR.
            gain = float(np.median(flat - dark))
            if not gain > 0:
                raise FlatFieldError(f"{self.path}: /exchange/data_white is not brighter than data_dark in rows "
                                     f"{r0}..{r1} (median white - dark = {gain:g}): no usable flat field")
        if binning:
            proj, flat, dark = (_bin_last2(a, binning) for a in (proj, flat, dark))
        return RowBlock(r0, r1, proj, flat, dark)


def _bin_last2(a: np.ndarray, binning: int) -> np.ndarray:
    """Average 2**binning x 2**binning blocks over the last two axes (rows, cols)."""
    f = 2 ** binning
    r, c = a.shape[-2] // f * f, a.shape[-1] // f * f
    a = a[..., :r, :c]
    shape = a.shape[:-2] + (r // f, f, c // f, f)
    return a.reshape(shape).mean(axis=(-3, -1), dtype=np.float32)


def open_scan(path: os.PathLike) -> DXFile:
    """Open and validate a scan, raising a typed ``DatasetError`` on any problem."""
    return DXFile(path)
