"""Infer's tilt check: Vo's estimate at a top and a bottom row as well as the try row.

A tilted camera makes the COR drift with the row, so one COR cannot be right
for the whole volume.  Vo's sinogram estimate is cheap (no reconstruction)
and independent of the try stack; when it moves by more than
:data:`tomocorioc.core.tilt.DRIFT_REVIEW_PX` between the top and the bottom
row the result is flagged for review with the angle CamRot would measure.
An applied tilt (``rotate_proj_angle``) is checked on rotated projections, so
a corrected scan passes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from tomocorioc.core.params import ReconParams
from tomocorioc.core.tilt import drift_note
from tomocorioc.data.dxfile import DXFile
from tomocorioc.data.errors import DatasetError
from tomocorioc.worker.cor.rows import row_sinogram, vo_estimate

log = logging.getLogger(__name__)

TOP, BOTTOM = 0.1, 0.9   # row positions (tomocupy's nsino) of the extra estimates


def drift_check(path: Path, params: ReconParams, middle: Optional[float] = None) -> Dict[str, Any]:
    """{'rows', 'estimates', 'drift_px', 'note'}; note is '' when the axis does not drift (or cannot tell)."""
    out: Dict[str, Any] = {"rows": [], "estimates": [], "drift_px": None, "note": ""}
    try:
        with DXFile(Path(path)) as scan:
            span = float(np.ptp(scan.theta_deg()))
            if not 170.0 <= span <= 190.0:
                return out   # Vo's estimate needs a 180° scan
            rows = [scan.row_index(TOP), scan.row_index(params.nsino), scan.row_index(BOTTOM)]
            if rows[0] == rows[2]:
                return out
            found = []
            for i, r in enumerate(rows):
                est = middle if (i == 1 and middle is not None and not params.rotate_proj_angle) else \
                    vo_estimate(row_sinogram(scan, r, params, params.rotate_proj_angle))
                found.append(est)
    except (DatasetError, OSError, ValueError) as exc:
        log.warning("%s: no drift check (%s)", path, exc)
        return out
    out["rows"], out["estimates"] = rows, [None if e is None else round(float(e), 3) for e in found]
    if found[0] is None or found[2] is None:
        return out
    out["drift_px"] = round(float(found[2] - found[0]), 3)
    out["note"] = drift_note(rows, found)
    return out
