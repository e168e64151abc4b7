"""CamRot for the IOC: measure one file's camera tilt in a worker process, never in the IOC's.

The measurement reconstructs (torch), so it runs as ``python -m
tomocorioc.worker.camrot`` and its one JSON line is read back by a waiting
thread; a put only starts it.  Results are kept per file for the
``Selected:Tilt`` PVs and for ``ApplyTilt``.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

log = logging.getLogger(__name__)

WORKER_MODULE = "tomocorioc.worker.camrot"


@dataclass(frozen=True)
class TiltResult:
    """The state of one file's CamRot: measuring, ok or error."""

    path: str
    state: str                      # "measuring", "ok", "error"
    tilt_deg: float = math.nan
    r2: float = math.nan
    cor: float = math.nan
    error: str = ""


class CamRotRunner:
    """Starts CamRot worker processes and remembers what they found (thread-safe)."""

    def __init__(self, timeout: float = 1800.0, python: str = sys.executable,
                 on_done: Optional[Callable[[TiltResult], None]] = None) -> None:
        self.timeout = float(timeout)
        self.python = python
        self.on_done = on_done
        self._lock = threading.Lock()
        self._results: Dict[str, TiltResult] = {}
        self._procs: List[subprocess.Popen] = []

    def command(self, path: str, search_width: float) -> List[str]:
        """The worker command line for one file."""
        return [self.python, "-m", WORKER_MODULE, "--search-width", f"{search_width:g}", "--", str(path)]

    def start(self, path: str, search_width: float) -> None:
        """Measure ``path`` in the background (ValueError while it is already being measured)."""
        with self._lock:
            cur = self._results.get(path)
            if cur is not None and cur.state == "measuring":
                raise ValueError(f"already measuring {Path(path).name}")
            proc = subprocess.Popen(self.command(path, search_width), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            self._procs.append(proc)
            self._results[path] = TiltResult(path, "measuring")
        threading.Thread(target=self._wait, args=(path, proc), name="camrot", daemon=True).start()

    def _wait(self, path: str, proc: subprocess.Popen) -> None:
        try:
            out, err = proc.communicate(timeout=self.timeout)
            res = _parse(path, out, err, proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            res = TiltResult(path, "error", error=f"CamRot took longer than {self.timeout:g} s")
        with self._lock:
            self._results[path] = res
            self._procs = [p for p in self._procs if p is not proc]
        log.info("CamRot %s: %s", path, res)
        if self.on_done is not None:
            self.on_done(res)

    def result(self, path: Optional[str]) -> Optional[TiltResult]:
        """The latest result for ``path`` (None when never measured)."""
        with self._lock:
            return self._results.get(path) if path else None

    def close(self) -> None:
        """Stop measurements still running (IOC shutdown)."""
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.kill()


def _parse(path: str, out: str, err: str, code: Optional[int]) -> TiltResult:
    for line in reversed((out or "").splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("status") == "ok":
            return TiltResult(path, "ok", float(rec["tilt_deg"]), float(rec["r2"]) if rec.get("r2") is not None
                              else math.nan, float(rec["cor"]))
        return TiltResult(path, "error", error=str(rec.get("error") or "CamRot failed"))
    last = (err or "").strip().splitlines()
    return TiltResult(path, "error", error=f"CamRot worker exited {code}: {last[-1] if last else 'no output'}")
