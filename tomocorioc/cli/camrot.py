"""``tomocorioc camrot FILE...``: camera tilt (the angle for tomocupy's ``--rotate-proj-angle``)."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict, List

from tomocorioc.core import sidecar
from tomocorioc.core.params import ParamError, ReconParams
from tomocorioc.core.spec import spec_of

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


def run_camrot(args: argparse.Namespace) -> int:
    """0 when every file gave a tilt, 1 when one failed, 2 on bad options."""
    from tomocorioc.worker.camrot import measure_tilt, parse_fractions   # torch: only when measuring
    from tomocorioc.worker.recon.torch_backend import default_device
    try:
        fractions = parse_fractions(args.rows)
        base = ReconParams(search_width=args.search_width)
    except (ValueError, ParamError) as exc:
        print(json.dumps({"status": "error", "error": str(exc)}) if args.json else f"tomocorioc camrot: error: {exc}")
        return 2
    device = args.device or default_device()
    failed = 0
    for name in args.files:
        rec: Dict[str, Any]
        try:
            params, warning = sidecar.resolve(name, base)
            if warning:
                log.warning("%s", warning)
            rec = measure_tilt(name, params.replace(rotation_axis=None), fractions, device=device)
        except (ValueError, OSError, RuntimeError) as exc:
            failed += 1
            rec = {"file": name, "status": "error", "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
        _emit(rec, args.json)
    return 1 if failed else 0


def _emit(rec: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rec), flush=True)
        return
    if rec["status"] != "ok":
        print(f"{rec['file']}: error: {rec['error']}", flush=True)
        return
    pairs: List[str] = [f"{r}:{c:.2f}" for r, c in zip(rec["rows"], rec["cors"])]
    r2 = "n/a" if rec["r2"] is None else f"{rec['r2']:.4f}"
    print(f"{rec['file']}: tilt {rec['tilt_deg']:+.3f}° (--rotate-proj-angle {rec['tilt_deg']:g}), "
          f"COR {rec['cor']:.2f} at row {rec['row']}, slope {rec['slope_px_per_row']:+.5f} px/row, r2 {r2}, "
          f"row:COR {' '.join(pairs)}", flush=True)
