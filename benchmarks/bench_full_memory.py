#!/usr/bin/env python3
"""Peak memory of the full reconstruction: few rows vs many rows of the same scan must be flat.

One simulated scan (default 256 wide, 360 projections, 512 rows) is
reconstructed with ``TorchBackend().run_full(path, ReconParams(), cor,
rows=(0, R))`` for R = 64 and R = 512, each in a fresh Python subprocess.  The
peak resident set size of each child comes from ``os.wait4`` (the child's own
``ru_maxrss``), cross-checked by the child's ``VmHWM`` from
``/proc/self/status``.  (A child's ``ru_maxrss`` also counts the RSS its
parent had when it forked, so the scan is simulated in a child too and this
process stays small; its RSS is printed.)  A baseline child that imports the same modules and
opens the scan but reconstructs nothing shows the fixed cost (Python, torch,
MKL); the interesting number is the peak *above* that baseline.  The backend
streams ``nsino_per_chunk`` (8) rows at a time, so 512 rows should need no
more memory than 64: the table reports the ratio 512/64.

Usage: ``python benchmarks/bench_full_memory.py [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from _common import machine_description  # this folder is on sys.path (run as a script)

from tomocorioc.core import layout
from tomocorioc.sim import SimConfig

# Runs in the child: reconstruct rows [0, R) (R = 0: baseline, nothing reconstructed).
CHILD = r"""
import json, sys, time
from pathlib import Path
from tomocorioc.core.params import ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.recon.torch_backend import TorchBackend
path, rows, cor, fmt, out = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
backend = TorchBackend(device="cpu")
t0 = time.perf_counter()
with DXFile(path) as scan:
    shape = scan.shape
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0
samples, last = [], [0]
def progress(done, total):
    # VmRSS after the chunks that pass 1/4, 1/2, 3/4 and all of the rows: a leak would show as a trend.
    if any(last[0] < max(1, total * q // 4) <= done for q in (1, 2, 3, 4)):
        samples.append(status("VmRSS"))
    last[0] = done
nslices = 0
if rows > 0:
    res = backend.run_full(path, ReconParams(full_format=fmt), cor, rows=(0, rows), progress=progress)
    nslices = res.nslices
with open(out, "w") as fh:
    json.dump({"seconds": time.perf_counter() - t0, "nslices": nslices, "vmhwm_kib": status("VmHWM"),
               "rss_samples_kib": samples, "shape": shape}, fh)
"""


@dataclass
class Run:
    """One child process."""

    rows: int
    fmt: str
    maxrss_mib: float
    vmhwm_mib: float
    seconds: float
    nslices: int
    rss_samples_mib: List[float]


def run_child(path: Path, rows: int, cor: float, fmt: str, scratch: Path) -> Run:
    """Reconstruct ``rows`` rows in a fresh interpreter; return its peak RSS (from wait4) and timings."""
    out = scratch / f"child_{rows}_{fmt}.json"
    err = scratch / f"child_{rows}_{fmt}.err"
    with open(err, "w") as fh_err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(rows), str(cor), fmt, str(out)],
                                stdout=subprocess.DEVNULL, stderr=fh_err)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.exists():
        tail = err.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"child for {rows} rows ({fmt}) failed with {proc.returncode}: " + " / ".join(tail))
    info = json.loads(out.read_text())
    # Linux reports ru_maxrss in KiB.
    return Run(rows, fmt, usage.ru_maxrss / 1024.0, info["vmhwm_kib"] / 1024.0, float(info["seconds"]),
               int(info["nslices"]), [v / 1024.0 for v in info.get("rss_samples_kib", [])])


def own_rss_mib() -> float:
    """This process's current resident set size (a forked child's ru_maxrss starts from it)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def simulate_in_child(path: Path, cfg: SimConfig) -> None:
    """Write the scan from a child process, so this (parent) process stays small."""
    code = ("import sys; from tomocorioc.sim import SimConfig, simulate_scan; "
            f"simulate_scan(sys.argv[1], SimConfig(ncols={cfg.ncols}, nrows={cfg.nrows}, nproj={cfg.nproj}, "
            f"offset={cfg.offset!r}, phantom={cfg.phantom!r}, seed={cfg.seed}))")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def clean_outputs(path: Path) -> None:
    """Remove a previous full reconstruction of ``path`` (TIFF folder or .h5)."""
    full = layout.full_dir(path)
    shutil.rmtree(full, ignore_errors=True)
    for extra in (full.with_suffix(".h5"), full.with_name(full.stem + "_tomocorioc_full.json")):
        if extra.exists():
            extra.unlink()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Simulate the scan, run the children, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="192 wide, 180 projections, TIFF only (< 2 min)")
    ap.add_argument("--width", type=int, help="detector width (default 256; --quick 192)")
    ap.add_argument("--nproj", type=int, help="projections (default 360; --quick 180)")
    ap.add_argument("--rows", default="64,512", help="row counts to compare, comma list (default 64,512)")
    ap.add_argument("--formats", help="full-format list: tiff,h5 (default tiff,h5; --quick tiff)")
    args = ap.parse_args(argv)
    width = args.width or (192 if args.quick else 256)
    nproj = args.nproj or (180 if args.quick else 360)
    row_counts = [int(r) for r in args.rows.split(",") if r.strip()]
    formats = [f.strip() for f in (args.formats or ("tiff" if args.quick else "tiff,h5")).split(",") if f.strip()]
    nrows = max(row_counts)
    print(f"bench_full_memory: python {' '.join(sys.argv)}")
    print(machine_description(("torch", "numpy", "h5py", "tifffile")))
    t_all = time.perf_counter()
    runs: List[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        folder = Path(tmp) / "scans"
        folder.mkdir()
        path = folder / "memscan.h5"
        cfg = SimConfig(ncols=width, nrows=nrows, nproj=nproj, offset=2.5, phantom="shepp3d", seed=0)
        t0 = time.perf_counter()
        simulate_in_child(path, cfg)
        raw_mib = path.stat().st_size / 2**20
        print(f"scan {width} wide x {nrows} rows x {nproj} projections ({raw_mib:.0f} MiB on disk), "
              f"simulated in {time.perf_counter() - t0:.0f} s; COR {cfg.cor}", flush=True)
        parent_rss = own_rss_mib()
        print(f"this (parent) process: {parent_rss:.0f} MiB resident when spawning the children", flush=True)
        base = run_child(path, 0, cfg.cor, "tiff", Path(tmp))
        print(f"  baseline (imports + open, no reconstruction): {base.maxrss_mib:.0f} MiB", flush=True)
        for fmt in formats:
            for rows in row_counts:
                clean_outputs(path)
                r = run_child(path, rows, cfg.cor, fmt, Path(tmp))
                runs.append(r)
                print(f"  {rows} rows ({fmt}): peak RSS {r.maxrss_mib:.0f} MiB, {r.seconds:.0f} s", flush=True)
        clean_outputs(path)
    vol_mib = lambda rows: rows * width * width * 4 / 2**20  # noqa: E731  float32 volume size
    print(f"\nPeak RSS of a full reconstruction (fresh process each; baseline = same imports, no reconstruction: "
          f"{base.maxrss_mib:.0f} MiB)\n")
    cols = ("rows", "format", "volume written MiB", "peak RSS MiB (wait4)", "VmHWM MiB", "above baseline MiB",
            "VmRSS after 1/4, 1/2, 3/4, all rows MiB", "seconds")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] * len(cols)) + "|")
    for r in runs:
        print(f"| {r.rows} | {r.fmt} | {vol_mib(r.rows):.0f} | {r.maxrss_mib:.0f} | {r.vmhwm_mib:.0f} "
              f"| {r.maxrss_mib - base.maxrss_mib:.0f} | {', '.join(f'{v:.0f}' for v in r.rss_samples_mib)} "
              f"| {r.seconds:.1f} |")
    lo, hi = min(row_counts), max(row_counts)
    print()
    for fmt in formats:
        a = next(r for r in runs if r.fmt == fmt and r.rows == lo)
        b = next(r for r in runs if r.fmt == fmt and r.rows == hi)
        above_a, above_b = a.maxrss_mib - base.maxrss_mib, b.maxrss_mib - base.maxrss_mib
        ratio_above = above_b / above_a if above_a > 0 else float("nan")
        print(f"{fmt}: peak RSS ratio {hi}/{lo} rows = {b.maxrss_mib / a.maxrss_mib:.3f} "
              f"(above baseline: {above_b:.0f} / {above_a:.0f} MiB = {ratio_above:.2f}); "
              f"the {hi}-row volume is {vol_mib(hi):.0f} MiB; time ratio {b.seconds / a.seconds:.1f}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
