"""Data prefixes on the IOC host and where the cluster's workers mount them (pure)."""
from __future__ import annotations

import importlib.util
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

PathPairs = Union[None, str, Mapping[str, str], Iterable[Union[str, Sequence[str]]]]


class PathMap:
    """IOC-host path prefixes and the worker-host prefixes they are mounted at."""

    def __init__(self, pairs: PathPairs = None) -> None:
        self.pairs: List[Tuple[str, str]] = []
        if isinstance(pairs, str):
            pairs = [pairs]
        items = pairs.items() if isinstance(pairs, Mapping) else (pairs or [])
        for item in items:
            if isinstance(item, str):
                ioc, sep, wrk = item.partition("=")
                if not sep:
                    raise ValueError(f"path map {item!r} is not IOC_PREFIX=WORKER_PREFIX")
            else:
                ioc, wrk = item
            ioc, wrk = str(ioc).strip(), str(wrk).strip()
            if not (ioc.startswith("/") and wrk.startswith("/")):
                raise ValueError(f"path map {ioc}={wrk}: both prefixes must be absolute paths")
            self.pairs.append((ioc.rstrip("/") or "/", wrk.rstrip("/") or "/"))
        self.pairs.sort(key=lambda p: len(p[0]), reverse=True)   # the longest prefix wins

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def to_list(self) -> List[List[str]]:
        """JSON-able form (travels inside each job)."""
        return [[a, b] for a, b in self.pairs]

    def to_worker(self, path: str) -> str:
        """``path`` as the workers see it (unchanged when no prefix matches)."""
        for ioc, wrk in self.pairs:
            if path == ioc:
                return wrk
            if path.startswith(ioc if ioc.endswith("/") else ioc + "/"):
                rest = path[len(ioc):].lstrip("/")
                return wrk.rstrip("/") + "/" + rest
        return path




def check_cluster_options(cluster: Optional[str], path_map: PathPairs) -> None:
    """ValueError (one line) when ``--cluster``/``--path-map`` cannot work on this host."""
    if path_map and not cluster:
        raise ValueError("--path-map needs --cluster")
    if cluster:
        if importlib.util.find_spec("distributed") is None:
            raise ValueError("--cluster needs the cluster extra: pip install 'tomocorioc[cluster]'")
        PathMap(path_map)   # ValueError on a bad map


__all__ = ["PathMap", "PathPairs", "check_cluster_options"]
