"""The pipeline service: durable queue + dispatcher + settings + series tools.

This is what the CLI's ``run`` and the IOC drive.  Every operation is a short
call that validates, mutates the queue (which writes the store) and wakes the
dispatcher; the work happens in the worker processes.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, List, Optional

from .core import sidecar
from .core.jobs import DEFAULT_PHASES, PHASES, Row
from .core.params import ReconParams
from .core.queue import JobQueue
from .dispatch.dispatcher import Dispatcher, SlotSpec
from .store import StateStore

log = logging.getLogger(__name__)

RUNNER = "tomocorioc.dispatch.phases:make_runner"


@dataclass
class ServiceSettings:
    """Service-wide settings (persisted in the store)."""

    params: ReconParams = field(default_factory=ReconParams)
    cor_method: str = "auto"
    model: Optional[str] = None
    metric: str = "entropy"
    timeouts: Dict[str, float] = field(default_factory=lambda: {"try": 1800.0, "infer": 900.0, "full": 7200.0,
                                                                 "tomolog": 600.0})
    max_retries: int = 1
    series_barrier: bool = False
    auto_fix_outliers: bool = False
    max_cor_delta: float = 50.0
    skip_threshold: float = 0.5
    tomolog: Dict[str, Any] = field(default_factory=dict)
    phases: Dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_PHASES))  # for enqueue without phases
    gpus: Optional[str] = None   # '0,1'; None: every visible GPU (or one CPU slot)
    tomoscan_prefix: str = ""    # tomoScan IOC whose scans start work automatically
    auto_trigger: bool = False   # queue each scan tomoScan finishes
    trigger_phases: str = ""     # 'try,infer,full' for auto-queued files; blank: the phase enables
    trigger_timeout: float = 300.0  # s to wait for a complete file before queueing it as failed

    def trigger_phase_map(self) -> Dict[str, bool]:
        """Phases an auto-queued file gets."""
        if not self.trigger_phases.strip():
            return dict(self.phases)
        want = {p.strip() for p in self.trigger_phases.split(",") if p.strip()}
        return {p: p in want for p in PHASES}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["params"] = self.params.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ServiceSettings":
        """Inverse of to_dict (unknown keys ignored, so old state files still load)."""
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "params" in d:
            d["params"] = ReconParams.from_dict(d["params"])
        return cls(**d)


class Service:
    """Owns the store, the queue and the dispatcher."""

    def __init__(self, state_dir: Optional[Path], slots: Optional[List[SlotSpec]],
                 runner_config: Optional[Dict[str, Any]] = None,
                 settings: Optional[ServiceSettings] = None, factory: str = RUNNER, *,
                 cluster: Optional[str] = None, path_map: Optional[List[str]] = None) -> None:
        self.store = StateStore(state_dir)
        saved = self.store.settings().get("service")
        self.settings = settings or (ServiceSettings.from_dict(saved) if saved else ServiceSettings())
        # An Event, not a Condition: _persist runs under the queue's lock, and a
        # waiter holding a Condition while asking the queue would invert the order.
        self._changed = threading.Event()
        self.queue = JobQueue(on_change=self._persist, max_retries=self.settings.max_retries,
                              series_barrier=self.settings.series_barrier, auto_fix=self.settings.auto_fix_outliers)
        self.queue.load(self.store.load_rows(), self.store.meta("fixed_series", []))
        self._factory, self._runner_config = factory, runner_config or {}
        self.cluster, self.path_map = cluster, list(path_map or [])
        if slots is None:   # the stored Gpus setting (as the IOC's Gpus PV last set it)
            from .dispatch.dispatcher import slots_for
            slots = slots_for(self.settings.gpus)
        self.dispatcher = self._make_dispatcher(slots)
        self.messages: List[str] = []
        self.last_finished: Optional[Dict[str, Any]] = None   # latest 'finished' dispatcher event
        # Recent 'finished' events with a sequence number, so a poller misses none between two looks.
        self.finished_events: Deque[Dict[str, Any]] = deque(maxlen=256)
        self._event_seq = 0
        self.last_started: Optional[Dict[str, Any]] = None
        self._started = False
        self.store.set_setting("service", self.settings.to_dict())

    def _make_dispatcher(self, slots: List[SlotSpec]) -> Any:
        """Local slots, or the GPU workers of a Dask cluster (``cluster`` address): same interface."""
        common: Dict[str, Any] = dict(timeouts=self.settings.timeouts, on_series_ready=self._series_ready,
                                      on_event=self._on_event)
        if self.cluster:
            from .dispatch.cluster import ClusterDispatcher
            return ClusterDispatcher(self.queue, slots, self._factory, self._runner_config, self.build_job,
                                     cluster=self.cluster, path_map=self.path_map, **common)
        return Dispatcher(self.queue, slots, self._factory, self._runner_config, self.build_job, **common)

    def cluster_status(self, slots: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """ClusterStatus / NumWorkers / NumGpus: the Dask cluster, or the local slots (``slots``: a
        ``slot_status()`` the caller already has)."""
        status = getattr(self.dispatcher, "cluster_status", None)
        if status is not None:
            return status()
        slots = self.dispatcher.slot_status() if slots is None else slots
        return {"status": f"local: {len(slots)} slot{'s' * (len(slots) != 1)}", "workers": len(slots),
                "gpus": sum(1 for s in slots if str(s["name"]).startswith("gpu"))}

    def _on_event(self, kind: str, data: Dict[str, Any]) -> None:
        # Runs on the dispatcher thread: record only (readers poll these attributes).
        data = dict(data, time=time.time())
        if kind == "finished":
            self._event_seq += 1
            data["seq"] = self._event_seq
            self.last_finished = data
            self.finished_events.append(data)
        elif kind == "started":
            self.last_started = data
        elif kind in ("worker-lost", "fatal"):
            self.notice(f"{data.get('slot')}: {data.get('msg')}")

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and the dispatch loop."""
        self.dispatcher.start()
        self._started = True

    def stop(self) -> None:
        """Stop workers and close the store (running jobs are re-queued on the next start)."""
        self.dispatcher.stop()
        self.store.close()

    def _persist(self, rows: List[Row], events: List[dict], removed: List[int]) -> None:
        for e in events:
            e.setdefault("path", next((r.path for r in rows if r.id == e["row_id"]), None))
        order = [r.id for r in self.queue._rows] if rows or removed else None
        self.store.save(rows, events, removed, order)
        self.store.set_meta("fixed_series", sorted(self.queue.fixed_series))
        self._changed.set()
        if hasattr(self, "dispatcher"):
            self.dispatcher.wake()

    def notice(self, msg: str) -> None:
        """Record a one-line operator message."""
        log.warning("%s", msg)
        self.messages.append(msg)
        del self.messages[:-100]

    # -- jobs --------------------------------------------------------------------
    def params_for(self, path: str) -> ReconParams:
        """Global parameters overlaid with the dataset's sidecar."""
        params, warning = sidecar.resolve(path, self.settings.params)
        if warning:
            self.notice(warning)
        return params

    def build_job(self, row: Row, phase: str) -> Dict[str, Any]:
        """The dict a worker receives for one phase of one row."""
        return {"path": row.path, "phase": phase, "params": self.params_for(row.path).to_dict(), "cor": row.cor,
                "cor_method": self.settings.cor_method, "model": self.settings.model, "metric": self.settings.metric,
                "tomolog": self.settings.tomolog}

    # -- operations ------------------------------------------------------------
    def enqueue(self, paths: Iterable[str], phases: Optional[Dict[str, bool]] = None) -> List[int]:
        """Add files (with ``phases``, else the configured phase enables); then auto-skip undersized scans."""
        ids = self.queue.add([str(p) for p in paths], phases if phases is not None else self.settings.phases)
        if ids:
            self.auto_skip({self.queue.row(i).series for i in ids})
        return ids

    def enqueue_failed(self, path: str, reason: str, phases: Optional[Dict[str, bool]] = None) -> Optional[int]:
        """Queue a file as failed with ``reason`` (it never became readable); None if already queued."""
        ids = self.queue.add([str(path)], phases if phases is not None else self.settings.phases, failed=reason)
        if not ids:
            return None
        self.notice(f"{Path(path).name}: {reason}")
        return ids[0]

    def abort(self) -> int:
        """Cancel everything; running workers are killed and restarted."""
        running = self.queue.abort()
        self.dispatcher.kill_running(running)
        return len(running)

    def auto_skip(self, series: Optional[Iterable[str]] = None) -> List[str]:
        """Disable scans much smaller than their series' median (aborted acquisitions)."""
        from .core import series as series_tools
        rows = [r for r in self.queue.rows() if series is None or r.series in set(series)]
        skipped = []
        for item in series_tools.find_undersized([r.path for r in rows], self.settings.skip_threshold):
            rid = self.queue.find(item.file)
            if rid is not None and not self.queue.row(rid).skipped and not self.queue.row(rid).running_phase:
                self.queue.mark_skipped(rid, item.reason)
                skipped.append(item.file)
                self.notice(f"skipped {Path(item.file).name}: {item.reason}")
        return skipped

    def fix_outliers(self, ids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
        """Fix COR Outliers over the selected rows (all rows when None); returns the changes."""
        from .core import series as series_tools
        rows = self.queue.rows()
        selected = set(ids) if ids is not None else {r.id for r in rows}
        table = [{"file": r.path, "cor": r.cor, "selected": r.id in selected} for r in rows]
        result = series_tools.fix_cor_outliers(table, max_delta=self.settings.max_cor_delta)
        changes = []
        for ch in result.changes:
            row = rows[ch.row]
            self.queue.set_cor(row.id, ch.new, ch.source, ch.reason)
            changes.append({"file": row.path, "old": ch.old, "new": ch.new, "reason": ch.reason})
        for s in result.unfilled_series:
            self.notice(f"series {s!r}: no COR to fill from")
        return changes

    def apply_params(self, source_id: int, target_ids: Iterable[int]) -> int:
        """'Apply to selected': copy one row's sidecar to other rows; returns how many were written."""
        src = self.queue.row(source_id).path
        n = 0
        for rid in target_ids:
            if rid == source_id:
                continue
            sidecar.copy_to(src, self.queue.row(rid).path)
            n += 1
        return n

    def import_rot_cen(self, path: Path) -> int:
        """Set CORs from TomoGUI's rot_cen.json for rows in the queue (source 'imported')."""
        from .core.rotcen import read_rot_cen
        n = 0
        for file, cor in read_rot_cen(path).items():
            rid = self.queue.find(file)
            if rid is not None and cor is not None:
                self.queue.set_cor(rid, cor, "imported", f"from {Path(path).name}")
                n += 1
        return n

    def export_rot_cen(self, path: Path) -> Path:
        """Write every row's COR to a TomoGUI rot_cen.json (merging with what is there)."""
        from .core.rotcen import update_rot_cen
        update_rot_cen(path, {r.path: r.cor for r in self.queue.rows()})
        return Path(path)

    def update_settings(self, **changes: Any) -> None:
        """Change settings, push them to the queue and dispatcher, and persist them.

        ``params`` may be a dict of ReconParams fields to change; it is
        validated as a whole (ParamError on a bad value) before anything changes.
        """
        from dataclasses import replace
        unknown = set(changes) - set(ServiceSettings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if "params" in changes and isinstance(changes["params"], dict):
            changes["params"] = replace(self.settings.params, **changes["params"])
        new = replace(self.settings, **changes)
        self.settings = new
        self.queue.max_retries = new.max_retries
        self.queue.series_barrier, self.queue.auto_fix = new.series_barrier, new.auto_fix_outliers
        self.dispatcher.timeouts = dict(new.timeouts)
        self.store.set_setting("service", new.to_dict())
        self.dispatcher.wake()

    def set_slots(self, slots: List[SlotSpec]) -> None:
        """Replace the worker slots (e.g. a new GPU list); refused while a job runs."""
        from .core.queue import QueueError
        if self.queue.has_running():
            raise QueueError("cannot change the worker slots while jobs run")
        if self.cluster:
            raise QueueError("with --cluster the slots are the cluster's GPU workers; Gpus does not apply")
        was_started = self._started
        self.dispatcher.stop()
        self.dispatcher = self._make_dispatcher(slots)
        if was_started:
            self.dispatcher.start()

    def start_queue(self) -> int:
        """Operator 'Start': queue cancelled/failed phases again and resume; returns rows requeued."""
        n = self.queue.retry_failed()
        self.queue.resume()
        return n

    def _series_ready(self, series: str) -> None:
        ids = [r.id for r in self.queue.rows() if r.series == series]
        self.fix_outliers(ids)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing runs and nothing can start (True), or the timeout (False)."""
        end = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before the check, so a change in between is not lost
            if self.queue.idle():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._changed.wait(min(left, 1.0))

    def summary(self) -> Dict[str, int]:
        """Counts of rows by status."""
        from .core.jobs import row_summary
        return row_summary(self.queue.rows())


__all__ = ["Service", "ServiceSettings", "PHASES"]
