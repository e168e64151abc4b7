"""The torch backend: try and full reconstructions, CPU or CUDA, same code.

Try: one sinogram row, filtered once, backprojected at every candidate centre
in batches sized to a memory budget.  Full: rows streamed from the HDF5 file in
chunks (``nsino_per_chunk``), so peak memory does not grow with the number of
rows.  Outputs are written to a temporary folder and swapped in when complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
import torch

from tomocorioc.core import geometry as geo
from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.recon import double_fov, fbp
from tomocorioc.worker.recon.base import (
    FULL_META,
    TRY_META,
    FullOutput,
    Progress,
    ReconError,
    TryOutput,
    check_full_outputs,
    check_try_outputs,
    swap_in,
    write_json,
)
from tomocorioc.worker.recon.preprocess import preprocess
from tomocorioc.worker.recon.rotate import rotated_sinograms

log = logging.getLogger(__name__)

# A try batch of K candidates holds K images and K filtered rows; bigger
# batches amortise building the backprojection matrix (2x faster at 1024 px
# going from 48 to 200 candidates), so the budget follows the free memory.
_BUDGET_FRACTION = 0.25
_BUDGET_CAP = 8 * 2**30
_BUDGET_FLOOR = 256 * 2**20


def auto_memory_budget(device: torch.device) -> int:
    """Bytes one try batch may use: a quarter of the free memory, 256 MiB to 8 GiB.

    A quarter because several worker processes may share one host (or one
    GPU's host memory for the copies back).
    """
    free = 0
    if device.type == "cuda":
        try:
            free = int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError as exc:  # a device that went away: fall back to the floor
            log.warning("cannot read free GPU memory (%s); using the minimum try batch budget", exc)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 0
    return int(min(_BUDGET_CAP, max(_BUDGET_FLOOR, free * _BUDGET_FRACTION)))


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    """Direct FBP in torch; writes tomocupy's output layout."""

    name = "torch"

    def __init__(self, device: Optional[str] = None, memory_budget: Optional[int] = None) -> None:
        self.device = torch.device(device or default_device())
        self._budget = None if memory_budget is None else int(memory_budget)

    @property
    def memory_budget(self) -> int:
        """Bytes for one try batch: as given, else measured now (free memory changes)."""
        return self._budget if self._budget is not None else auto_memory_budget(self.device)

    def _check(self, params: ReconParams) -> None:
        if params.dtype != "float32":
            raise ReconError("the torch backend computes in float32 only; float16 needs tomocupy")

    def _sinograms(self, scan: DXFile, r0: int, r1: int, params: ReconParams) -> torch.Tensor:
        if params.rotate_proj_angle:  # camera tilt: rotate the projections as tomocupy recon_steps does
            return rotated_sinograms(scan, r0, r1, params, self.device)
        block = scan.read_rows(r0, r1, binning=params.binning)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        return preprocess(t(block.proj), t(block.flat), t(block.dark), dezinger_width=params.dezinger,
                          dezinger_threshold=params.dezinger_threshold, stripe=params.remove_stripe_method)

    def try_batch_size(self, n: int, nproj: int) -> int:
        """Candidates per batch: images (n^2, plus a host copy off CPU) and filtered rows (nproj x nwin)."""
        nwin = n + 2 * fbp._margin(n)
        images = 2 if self.device.type != "cpu" else 1
        per = 4 * (images * n * n + nproj * nwin)
        shift_tmp = fbp._SHIFT_SUB * nproj * fbp.padded_size(n) * 8 * 2  # complex product + irfft output
        return max(1, min(512, (self.memory_budget - shift_tmp) // per))

    def run_try(self, scan_path: Path, params: ReconParams, rotation_axis: float,
                progress: Progress = None, geometry: str = geo.HALF) -> TryOutput:
        """Write the try stack for one file and return what was written (360-offset: stitched, 2n wide)."""
        self._check(params)
        t0 = time.perf_counter()
        scan_path = Path(scan_path)
        f = 2 ** params.binning
        with DXFile(scan_path) as scan:
            row = scan.row_index(params.nsino)
            r0 = min(row - row % f, scan.nrows - f)
            if r0 < 0:
                raise ReconError(f"{scan_path}: {scan.nrows} rows cannot be binned by {f}")
            theta = np.deg2rad(scan.theta_deg())
            sino = self._sinograms(scan, r0, r0 + f, params)[0]
        n = sino.shape[-1]
        centers = layout.candidate_centers(rotation_axis, geo.offset_search_width(params.search_width, geometry),
                                           params.search_step)
        if geometry == geo.OFFSET:
            stitcher = double_fov.Stitcher(theta, n, self.device)
            geom = stitcher.fbp_geometry()
        else:
            geom = fbp.FBPGeometry.create(n, theta, self.device)
        final = layout.try_dir(scan_path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        batch = self.try_batch_size(geom.n, len(geom.theta))
        if geometry == geo.OFFSET:
            batches = stitcher.try_batches(sino, geom, params.fbp_filter, centers / f, batch)
        else:
            batches = fbp.try_batches(sino, geom, params.fbp_filter, centers / f, batch)
        done = 0
        try:
            for chunk, images in batches:
                arr = images.cpu().numpy()
                for c_binned, img in zip(chunk, arr):
                    c = float(np.round(c_binned * f, 2))
                    tifffile.imwrite(tmp / layout.try_slice_name(row, c), img.astype(np.float32, copy=False))
                done += len(chunk)
                if progress:
                    progress(done, len(centers))
            write_json(tmp / TRY_META, {"params": params.to_dict(), "digest": params.digest(phase="try"),
                                        "row": row, "rotation_axis": float(rotation_axis), "geometry": geometry,
                                        "centers": [float(c) for c in centers], "backend": self.name,
                                        "device": str(self.device)})
            swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_try_outputs(final, centers, row)
        return TryOutput(final, row, [float(c) for c in centers], float(rotation_axis),
                         time.perf_counter() - t0)

    def run_full(self, scan_path: Path, params: ReconParams, cor: float, progress: Progress = None,
                 rows: Optional[tuple] = None, geometry: str = geo.HALF) -> FullOutput:
        """Reconstruct every row (or ``rows=(start, stop)``) at ``cor``, streaming row chunks.

        A 360-offset scan's slices are stitched (double field of view): 2n wide.
        """
        self._check(params)
        t0 = time.perf_counter()
        scan_path = Path(scan_path)
        f = 2 ** params.binning
        with DXFile(scan_path) as scan:
            start, stop = rows if rows else (0, scan.nrows)
            start, stop = max(0, start - start % f), min(scan.nrows, stop)
            stop = start + (stop - start) // f * f
            if stop <= start:
                raise ReconError(f"{scan_path}: no rows to reconstruct in [{start}, {stop})")
            theta = np.deg2rad(scan.theta_deg())
            n = scan.ncols // f
            stitcher = double_fov.Stitcher(theta, n, self.device) if geometry == geo.OFFSET else None
            geom = stitcher.fbp_geometry() if stitcher else fbp.FBPGeometry.create(n, theta, self.device)
            step = max(f, params.nsino_per_chunk // f * f)
            nslices = (stop - start) // f
            as_h5 = params.full_format == "h5"
            final = layout.full_dir(scan_path)
            if as_h5:
                final = final.with_suffix(".h5")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(final.name + ".partial")
            _remove(tmp)
            writer = _H5Writer(tmp, nslices, geom.n) if as_h5 else _TiffWriter(tmp)
            try:
                done = 0
                for r in range(start, stop, step):
                    r1 = min(stop, r + step)
                    sino = self._sinograms(scan, r, r1, params)
                    if stitcher is not None:
                        vol = stitcher.reconstruct(sino, geom, params.fbp_filter, cor / f).cpu().numpy()
                    else:
                        centers = torch.full((sino.shape[0],), cor / f, dtype=torch.float64)
                        vol = fbp.reconstruct(sino, geom, params.fbp_filter, centers).cpu().numpy()
                    writer.write((r - start) // f, vol)
                    done += vol.shape[0]
                    if progress:
                        progress(done, nslices)
                writer.close()
                meta = {"params": params.to_dict(), "digest": params.digest(phase="full", cor=cor),
                        "cor": float(cor), "rows": [start, stop], "backend": self.name, "device": str(self.device),
                        "geometry": geometry}
                if not as_h5:
                    write_json(tmp / FULL_META, meta)
                    (tmp / layout.REC_LINE_FILE).write_text(_rec_line(scan_path, params, cor, geometry) + "\n")
                _remove(final)
                tmp.rename(final)
                if as_h5:
                    write_json(final.with_name(final.stem + "_" + FULL_META), meta)
            except BaseException:
                writer.close()
                _remove(tmp)
                raise
        check_full_outputs(final, nslices)
        return FullOutput(final, nslices, float(cor), time.perf_counter() - t0)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _rec_line(scan_path: Path, params: ReconParams, cor: float, geometry: str = geo.HALF) -> str:
    """The equivalent tomocupy command, so the volume can be remade at the beamline."""
    from tomocorioc.worker.recon.tomocupy_backend import full_command  # local: avoid an import cycle
    try:
        return " ".join(full_command(scan_path, params, cor, geometry=geometry))
    except ReconError as exc:  # e.g. a rotation with lprec: tomocupy has no such combination
        return f"# no tomocupy equivalent: {exc}"


class _TiffWriter:
    """One float32 TIFF per slice, named like tomocupy's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)

    def write(self, first: int, vol: np.ndarray) -> None:
        for i, img in enumerate(vol):
            tifffile.imwrite(self.folder / layout.full_slice_name(first + i), img.astype(np.float32, copy=False))

    def close(self) -> None:
        """Nothing buffered."""


class _H5Writer:
    """The volume as ``/exchange/data`` (nslices, n, n) float32, one chunk per slice."""

    def __init__(self, path: Path, nslices: int, n: int) -> None:
        import h5py  # local: only HDF5 output needs it
        self._h5 = h5py.File(path, "w")
        self._ds = self._h5.create_dataset("/exchange/data", (nslices, n, n), dtype="float32", chunks=(1, n, n))

    def write(self, first: int, vol: np.ndarray) -> None:
        self._ds[first:first + vol.shape[0]] = vol.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()
