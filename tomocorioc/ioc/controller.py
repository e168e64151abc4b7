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
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from tomocorioc.core import layout, sidecar
from tomocorioc.core.jobs import Row, valid_cor
from tomocorioc.core.params import RETIRED_FILTERS
from tomocorioc.core.queue import QueueError
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import get_path
from tomocorioc.core.tomolog_settings import check_beamline, check_cloud_service, check_presentation_url
from tomocorioc.data.errors import DatasetError
from tomocorioc.data.scansize import scan_shape
from tomocorioc.ioc.convert import PutError, enum_index, number, one_line, text
from tomocorioc.ioc.pvdefs import MAX_SLOTS, PAGE_ROWS, ROW_STATUSES, PVDef, Role, by_name, short
from tomocorioc.service.camrot import CamRotRunner, TiltResult
from tomocorioc.service.local import host_gpus
from tomocorioc.service.preflight import preflight
from tomocorioc.service.protocol import ServiceAPI, SlotState
from tomocorioc.service.trigger.manager import TriggerManager

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
_MAX_ENQUEUE = 10000
# What Slot<N>:Phase says of a slot without a job.
_SLOT_WORDS = {SlotState.IDLE: "idle", SlotState.BUSY: "idle", SlotState.STARTING: "starting",
               SlotState.RESTARTING: "restarting", SlotState.BROKEN: "broken"}
# A put handler: (PV definition, the client's value) -> the value the PV holds afterwards.
Handler = Callable[[PVDef, Any], Any]


