"""CamRot: the camera tilt of one scan, from the COR at three or more detector rows.

TomoGUI's CamRot runs two tries (``--nsino 0.1`` and ``0.9``) and divides the
COR difference by the full detector height, although those rows are only 0.8
of it apart (so its angle is ~20 % low).  Here the COR at each row comes from
infer's finder (sub-pixel) and a straight line is fitted over the actual row
numbers; its slope gives the angle for tomocupy's ``--rotate-proj-angle``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from tomocorioc.core.params import ReconParams
from tomocorioc.core.tilt import fit_tilt
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.cor.rows import cors_at_rows

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.1, 0.5, 0.9)


def parse_fractions(text: str) -> tuple:
    """'0.1,0.5,0.9' -> (0.1, 0.5, 0.9): three or more distinct row positions in [0, 1]."""
    try:
        vals = tuple(float(x) for x in str(text).replace(" ", "").split(",") if x != "")
    except ValueError:
        raise ValueError(f"rows must be comma-separated numbers in [0, 1] (0 top, 1 bottom), got {text!r}") from None
    if len(set(vals)) < 3:
        raise ValueError(f"rows needs three or more distinct positions (0 top, 1 bottom), got {text!r}")
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"row positions must be in [0, 1] (0 top, 1 bottom), got {text!r}")
    return tuple(sorted(vals))


def measure_tilt(path: Path, params: ReconParams, fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                 device: str = "cpu") -> Dict[str, Any]:
    """The CamRot record of one scan (raises ValueError/OSError-like errors on bad input)."""
    with DXFile(Path(path)) as scan:
        theta = scan.theta_deg()
        span = float(np.ptp(theta)) if theta.size else 0.0
        if not 170.0 <= span <= 190.0:
            raise ValueError(f"theta spans {span:.1f}°; CamRot needs a 180° scan")
        rows = sorted({scan.row_index(f) for f in fractions})
        if len(rows) < 3:
            raise ValueError(f"{scan.nrows} detector rows give only {len(rows)} distinct rows for {list(fractions)}")
        found = cors_at_rows(scan, rows, params, device=device)
        mid = scan.row_index(0.5)
    fit = fit_tilt([r.row for r in found], [r.cor for r in found], row_mid=mid)
    log.info("%s: tilt %.3f deg (slope %.5f px/row, r2 %.4f), COR %.2f at row %d", path, fit.tilt_deg,
             fit.slope_px_per_row, fit.r2, fit.cor, mid)
    return {"file": str(path), "status": "ok", "tilt_deg": round(fit.tilt_deg, 4), "cor": round(fit.cor, 3),
            "rows": fit.rows, "cors": [round(c, 3) for c in fit.cors],
            "slope_px_per_row": round(fit.slope_px_per_row, 6),
            "r2": None if fit.r2 != fit.r2 else round(fit.r2, 5), "row": mid}
