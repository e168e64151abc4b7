"""``tomocorioc camrot FILE...``: camera tilt (the angle for tomocupy's ``--rotate-proj-angle``).

The measurement reconstructs, so it runs in a worker process
(``python -m tomocorioc.worker.camrot``, JSON lines on stdout); this command
checks the options, starts it and prints its lines as JSON or as text.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Any, Dict, List

from tomocorioc.core.params import ReconParams
from tomocorioc.core.spec import spec_of
from tomocorioc.core.tilt import parse_fractions

log = logging.getLogger("tomocorioc")


def add_camrot_arguments(p: argparse.ArgumentParser) -> None:
    """The ``camrot`` options."""
    p.add_argument("files", nargs="+", metavar="FILE", help="DXfile HDF5 scans (180°)")
    p.add_argument("--rows", default="0.1,0.5,0.9",
                   help="three or more row positions, 0 top .. 1 bottom (default 0.1,0.5,0.9)")
    p.add_argument("--search-width", type=float, default=spec_of(ReconParams, "search_width").default,
                   help="try grid half width in px at each row (default as run)")
    p.add_argument("--device", default=None, help="torch device (default cuda when visible, else cpu)")
    p.add_argument("--json", action="store_true", help="one JSON line per file")


def worker_command(files: List[str], rows: str, search_width: float, device: str | None) -> List[str]:
    """The worker process that measures (also what the IOC's CamRot runs)."""
    cmd = [sys.executable, "-m", "tomocorioc.worker.camrot", "--rows", rows, "--search-width", f"{search_width:g}"]
    if device:
        cmd += ["--device", device]
    return cmd + ["--"] + [os.fspath(f) for f in files]


def run_camrot(args: argparse.Namespace) -> int:
    """0 when every file gave a tilt, 1 when one failed, 2 on bad options."""
    try:
        parse_fractions(args.rows)
        ReconParams(search_width=args.search_width)
    except ValueError as exc:
        print(json.dumps({"status": "error", "error": str(exc)}) if args.json else f"tomocorioc camrot: error: {exc}")
        return 2
    cmd = worker_command(list(args.files), args.rows, args.search_width, args.device)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("camrot worker: %s", line.rstrip())
                continue
            _emit(rec, args.json)
    if proc.returncode not in (0, 1):
        print(f"tomocorioc camrot: the worker process failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    return proc.returncode


def _emit(rec: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rec), flush=True)
        return
    if rec.get("status") != "ok":
        print(f"{rec.get('file', 'camrot')}: error: {rec.get('error')}", flush=True)
        return
    pairs = [f"{r}:{c:.2f}" for r, c in zip(rec["rows"], rec["cors"])]
    r2 = "n/a" if rec["r2"] is None else f"{rec['r2']:.4f}"
    print(f"{rec['file']}: tilt {rec['tilt_deg']:+.3f}° (--rotate-proj-angle {rec['tilt_deg']:g}), "
          f"COR {rec['cor']:.2f} at row {rec['row']}, slope {rec['slope_px_per_row']:+.5f} px/row, r2 {r2}, "
          f"row:COR {' '.join(pairs)}", flush=True)