def _check_model(path: str) -> Optional[str]:
    """None when ``path`` loads as a tomocor checkpoint (checked in a worker-side process), else why not."""
    return preflight(model=path)


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

    def __init__(self, service: ServiceAPI, data_roots: Sequence[Path],
                 slot_factory: Optional[Callable[[Optional[str]], Sequence[Any]]] = None,
                 trigger: Optional[TriggerManager] = None, camrot: Optional[CamRotRunner] = None, *,
                 model_roots: Optional[Sequence[Path]] = None,
                 model_check: Optional[Callable[[str], Optional[str]]] = None,
                 gpu_count: Optional[Callable[[], int]] = None) -> None:
        self.service = service
        self.trigger = trigger              # TriggerManager, when this IOC can watch tomoScan
        self.data_roots = [Path(r).resolve() for r in data_roots]
        # Checkpoints are read only from these folders (a put elsewhere must not probe the host's files).
        self.model_roots = [Path(r).resolve() for r in (model_roots if model_roots else data_roots)]
        self.model_check = model_check or _check_model     # path -> None or why it is no tomocor checkpoint
        self.gpu_count = gpu_count or host_gpus            # CUDA devices of this host
        self.slot_factory = slot_factory    # gpus string -> slot specs (for the Gpus setting)
        self.defs = by_name()
        self.selected: Optional[int] = None
        self.row_offset = 0
        self.last_message = ""
        self.slow_puts = frozenset({"ModelPath"})   # checked in another process: seconds, on their own thread
        self.tomolog_allow: Tuple[str, ...] = ()           # TomoLogUrl prefixes (serve --tomolog-allow); () = any
        self.reload_acf: Optional[Callable[[], str]] = None  # ReloadAcf's action (serve --acf)
        # The few PVs whose put does more than set a bound setting; every other setting PV is generic.
        self.handlers: Dict[str, Handler] = {
            "Gpus": self._put_gpus, "ModelPath": self._put_model, "AutoTrigger": self._put_auto_trigger,
            "TomoScanPrefix": self._put_tomoscan_prefix, "TriggerTimeout": self._put_trigger_timeout,
            "Enqueue": self._put_enqueue, "Start": self._cmd(self._start), "Abort": self._cmd(self._abort),
            "Pause": self._cmd(self._pause), "Resume": self._cmd(self._resume),
            "FixOutliers": self._cmd(self._fix_outliers), "RetryFailed": self._cmd(self._retry_failed),
            "ClearDone": self._cmd(self._clear_done), "ApplyParams": self._cmd(self._apply_params),
            "RemoveSelected": self._cmd(self._remove_selected), "ReloadAcf": self._cmd(self._reload_acf),
            # Confined destinations: checked at put time, not when the TomoLog phase runs.
            "TomoLogUrl": self._checked(lambda v: check_presentation_url(v, tuple(self.tomolog_allow))),
            "TomoLogCloud": self._checked(check_cloud_service), "TomoLogBeamline": self._checked(check_beamline),
            "CamRot": self._cmd(self._camrot), "ApplyTilt": self._cmd(self._apply_tilt),
            "FbpFilter": self._put_fbp_filter, "AcceptCor": self._cmd(self._accept_cor),
        }
        # CamRot measures in a worker process; its result arrives on a waiting thread.
        self.camrot = camrot if camrot is not None else CamRotRunner(on_done=self._camrot_done)

    # -- puts ----------------------------------------------------------------------
    def put(self, name: str, value: Any) -> Any:
        """Validate and apply a put; returns the value the PV should now hold."""
        p = self.defs.get(name)
        if p is None or not p.kind.writable:
            raise PutError(f"{name} is read-only")
        try:
            handler = self.handlers.get(name)
            if handler is not None:
                return handler(p, value)
            if p.role is Role.SETTING:
                return self._set(p, p.conv.to_setting(p, value))
            if p.role is Role.SELECT:
                return self._select(p, value)
            raise PutError(f"{name}: no handler")   # a COMMAND PV missing from the table: a bug
        except PutError as exc:
            if str(exc).startswith(name):
                raise
            raise PutError(f"{name}: {one_line(exc)}") from None   # every refusal names its PV
        except (QueueError, ValueError, OSError) as exc:
            raise PutError(f"{name}: {one_line(exc)}") from None

    def message(self, text: str) -> None:
        """Record an operator message (also kept by the service)."""
        self.last_message = one_line(text)
        self.service.notice(self.last_message)

    def _set(self, p: PVDef, value: Any) -> Any:
        """Apply a bound setting's new value (validated as a whole record); the PV's value after it."""
        self.service.update_settings({p.setting: value})
        return p.conv.to_pv(p, value)

    def setting_values(self, settings: Optional[ServiceSettings] = None) -> Dict[str, Any]:
        """Value of every setting PV, read through its binding (of the settings in force, or ``settings``)."""
        s = self.service.settings if settings is None else settings
        return {p.name: p.conv.to_pv(p, get_path(s, p.setting)) for p in self.defs.values()
                if p.role is Role.SETTING}

    # -- settings with side effects ------------------------------------------------------
    def _put_gpus(self, p: PVDef, value: Any) -> Any:
        return self.set_gpus(p.conv.to_setting(p, value))

    def set_gpus(self, gpus: Optional[str], command_line: bool = False) -> str:
        """Apply a GPU list (None: automatic); the slots are swapped on a thread of their own.

        A put asking for GPUs on a host without CUDA devices is refused; the
        command line (``serve --gpus``) may still ask for them, so slots named
        after GPUs can run torch on the CPU (benchmarks do).
        """
        p = self.defs["Gpus"]
        if self.slot_factory is None:
            raise PutError("Gpus: this IOC cannot change its worker slots")
        self.service.settings.changed({p.setting: gpus})   # the whole record validates before any slot changes
        slots = self.slot_factory(gpus)   # ValueError on a bad list
        if gpus and not command_line and self.gpu_count() == 0:
            raise PutError("Gpus: no CUDA devices; this host runs one CPU slot")
        if gpus != self.service.settings.gpus:
            if self.service.queue.has_running():
                raise QueueError("cannot change the worker slots while jobs run")
            self._set(p, gpus)
            self.service.set_slots(slots, wait=command_line)
        return p.conv.to_pv(p, gpus)

    def _put_model(self, p: PVDef, value: Any) -> Any:
        """ModelPath: blank clears it; else a loadable tomocor checkpoint under the model roots."""
        path = p.conv.to_setting(p, value)
        if path:
            real = Path(os.path.realpath(path))
            if not any(real == r or r in real.parents for r in self.model_roots):
                raise PutError(f"ModelPath: {path} is outside the model roots "
                               f"({', '.join(map(str, self.model_roots)) or 'none'}; serve --model-root DIR)")
            if not real.is_file():
                raise PutError(f"ModelPath: no such file: {path}")
            why = self.model_check(str(real))
            if why:
                raise PutError(f"ModelPath: {why}")
        return self._set(p, path)

    def _put_tomoscan_prefix(self, p: PVDef, value: Any) -> Any:
        prefix = p.conv.to_setting(p, value)
        s = self.service.settings
        if s.auto_trigger and not prefix:
            raise PutError("TomoScanPrefix: cannot be blank while AutoTrigger is On")
        changed = prefix != s.tomoscan_prefix
        out = self._set(p, prefix)
        if changed and s.auto_trigger:
            self.relink()
        return out

    def _put_auto_trigger(self, p: PVDef, value: Any) -> Any:
        on = p.conv.to_setting(p, value)
        s = self.service.settings
        if on and not s.tomoscan_prefix:
            raise PutError("AutoTrigger: set TomoScanPrefix first")
        if on and self.trigger is None:
            raise PutError("AutoTrigger: this IOC was started without the trigger")
        changed = on != s.auto_trigger
        out = self._set(p, on)
        if changed:
            self.relink()
        return out

    def _put_trigger_timeout(self, p: PVDef, value: Any) -> Any:
        seconds = p.conv.to_setting(p, value)
        out = self._set(p, seconds)
        if self.trigger is not None:
            self.trigger.complete_timeout = seconds
        return out

    def _put_fbp_filter(self, p: PVDef, value: Any) -> Any:
        """A filter this project no longer offers (an old autosave file, a script) becomes its nearest one."""
        old = value.decode("latin-1") if isinstance(value, bytes) else value
        if isinstance(old, str) and old.strip() in RETIRED_FILTERS:
            new = RETIRED_FILTERS[old.strip()]
            self.message(f"FbpFilter: {old.strip()!r} is no longer offered (tomocupy has no such filter); "
                         f"using {new!r}")
            value = new
        return self._set(p, p.conv.to_setting(p, value))

    def relink(self) -> None:
        """Point the trigger at the configured tomoScan (or stop it) after a settings change."""
        if self.trigger is not None:
            s = self.service.settings
            self.trigger.set_tomoscan(s.tomoscan_prefix if s.auto_trigger and s.tomoscan_prefix else None)

    def _checked(self, check: Callable[[Any], Any]) -> Handler:
        """A bound setting whose converted value must pass ``check`` (ValueError: refused) before it is set."""
        def handler(p: PVDef, value: Any) -> Any:
            return self._set(p, check(p.conv.to_setting(p, value)))
        return handler

    # -- commands ------------------------------------------------------------------------
    def _put_enqueue(self, p: PVDef, value: Any) -> str:
        path = text(p, value)
        if not path:
            raise PutError("Enqueue: empty path")
        paths = self.expand(path)
        good, bad = layout.split_utf8_names(paths)
        ids = self.service.enqueue(good)
        parts = [f"queued {len(ids)} of {len(paths)} file(s) from {path}"]
        if len(good) > len(ids):
            parts.append(f"{len(good) - len(ids)} already queued")
        if bad:
            parts.append(f"{len(bad)} not queued: the name is not valid UTF-8 (rename it): {bad[0]}")
        self.message("; ".join(parts))
        return path

    def _cmd(self, action: Callable[[], str]) -> Handler:
        """A busy-style command PV: writing 1 runs ``action`` (its text goes to Message), 0 does nothing."""
        def handler(p: PVDef, value: Any) -> int:
            if enum_index(p, value):
                self.message(action())
            return 0
        return handler

    def _reload_acf(self) -> str:
        if self.reload_acf is None:
            raise PutError("ReloadAcf: access security is off (serve --acf FILE)")
        return self.reload_acf()

    def _start(self) -> str:
        n = self.service.start_queue()
        return f"started; {n} row(s) queued again" if n else "started"

    def _abort(self) -> str:
        return f"aborted; {self.service.abort()} running job(s) cancelled"

    def _pause(self) -> str:
        self.service.queue.pause()
        return "paused: no new jobs start"

    def _resume(self) -> str:
        self.service.queue.resume()
        return "resumed"

    def _fix_outliers(self) -> str:
        return f"Fix COR Outliers: {len(self.service.fix_outliers())} COR(s) changed"

    def _retry_failed(self) -> str:
        return f"{self.service.queue.retry_failed()} row(s) queued again"

    def _clear_done(self) -> str:
        return f"{self.service.queue.clear_finished()} finished row(s) removed"

    def _apply_params(self) -> str:
        src = self._selected_row()
        targets = [r.id for r in self.service.queue.rows() if r.enabled and r.id != src.id]
        n = self.service.apply_params(src.id, targets)
        return f"parameters of {Path(src.path).name} copied to {n} row(s)"

    def _camrot(self) -> str:
        src = self._selected_row()
        self.camrot.start(src.path, self.service.params_for(src.path).search_width)
        return f"CamRot: measuring {Path(src.path).name}"

    def _camrot_done(self, res: TiltResult) -> None:
        name = Path(res.path).name
        self.message(f"CamRot {name}: tilt {res.tilt_deg:+.3f}° (R² {res.r2:.4f}); ApplyTilt stores it"
                     if res.state == "ok" else f"CamRot {name}: {res.error}")

    def _apply_tilt(self) -> str:
        src = self._selected_row()
        res = self.camrot.result(src.path)
        if res is None or res.state != "ok":
            raise PutError("no CamRot result for the selected file (put 1 to CamRot first)"
                           if res is None or res.state == "error" else "CamRot is still measuring")
        params = self.service.params_for(src.path).replace(rotate_proj_angle=round(res.tilt_deg, 4))
        sidecar.write(src.path, params, self.service.settings.params)
        return (f"rotate_proj_angle {params.rotate_proj_angle:g}° stored for {Path(src.path).name}; "
                "its next try and full reconstruction rotate the projections")
    def _accept_cor(self) -> str:
        row = self._selected_row()
        cor = self.service.queue.accept_cor(row.id)
        self.service.dispatcher.wake()   # a full held for review may start now
        return f"COR {cor:.2f} of {Path(row.path).name} accepted"

    def _remove_selected(self) -> str:
        src = self._selected_row()
        self.service.queue.remove([src.id])
        self.selected = None
        return f"removed {Path(src.path).name}"

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

    def _inside_roots(self, path: Path) -> bool:
        try:
            self.under_roots(path)
        except PutError:
            log.warning("Enqueue: %s resolves outside the data roots; not queued", path)
            return False
        return True

    def expand(self, text: str) -> List[str]:
        """A file, a directory (its scans) or a glob -> scan paths under the data roots."""
        if any(ch in text for ch in "*?["):
            if not os.path.isabs(text):
                raise PutError(f"Enqueue: glob must be an absolute path: {text}")
            self.under_roots(Path(text.split("*")[0].split("?")[0].split("[")[0] or "/"))
            hits = sorted(h for h in glob.glob(text) if os.path.isfile(h))
            if not hits:
                raise PutError(f"Enqueue: nothing matches {text}")
            # like a folder, a glob queues only scan files (dir/* also matched truth.json, notes, logs...)
            paths = [str(self.under_roots(Path(h))) for h in hits if Path(h).suffix.lower() in SCAN_SUFFIXES]
            if not paths:
                raise PutError(f"Enqueue: no scan files ({', '.join(SCAN_SUFFIXES)}) match {text}")
        else:
            if not os.path.isabs(text):
                raise PutError(f"Enqueue: path must be absolute: {text}")
            real = self.under_roots(Path(text))
            if real.is_dir():
                found = sorted(f for f in real.iterdir() if f.is_file() and f.suffix.lower() in SCAN_SUFFIXES)
                paths = [str(f) for f in found if self._inside_roots(f)]   # a symlink may point outside
                if found and not paths:
                    raise PutError(f"Enqueue: every scan file in {text} lies outside the data roots")
                if not paths:
                    raise PutError(f"Enqueue: no scan files ({', '.join(SCAN_SUFFIXES)}) in {text}")
            elif real.is_file():
                try:
                    scan_shape(real)   # a text file named x.h5 is refused here, not in its try phase
                except DatasetError as exc:
                    raise PutError(f"Enqueue: {exc}") from None
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
            self.selected = None   # a refused selection leaves none: Selected:* never act on the old file
            name = text(p, value)
            if not name:
                return ""
            rid = q.find(name)
            if rid is None:
                named = [r for r in q.rows() if Path(r.path).name == name]
                if len(named) == 1:
                    rid = named[0].id
            if rid is None:
                raise PutError(f"SelectFile: not in the queue: {name}")
            self.selected = rid
            return name
        if p.name == "RowOffset":
            v = number(p, value)
            if v != int(v):
                raise PutError(f"RowOffset: {v:g} is not an integer")
            self.row_offset = int(v)
            return int(v)
        row = self._selected_row() if p.name.startswith("Selected:") else self._page_row(p)
        if p.name.endswith(":Cor"):
            v = self._cor_in_range(p, row, number(p, value))
            self.service.set_cor(row.id, v, "manual", "set by operator (PV)")
            return v
        if p.name.endswith(":Enable"):
            v = enum_index(p, value)
            q.set_enabled([row.id], bool(v))
            return v
        raise PutError(f"{p.name}: not writable")

    @staticmethod
    def _cor_in_range(p: PVDef, row: Row, v: float) -> float:
        """A COR for ``row``'s file: 0 <= COR <= its detector width (checked when the file can be read)."""
        v = valid_cor(v)
        try:
            width: Optional[int] = scan_shape(row.path)[2]
        except DatasetError as exc:   # the row will fail on its own; only the sign can be checked
            log.info("%s: COR range not checked: %s", p.name, exc)
            width = None
        if v < 0 or (width is not None and v > width):
            limit = f"0..{width}" if width is not None else ">= 0"
            raise PutError(f"{p.name}: COR {v:g} is outside {limit} px for {Path(row.path).name}")
        return v

    # -- status ------------------------------------------------------------------------------
    def snapshot(self) -> Dict[str, Any]:
        """Every status PV's value now except the watchdog's (the server writes those that changed).

        Its cost does not grow with the queue: counts come from the queue's
        running tally and only the rows on show (page, slots, selection) are read.
        """
        svc, q = self.service, self.service.queue
        tally = q.tally
        counts = tally.status
        slots = svc.dispatcher.slot_status()
        running = [(s, q.get(s.row)) for s in slots if s.row is not None]
        busy = bool(running) or (not q.paused and q.has_waiting())
        v: Dict[str, Any] = {
            "Busy": int(busy), "Paused": int(q.paused),
            "QueueLength": len(q), "NumQueued": counts.get("queued", 0), "NumRunning": counts.get("running", 0),
            "NumDone": counts.get("done", 0) + counts.get("review", 0), "NumFailed": counts.get("failed", 0),
            "NumSkipped": counts.get("skipped", 0) + counts.get("disabled", 0),
            "NumNeedsReview": tally.needs_review, "NumStale": counts.get("stale", 0),
            "Progress": round(100.0 * tally.finished / tally.requested, 1) if tally.requested else 0.0,
            "NumSlots": len(slots), "Message": svc.messages[-1] if svc.messages else "",
            "TriggerStatus": self.trigger.status if self.trigger is not None else "off",
        }
        cs = svc.cluster_status()
        v["ClusterStatus"], v["NumWorkers"], v["NumGpus"] = cs.text, cs.workers, cs.gpus
        if svc.store_problem:
            v["ReconStatus"] = svc.store_problem
        elif running:
            parts = [f"{s.phase} {Path(r.path).name if r else '?'} ({s.name})" for s, r in running]
            v["ReconStatus"] = "Running " + "; ".join(parts) + f"; {counts.get('queued', 0)} queued"
        elif q.paused:
            v["ReconStatus"] = f"Paused; {counts.get('queued', 0)} queued"
        else:
            v["ReconStatus"] = "Idle" if not busy else "Starting"
        started, fin = svc.last_started, svc.last_finished
        current = q.get(started.get("row")) if started else None
        if current is not None:
            v["CurrentFile"] = current.path
        if fin:
            r = q.get(fin.get("row"))
            secs = r.timings.get(fin.get("phase")) if r else None
            if secs is not None:
                v["ReconTime"] = float(secs)
        last = q.get(q.last_cor_row)
        v["LastFile"] = last.path if last is not None else ""
        v["LastCor"] = float(last.cor) if last is not None and last.cor is not None else None
        by_slot = {s.name: r for s, r in running}
        for i in range(MAX_SLOTS):
            s = slots[i] if i < len(slots) else None
            r = by_slot.get(s.name) if s else None
            v[f"Slot{i + 1}:Name"] = s.name if s else ""
            v[f"Slot{i + 1}:File"] = r.path if r else ""
            v[f"Slot{i + 1}:Phase"] = (s.phase if r else _SLOT_WORDS[s.state]) if s else ""
            v[f"Slot{i + 1}:Elapsed"] = round(float(s.elapsed), 1) if r else 0.0
        sel = q.get(self.selected)
        sel_held = sel is not None and q.held(sel)
        v.update(self._row_values("Selected", sel, held=sel_held))
        v["Selected:Confidence"] = float(sel.confidence) if sel and sel.confidence is not None else None
        v["Selected:NeedsReview"] = int(bool(sel and sel.needs_review))
        v["Selected:Phase"] = (sel.current_phase or "") if sel else ""
        v["Selected:Geometry"] = sel.geometry if sel else ""
        v["Selected:Error"] = row_note(sel, held=sel_held) if sel else ""
        v.update(self._tilt_values(sel))
        page = q.page(self.row_offset, PAGE_ROWS)
        colors = q.series_colors()
        for n in range(1, PAGE_ROWS + 1):
            r = page[n - 1] if n <= len(page) else None
            pre = f"Row{n:02d}"
            v.update(self._row_values(pre, r, full_path=False, held=r is not None and q.held(r)))
            v[f"{pre}:SeriesColor"] = colors.get(r.series, 0) if r else 0
        return v

    def _tilt_values(self, sel: Optional[Row]) -> Dict[str, Any]:
        """Selected:Tilt* from the selected file's CamRot (NaN: not measured)."""
        res = self.camrot.result(sel.path) if sel else None
        ok = res is not None and res.state == "ok"
        status = "" if res is None else (
            f"tilt {res.tilt_deg:+.3f}° R² {res.r2:.4f}" if ok else res.error or res.state)
        return {"Selected:Tilt": res.tilt_deg if ok else math.nan, "Selected:TiltR2": res.r2 if ok else math.nan,
                "Selected:TiltStatus": status}

    @staticmethod
    def _row_values(pre: str, r: Optional[Row], full_path: bool = True, held: bool = False) -> Dict[str, Any]:
        """A row's PVs; an absent COR is None (shown as NaN, INVALID), texts cut to what a stringin holds.

        ``held``: the row's full waits for the operator's review; it shows as "review", not "queued".
        """
        if r is None:
            out: Dict[str, Any] = {f"{pre}:Cor": None, f"{pre}:CorSource": "", f"{pre}:Status": 0,
                                   f"{pre}:Series": "", f"{pre}:Enable": 0}
            if not full_path:
                out.update({f"{pre}:File": "", f"{pre}:Error": ""})
            return out
        out = {f"{pre}:Cor": float(r.cor) if r.cor is not None else None, f"{pre}:CorSource": r.cor_source or "",
               f"{pre}:Status": ROW_STATUSES.index(row_status(r, held)),
               f"{pre}:Series": short(r.series), f"{pre}:Enable": int(r.enabled)}
        if not full_path:
            out[f"{pre}:File"] = Path(r.path).name
            # the row names its file: "try: missing dataset ..." fits a stringin, "try: /data/.../x.h5: ..." did not
            out[f"{pre}:Error"] = short(row_note(r, held).replace(f"{r.path}: ", ""))
        return out


