"""Per-dataset reconstruction parameters in a JSON sidecar (pure).

``<dir>/<name>.tomocor.json`` next to ``<dir>/<name>.h5`` holds overrides of
the global defaults (only the keys that differ).  A sidecar that fails to
parse is reported and ignored, and is never overwritten without ``force``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from tomocorioc.core.params import RETIRED_FILTERS, ParamError, ReconParams

log = logging.getLogger(__name__)

SUFFIX = ".tomocor.json"
# A sidecar that cannot be used is set aside as a whole (one bad key would make the rest a guess).
IGNORED = "the whole sidecar is ignored (global parameters used)"


class SidecarError(ValueError):
    """A sidecar exists but cannot be used (or must not be overwritten)."""


def sidecar_path(projection_file: str | Path) -> Path:
    """The sidecar of a projection file."""
    p = Path(projection_file)
    return p.with_name(p.stem + SUFFIX)


def read_overrides(projection_file: str | Path) -> Dict[str, Any]:
    """The sidecar's overrides ({} when there is none); SidecarError when it is unusable."""
    path = sidecar_path(projection_file)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SidecarError(f"{path}: unreadable sidecar ({str(exc).splitlines()[0]}); {IGNORED}") from None
    if not isinstance(data, dict):
        raise SidecarError(f"{path}: sidecar must hold a JSON object; {IGNORED}")
    data = data.get("params", data)
    old = data.get("fbp_filter") if isinstance(data, dict) else None
    if isinstance(old, str) and old in RETIRED_FILTERS:
        # Written before the filters became tomocupy's own: migrate to the nearest one, loudly.
        log.warning("%s: fbp_filter %r is no longer offered (tomocupy has no such filter); using %r",
                    path, old, RETIRED_FILTERS[old])
        data = {**data, "fbp_filter": RETIRED_FILTERS[old]}
    try:
        ReconParams.from_dict({**ReconParams().to_dict(), **data})
    except (ParamError, TypeError) as exc:
        raise SidecarError(f"{path}: {exc}; {IGNORED}") from None
    return data


def resolve(projection_file: str | Path, defaults: ReconParams) -> Tuple[ReconParams, Optional[str]]:
    """Global defaults overlaid with the sidecar; (params, warning or None: the caller reports it)."""
    try:
        over = read_overrides(projection_file)
    except SidecarError as exc:
        return defaults, str(exc)
    return ReconParams.from_dict({**defaults.to_dict(), **over}), None


def write(projection_file: str | Path, params: ReconParams, defaults: ReconParams, force: bool = False) -> Path:
    """Store the keys of ``params`` that differ from ``defaults``; refuse to clobber a bad sidecar."""
    path = sidecar_path(projection_file)
    if path.exists() and not force:
        try:
            read_overrides(projection_file)
        except SidecarError:
            raise SidecarError(f"{path}: existing sidecar is unreadable; not overwritten (fix or remove it)") from None
    base, mine = defaults.to_dict(), params.to_dict()
    diff = {k: v for k, v in mine.items() if base.get(k) != v}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"params": diff}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def copy_to(source_file: str | Path, target_file: str | Path, force: bool = False) -> Path:
    """'Apply to selected': copy one dataset's sidecar to another dataset."""
    over = read_overrides(source_file)
    dst = sidecar_path(target_file)
    if dst.exists() and not force:
        try:
            read_overrides(target_file)
        except SidecarError:
            raise SidecarError(f"{dst}: existing sidecar is unreadable; not overwritten (fix or remove it)") from None
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps({"params": over}, indent=1, sort_keys=True))
    os.replace(tmp, dst)
    return dst
