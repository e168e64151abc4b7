"""Machine description shared by the engine benchmarks (try grid, COR accuracy, full-phase memory).

The scripts are run as ``python benchmarks/bench_X.py``, so this folder is on ``sys.path`` and
they import this module as ``_common``.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np


def cpu_model() -> str:
    """The CPU model name from ``lscpu`` (``platform.processor()`` when lscpu is missing or silent)."""
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def dist_version(dist: str) -> str:
    """Installed version of a distribution, or '?'."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_description(dists: Sequence[str], threads: str = "") -> str:
    """CPU model, core count, python and the versions of ``dists``.

    One line; with ``threads`` (e.g. the thread pools' sizes) that text follows the core count and the
    versions go on a second line."""
    head = f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; " + (f"{threads}\n" if threads else "")
    return head + f"python {platform.python_version()}, " + ", ".join(f"{d} {dist_version(d)}" for d in dists)


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine may be shared)."""
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unavailable"

def pct(xs: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100); nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float, b: float) -> str:
    """``a / b`` as '1.5×'; '–' when either is nan or ``b`` is not positive."""
    return "–" if (a != a or b != b or b <= 0) else f"{a / b:.1f}×"


def try_row_sinogram(path: Path) -> np.ndarray:
    """The normalised -log sinogram row the try phase reconstructs (default --nsino 0.5, no dezinger)."""
    import torch

    from tomocorioc.data.dxfile import DXFile
    from tomocorioc.worker.recon.preprocess import preprocess
    with DXFile(path) as scan:
        row = scan.row_index(0.5)
        block = scan.read_rows(row, row + 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return preprocess(t(block.proj), t(block.flat), t(block.dark))[0].numpy().astype(np.float64)
