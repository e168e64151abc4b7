"""The pipeline service: durable queue + dispatcher + settings + series tools.

This is what the CLI's ``run`` and the IOC drive.  Every operation is a short
call that validates, mutates the queue (which writes the store) and wakes the
dispatcher; the work happens in the worker processes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tomocorioc.core import layout, sidecar
from tomocorioc.core import series as series_tools
from tomocorioc.core.jobs import Row, cor_text
from tomocorioc.core.params import ReconParams
from tomocorioc.core.queue import JobQueue, QueueError
from tomocorioc.core.result import Job
from tomocorioc.core.rotcen import read_rot_cen, update_rot_cen
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.data.scansize import find_undersized
from tomocorioc.service.cor_outputs import write_cor_outputs
from tomocorioc.service.local import LocalDispatcher, SlotSpec, slots_for
from tomocorioc.service.protocol import ClusterStatus, Dispatcher
from tomocorioc.service.store import StateStore, StoreError

log = logging.getLogger(__name__)

RUNNER = "tomocorioc.worker.runner:make_runner"
# Builds a dispatcher from (queue, slots, factory, runner config, job builder, **callbacks); tests pass a fake.
DispatcherFactory = Callable[..., Dispatcher]


class Service:
    """Owns the store, the queue and the dispatcher."""

    def __init__(self, state_dir: Optional[Path], slots: Optional[List[SlotSpec]],
                 runner_config: Optional[Dict[str, Any]] = None,
                 settings: Optional[ServiceSettings] = None, factory: str = RUNNER, *,
                 cluster: Optional[str] = None, path_map: Optional[List[str]] = None,
                 dispatcher_factory: Optional[DispatcherFactory] = None) -> None:
        self.store = StateStore(state_dir)
        self.store_problem: Optional[str] = None   # why the last state write failed, until one succeeds
        saved = self.store.settings().get("service")
        self.settings = settings or (ServiceSettings.from_dict(saved) if saved else ServiceSettings())
        # An Event, not a Condition: _persist runs under the queue's lock, and a
        # waiter holding a Condition while asking the queue would invert the order.
        self._changed = threading.Event()
        self.queue = JobQueue(on_change=self._persist, max_retries=self.settings.max_retries,
                              series_barrier=self.settings.series_barrier, auto_fix=self.settings.auto_fix_outliers,
                              hold_on_review=self.settings.hold_full_on_review)
        self.queue.load(self.store.load_rows(), self.store.meta("fixed_series", []))
        self._factory, self._runner_config = factory, runner_config or {}
        self.cluster, self.path_map = cluster, list(path_map or [])
        self._dispatcher_factory = dispatcher_factory
        if slots is None:   # the stored Gpus setting (as the IOC's Gpus PV last set it)
            slots = slots_for(self.settings.gpus)
        self.dispatcher = self._make_dispatcher(slots)
        self.messages: List[str] = []
        self.last_finished: Optional[Dict[str, Any]] = None   # latest 'finished' dispatcher event
        # Recent 'finished' events with a sequence number, so a poller misses none between two looks.
        self.finished_events: Deque[Dict[str, Any]] = deque(maxlen=256)
        self._event_seq = 0
        self.last_started: Optional[Dict[str, Any]] = None
        self._started = False
        self._slot_lock = threading.Lock()
        self._settings_lock = threading.Lock()
        self._slot_swap: Optional[threading.Thread] = None
        # The settings generation the last run left (an autosave file older than this is not restored).
        self.loaded_generation = self.store.settings_generation
        self.settings_generation = self.store.set_setting("service", self.settings.to_dict())

    def _make_dispatcher(self, slots: Sequence[SlotSpec]) -> Dispatcher:
        """Local slots, or the GPU workers of a Dask cluster (``cluster`` address): same interface."""
        common: Dict[str, Any] = dict(timeouts=self.settings.timeouts, on_series_ready=self._series_ready,
                                      on_event=self._on_event)
        if self._dispatcher_factory is not None:
            return self._dispatcher_factory(self.queue, list(slots), self._factory, self._runner_config,
                                            self.build_job, **common)
        if self.cluster:
            from tomocorioc.service.cluster import ClusterDispatcher
            return ClusterDispatcher(self.queue, slots, self._factory, self._runner_config, self.build_job,
                                     cluster=self.cluster, path_map=self.path_map, **common)
        return LocalDispatcher(self.queue, list(slots), self._factory, self._runner_config, self.build_job,
                               **common)

    def cluster_status(self) -> ClusterStatus:
        """ClusterStatus / NumWorkers / NumGpus: the Dask cluster, or the local slots."""
        return self.dispatcher.cluster_status()

    def _on_event(self, kind: str, data: Dict[str, Any]) -> None:
        # Runs on the dispatcher thread: record only (readers poll these attributes).
        data = dict(data, time=time.time())
        if kind == "finished":
            self._event_seq += 1
            data["seq"] = self._event_seq
            self.last_finished = data
            self.finished_events.append(data)
            if not data.get("success"):   # the last error is what Message shows
                row = self.queue.get(data.get("row"))
                name = Path(row.path).name if row else f"row {data.get('row')}"
                self.notice(f"{name}: {data.get('phase')} failed: {data.get('msg')}")
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

    def _persist(self, rows: List[Row], events: List[dict], removed: List[int],
                 fixed_series: Optional[List[str]]) -> None:
        """The queue's write-ahead hook: one transaction, or StoreError and the queue does not change."""
        try:
            self.store.save(rows, events, removed, fixed_series)
        except StoreError as exc:
            if self.store_problem != str(exc):
                log.error("%s", exc)   # StoreError's text already says "state store failing: ..."
            self.store_problem = str(exc)
            raise
        if self.store_problem:
            log.warning("state store writes again (was: %s)", self.store_problem)
            self.store_problem = None
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

    def build_job(self, row: Row, phase: str) -> Job:
        """What a worker receives for one phase of one row (ValueError/OSError: a bad sidecar or path)."""
        s = self.settings
        return Job(path=row.path, phase=phase, params=self.params_for(row.path).to_dict(), cor=row.cor,
                   estimate=row.estimate, cor_method=s.cor_method, model=s.model, metric=s.metric,
                   tomolog=dict(s.tomolog))

    # -- operations ------------------------------------------------------------
    def enqueue(self, paths: Iterable[str], phases: Optional[Dict[str, bool]] = None,
                auto_skip: bool = True) -> List[int]:
        """Add files (with ``phases``, else the configured phase enables); then auto-skip aborted scans.

        A file whose name is not valid UTF-8 cannot be stored, shown on a PV or
        passed on safely: it is left out with a notice (rename it), never queued.
        """
        paths, bad = layout.split_utf8_names([str(p) for p in paths])
        if bad:
            self.notice(f"{len(bad)} file(s) not queued: the name is not valid UTF-8 (rename it): {bad[0]}")
        ids = self.queue.add(paths, phases if phases is not None else self.settings.phases)
        if ids and auto_skip:
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
        rows = [r for r in self.queue.rows() if series is None or r.series in set(series)]
        skipped = []
        for item in find_undersized([r.path for r in rows], self.settings.skip_threshold):
            rid = self.queue.find(item.file)
            if rid is not None and not self.queue.row(rid).skipped and not self.queue.row(rid).running_phase:
                try:
                    self.queue.mark_skipped(rid, item.reason)
                except (QueueError, OSError) as exc:   # the file is queued all the same; say why it was not skipped
                    self.notice(f"{Path(item.file).name}: not skipped: {exc}")
                    continue
                skipped.append(item.file)
                self.notice(f"skipped {Path(item.file).name}: {item.reason}")
        return skipped

    def set_cor(self, row_id: int, cor: Optional[float], source: str = "manual", reason: str = "",
                needs_review: Optional[bool] = None) -> List[str]:
        """Change a row's COR; outputs made with the old one become stale (re-run per RerunOnCorChange).

        The scan's ``center_of_rotation.txt`` and its folder's ``rot_cen.json``
        (those that exist) are rewritten with the new COR.  Returns the phases
        that became stale.
        """
        s = self.settings
        stale = self.queue.set_cor(row_id, cor, source, reason, rerun=s.rerun_on_cor_change and s.phase_full,
                                   needs_review=needs_review)
        row = self.queue.row(row_id)
        try:
            write_cor_outputs(row.path, row.cor, source, reason)
        except OSError as exc:   # the row holds the COR all the same; say which file is out of date
            self.notice(f"{Path(row.path).name}: COR {row.cor} not written beside the scan: {exc}")
        if stale:
            again = [p for p in stale if row.state[p].value == "queued"]
            self.notice(f"{Path(row.path).name}: COR changed to {cor_text(row.cor)} ({source}); "
                        + (f"{', '.join(again)} queued again" if again else
                           f"{', '.join(stale)} stale (Start re-runs it)"))
        return stale

    def fix_outliers(self, ids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
        """Fix COR Outliers over the selected rows (all rows when None); returns the changes.

        Only enabled rows are selected (a disabled or skipped row is neither
        changed nor filled, but donates its COR); a manual COR is never
        replaced, and one the rule would have flagged is reported and marked
        for review.
        """
        rows = self.queue.rows()
        chosen = set(ids) if ids is not None else {r.id for r in rows}
        table = [{"file": r.path, "cor": r.cor, "manual": r.cor_source == "manual",
                  "selected": r.id in chosen and r.enabled and not r.skipped} for r in rows]
        result = series_tools.fix_cor_outliers(table, max_delta=self.settings.max_cor_delta)
        changes = []
        for ch in result.changes:
            row = rows[ch.row]
            self.set_cor(row.id, ch.new, ch.source, ch.reason)
            changes.append({"file": row.path, "old": ch.old, "new": ch.new, "reason": ch.reason})
        by_path = {r.path: r for r in rows}
        for file, why in result.manual_flagged:
            row = by_path[file]
            if not row.needs_review:
                self.queue.set_review(row.id, True)
            self.notice(f"{Path(file).name}: {why}; check it (needs review)")
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
        n = 0
        for file, cor in read_rot_cen(path).items():
            rid = self.queue.find(file)
            if rid is not None and cor is not None:
                self.set_cor(rid, cor, "imported", f"from {Path(path).name}")
                n += 1
        return n

    def export_rot_cen(self, path: Path) -> Path:
        """Write every row's COR to a TomoGUI rot_cen.json (merging with what is there)."""
        update_rot_cen(path, {r.path: r.cor for r in self.queue.rows()})
        return Path(path)

    def update_settings(self, changes: Optional[Mapping[str, Any]] = None, **fields: Any) -> None:
        """Change settings as one validated record, persist it, then make it visible.

        ``changes`` maps dotted paths (``params.search_width``) to values;
        keyword arguments name top-level fields (``params`` may be a dict of
        ReconParams fields).  A bad value raises SettingError (a ValueError)
        and nothing changes.
        """
        merged: Dict[str, Any] = dict(changes or {})
        for key, value in fields.items():
            if key == "params" and isinstance(value, Mapping):
                merged.update({f"params.{k}": v for k, v in value.items()})
            else:
                merged[key] = value
        with self._settings_lock:   # puts run on more than one thread: no change may overwrite another
            new = self.settings.changed(merged)
            generation = self.store.set_setting("service", new.to_dict())   # first durable, then visible
            self.settings, self.settings_generation = new, generation
            self.queue.max_retries = new.max_retries
            self.queue.series_barrier, self.queue.auto_fix = new.series_barrier, new.auto_fix_outliers
            self.queue.set_hold_on_review(new.hold_full_on_review)
            self.dispatcher.timeouts = dict(new.timeouts)
        self.dispatcher.wake()

    def settings_record(self) -> Tuple[int, ServiceSettings]:
        """The settings in force and their generation, read together (what the autosave file holds)."""
        with self._settings_lock:
            return self.settings_generation, self.settings

    def set_slots(self, slots: Sequence[SlotSpec], wait: bool = True) -> None:
        """Replace the worker slots (e.g. a new GPU list); refused while a job runs.

        Stopping the old workers takes seconds, so with ``wait=False`` the swap
        runs on its own thread and this returns at once (a putter never waits
        for it); :meth:`wait_slots` waits for the swap to finish.
        """
        if self.queue.has_running():
            raise QueueError("cannot change the worker slots while jobs run")
        if self.cluster:
            raise QueueError("with --cluster the slots are the cluster's GPU workers; Gpus does not apply")
        if wait:
            self._swap_slots(list(slots))
            return
        self.wait_slots()   # one swap at a time, in the order asked
        self._slot_swap = threading.Thread(target=self._swap_slots, args=(list(slots),), name="slot-swap",
                                           daemon=True)
        self._slot_swap.start()

    def _swap_slots(self, slots: List[SlotSpec]) -> None:
        with self._slot_lock:
            try:
                was_started = self._started
                self.dispatcher.stop()
                self.dispatcher = self._make_dispatcher(slots)
                if was_started:
                    self.dispatcher.start()
            except Exception as exc:  # noqa: BLE001 - on its own thread: say so, never die silently
                log.exception("worker slots not replaced")
                self.notice(f"worker slots not replaced: {type(exc).__name__}: {exc}")

    def wait_slots(self, timeout: Optional[float] = None) -> bool:
        """Wait for a slot swap started with ``wait=False``; True when none is running."""
        t = self._slot_swap
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            return not t.is_alive()
        return True

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


__all__ = ["Service", "ServiceSettings", "RUNNER"]
