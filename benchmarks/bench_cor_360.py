#!/usr/bin/env python3
"""COR of 360° scans with the axis near a detector edge: tomocorioc vs algotom's ``find_center_360``.

Every scan is written by the simulator with half acquisition
(``SimConfig(theta_range=360, half_acquisition=True)``, the sample wider than
the detector; the true COR in the original detector's columns is read back
from ``truth.json``).  Then, side by side on the same scan:

* ``tomocorioc run SCAN --phases try,infer --json`` (torch backend, the
  defaults a user gets): geometry detection, the overlap estimate, the
  stitched (double field of view) try grid around it and the classical score;
  the JSON line's ``estimate`` is the overlap estimate alone, reported as a
  method of its own;
* algotom's ``find_center_360(sino_360, win_width=WIN)`` on the very row the
  try used (dark/flat-normalised, ``-log``, by tomocorioc's preprocess).
  algotom splits the sinogram into two halves by row count, so the scans have
  an even number of angles over [0, 360) (no end point) and its halves pair
  exactly; its pixel ``j`` centre is coordinate ``j``, tomocorioc's pixel
  ``j`` covers ``[j, j + 1)``, so ``cor_tomocorioc = cor_algotom + 0.5``.
  ``WIN`` is one fixed window for the suite, smaller than every overlap.

A failure is an error or |error| > 2 px.  Goal (issue 15): within 0.5 px.

Usage: ``python benchmarks/bench_cor_360.py [--quick] [--workdir DIR] [--only NAMES]``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from _common import load_average, machine_description, try_row_sinogram  # this folder is on sys.path (run as a script)

from tomocorioc.sim import SimConfig, read_truth, simulate_scan

WIN = 40          # algotom's window (px): below the smallest overlap (2 x the axis' distance to its edge)
FAIL_PX = 2.0


@dataclass(frozen=True)
class ScanSpec:
    """One simulated half-acquisition scan."""

    name: str
    ncols: int
    nproj: int
    offset: float         # axis offset from the detector centre (negative: near the left edge)
    phantom: str
    noise: float          # flat-field photons; 0 = noiseless
    seed: int = 0
    nrows: int = 4

    def config(self) -> SimConfig:
        """The simulator configuration."""
        return SimConfig(ncols=self.ncols, nrows=self.nrows, nproj=self.nproj, offset=self.offset,
                         noise=self.noise if self.noise > 0 else None, phantom=self.phantom, seed=self.seed,
                         theta_range=360.0, half_acquisition=True, endpoint=False)


SUITE: Tuple[ScanSpec, ...] = (
    ScanSpec("h01", 256, 480, -90.25, "beads", 10000, seed=1),
    ScanSpec("h02", 256, 480, 85.6, "shepp3d", 5000, seed=2),
    ScanSpec("h03", 320, 600, -120.4, "fibers", 10000, seed=3),
    ScanSpec("h04", 384, 600, 130.75, "foam", 20000, seed=4),
    ScanSpec("h05", 384, 600, -150.1, "rock", 3000, seed=5),
    ScanSpec("h06", 448, 720, 170.3, "beads", 0, seed=6),
    ScanSpec("h07", 512, 720, -163.0, "shepp3d", 10000, seed=7),   # the case: axis at 93.0 px
    ScanSpec("h08", 512, 720, 200.45, "fibers", 5000, seed=8),
)
QUICK: Tuple[ScanSpec, ...] = SUITE[:2]


def algotom_360(sino: np.ndarray) -> float:
    """algotom's find_center_360 (fully automatic side), converted to tomocorioc's convention."""
    from algotom.prep.calculation import find_center_360
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cor = find_center_360(sino, WIN, side=None, ncore=1)[0]
    return float(cor) + 0.5


def run_cli(path: Path, timeout: float) -> Tuple[Dict, float]:
    """``tomocorioc run PATH --phases try,infer --json --backend torch``: (JSON object, wall time s)."""
    cmd = [sys.executable, "-m", "tomocorioc", "run", str(path), "--phases", "try,infer", "--json",
           "--backend", "torch"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:g} s"}, time.perf_counter() - t0
    dt = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": f"exit {p.returncode}: {tail}"}, dt
    return json.loads(lines[-1]), dt


def err(value: Optional[float], truth: float) -> Optional[float]:
    """Signed error, None when there is no value."""
    return None if value is None else float(value) - truth


def fmt(v: Optional[float]) -> str:
    """A number or a dash."""
    return "-" if v is None else f"{v:+.3f}" if abs(v) < 1000 else f"{v:.1f}"


def summary(errors: List[Optional[float]]) -> Dict[str, float]:
    """Median |error|, fractions within 0.5 / 1 px, failures (None or > FAIL_PX), worst |error|."""
    a = [abs(e) for e in errors if e is not None]
    fails = sum(1 for e in errors if e is None or abs(e) > FAIL_PX)
    n = len(errors)
    return {"n": n, "median": float(np.median(a)) if a else math.nan,
            "p05": sum(1 for e in a if e <= 0.5) / n if n else 0.0,
            "p1": sum(1 for e in a if e <= 1.0) / n if n else 0.0,
            "fail": fails, "max": max(a) if a else math.nan}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the suite and print the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 2 scans only")
    ap.add_argument("--only", help="comma list of scan names (e.g. h01,h07)")
    ap.add_argument("--workdir", type=Path, help="where to simulate (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per-scan CLI timeout, s")
    args = ap.parse_args(argv)
    suite = list(QUICK if args.quick else SUITE)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        suite = [s for s in suite if s.name in wanted]
    print(f"bench_cor_360: python {' '.join(sys.argv)}")
    print(machine_description(("torch", "numpy", "algotom")))
    print(f"{len(suite)} scans; algotom window {WIN} px; {load_average()}")
    tmp = tempfile.TemporaryDirectory(prefix="bench_360_") if args.workdir is None else None
    folder = Path(tmp.name) if tmp else args.workdir
    folder.mkdir(parents=True, exist_ok=True)
    rows: List[Dict] = []
    importlib.import_module("algotom.prep.calculation")   # loaded before any timer starts
    t_all = time.perf_counter()
    try:
        print("\n| scan | width x angles | side | phantom, noise | truth | tomocorioc (err) | overlap estimate "
              "(err) | algotom find_center_360 (err) | geometry | cli s | algotom s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for spec in suite:
            path = folder / f"{spec.name}.h5"
            simulate_scan(path, spec.config())
            truth = float(read_truth(folder)[path.name]["cor"])
            rec, cli_s = run_cli(path, args.timeout)
            sino = try_row_sinogram(path)
            t0 = time.perf_counter()
            try:
                alg: Optional[float] = algotom_360(sino)
            except (ValueError, RuntimeError, IndexError) as exc:
                print(f"  {spec.name}: algotom failed: {type(exc).__name__}: {exc}")
                alg = None
            alg_s = time.perf_counter() - t0
            cor = rec.get("cor") if rec.get("status") == "ok" else None
            est = rec.get("estimate")
            row = {"spec": spec, "truth": truth, "cli": cor, "estimate": est, "algotom": alg,
                   "geometry": rec.get("geometry"), "error": rec.get("error")}
            rows.append(row)
            side = "left" if spec.offset < 0 else "right"
            noise = f"noise {spec.noise:g}" if spec.noise else "noiseless"
            print(f"| {spec.name} | {spec.ncols} x {spec.nproj} | {side} | {spec.phantom}, {noise} | {truth:.2f} "
                  f"| {fmt(cor) if cor is None else f'{cor:.3f}'} ({fmt(err(cor, truth))}) "
                  f"| {'-' if est is None else f'{est:.3f}'} ({fmt(err(est, truth))}) "
                  f"| {'-' if alg is None else f'{alg:.3f}'} ({fmt(err(alg, truth))}) "
                  f"| {rec.get('geometry') or rec.get('error')} | {cli_s:.0f} | {alg_s:.2f} |", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print("\n| method | scans | median err px | within 0.5 px | within 1 px | failures | worst err px |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("tomocorioc run (try grid + score)", "cli"), ("tomocorioc overlap estimate", "estimate"),
                      ("algotom find_center_360", "algotom")):
        s = summary([err(r[key], r["truth"]) for r in rows])
        print(f"| {name} | {s['n']} | {s['median']:.3f} | {s['p05']:.0%} | {s['p1']:.0%} | {s['fail']} "
              f"| {s['max']:.3f} |")
    geoms = sum(1 for r in rows if r["geometry"] == "360-offset")
    print(f"\ngeometry detected as 360-offset: {geoms}/{len(rows)}")
    print(f"total {time.perf_counter() - t_all:.0f} s; {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
