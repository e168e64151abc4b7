"""Write or check generated files (the record database, the screens) against their committed copies."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List

log = logging.getLogger(__name__)


def write_files(out_dir: Path, files: Dict[str, str]) -> List[Path]:
    """Write ``{name: text}`` into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        log.info("wrote %s", path)
        paths.append(path)
    return paths


def stale_files(out_dir: Path, files: Dict[str, str]) -> List[str]:
    """Names in ``files`` whose copy in ``out_dir`` is missing or differs."""
    return [name for name, text in files.items()
            if not (out_dir / name).is_file() or (out_dir / name).read_text(encoding="utf-8") != text]


__all__ = ["write_files", "stale_files"]
