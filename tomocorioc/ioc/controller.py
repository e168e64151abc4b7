"""What the IOC's PVs mean: put validation and the status snapshot (no EPICS imports).

The CA and PVA layers are thin: a put on any PV calls :meth:`Controller.put`,
which validates, applies the change to the :class:`~tomocorioc.service.Service`
(quick queue/settings operations; the work runs in the dispatcher's workers)
and returns the value the PV should hold — or raises :class:`PutError` with a
one-line reason, which the server turns into a failed put and ``Message``.
:meth:`Controller.snapshot` computes every status PV from the queue.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..core.jobs import FINISHED_OK, PHASES, PhaseState, Row, valid_cor
from ..core.params import FILTERS, ParamError
from ..core.queue import QueueError
from .pvdefs import COR_METHODS, MAX_SLOTS, METRICS, PAGE_ROWS, ROW_STATUSES, Kind, PVDef, Role, by_name

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
_PHASE_PVS = {"PhaseTry": "try", "PhaseInfer": "infer", "PhaseFull": "full", "PhaseTomoLog": "tomolog"}
_TOMOLOG_PVS = {"TomoLogUrl": "presentation_url", "TomoLogCloud": "cloud_service", "TomoLogBeamline": "beamline",
                "TomoLogMin": "vmin", "TomoLogMax": "vmax"}
_MAX_ENQUEUE = 10000


class PutError(ValueError):
    """A rejected put; the message is one line for ``Message`` and the client."""


def _one_line(msg: object) -> str:
    text = " ".join(str(msg).split())
    return text[:300]


def enum_index(p: PVDef, value: Any) -> int:
    """An enum put as index or state string -> index (PutError otherwise)."""
    if isinstance(value, str):
        v = value.strip()
        if v in p.enums:
            return p.enums.index(v)
        if not v.lstrip("-").isdigit():
            raise PutError(f"{p.name}: {value!r} is not one of {', '.join(p.enums)}")
        value = int(v)
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise PutError(f"{p.name}: {value!r} is not one of {', '.join(p.enums)}") from None
    if isinstance(value, float) and (not math.isfinite(value) or value != i):
        raise PutError(f"{p.name}: {value!r} is not a state index")
    if not 0 <= i < len(p.enums):
        raise PutError(f"{p.name}: index {i} out of range 0..{len(p.enums) - 1}")
    return i


def number(p: PVDef, value: Any) -> float:
    """A finite number within the PV's limits (PutError otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PutError(f"{p.name}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise PutError(f"{p.name}: {value!r} is not finite")
    if p.lo is not None and v < p.lo or p.hi is not None and v > p.hi:
        raise PutError(f"{p.name}: {v:g} out of range {p.lo:g}..{p.hi:g}")
    return v


class Watchdog:
    """tomoStream's watchdog: reset to ``start`` while the dispatcher's heartbeat moves, else count down.

    :meth:`tick` is called once a second; ServerRunning is 'Running' while the
    value is above zero, so a stalled dispatcher shows 'Stopped' within
    ``start`` seconds.
    """

    def __init__(self, start: int = 5) -> None:
        self.start = int(start)
        self.value = self.start
        self._beat: Optional[int] = None

    def tick(self, beat: int) -> int:
        """One second passed; ``beat`` is the dispatcher's heartbeat counter now."""
        self.value = self.start if beat != self._beat else max(0, self.value - 1)
        self._beat = beat
        return self.value


