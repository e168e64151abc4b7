"""Keep the COR files beside a scan in step with the row's COR after an operator or series change.

The infer phase writes ``center_of_rotation.txt`` in the try folder (TomoGUI
and tomocupy's users read its last line), and TomoGUI keeps the COR of every
file of a folder in ``<folder>/rot_cen.json``.  When the COR changes later
(Fix COR Outliers, a manual put, an import), both must say the new value, or a
person who opens the folder sees the old one.  Only files that exist are
rewritten: a scan whose try never ran has no COR file to correct, and a folder
without ``rot_cen.json`` is not one TomoGUI manages.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

from tomocorioc.core import layout
from tomocorioc.core.rotcen import ROT_CEN_FILE, update_rot_cen

log = logging.getLogger(__name__)


def write_cor_outputs(path: str, cor: Optional[float], source: str, reason: str = "") -> List[Path]:
    """Rewrite the scan's ``center_of_rotation.txt`` and its folder's ``rot_cen.json`` (those that exist).

    ``center_of_rotation.txt`` keeps its earlier lines (TomoGUI reads the last
    one) and gains a ``#`` comment with the source, then the new COR.  Returns
    the files written; OSError when one cannot be written.
    """
    written: List[Path] = []
    folder = layout.try_dir(Path(path))
    cor_file = folder / layout.COR_FILE
    if cor is not None and cor_file.is_file():
        lines = [ln for ln in cor_file.read_text().splitlines() if ln.strip()]
        note = f"# {source}" + (f": {reason}" if reason else "")
        layout.write_cor_lines(folder, lines + [note.replace("\n", " "), f"{float(cor):.2f}"])
        written.append(cor_file)
    rot_cen = Path(path).parent / ROT_CEN_FILE
    if rot_cen.is_file():
        update_rot_cen(rot_cen, {str(path): cor})
        written.append(rot_cen)
    for f in written:
        log.info("%s: COR %s (%s) written to %s", Path(path).name, "none" if cor is None else f"{cor:.2f}",
                 source, f)
    return written


__all__ = ["write_cor_outputs"]
