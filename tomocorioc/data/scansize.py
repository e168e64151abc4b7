"""Scan sizes from the files themselves (h5py): what auto-skip judges (see :mod:`tomocorioc.core.series`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple

from tomocorioc.core.series import (
    DATA_PATH,
    DEFAULT_SKIP_THRESHOLD,
    PathLike,
    ScanSize,
    SkipDecision,
    check_skip_threshold,
    undersized_scans,
)
from tomocorioc.data.errors import MissingDatasetError, ShapeError

log = logging.getLogger(__name__)


def read_scan_size(path: PathLike) -> ScanSize:
    """Projections of ``/exchange/data`` and file bytes; an unreadable file gives ``error``, never raises."""
    file = str(path)
    try:
        nbytes: Optional[int] = os.stat(file).st_size
    except OSError as exc:
        return ScanSize(file, error=f"unreadable: {exc.strerror or exc}")
    import h5py  # here: the IOC imports this module, and most calls never open a file

    try:
        # No HDF5 file lock: the detector writer may still hold the file open.
        with _open_h5(h5py, file) as fh:
            dset = fh.get(DATA_PATH)
            if not isinstance(dset, h5py.Dataset):
                return ScanSize(file, nbytes=nbytes, error=f"unreadable: no {DATA_PATH} dataset")
            if len(dset.shape) < 1:
                return ScanSize(file, nbytes=nbytes, error=f"unreadable: {DATA_PATH} is a scalar")
            theta = fh.get(THETA_PATH)
            ntheta = int(theta.shape[0]) if isinstance(theta, h5py.Dataset) and len(theta.shape) == 1 else None
            return ScanSize(file, nproj=int(dset.shape[0]), nbytes=nbytes, ntheta=ntheta,
                            planned=planned_count(fh.get(PLANNED_PATH)))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        return ScanSize(file, nbytes=nbytes, error=f"unreadable: {exc}")


THETA_PATH = "/exchange/theta"
PLANNED_PATH = "/process/acquisition/rotation/num_angles"   # what tomoScan meant to acquire


def planned_count(ds: Any) -> Optional[int]:
    """A positive planned projection count, or None (absent, empty or not a number)."""
    try:
        flat = ds[()] if ds is not None else None
        value = int(flat.ravel()[0]) if hasattr(flat, "ravel") else int(flat) if flat is not None else None
    except (TypeError, ValueError, IndexError, OSError, AttributeError):
        return None
    return value if value and value > 0 else None


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"   # the signature at the start of an HDF5 file without a user block


def scan_shape(path: PathLike) -> Tuple[int, int, int]:
    """``(projections, rows, width)`` of ``/exchange/data``; DatasetError (one line) when it is no scan.

    Opened as a scan is (:func:`tomocorioc.data.dxfile.open_h5` checks the
    HDF5 signature first), so a text file named ``x.h5`` is refused with "not
    an HDF5 file", not an HDF5 library trace.
    """
    import h5py  # here: the IOC imports this module, and most calls never open a file

    from tomocorioc.data.dxfile import open_h5

    file = Path(path)
    with open_h5(file) as fh:
        dset = fh.get(DATA_PATH)
        if not isinstance(dset, h5py.Dataset):
            raise MissingDatasetError(f"{file.name}: no {DATA_PATH} dataset (not a DXfile scan)")
        if len(dset.shape) != 3:
            raise ShapeError(f"{file.name}: {DATA_PATH} has shape {tuple(dset.shape)}, expected "
                             "(projections, rows, columns)")
        nproj, nrows, width = (int(n) for n in dset.shape)
    if min(nproj, nrows, width) < 1:
        raise ShapeError(f"{file.name}: {DATA_PATH} is empty {(nproj, nrows, width)}")
    return nproj, nrows, width


def _open_h5(h5py: Any, file: str) -> Any:
    try:
        return h5py.File(file, "r", locking=False)
    except TypeError:  # h5py < 3.5 has no locking argument
        return h5py.File(file, "r")


def find_undersized(paths: Iterable[PathLike], threshold: float = DEFAULT_SKIP_THRESHOLD, *,
                    skip_unreadable: bool = False) -> List[SkipDecision]:
    """Read the files' sizes and judge them per series (see :func:`undersized_scans`).

    Unreadable files are only logged by default: a file still being written
    can be unreadable for a moment, and a broken one fails its try phase
    with its own error anyway.  ``skip_unreadable=True`` skips them too.
    """
    threshold = check_skip_threshold(threshold)
    sizes = [read_scan_size(p) for p in paths]
    skips = undersized_scans(sizes, threshold)
    for s in sizes:
        if s.error is None:
            continue
        if skip_unreadable:
            skips.append(SkipDecision(s.file, s.error))
        else:
            log.warning("%s: %s; not judged for auto-skip", s.file, s.error)
    for d in skips:
        log.info("auto-skip %s: %s", d.file, d.reason)
    return skips


__all__ = ["read_scan_size", "find_undersized", "scan_shape", "planned_count", "DATA_PATH", "THETA_PATH",
           "PLANNED_PATH", "HDF5_MAGIC"]