class Controller:
    """Maps PV puts onto the service and the service's state onto PV values."""

    def __init__(self, service: Any, data_roots: Sequence[Path], slot_factory: Optional[Callable] = None,
                 trigger: Any = None) -> None:
        self.service = service
        self.trigger = trigger              # TriggerManager, when this IOC can watch tomoScan
        self.data_roots = [Path(r).resolve() for r in data_roots]
        self.slot_factory = slot_factory    # gpus string -> slot specs (for the Gpus setting)
        self.defs = by_name()
        self.selected: Optional[int] = None
        self.row_offset = 0
        self.last_message = ""

    # -- puts ----------------------------------------------------------------------
    def put(self, name: str, value: Any) -> Any:
        """Validate and apply a put; returns the value the PV should now hold."""
        p = self.defs.get(name)
        if p is None or not p.kind.writable:
            raise PutError(f"{name} is read-only")
        try:
            if p.role is Role.SETTING:
                return self._setting(p, value)
            if p.role is Role.COMMAND:
                return self._command(p, value)
            return self._select(p, value)
        except PutError:
            raise
        except (QueueError, ParamError, ValueError, OSError) as exc:
            raise PutError(f"{name}: {_one_line(exc)}") from None

    def message(self, text: str) -> None:
        """Record an operator message (also kept by the service)."""
        self.last_message = _one_line(text)
        self.service.notice(self.last_message)

    @staticmethod
    def _text(p: PVDef, value: Any) -> str:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            raise PutError(f"{p.name}: expected a string, got {value!r}")
        value = value.rstrip("\x00").strip()
        if "\n" in value or "\r" in value:
            raise PutError(f"{p.name}: must be one line")
        return value

    def _setting(self, p: PVDef, value: Any) -> Any:
        s = self.service.settings
        name = p.name
        if name in _PHASE_PVS:
            v = enum_index(p, value)
            self.service.update_settings(phases=dict(s.phases, **{_PHASE_PVS[name]: bool(v)}))
            return v
        if name == "MaxCorDelta":
            v = number(p, value)
            self.service.update_settings(max_cor_delta=v)
            return v
        if name in ("CenterSearchWidth", "CenterSearchStep", "NSino"):
            v = number(p, value)
            key = {"CenterSearchWidth": "search_width", "CenterSearchStep": "search_step", "NSino": "nsino"}[name]
            self.service.update_settings(params={key: v})
            return v
        if name == "Binning":
            v = enum_index(p, value)
            self.service.update_settings(params={"binning": v})
            return v
        if name == "FbpFilter":
            v = enum_index(p, value)
            self.service.update_settings(params={"fbp_filter": FILTERS[v]})
            return v
        if name == "CorMethod":
            v = enum_index(p, value)
            self.service.update_settings(cor_method=COR_METHODS[v].lower())
            return v
        if name == "Metric":
            v = enum_index(p, value)
            self.service.update_settings(metric=METRICS[v])
            return v
        if name == "ModelPath":
            text = self._text(p, value)
            if text and not Path(text).is_file():
                raise PutError(f"ModelPath: no such file: {text}")
            self.service.update_settings(model=text or None)
            return text
        if name == "JobTimeout":
            v = number(p, value)
            self.service.update_settings(timeouts={ph: (v or None) for ph in PHASES})
            return v
        if name == "Gpus":
            text = self._text(p, value)
            if self.slot_factory is None:
                raise PutError("Gpus: this IOC cannot change its worker slots")
            slots = self.slot_factory(text or None)   # ValueError on a bad list
            if (text or None) != s.gpus:
                self.service.set_slots(slots)
                self.service.update_settings(gpus=text or None)
            return text
        if name in ("AutoFixOutliers", "SeriesBarrier"):
            v = enum_index(p, value)
            key = "auto_fix_outliers" if name == "AutoFixOutliers" else "series_barrier"
            self.service.update_settings(**{key: bool(v)})
            return v
        if name == "TomoScanPrefix":
            text = self._text(p, value)
            if text and (" " in text or len(text) > 36):
                raise PutError(f"TomoScanPrefix: {text!r} is not a PV prefix")
            changed = text != s.tomoscan_prefix
            if s.auto_trigger and not text:
                raise PutError("TomoScanPrefix: cannot be blank while AutoTrigger is On")
            self.service.update_settings(tomoscan_prefix=text)
            if changed and s.auto_trigger:
                self.relink()
            return text
        if name == "AutoTrigger":
            v = enum_index(p, value)
            if v and not s.tomoscan_prefix:
                raise PutError("AutoTrigger: set TomoScanPrefix first")
            if v and self.trigger is None:
                raise PutError("AutoTrigger: this IOC was started without the trigger")
            changed = bool(v) != s.auto_trigger
            self.service.update_settings(auto_trigger=bool(v))
            if changed:
                self.relink()
            return v
        if name == "TriggerPhases":
            text = self._text(p, value).replace(" ", "")
            bad = [x for x in text.split(",") if x and x not in PHASES]
            if bad or (text and not [x for x in text.split(",") if x]):
                raise PutError(f"TriggerPhases: {text!r} is not a comma list of {','.join(PHASES)}")
            self.service.update_settings(trigger_phases=text)
            return text
        if name == "TriggerTimeout":
            v = number(p, value)
            self.service.update_settings(trigger_timeout=v)
            if self.trigger is not None:
                self.trigger.complete_timeout = v
            return v
        if name in _TOMOLOG_PVS:
            text = self._text(p, value)
            key = _TOMOLOG_PVS[name]
            tl = dict(s.tomolog)
            if key in ("vmin", "vmax"):
                if text:
                    try:
                        num = float(text)
                    except ValueError:
                        raise PutError(f"{name}: {text!r} is not a number (blank: auto contrast)") from None
                    if not math.isfinite(num):
                        raise PutError(f"{name}: {text!r} is not finite")
                    tl[key] = num
                else:
                    tl.pop(key, None)
            elif text:
                tl[key] = text
            else:
                tl.pop(key, None)
            self.service.update_settings(tomolog=tl)
            return text
        raise PutError(f"{name}: not a setting")

    def relink(self) -> None:
        """Point the trigger at the configured tomoScan (or stop it) after a settings change."""
        if self.trigger is not None:
            s = self.service.settings
            self.trigger.set_tomoscan(s.tomoscan_prefix if s.auto_trigger and s.tomoscan_prefix else None)

    def setting_values(self) -> Dict[str, Any]:
        """Current value of every setting PV, from the service's settings."""
        s = self.service.settings
        tl = s.tomolog or {}
        timeouts = [v for v in s.timeouts.values() if v]
        out: Dict[str, Any] = {pv: int(bool(s.phases.get(ph))) for pv, ph in _PHASE_PVS.items()}
        out.update({
            "MaxCorDelta": s.max_cor_delta, "CenterSearchWidth": s.params.search_width,
            "CenterSearchStep": s.params.search_step, "NSino": s.params.nsino, "Binning": s.params.binning,
            "FbpFilter": FILTERS.index(s.params.fbp_filter),
            "CorMethod": [m.lower() for m in COR_METHODS].index(s.cor_method),
            "Metric": METRICS.index(s.metric) if s.metric in METRICS else 0,
            "ModelPath": s.model or "", "JobTimeout": max(timeouts) if timeouts else 0.0, "Gpus": s.gpus or "",
            "AutoFixOutliers": int(s.auto_fix_outliers), "SeriesBarrier": int(s.series_barrier),
            "TomoScanPrefix": s.tomoscan_prefix, "AutoTrigger": int(s.auto_trigger),
            "TriggerPhases": s.trigger_phases, "TriggerTimeout": s.trigger_timeout})
        for pv, key in _TOMOLOG_PVS.items():
            v = tl.get(key, tl.get({"vmin": "min", "vmax": "max"}.get(key, key)))
            out[pv] = "" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
        return out

    # -- commands ------------------------------------------------------------------------
    def _command(self, p: PVDef, value: Any) -> Any:
        if p.name == "Enqueue":
            text = self._text(p, value)
            if not text:
                raise PutError("Enqueue: empty path")
            paths = self.expand(text)
            ids = self.service.enqueue(paths)
            self.message(f"queued {len(ids)} of {len(paths)} file(s) from {text}"
                         + ("" if len(ids) == len(paths) else " (the others were already queued)"))
            return text
        if not enum_index(p, value):
            return 0     # writing 0 ('Done') does nothing
        svc, q = self.service, self.service.queue
        if p.name == "Start":
            n = svc.start_queue()
            self.message(f"started; {n} row(s) queued again" if n else "started")
        elif p.name == "Abort":
            n = svc.abort()
            self.message(f"aborted; {n} running job(s) cancelled")
        elif p.name == "Pause":
            q.pause()
            self.message("paused: no new jobs start")
        elif p.name == "Resume":
            q.resume()
            self.message("resumed")
        elif p.name == "FixOutliers":
            changes = svc.fix_outliers()
            self.message(f"Fix COR Outliers: {len(changes)} COR(s) changed")
        elif p.name == "RetryFailed":
            self.message(f"{q.retry_failed()} row(s) queued again")
        elif p.name == "ClearDone":
            self.message(f"{q.clear_finished()} finished row(s) removed")
        elif p.name == "ApplyParams":
            src = self._selected_row()
            targets = [r.id for r in q.rows() if r.enabled and r.id != src.id]
            n = svc.apply_params(src.id, targets)
            self.message(f"parameters of {Path(src.path).name} copied to {n} row(s)")
        elif p.name == "RemoveSelected":
            src = self._selected_row()
            q.remove([src.id])
            self.selected = None
            self.message(f"removed {Path(src.path).name}")
        return 0

    def under_roots(self, path: Path) -> Path:
        """Resolved ``path`` if it lies under a data root (PutError otherwise)."""
        try:
            real = Path(os.path.realpath(path))
        except (OSError, ValueError) as exc:
            raise PutError(f"bad path {str(path)!r}: {exc}") from None
        if not self.data_roots:
            raise PutError("no data root configured (serve --data-root DIR)")
        for root in self.data_roots:
            if real == root or root in real.parents:
                return real
        raise PutError(f"{path} is outside the data roots ({', '.join(map(str, self.data_roots))})")

    def expand(self, text: str) -> List[str]:
        """A file, a directory (its scans) or a glob -> scan paths under the data roots."""
        if any(ch in text for ch in "*?["):
            if not os.path.isabs(text):
                raise PutError(f"Enqueue: glob must be an absolute path: {text}")
            self.under_roots(Path(text.split("*")[0].split("?")[0].split("[")[0] or "/"))
            hits = sorted(h for h in glob.glob(text) if os.path.isfile(h))
            paths = [str(self.under_roots(Path(h))) for h in hits]
            if not paths:
                raise PutError(f"Enqueue: nothing matches {text}")
        else:
            if not os.path.isabs(text):
                raise PutError(f"Enqueue: path must be absolute: {text}")
            real = self.under_roots(Path(text))
            if real.is_dir():
                paths = sorted(str(f) for f in real.iterdir() if f.is_file() and f.suffix.lower() in SCAN_SUFFIXES)
                if not paths:
                    raise PutError(f"Enqueue: no scan files ({', '.join(SCAN_SUFFIXES)}) in {text}")
            elif real.is_file():
                paths = [str(real)]
            else:
                raise PutError(f"Enqueue: no such file or directory: {text}")
        if len(paths) > _MAX_ENQUEUE:
            raise PutError(f"Enqueue: {len(paths)} files is more than {_MAX_ENQUEUE} at once")
        unreadable = [p for p in paths if not os.access(p, os.R_OK)]
        if unreadable:
            raise PutError(f"Enqueue: cannot read {unreadable[0]}")
        return paths

    # -- per-file selection ------------------------------------------------------------
    def _selected_row(self) -> Row:
        if self.selected is None:
            raise PutError("no file selected (put a queued file's path to SelectFile)")
        try:
            return self.service.queue.row(self.selected)
        except QueueError:
            self.selected = None
            raise PutError("the selected file is no longer in the queue") from None

    def _page_row(self, p: PVDef) -> Row:
        n = int(p.name[3:5])
        rows = self.service.queue.rows()
        i = self.row_offset + n - 1
        if i >= len(rows):
            raise PutError(f"{p.name[:5]}: no queue row at position {i + 1}")
        return rows[i]

    def _select(self, p: PVDef, value: Any) -> Any:
        q = self.service.queue
        if p.name == "SelectFile":
            text = self._text(p, value)
            if not text:
                self.selected = None
                return ""
            rid = q.find(text)
            if rid is None:
                named = [r for r in q.rows() if Path(r.path).name == text]
                if len(named) == 1:
                    rid = named[0].id
            if rid is None:
                raise PutError(f"SelectFile: not in the queue: {text}")
            self.selected = rid
            return text
        if p.name == "RowOffset":
            v = number(p, value)
            if v != int(v):
                raise PutError(f"RowOffset: {v:g} is not an integer")
            self.row_offset = int(v)
            return int(v)
        row = self._selected_row() if p.name.startswith("Selected:") else self._page_row(p)
        if p.name.endswith(":Cor"):
            v = number(p, value)
            q.set_cor(row.id, valid_cor(v), "manual", "set by operator (PV)")
            return v
        if p.name.endswith(":Enable"):
            v = enum_index(p, value)
            q.set_enabled([row.id], bool(v))
            return v
        raise PutError(f"{p.name}: not writable")

    # -- status ------------------------------------------------------------------------------
    def snapshot(self) -> Dict[str, Any]:
        """Every status PV's value now except the watchdog's (the server writes those that changed)."""
        svc, q = self.service, self.service.queue
        rows = q.rows()
        by_id = {r.id: r for r in rows}
        counts: Dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        requested = finished = 0
        for r in rows:
            if not r.enabled:
                continue
            for ph in PHASES:
                if r.state[ph] is PhaseState.OFF:
                    continue
                requested += 1
                finished += r.state[ph] in FINISHED_OK or r.state[ph] in (PhaseState.FAILED, PhaseState.BLOCKED,
                                                                          PhaseState.CANCELLED)
        slots = svc.dispatcher.slot_status()
        running = [(s, by_id.get(s["row"])) for s in slots if s["row"] is not None]
        busy = bool(running) or (not q.paused and any(r.current_phase and r.enabled and not r.skipped
                                                      for r in rows))
        v: Dict[str, Any] = {
            "Busy": int(busy), "Paused": int(q.paused),
            "QueueLength": len(rows), "NumQueued": counts.get("queued", 0), "NumRunning": counts.get("running", 0),
            "NumDone": counts.get("done", 0) + counts.get("review", 0), "NumFailed": counts.get("failed", 0),
            "NumSkipped": counts.get("skipped", 0) + counts.get("disabled", 0),
            "NumNeedsReview": sum(1 for r in rows if r.needs_review),
            "Progress": round(100.0 * finished / requested, 1) if requested else 0.0,
            "NumSlots": len(slots), "Message": svc.messages[-1] if svc.messages else "",
            "TriggerStatus": self.trigger.status if self.trigger is not None else "off",
        }
        cs = svc.cluster_status(slots)
        v["ClusterStatus"], v["NumWorkers"], v["NumGpus"] = str(cs["status"]), int(cs["workers"]), int(cs["gpus"])
        if running:
            parts = [f"{s['phase']} {Path(r.path).name if r else '?'} ({s['name']})" for s, r in running]
            v["ReconStatus"] = "Running " + "; ".join(parts) + f"; {counts.get('queued', 0)} queued"
        elif q.paused:
            v["ReconStatus"] = f"Paused; {counts.get('queued', 0)} queued"
        else:
            v["ReconStatus"] = "Idle" if not busy else "Starting"
        started, fin = svc.last_started, svc.last_finished
        if started and started.get("row") in by_id:
            v["CurrentFile"] = by_id[started["row"]].path
        if fin:
            r = by_id.get(fin.get("row"))
            secs = r.timings.get(fin.get("phase")) if r else None
            if secs is not None:
                v["ReconTime"] = float(secs)
        with_cor = [r for r in rows if r.cor is not None and r.cor_source]
        if with_cor:
            last = max(with_cor, key=lambda r: r.updated)
            v["LastFile"], v["LastCor"] = last.path, float(last.cor)
        for i in range(MAX_SLOTS):
            s = slots[i] if i < len(slots) else None
            r = by_id.get(s["row"]) if s and s["row"] is not None else None
            v[f"Slot{i + 1}:Name"] = s["name"] if s else ""
            v[f"Slot{i + 1}:File"] = r.path if r else ""
            v[f"Slot{i + 1}:Phase"] = (s["phase"] if r else ("idle" if s["ready"] else {
                "restarting": "restarting", "broken": "broken"}.get(s.get("state"), "starting"))) if s else ""
            v[f"Slot{i + 1}:Elapsed"] = round(float(s["elapsed"]), 1) if r else 0.0
        sel = by_id.get(self.selected) if self.selected is not None else None
        v.update(self._row_values("Selected", sel))
        v["Selected:Confidence"] = float(sel.confidence) if sel and sel.confidence is not None else 0.0
        v["Selected:NeedsReview"] = int(bool(sel and sel.needs_review))
        v["Selected:Phase"] = (sel.current_phase or "") if sel else ""
        v["Selected:Error"] = (sel.error or sel.skipped or "") if sel else ""
        series_order: List[str] = []
        for r in rows:
            if r.series not in series_order:
                series_order.append(r.series)
        for n in range(1, PAGE_ROWS + 1):
            i = self.row_offset + n - 1
            r = rows[i] if i < len(rows) else None
            pre = f"Row{n:02d}"
            v.update(self._row_values(pre, r, full_path=False))
            v[f"{pre}:SeriesColor"] = series_order.index(r.series) % 6 if r else 0
        return v

    @staticmethod
    def _row_values(pre: str, r: Optional[Row], full_path: bool = True) -> Dict[str, Any]:
        if r is None:
            return {f"{pre}:Cor": 0.0, f"{pre}:CorSource": "", f"{pre}:Status": 0, f"{pre}:Series": "",
                    f"{pre}:Enable": 0, **({} if full_path else {f"{pre}:File": ""})}
        out = {f"{pre}:Cor": float(r.cor) if r.cor is not None else 0.0, f"{pre}:CorSource": r.cor_source or "",
               f"{pre}:Status": ROW_STATUSES.index(r.status) if r.status in ROW_STATUSES else 0,
               f"{pre}:Series": r.series, f"{pre}:Enable": int(r.enabled)}
        if not full_path:
            out[f"{pre}:File"] = Path(r.path).name
        return out


def queue_table(rows: List[Row]) -> Dict[str, List[Any]]:
    """Columns of the PVA Queue NTTable."""
    cols: Dict[str, List[Any]] = {k: [] for k in ("file", "series", "status", "phase", "cor", "cor_source",
                                                  "confidence", "needs_review", "enabled", "error", "updated")}
    for r in rows:
        cols["file"].append(r.path)
        cols["series"].append(r.series)
        cols["status"].append(r.status)
        cols["phase"].append(r.current_phase or "")
        cols["cor"].append(float(r.cor) if r.cor is not None else float("nan"))
        cols["cor_source"].append(r.cor_source or "")
        cols["confidence"].append(float(r.confidence) if r.confidence is not None else float("nan"))
        cols["needs_review"].append(bool(r.needs_review))
        cols["enabled"].append(bool(r.enabled))
        cols["error"].append(r.error or r.skipped or "")
        cols["updated"].append(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.updated)))
    return cols


__all__ = ["Watchdog", "Controller", "PutError", "queue_table", "enum_index", "number", "Kind"]
