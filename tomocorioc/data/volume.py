"""Full reconstructions on disk (TIFF folder or HDF5): find one, describe it, read slices and planes.

Both sides read volumes: the worker for the summary image and TomoLog, the IOC
for the PVAccess preview; neither needs torch for it.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import numpy as np

from tomocorioc.core import layout
from tomocorioc.data.errors import ReconError

H5_DATASET = "/exchange/data"


@dataclass
class Volume:
    """A full reconstruction on disk: shape (nz, ny, nx) and where its slices are."""

    path: Path
    kind: str                       # "tiff" or "h5"
    shape: Tuple[int, int, int]
    files: List[Path] = field(default_factory=list)   # TIFF slices in z order

    def z_number(self, iz: int) -> int:
        """The slice number a tool addresses position ``iz`` by (TIFF: the number in its file name)."""
        if self.kind == "tiff":
            m = re.search(r"(\d+)\.tiff?$", self.files[iz].name)
            if m:
                return int(m.group(1))
        return iz

    def read_slice(self, iz: int) -> np.ndarray:
        """One XY slice as float32."""
        if self.kind == "h5":
            import h5py  # local: only HDF5 volumes need it
            with h5py.File(self.path, "r") as h5:
                return np.asarray(h5[H5_DATASET][iz], dtype=np.float32)
        import tifffile
        return np.asarray(tifffile.imread(self.files[iz]), dtype=np.float32)

    def read_planes(self, iy: int, ix: int, step: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """The XZ plane at row ``iy`` and the YZ plane at column ``ix``, every ``step``-th slice."""
        if self.kind == "h5":
            import h5py
            with h5py.File(self.path, "r") as h5:
                ds = h5[H5_DATASET]
                return (np.asarray(ds[::step, iy, :], dtype=np.float32),
                        np.asarray(ds[::step, :, ix], dtype=np.float32))
        files = self.files[::step]
        with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
            pairs = list(pool.map(lambda f: _tiff_row_col(f, iy, ix), files))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _tiff_row_col(path: Path, iy: int, ix: int) -> Tuple[np.ndarray, np.ndarray]:
    import tifffile
    try:
        # Uncompressed slices map without decoding, so only the touched pages are read.
        img = tifffile.memmap(path, mode="r")
    except ValueError:
        img = tifffile.imread(path)
    row = np.array(img[iy, :], dtype=np.float32)
    col = np.array(img[:, ix], dtype=np.float32)
    del img
    return row, col


def find_volume(projection_file: Path) -> Path:
    """The full reconstruction of a projection file (TIFF folder or ``_rec.h5``); ReconError if none."""
    folder = layout.full_dir(projection_file)
    h5 = folder.with_suffix(".h5")
    have = [p for p in (h5, folder) if (p.is_file() if p is h5 else p.is_dir())]
    if folder in have and not any(folder.glob("recon_*.tif*")):
        have.remove(folder)
    if not have:
        raise ReconError(f"no full reconstruction at {folder} or {h5}")
    # Both present: the newer one is the reconstruction the operator last made.
    return max(have, key=lambda p: p.stat().st_mtime)


def open_volume(volume_path: Path) -> Volume:
    """Describe a volume (TIFF folder, single TIFF, or HDF5 file) without reading its data."""
    path = Path(volume_path)
    if path.suffix in (".h5", ".hdf5", ".hdf"):
        import h5py
        try:
            with h5py.File(path, "r") as h5:
                ds = h5.get(H5_DATASET)
                if ds is None or ds.ndim != 3:
                    raise ReconError(f"{path} has no 3-D {H5_DATASET}")
                shape = tuple(int(n) for n in ds.shape)
        except OSError as exc:
            raise ReconError(f"cannot read {path}: {exc}") from None
        return Volume(path, "h5", shape)  # type: ignore[arg-type]
    import tifffile
    files = sorted(path.glob("recon_*.tif*")) if path.is_dir() else [path]
    files = [f for f in files if f.is_file() and f.stat().st_size > 0]
    if not files:
        raise ReconError(f"no recon_*.tiff slices in {path}")
    probe = files[len(files) // 2]   # the middle slice: auto_contrast then touches no other file
    try:
        with tifffile.TiffFile(probe) as tif:
            ny, nx = tif.pages[0].shape[:2]
    except (OSError, ValueError, IndexError) as exc:
        raise ReconError(f"cannot read {probe}: {exc}") from None
    return Volume(path, "tiff", (len(files), int(ny), int(nx)), files)


__all__ = ["Volume", "find_volume", "open_volume", "H5_DATASET"]
