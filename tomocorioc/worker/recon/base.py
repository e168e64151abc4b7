"""What a reconstruction backend returns, and how outputs are judged.

Both backends (torch here, tomocupy at the beamline) write tomocupy's
layout.  Success is decided by looking at the outputs, never by an exit code
(tomocupy exits 0 when its input file is missing).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Sequence

from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.data.errors import ReconError

Progress = Optional[Callable[[int, int], None]]

TRY_META = "tomocorioc_try.json"
FULL_META = "tomocorioc_full.json"


@dataclass
class TryOutput:
    """The try stack a backend produced for one file."""

    folder: Path
    row: int
    centers: List[float]
    rotation_axis: float
    seconds: float = 0.0
    command: Optional[List[str]] = None


@dataclass
class FullOutput:
    """The full reconstruction of one file."""

    path: Path            # folder of TIFFs, or the .h5 file
    nslices: int
    cor: float
    seconds: float = 0.0
    command: Optional[List[str]] = None
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    """What the pipeline needs from a reconstruction backend (torch or tomocupy)."""

    name: str

    def run_try(self, scan_path: Path, params: ReconParams, rotation_axis: float,
                progress: Progress = None) -> TryOutput:
        """The try stack of one file around ``rotation_axis``."""

    def run_full(self, scan_path: Path, params: ReconParams, cor: float, progress: Progress = None) -> FullOutput:
        """The full reconstruction of one file at ``cor``."""


def check_try_outputs(folder: Path, centers: Sequence[float], row: Optional[int] = None) -> List[layout.TrySlice]:
    """Verify every expected try slice exists and is non-empty; returns them sorted."""
    if not folder.is_dir():
        raise ReconError(f"try produced no folder {folder}")
    found = layout.list_try_slices(folder)
    if row is not None:
        found = [s for s in found if s.row == row]
    have = {round(s.center, 2) for s in found if s.path.stat().st_size > 0}
    missing = [c for c in centers if round(float(c), 2) not in have]
    if missing:
        raise ReconError(f"try wrote {len(have)}/{len(centers)} slices in {folder}; "
                         f"missing e.g. centre {missing[0]:.2f}")
    return found


def check_full_outputs(path: Path, expected: int) -> int:
    """Verify a full reconstruction (TIFF folder or HDF5) holds ``expected`` slices."""
    if path.suffix == ".h5":
        if not path.is_file():
            raise ReconError(f"full reconstruction produced no file {path}")
        import h5py  # local: only this branch needs it
        with h5py.File(path, "r") as h5:
            n = int(h5["/exchange/data"].shape[0])
    else:
        if not path.is_dir():
            raise ReconError(f"full reconstruction produced no folder {path}")
        n = sum(1 for p in path.glob("recon_*.tiff") if p.stat().st_size > 0)
    if n < expected:
        raise ReconError(f"full reconstruction wrote {n}/{expected} slices in {path}")
    return n


def write_json(path: Path, data: dict) -> None:
    """Atomically write a small JSON file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``tmp`` folder (readers never see a half stack)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
