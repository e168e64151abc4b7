"""CamRot: the camera tilt of one scan, from the COR at three or more detector rows.

TomoGUI's CamRot runs two tries (``--nsino 0.1`` and ``0.9``) and divides the
COR difference by the full detector height, although those rows are only 0.8
of it apart (so its angle is ~20 % low).  Here the COR at each row comes from
infer's finder (sub-pixel) and a straight line is fitted over the actual row
numbers; its slope gives the angle for tomocupy's ``--rotate-proj-angle``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

import numpy as np

from tomocorioc.core.params import ReconParams
from tomocorioc.core.tilt import DEFAULT_FRACTIONS, fit_tilt, parse_fractions
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.cor.rows import cors_at_rows

log = logging.getLogger(__name__)


# Each requested row is measured as a band of rows (BAND_ROWS, BAND_STEP apart) and the line is fitted
# through every measurement: one row's COR carries ~0.05-0.1 px of structure and noise error, which
# over 0.8 of a 192-row detector is ~0.04°; five rows per band bring it to ~0.02° (benchmarks/bench_tilt.py).
BAND_ROWS = 5
BAND_STEP = 3


# A band whose CORs scatter more than this around their median has no usable structure (e.g. rows that
# only cut a uniform disk centred on the axis, which looks the same from every angle).
BAND_SPREAD_PX = 0.75
# How far (share of the detector height) and how often a band without structure moves toward the middle.
BAND_SHIFT = 0.05
BAND_TRIES = 4


def band(row: int, nrows: int, size: int = BAND_ROWS, step: int = BAND_STEP) -> List[int]:
    """The rows measured for one requested row: ``size`` rows ``step`` apart around it, inside the detector."""
    half = (size - 1) // 2
    return sorted({min(nrows - 1, max(0, row + k * step)) for k in range(-half, half + 1)})


def _band_ok(cors: Sequence[float]) -> bool:
    med = float(np.median(cors))
    return len(cors) >= 2 and max(abs(c - med) for c in cors) <= BAND_SPREAD_PX


def _measure_band(scan: DXFile, fraction: float, params: ReconParams, device: str,
                  band_rows: int) -> Dict[int, float]:
    """CORs of the band at ``fraction`` (moved toward the middle while it has no usable structure)."""
    toward = 1.0 if fraction < 0.5 else -1.0 if fraction > 0.5 else 0.0
    tried: List[int] = []
    for k in range(BAND_TRIES + 1 if toward else 1):
        f = fraction + toward * k * BAND_SHIFT
        if toward and (f - 0.5) * (fraction - 0.5) <= 0:
            break
        rows = band(scan.row_index(f), scan.nrows, band_rows)
        measured = cors_at_rows(scan, rows, params, device=device)
        found = {rc.row: rc.cor for rc in measured}
        # A peak on the grid's edge is the metric still rising, not a COR (rows without structure do that).
        if _band_ok(list(found.values())) and not any(rc.at_edge for rc in measured):
            if k:
                log.info("%s: rows near %.2f have no usable structure; used rows near %.2f", scan.path, fraction, f)
            return found
        tried.append(scan.row_index(f))
    raise ValueError(f"no usable structure for a COR near row {tried[0]} (tried rows {tried}): no COR peak "
                     f"inside the grid, or neighbouring rows disagree; give --rows inside the sample")


def measure_tilt(path: Path, params: ReconParams, fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                 device: str = "cpu", band_rows: int = BAND_ROWS) -> Dict[str, Any]:
    """The CamRot record of one scan (ValueError and friends on bad input)."""
    with DXFile(Path(path)) as scan:
        theta = scan.theta_deg()
        span = float(np.ptp(theta)) if theta.size else 0.0
        if not 170.0 <= span <= 190.0:
            raise ValueError(f"theta spans {span:.1f}°; CamRot needs a 180° scan")
        fractions = sorted(set(fractions))
        if len({scan.row_index(f) for f in fractions}) < 3:
            raise ValueError(f"{scan.nrows} detector rows give fewer than 3 distinct rows for {list(fractions)}")
        bands = [_measure_band(scan, f, params, device, band_rows) for f in fractions]
        mid = scan.row_index(0.5)
    found = {r: c for b in bands for r, c in b.items()}
    measured = sorted(found)
    if len({round(float(np.mean(list(b)))) for b in bands}) < 3:
        raise ValueError("fewer than 3 distinct rows with usable structure; give --rows inside the sample")
    fit = fit_tilt(measured, [found[r] for r in measured], row_mid=mid)
    # Per requested row: the band's mean COR at the band's mean row (the drift is linear).
    band_rows_mean = [int(round(float(np.mean(list(b))))) for b in bands]
    band_cors = [float(np.mean(list(b.values()))) for b in bands]
    log.info("%s: tilt %.3f deg (slope %.5f px/row, r2 %.4f), COR %.2f at row %d", path, fit.tilt_deg,
             fit.slope_px_per_row, fit.r2, fit.cor, mid)
    return {"file": str(path), "status": "ok", "tilt_deg": round(fit.tilt_deg, 4), "cor": round(fit.cor, 3),
            "rows": band_rows_mean, "cors": [round(c, 3) for c in band_cors],
            "slope_px_per_row": round(fit.slope_px_per_row, 6),
            "r2": None if fit.r2 != fit.r2 else round(fit.r2, 5), "row": mid, "band_rows": band_rows}


def run(files: Sequence[str], fractions: Sequence[float], search_width: float, device: str,
        out: TextIO = sys.stdout) -> int:
    """Measure each file and write one JSON line per file to ``out``; 0 when all succeeded, else 1."""
    from tomocorioc.core import sidecar  # pure
    failed = 0
    base = ReconParams(search_width=search_width)
    for name in files:
        rec: Dict[str, Any]
        try:
            params, warning = sidecar.resolve(name, base)
            if warning:
                log.warning("%s", warning)
            # The raw camera tilt: an angle already applied in the sidecar is not used here.
            rec = measure_tilt(Path(name), params.replace(rotation_axis=None, rotate_proj_angle=0.0), fractions,
                               device=device)
        except (ValueError, OSError, RuntimeError) as exc:
            failed += 1
            rec = {"file": str(name), "status": "error", "error": (str(exc).splitlines() or [repr(exc)])[0]}
        out.write(json.dumps(rec) + "\n")
        out.flush()
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tomocorioc.worker.camrot [--rows R] [--search-width W] [--device D] FILE...`` (JSON lines)."""
    ap = argparse.ArgumentParser(prog="tomocorioc.worker.camrot")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rows", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS))
    ap.add_argument("--search-width", type=float, default=ReconParams().search_width)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        fractions = parse_fractions(args.rows)
    except ValueError as exc:
        sys.stdout.write(json.dumps({"status": "error", "error": str(exc)}) + "\n")
        return 2
    from tomocorioc.worker.recon.torch_backend import default_device
    return run(args.files, fractions, args.search_width, args.device or default_device())


if __name__ == "__main__":
    sys.exit(main())