HELD_NOTE = "full held: COR needs review (AcceptCor or set a COR)"


def row_status(r: Row, held: bool = False) -> str:
    """The word screens show: a row whose full waits for review is "review", not "queued"."""
    word = "review" if held else r.status
    return word if word in ROW_STATUSES else "idle"


def row_note(r: Row, held: bool = False) -> str:
    """The row's error or skip reason; for a held row, what the operator must do."""
    return r.error or r.skipped or (HELD_NOTE if held else "")


def queue_table(rows: List[Row], held: Optional[Set[int]] = None) -> Dict[str, List[Any]]:
    """Columns of the PVA Queue NTTable; ``held``: ids of rows whose full waits for review."""
    held = held or set()
    cols: Dict[str, List[Any]] = {k: [] for k in ("file", "series", "status", "phase", "cor", "cor_source",
                                                  "confidence", "needs_review", "enabled", "error", "updated",
                                                  "geometry")}
    for r in rows:
        cols["file"].append(r.path)
        cols["series"].append(r.series)
        cols["status"].append(row_status(r, r.id in held))
        cols["phase"].append(r.current_phase or "")
        cols["cor"].append(float(r.cor) if r.cor is not None else float("nan"))
        cols["cor_source"].append(r.cor_source or "")
        cols["confidence"].append(float(r.confidence) if r.confidence is not None else float("nan"))
        cols["needs_review"].append(bool(r.needs_review))
        cols["enabled"].append(bool(r.enabled))
        cols["error"].append(row_note(r, r.id in held))
        cols["updated"].append(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.updated)))
        cols["geometry"].append(r.geometry)
    return cols


__all__ = ["Watchdog", "Controller", "PutError", "queue_table", "SCAN_SUFFIXES"]
