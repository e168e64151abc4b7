"""TomoGUI's ``rot_cen.json``: import and export of per-file CORs (pure; no numerics).

TomoGUI keeps the chosen COR of every projection file of a data folder in
``<data_folder>/rot_cen.json``, a JSON object ``{full_path: "cor"}`` whose
values are strings because TomoGUI puts them straight into its table's
text fields.  An empty string means "no COR yet".

Reading is lenient, because the file is edited by hand and by several
TomoGUI versions: a value may be a string, a JSON number (older TomoGUI
wrote floats) or a list (TomoGUI's own reader takes the first element);
anything that does not give a finite number becomes ``None`` with a warning.
A file that is not a JSON object is an error: guessing would lose CORs.

Writing formats each COR as a plain decimal string rounded to 2 decimals
with trailing zeros trimmed (``1024.5``, ``1024.0``, ``1024.25``): 2 decimals
is the precision tomocupy's try-slice names and TomoGUI's ``cor set`` carry
(TomoGUI writes ``"1024.50"`` there, and both forms parse with ``float()``),
and a plain decimal (never an exponent) reads well in TomoGUI's COR column.
``None`` and non-finite CORs are written as ``""``, TomoGUI's "no COR".
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

log = logging.getLogger(__name__)

ROT_CEN_FILE = "rot_cen.json"
COR_DECIMALS = 2

PathLike = Union[str, "os.PathLike[str]"]


def format_cor(cor: Optional[float]) -> str:
    """A COR as TomoGUI's text: plain decimal, 2 decimals at most, ``""`` for none."""
    if cor is None:
        return ""
    if isinstance(cor, bool) or not isinstance(cor, numbers.Real):
        raise ValueError(f"COR must be a number or None, got {cor!r}")
    value = float(cor)
    if not math.isfinite(value):
        log.warning("non-finite COR %r written as empty", cor)
        return ""
    text = f"{round(value, COR_DECIMALS):.{COR_DECIMALS}f}".rstrip("0")
    if text.endswith("."):
        text += "0"  # keep one decimal so the value still reads as a COR, not an index
    if text == "-0.0":
        text = "0.0"  # a rounded tiny negative is still zero
    return text


def parse_cor(value: Any, key: str = "") -> Optional[float]:
    """One ``rot_cen.json`` value as a finite float, or None (warning logged) when it is not one."""
    raw = value
    if isinstance(value, list):
        # TomoGUI's own reader accepts a list and takes its first element.
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            log.warning("%s: empty COR in %s", key or "?", ROT_CEN_FILE)
            return None
        try:
            cor = float(value.strip())
        except ValueError:
            log.warning("%s: COR %r in %s is not a number; ignored", key or "?", raw, ROT_CEN_FILE)
            return None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        cor = float(value)
    else:
        log.warning("%s: COR %r in %s is not a number; ignored", key or "?", raw, ROT_CEN_FILE)
        return None
    if not math.isfinite(cor):
        log.warning("%s: COR %r in %s is not finite; ignored", key or "?", raw, ROT_CEN_FILE)
        return None
    return cor


def read_rot_cen(path: PathLike) -> Dict[str, Optional[float]]:
    """``{full_path: cor}`` from a ``rot_cen.json``; ValueError when it is not a JSON object."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{file: \"cor\"}}, got a JSON {type(data).__name__}")
    return {str(key): parse_cor(value, str(key)) for key, value in data.items()}


def write_rot_cen(path: PathLike, mapping: Mapping[str, Optional[float]]) -> Path:
    """Write ``{full_path: "cor"}`` atomically (temp file + ``os.replace``); returns the path."""
    path = Path(path)
    payload: Dict[str, str] = {}
    for key, cor in mapping.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"file names must be non-empty strings, got {key!r}")
        payload[key] = format_cor(cor)
    text = json.dumps(payload, indent=2) + "\n"  # indent=2 as TomoGUI writes it
    # The temp file lives beside the target so os.replace stays a same-filesystem rename;
    # os.open with 0o666 lets the umask decide the mode, as a plain open() would (TomoGUI
    # runs as other users on the same folder, so a private 0600 file would lock them out).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)  # keep the permissions already granted
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %d COR(s) to %s", len(payload), path)
    return path


def update_rot_cen(path: PathLike, updates: Mapping[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """Merge CORs into a ``rot_cen.json`` (created when missing), keeping other files' entries."""
    path = Path(path)
    merged: Dict[str, Optional[float]] = read_rot_cen(path) if path.exists() else {}
    merged.update(updates)
    write_rot_cen(path, merged)
    return merged


__all__ = ["ROT_CEN_FILE", "format_cor", "parse_cor", "read_rot_cen", "write_rot_cen", "update_rot_cen"]
