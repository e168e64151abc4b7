"""Output layout shared with tomocupy and TomoGUI (pure; no numerics).

tomocupy writes, for a projection file ``<dir>/<name>.h5``:

* try:  ``<dir>_rec/try_center/<name>/recon_slice{row:04d}_center{c:05.2f}.tiff``
* full: ``<dir>_rec/<name>_rec/recon_{i:05d}.tiff``

TomoGUI and the tomocor inference read ``center_of_rotation.txt`` from the try
folder (last line = chosen COR).  Everything here only computes paths and
parses names, so every layer (workers, IOC, tests) agrees on them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

COR_FILE = "center_of_rotation.txt"
SCORES_FILE = "cor_scores.json"
REC_LINE_FILE = "rec_line.txt"

_TRY_NAME = re.compile(r"^recon_slice(\d+)_center(-?\d+(?:\.\d+)?)\.tiff?$")


def rec_root(projection_file: Path) -> Path:
    """``<dir>_rec`` for a projection file ``<dir>/<name>.h5``."""
    p = Path(projection_file)
    return p.parent.with_name(p.parent.name + "_rec")


def try_dir(projection_file: Path) -> Path:
    """Folder holding the try slices of one projection file."""
    p = Path(projection_file)
    return rec_root(p) / "try_center" / p.stem


def full_dir(projection_file: Path) -> Path:
    """Folder holding the full reconstruction of one projection file."""
    p = Path(projection_file)
    return rec_root(p) / f"{p.stem}_rec"


def try_slice_name(row: int, center: float) -> str:
    """File name of one try slice, exactly as tomocupy formats it."""
    return f"recon_slice{row:04d}_center{center:05.2f}.tiff"


def full_slice_name(index: int) -> str:
    """File name of one full-reconstruction slice, as tomocupy formats it."""
    return f"recon_{index:05d}.tiff"


def candidate_centers(rotation_axis: float, search_width: float, step: float) -> np.ndarray:
    """tomocupy's try grid: ``rotation_axis - shift`` for shift in ``arange(-W, W, step)``.

    The values are rounded to 2 decimals because that is the precision the
    file names carry; a COR read back from a name must equal the one used.
    """
    if not (step > 0):
        raise ValueError(f"search step must be > 0, got {step}")
    if not (search_width > 0):
        raise ValueError(f"search width must be > 0, got {search_width}")
    shifts = np.arange(-search_width, search_width, step, dtype=np.float64)
    return np.round(rotation_axis - shifts, 2)


@dataclass(frozen=True)
class TrySlice:
    """One try slice found on disk."""

    path: Path
    row: int
    center: float


def parse_try_name(name: str) -> Tuple[int, float]:
    """``recon_slice0520_center519.00.tiff`` -> ``(520, 519.0)``; ValueError otherwise."""
    m = _TRY_NAME.match(name)
    if not m:
        raise ValueError(f"not a try-slice name: {name!r}")
    return int(m.group(1)), float(m.group(2))


def list_try_slices(folder: Path) -> List[TrySlice]:
    """Try slices in a folder, sorted by centre; ignores unrelated files.

    When several rows are present (a folder reused with another ``--nsino``)
    the most common row is kept, so one stack is never a mix of rows.
    """
    folder = Path(folder)
    found: List[TrySlice] = []
    for entry in folder.iterdir():
        try:
            row, center = parse_try_name(entry.name)
        except ValueError:
            continue
        found.append(TrySlice(entry, row, center))
    if not found:
        return []
    rows = [s.row for s in found]
    main_row = max(set(rows), key=rows.count)
    found = [s for s in found if s.row == main_row]
    found.sort(key=lambda s: s.center)
    return found


def write_cor_file(folder: Path, cors: Sequence[float]) -> Path:
    """Write ``center_of_rotation.txt``: one COR per line, the chosen one last."""
    if not cors:
        raise ValueError("no COR to write")
    return write_cor_lines(folder, [f"{float(c):.2f}" for c in cors])


def write_cor_lines(folder: Path, lines: Sequence[str]) -> Path:
    """Write ``center_of_rotation.txt`` from its lines (``#`` comments allowed; the last line is the COR)."""
    path = Path(folder) / COR_FILE
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("".join(f"{ln}\n" for ln in lines))
    tmp.replace(path)  # atomic: readers never see a half-written file
    return path


def read_cor_file(folder: Path) -> float:
    """Last numeric line of ``center_of_rotation.txt`` (how TomoGUI reads it)."""
    path = Path(folder) / COR_FILE
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path} is empty")
    return float(lines[-1])


def split_utf8_names(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(paths whose names encode as UTF-8, the others shown with their bad bytes replaced).

    A name that is not UTF-8 (``os.fsdecode`` gives it surrogates) cannot be
    stored, shown on a PV or handed to a worker safely: callers leave it out
    and say so with the shown form.
    """
    good: List[str] = []
    bad: List[str] = []
    for p in paths:
        try:
            p.encode("utf-8")
            good.append(p)
        except UnicodeEncodeError:
            bad.append(p.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return good, bad
