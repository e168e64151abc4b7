"""PVAccess side of the IOC (pvapy's PvaServer): the queue table, a preview image, the scores.

* ``<prefix>Queue``   NTTable, one row per queued file, real column names;
* ``<prefix>Preview`` NTNDArray (float32): the try slice at the chosen COR
  after an infer, the middle full slice after a full reconstruction;
* ``<prefix>Scores``  NTTable (center, score, chosen) of the last inferred file.

Image files are read off the event loop (the caller runs :meth:`poll` in a
helper thread); everything here only reads the outputs the workers wrote.

The three channels are read-only to clients: pvapy's server accepts a client's
put on any record unless the record has an access-security group, so each is
added in a group whose only rule is READ (a ``pvput`` fails with "put is not
allowed"); the IOC itself still updates them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pvaccess as pva
import tifffile

from tomocorioc.core import layout
from tomocorioc.ioc.controller import queue_table
from tomocorioc.service.protocol import ServiceAPI

log = logging.getLogger(__name__)

_QUEUE_TYPES = {"file": pva.STRING, "series": pva.STRING, "status": pva.STRING, "phase": pva.STRING,
                "cor": pva.DOUBLE, "cor_source": pva.STRING, "confidence": pva.DOUBLE,
                "needs_review": pva.BOOLEAN, "enabled": pva.BOOLEAN, "error": pva.STRING, "updated": pva.STRING,
                "geometry": pva.STRING}
_SCORE_TYPES = {"center": pva.DOUBLE, "score": pva.DOUBLE, "chosen": pva.BOOLEAN}
NTTABLE = "epics:nt/NTTable:1.0"
READ_ONLY_ASG = "TOMOCOR_READ_ONLY"
_READ_ONLY_ACF = f"ASG(DEFAULT) {{ RULE(1, READ) }}\nASG({READ_ONLY_ASG}) {{ RULE(1, READ) }}\n"


def nttable(types: Dict[str, Any], columns: Dict[str, List[Any]], descriptor: str = "") -> pva.PvObject:
    """An NTTable whose value fields carry the column names (pvapy's NtTable numbers them)."""
    obj = pva.PvObject({"labels": [pva.STRING], "value": {k: [t] for k, t in types.items()},
                        "descriptor": pva.STRING,
                        "timeStamp": {"secondsPastEpoch": pva.LONG, "nanoseconds": pva.INT}}, NTTABLE)
    now = time.time()
    obj["labels"] = list(types)
    obj["value"] = {k: list(columns.get(k, [])) for k in types}
    obj["descriptor"] = descriptor
    obj["timeStamp"] = {"secondsPastEpoch": int(now), "nanoseconds": int((now % 1) * 1e9)}
    return obj


def ntndarray(img: np.ndarray, uid: int, description: str) -> pva.NtNdArray:
    """A float32 NTNDArray (ImageJ's EPICS NTNDA viewer and Phoebus read it)."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    arr = pva.NtNdArray()
    ny, nx = img.shape
    arr["value"] = {"floatValue": img.ravel()}
    arr["dimension"] = [pva.PvDimension(nx, 0, nx, 1, False), pva.PvDimension(ny, 0, ny, 1, False)]
    arr["uniqueId"] = int(uid)
    arr["descriptor"] = description[:200]
    now = time.time()
    stamp = {"secondsPastEpoch": int(now), "nanoseconds": int((now % 1) * 1e9), "userTag": 0}
    arr["timeStamp"] = stamp
    arr["dataTimeStamp"] = stamp
    return arr


def try_preview(projection: Path, cor: float) -> Optional[Tuple[np.ndarray, str]]:
    """The try slice nearest the chosen COR, or None when there is none."""
    folder = layout.try_dir(projection)
    if not folder.is_dir():
        return None
    slices = layout.list_try_slices(folder)
    if not slices:
        return None
    best = min(slices, key=lambda s: abs(s.center - cor))
    return tifffile.imread(best.path), f"try {projection.name} row {best.row} center {best.center:.2f}"


def full_preview(projection: Path) -> Optional[Tuple[np.ndarray, str]]:
    """The middle slice of the full reconstruction, or None."""
    from tomocorioc.data.volume import find_volume, open_volume
    try:
        vol = open_volume(find_volume(projection))
    except (FileNotFoundError, ValueError, OSError):
        return None
    mid = vol.shape[0] // 2
    return vol.read_slice(mid), f"full {projection.name} slice {mid}"


def score_columns(projection: Path) -> Optional[Dict[str, List[Any]]]:
    """Columns of the Scores table from the try folder's score JSON, or None."""
    try:
        data = json.loads((layout.try_dir(projection) / layout.SCORES_FILE).read_text())
    except (OSError, ValueError):
        return None
    part = data.get("ai") or data.get("classical") or {}
    centers, scores = part.get("centers") or [], part.get("scores") or []
    if len(centers) != len(scores) or not centers:
        return None
    cor = data.get("grid_cor", data.get("cor"))
    near = min(range(len(centers)), key=lambda i: abs(centers[i] - cor)) if cor is not None else -1
    return {"center": [float(c) for c in centers],
            "score": [float(s) if s is not None and math.isfinite(float(s)) else float("nan") for s in scores],
            "chosen": [i == near for i in range(len(centers))]}


class PvaPublisher:
    """Owns the PvaServer and its three channels."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.server = pva.PvaServer()
        self._read_only_rules()
        self.names = {k: prefix + k for k in ("Queue", "Preview", "Scores")}
        for key, obj in (("Queue", nttable(_QUEUE_TYPES, {}, "tomocorioc queue")),
                         ("Preview", ntndarray(np.zeros((1, 1), np.float32), 0, "no image yet")),
                         ("Scores", nttable(_SCORE_TYPES, {}, "no scores yet"))):
            self.server.addRecordWithAs(self.names[key], obj, 1, READ_ONLY_ASG)
        self._queue_uid = -1
        self._seq = 0
        self._image_uid = 0

    def _read_only_rules(self) -> None:
        """Load the one-group access-security file (pvapy reads it from a file, once)."""
        fd, path = tempfile.mkstemp(prefix="tomocorioc-pva-", suffix=".acf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_READ_ONLY_ACF)
            self.server.initAs(path, "")
        finally:
            os.unlink(path)

    def poll(self, service: ServiceAPI) -> None:
        """Publish what changed since the last call (run in a helper thread)."""
        q = service.queue
        if q.uid != self._queue_uid:
            self._queue_uid = q.uid
            rows = q.rows()
            held = {r.id for r in rows if q.held(r)}
            self.server.update(self.names["Queue"], nttable(_QUEUE_TYPES, queue_table(rows, held), f"{len(rows)} rows"))
        new = [e for e in list(service.finished_events) if e.get("seq", 0) > self._seq and e.get("success")]
        if not new:
            return
        self._seq = max(e["seq"] for e in new)
        latest: Dict[str, Dict[str, Any]] = {}
        for e in new:   # only the newest infer and the newest full matter
            if e.get("phase") in ("infer", "full"):
                latest[e["phase"]] = e
        shown = None
        for e in sorted(latest.values(), key=lambda e: e["seq"]):
            try:
                row = q.row(e["row"])
            except ValueError:
                continue
            path = Path(row.path)
            try:
                if e["phase"] == "infer":
                    cols = score_columns(path)
                    if cols:
                        self.server.update(self.names["Scores"], nttable(_SCORE_TYPES, cols, f"scores of {path.name}"))
                    if row.cor is not None:
                        shown = try_preview(path, row.cor) or shown
                else:
                    shown = full_preview(path) or shown
            except (OSError, ValueError) as exc:  # a half-written or foreign file: report, keep serving
                service.notice(f"preview of {path.name}: {exc}")
        if shown is not None:
            self._image_uid += 1
            self.server.update(self.names["Preview"], ntndarray(shown[0], self._image_uid, shown[1]))

    def stop(self) -> None:
        """Stop serving PVA."""
        self.server.stop()


__all__ = ["PvaPublisher", "nttable", "ntndarray"]
