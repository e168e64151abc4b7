"""Run the worker's start-up checks in a separate process (this process stays free of torch)."""
from __future__ import annotations

import subprocess
import sys
from typing import Optional

PREFLIGHT_TIMEOUT = 300.0   # s: loading a large checkpoint from a network file system can be slow


def preflight(backend: str = "torch", tomocupy: Optional[str] = None, model: Optional[str] = None) -> Optional[str]:
    """None when workers could start with these options, else the one-line reason."""
    if backend in ("auto", "torch") and not model:
        return None   # nothing a worker would refuse before its first job
    cmd = [sys.executable, "-m", "tomocorioc.worker.preflight", "--backend", backend]
    if tomocupy:
        cmd += ["--tomocupy", tomocupy]
    if model:
        cmd += ["--model", str(model)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PREFLIGHT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"worker check failed: {exc}"
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines[-1:] == ["ok"]:
        return None
    if out.returncode == 1 and lines:
        return lines[-1]
    err = out.stderr.strip().splitlines()
    return f"worker check failed (exit {out.returncode}): {err[-1] if err else 'no output'}"


__all__ = ["preflight"]
