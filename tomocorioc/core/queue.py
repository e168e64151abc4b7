"""The job queue: rows, their per-file phase flow, and every operator operation (pure).

Phases flow per file, not as batch barriers: a file's full starts as soon as
its infer is done while other files are still in try.  Each public method
takes the lock and changes ``uid`` when it mutates anything, so clients can
poll cheaply; an ``on_change`` hook receives the changed rows and COR events
so the durable store can write them.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from tomocorioc.core.jobs import (
    DEFAULT_PHASES,
    FINISHED_OK,
    PHASES,
    TERMINAL,
    PhaseState,
    Row,
    TransitionError,
    transition,
    valid_cor,
)
from tomocorioc.core.result import PhaseResult
from tomocorioc.core.series import series_key

log = logging.getLogger(__name__)

ChangeHook = Callable[[List[Row], List[dict], List[int]], None]


class QueueError(ValueError):
    """An operation that is not possible in the queue's current state."""


class JobQueue:
    """Rows in operator order plus the rules that decide what runs next."""

    def __init__(self, on_change: Optional[ChangeHook] = None, max_retries: int = 1,
                 series_barrier: bool = False, auto_fix: bool = False) -> None:
        self._lock = threading.RLock()
        self._rows: List[Row] = []
        self._next_id = 1
        self.uid = 0
        self.paused = False
        self.max_retries = max_retries
        self.series_barrier = series_barrier
        self.auto_fix = auto_fix   # run Fix COR Outliers when a series' infers finish, without holding fulls
        self.fixed_series: Set[str] = set()
        self._on_change = on_change

    # -- plumbing ----------------------------------------------------------------
    def _changed(self, rows: Sequence[Row] = (), events: Sequence[dict] = (), removed: Sequence[int] = ()) -> None:
        self.uid += 1
        if self._on_change:
            self._on_change(list(rows), list(events), list(removed))

    def _get(self, row_id: int) -> Row:
        for r in self._rows:
            if r.id == row_id:
                return r
        raise QueueError(f"no row {row_id}")

    def load(self, rows: Iterable[Row], fixed_series: Iterable[str] = ()) -> None:
        """Adopt rows from the durable store; interrupted phases go back to queued."""
        with self._lock:
            self._rows = []
            for r in rows:
                for p in PHASES:
                    if r.state[p] is PhaseState.RUNNING:
                        transition(r, p, PhaseState.QUEUED, "restart: was running")
                self._rows.append(r)
            self._next_id = max([r.id for r in self._rows], default=0) + 1
            self.fixed_series = set(fixed_series)
            self._changed(self._rows)

    # -- views -------------------------------------------------------------------
    def rows(self) -> List[Row]:
        """A snapshot copy of all rows in order."""
        with self._lock:
            return [r.copy() for r in self._rows]

    def row(self, row_id: int) -> Row:
        """A copy of one row."""
        with self._lock:
            return self._get(row_id).copy()

    def find(self, path: str) -> Optional[int]:
        """Row id for a path (as added, or resolved), or None."""
        key = str(Path(path).resolve()) if path else path
        with self._lock:
            for r in self._rows:
                if r.path == path or r.path == key:
                    return r.id
        return None

    # -- operations ------------------------------------------------------------
    def add(self, paths: Iterable[str], phases: Optional[Dict[str, bool]] = None,
            failed: Optional[str] = None) -> List[int]:
        """Append files (duplicates skipped); returns the new row ids.

        With ``failed`` (a reason) the rows arrive already failed — first requested
        phase failed, the rest blocked — in the same locked step, so the
        dispatcher can never start them (a file that never became complete).
        """
        want = dict(DEFAULT_PHASES)
        if phases:
            unknown = set(phases) - set(PHASES)
            if unknown:
                raise QueueError(f"unknown phase(s): {', '.join(sorted(unknown))}")
            want.update({k: bool(v) for k, v in phases.items()})
        with self._lock:
            have = {r.path for r in self._rows}
            new: List[Row] = []
            for p in paths:
                key = str(Path(p).resolve())
                if key in have:
                    log.info("%s already queued; skipped", key)
                    continue
                series, index = series_key(key)
                row = Row(id=self._next_id, path=key, series=series, index=index, phases=dict(want))
                self._next_id += 1
                if failed:
                    self._fail_new(row, failed)
                have.add(key)
                # A new member reopens its series: Fix COR Outliers runs again once it is inferred.
                self.fixed_series.discard(series)
                self._rows.append(row)
                new.append(row)
            if new:
                self._changed(new)
            return [r.id for r in new]

    @staticmethod
    def _fail_new(r: Row, reason: str) -> None:
        first = True
        for p in PHASES:
            if r.state[p] is PhaseState.QUEUED:
                transition(r, p, PhaseState.FAILED if first else PhaseState.BLOCKED, reason)
                first = False
        r.error = reason

    def remove(self, ids: Iterable[int]) -> None:
        """Remove rows (not while they run)."""
        with self._lock:
            rows = [self._get(i) for i in ids]
            busy = [r.path for r in rows if r.running_phase]
            if busy:
                raise QueueError(f"cannot remove a running row: {busy[0]}")
            drop = {r.id for r in rows}
            self._rows = [r for r in self._rows if r.id not in drop]
            self._changed(removed=sorted(drop))

    def move(self, row_id: int, position: int) -> None:
        """Move a row to ``position`` (0 = first; clamped)."""
        with self._lock:
            r = self._get(row_id)
            self._rows.remove(r)
            self._rows.insert(max(0, min(len(self._rows), int(position))), r)
            self._changed(self._rows)

    def set_enabled(self, ids: Iterable[int], enabled: bool) -> None:
        """Enable or disable rows (a disabled row is never dispatched)."""
        with self._lock:
            rows = [self._get(i) for i in ids]
            for r in rows:
                r.enabled = bool(enabled)
                r.updated = time.time()
            self._changed(rows)

    def set_phases(self, ids: Iterable[int], phases: Dict[str, bool]) -> None:
        """Turn phases on (queued again) or off for rows that are not running."""
        with self._lock:
            rows = [self._get(i) for i in ids]
            for r in rows:
                if r.running_phase:
                    raise QueueError(f"cannot change phases of a running row: {r.path}")
            for r in rows:
                for p, on in phases.items():
                    if p not in PHASES:
                        raise QueueError(f"unknown phase {p!r}")
                    r.phases[p] = bool(on)
                    target = PhaseState.QUEUED if on else PhaseState.OFF
                    if r.state[p] is not target and not (on and r.state[p] in FINISHED_OK):
                        transition(r, p, target, "phases changed")
            self._changed(rows)

    def set_cor(self, row_id: int, cor: Optional[float], source: str = "manual", reason: str = "") -> None:
        """Set (or clear, with None) a row's COR; the change is kept in the COR history."""
        with self._lock:
            r = self._get(row_id)
            value = None if cor is None else valid_cor(cor)
            event = {"row_id": r.id, "time": time.time(), "old": r.cor, "new": value, "source": source,
                     "reason": reason}
            r.cor, r.cor_source = value, (source if value is not None else None)
            if source == "manual":
                r.needs_review, r.confidence = False, None
            r.updated = time.time()
            self._changed([r], [event])

    def mark_skipped(self, row_id: int, reason: str) -> None:
        """Disable a row as skipped (e.g. an aborted acquisition)."""
        with self._lock:
            r = self._get(row_id)
            if r.running_phase:
                raise QueueError(f"cannot skip a running row: {r.path}")
            r.enabled, r.skipped = False, reason
            r.updated = time.time()
            self._changed([r])

    def retry_failed(self, ids: Optional[Iterable[int]] = None) -> int:
        """Queue failed, cancelled and blocked phases again; returns how many rows."""
        with self._lock:
            rows = [self._get(i) for i in ids] if ids is not None else list(self._rows)
            touched = []
            for r in rows:
                again = [p for p in PHASES if r.state[p] in (PhaseState.FAILED, PhaseState.CANCELLED,
                                                              PhaseState.BLOCKED)]
                for p in again:
                    transition(r, p, PhaseState.QUEUED, "retry")
                if again:
                    r.error, r.attempts = None, 0
                    touched.append(r)
            if touched:
                self._changed(touched)
            return len(touched)

    def clear_finished(self) -> int:
        """Remove rows whose requested phases all finished successfully."""
        with self._lock:
            done = [r for r in self._rows if r.status in ("done", "review")]
            if done:
                ids = {r.id for r in done}
                self._rows = [r for r in self._rows if r.id not in ids]
                self._changed(removed=sorted(ids))
            return len(done)

    def pause(self) -> None:
        """Stop starting new jobs (running ones finish)."""
        with self._lock:
            self.paused = True
            self._changed()

    def resume(self) -> None:
        """Start dispatching again."""
        with self._lock:
            self.paused = False
            self._changed()

    def abort(self) -> List[Tuple[int, str]]:
        """Cancel every queued and running phase; returns the (row, phase) pairs that were running."""
        with self._lock:
            running, touched = [], []
            for r in self._rows:
                hit = False
                for p in PHASES:
                    if r.state[p] is PhaseState.RUNNING:
                        running.append((r.id, p))
                    if r.state[p] in (PhaseState.RUNNING, PhaseState.QUEUED, PhaseState.BLOCKED):
                        transition(r, p, PhaseState.CANCELLED, "abort")
                        hit = True
                if hit:
                    r.error = "cancelled by operator"
                    touched.append(r)
            self._changed(touched)
            return running

    # -- dispatch ----------------------------------------------------------------
    def _ready(self, r: Row, phase: str) -> bool:
        """Predecessors of ``phase`` finished (or off), and its own rules hold."""
        for p in PHASES[:PHASES.index(phase)]:
            if r.state[p] not in FINISHED_OK and r.state[p] is not PhaseState.OFF:
                return False
        if phase == "full" and self.series_barrier and not self._series_released(r.series):
            return False
        return True

    def _series_released(self, series: str) -> bool:
        return series in self.fixed_series

    def series_awaiting_fix(self) -> List[str]:
        """Series (barrier or auto-fix on) whose infers are all finished but Fix COR Outliers has not run."""
        with self._lock:
            if not (self.series_barrier or self.auto_fix):
                return []
            out = []
            for s in sorted({r.series for r in self._rows if r.enabled} - self.fixed_series):
                members = [r for r in self._rows if r.series == s and r.enabled]
                if members and all(r.state["infer"] in TERMINAL or r.state["infer"] is PhaseState.OFF
                                   for r in members):
                    out.append(s)
            return out

    def release_series(self, series: str) -> None:
        """Record that Fix COR Outliers ran on a series: its full phases may start."""
        with self._lock:
            self.fixed_series.add(series)
            self._changed()

    def next_job(self, tomolog_busy: bool = False) -> Optional[Tuple[int, str]]:
        """The next (row id, phase) to start, in row order, or None."""
        with self._lock:
            if self.paused:
                return None
            for r in self._rows:
                if not r.enabled or r.skipped or r.running_phase:
                    continue
                for p in PHASES:
                    if r.state[p] is not PhaseState.QUEUED:
                        continue
                    if p == "tomolog" and tomolog_busy:
                        break  # uploads go one at a time
                    if self._ready(r, p):
                        return r.id, p
                    break
            return None

    def start(self, row_id: int, phase: str) -> Row:
        """Mark a phase running; returns a copy of the row for the job description."""
        with self._lock:
            r = self._get(row_id)
            transition(r, phase, PhaseState.RUNNING, "dispatched")
            r.error = None
            self._changed([r])
            return r.copy()

    def finish(self, row_id: int, phase: str, result: PhaseResult) -> None:
        """Record a phase's result; a failure blocks the row's later phases."""
        with self._lock:
            try:
                r = self._get(row_id)
            except QueueError:
                log.warning("result for removed row %d ignored", row_id)
                return
            if r.state[phase] is not PhaseState.RUNNING:
                log.info("%s: late result for %s (%s) ignored", r.path, phase, r.state[phase].value)
                return
            events = []
            if result.success:
                transition(r, phase, PhaseState.UPTODATE if result.up_to_date else PhaseState.DONE, result.msg)
                r.attempts = 0
                if result.estimate is not None:
                    r.estimate = float(result.estimate)
                for note in result.notes or []:
                    if note not in r.notes:
                        r.notes.append(note)
                if result.cor is not None:
                    events.append({"row_id": r.id, "time": time.time(), "old": r.cor, "new": result.cor,
                                   "source": result.cor_source or phase, "reason": f"{phase} phase"})
                    r.cor, r.cor_source = float(result.cor), result.cor_source
                    r.confidence, r.needs_review = result.confidence, bool(result.needs_review)
            else:
                transition(r, phase, PhaseState.FAILED, result.msg)
                r.error = f"{phase}: {result.msg}"
                for p in PHASES[PHASES.index(phase) + 1:]:
                    if r.state[p] is PhaseState.QUEUED:
                        transition(r, p, PhaseState.BLOCKED, f"{phase} failed")
            if result.seconds:
                r.timings[phase] = round(float(result.seconds), 3)
            r.results[phase] = result
            self._changed([r], events)

    def worker_lost(self, row_id: int, phase: str, msg: str) -> bool:
        """A worker died or timed out on this job: requeue it (retries left) or fail it. True if requeued."""
        with self._lock:
            try:
                r = self._get(row_id)
            except QueueError:
                return False
            if r.state[phase] is not PhaseState.RUNNING:
                return False
            r.attempts += 1
            if r.attempts <= self.max_retries:
                transition(r, phase, PhaseState.QUEUED, f"{msg}; retry {r.attempts}/{self.max_retries}")
                r.error = f"{phase}: {msg} (retrying)"
                self._changed([r])
                return True
        self.finish(row_id, phase, PhaseResult.failure(msg))
        return False

    def idle(self) -> bool:
        """True when nothing is running, nothing can start and no series waits for its release."""
        with self._lock:
            return (not any(r.running_phase for r in self._rows) and self.next_job() is None
                    and not self.series_awaiting_fix())

    def has_running(self) -> bool:
        """True while any phase is running."""
        with self._lock:
            return any(r.running_phase for r in self._rows)


__all__ = ["JobQueue", "QueueError", "TransitionError"]
