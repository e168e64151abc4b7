"""The job queue: rows, their per-file phase flow, and every operator operation (pure).

Phases flow per file, not as batch barriers: a file's full starts as soon as
its infer is done while other files are still in try.

Every mutation is a transaction: a public method takes the lock, works on
copies of the rows it changes, hands them to the ``on_change`` hook (the
durable store writes them in one transaction) and only then makes them
visible.  A hook that raises leaves the queue exactly as it was, so memory
never shows a row the store does not hold.  Each committed change moves
``uid``, so clients can poll cheaply.  Only changed rows are written; a row's
place in the queue is a sparse order key, so a state change never rewrites
the other rows, and the lookups the dispatcher and the IOC make per change
(by id, by path, the next queued job, the status counts) do not scan the queue.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from tomocorioc.core.jobs import (
    COR_CONSUMERS,
    DEFAULT_PHASES,
    FINISHED_OK,
    PHASES,
    TERMINAL,
    PhaseState,
    Row,
    TransitionError,
    cor_text,
    transition,
    valid_cor,
)
from tomocorioc.core.result import PhaseResult
from tomocorioc.core.series import series_key

log = logging.getLogger(__name__)

# (changed rows as they will be, COR events, removed row ids, the released series when they changed, else None)
ChangeHook = Callable[[List[Row], List[dict], List[int], Optional[List[str]]], None]
_RETRYABLE = (PhaseState.FAILED, PhaseState.CANCELLED, PhaseState.BLOCKED, PhaseState.STALE)
_COR_EPS = 0.005     # px: CORs are shown and written with 2 decimals; a smaller change changes no output


class QueueError(ValueError):
    """An operation that is not possible in the queue's current state."""


class Tally:
    """Counts the status PVs need, kept up to date change by change (no scan of the queue)."""

    def __init__(self) -> None:
        self.status: Dict[str, int] = {}
        self.needs_review = 0
        self.requested = 0      # requested phases of enabled rows
        self.finished = 0       # ... of which ended (ok, failed, blocked or cancelled)
        self.running = 0

    def add(self, r: Row, sign: int) -> None:
        """Count ``r`` in (+1) or out (-1)."""
        self.status[r.status] = self.status.get(r.status, 0) + sign
        self.needs_review += sign * bool(r.needs_review)
        self.running += sign * (r.running_phase is not None)
        if r.enabled:
            for p in PHASES:
                s = r.state[p]
                if s is not PhaseState.OFF:
                    self.requested += sign
                    self.finished += sign * (s in TERMINAL)


class JobQueue:
    """Rows in operator order plus the rules that decide what runs next."""

    def __init__(self, on_change: Optional[ChangeHook] = None, max_retries: int = 1,
                 series_barrier: bool = False, auto_fix: bool = False, hold_on_review: bool = False) -> None:
        self._lock = threading.RLock()
        self._rows: List[Row] = []                 # in order (ascending Row.order)
        self._by_id: Dict[int, Row] = {}
        self._by_path: Dict[str, int] = {}
        self._queued: List[Tuple[float, int]] = []  # (order, id) of rows with a queued phase, sorted
        self._next_id = 1
        self.uid = 0
        self.paused = False
        self.max_retries = max_retries
        self.series_barrier = series_barrier
        self.auto_fix = auto_fix   # run Fix COR Outliers when a series' infers finish, without holding fulls
        self.hold_on_review = hold_on_review   # a full waits while its row's COR needs review
        self.fixed_series: Set[str] = set()
        self.tally = Tally()
        self.last_cor_row: Optional[int] = None     # the row whose COR changed last
        self._awaiting: Tuple[int, List[str]] = (-1, [])
        self._colors: Tuple[int, Dict[str, int]] = (-1, {})
        self._on_change = on_change

    # -- the transaction ------------------------------------------------------------
    def _commit(self, rows: Sequence[Row] = (), events: Sequence[dict] = (), removed: Sequence[int] = (),
                fixed: Optional[Set[str]] = None) -> None:
        """Write first (the hook may raise: then nothing changes), then make the new rows visible."""
        if self._on_change:
            self._on_change(list(rows), list(events), list(removed), None if fixed is None else sorted(fixed))
        reorder = False
        for new in rows:
            cur = self._by_id.get(new.id)
            if cur is None:
                self._rows.append(new)
                self._by_id[new.id], self._by_path[new.path] = new, new.id
                reorder = reorder or (len(self._rows) > 1 and self._rows[-2].order > new.order)
            else:
                self._unindex(cur)
                reorder = reorder or cur.order != new.order
                cur.__dict__.update(new.__dict__)   # same object: readers holding no reference see it at once
                new = cur
            self._index(new)
        if removed:
            gone = set(removed)
            for rid in gone:
                r = self._by_id.pop(rid, None)
                if r is not None:
                    self._unindex(r)
                    self._by_path.pop(r.path, None)
            self._rows = [r for r in self._rows if r.id not in gone]
        if reorder:
            self._rows.sort(key=lambda r: (r.order, r.id))
        if fixed is not None:
            self.fixed_series = set(fixed)
        for e in events:
            if e.get("new") is not None:
                self.last_cor_row = e["row_id"]
        self.uid += 1

    def _index(self, r: Row) -> None:
        self.tally.add(r, +1)
        if not r.running_phase and any(s is PhaseState.QUEUED for s in r.state.values()):
            bisect.insort(self._queued, (r.order, r.id))

    def _unindex(self, r: Row) -> None:
        self.tally.add(r, -1)
        i = bisect.bisect_left(self._queued, (r.order, r.id))
        if i < len(self._queued) and self._queued[i] == (r.order, r.id):
            del self._queued[i]

    def _get(self, row_id: int) -> Row:
        r = self._by_id.get(row_id)
        if r is None:
            raise QueueError(f"no row {row_id}")
        return r

    def _work(self, row_id: int) -> Row:
        """A copy of a row to change (committed by :meth:`_commit`)."""
        return self._get(row_id).copy()

    def load(self, rows: Iterable[Row], fixed_series: Iterable[str] = ()) -> None:
        """Adopt rows from the durable store; interrupted phases go back to queued."""
        with self._lock:
            loaded, changed = [], []
            for r in rows:
                if any(r.state[p] is PhaseState.RUNNING for p in PHASES):
                    for p in PHASES:
                        if r.state[p] is PhaseState.RUNNING:
                            transition(r, p, PhaseState.QUEUED, "restart: was running")
                    changed.append(r)
                loaded.append(r)
            if self._on_change and changed:
                self._on_change(changed, [], [], None)
            self._rows, self._by_id, self._by_path, self._queued, self.tally = [], {}, {}, [], Tally()
            self.uid += 1
            for r in sorted(loaded, key=lambda r: (r.order, r.id)):
                self._rows.append(r)
                self._by_id[r.id], self._by_path[r.path] = r, r.id
                self._index(r)
            self._next_id = max(self._by_id, default=0) + 1
            self.fixed_series = set(fixed_series)
            with_cor = [r for r in self._rows if r.cor is not None and r.cor_source]
            self.last_cor_row = max(with_cor, key=lambda r: r.updated).id if with_cor else None

    # -- views -------------------------------------------------------------------
    def rows(self) -> List[Row]:
        """A snapshot copy of all rows in order."""
        with self._lock:
            return [r.copy() for r in self._rows]

    def page(self, offset: int, count: int) -> List[Row]:
        """Copies of ``count`` rows from position ``offset`` (the screens' queue page)."""
        with self._lock:
            return [r.copy() for r in self._rows[max(0, offset):max(0, offset) + max(0, count)]]

    def __len__(self) -> int:
        return len(self._rows)

    def has_waiting(self) -> bool:
        """True when an enabled row has a queued phase (it may still wait for its predecessors)."""
        with self._lock:
            return any(self._by_id[rid].enabled and not self._by_id[rid].skipped for _, rid in self._queued)

    def series_colors(self, ncolors: int = 6) -> Dict[str, int]:
        """Each series' colour index: its rank of first appearance in the queue, modulo ``ncolors``."""
        with self._lock:
            if self._colors[0] != self.uid:
                first: Dict[str, int] = {}
                for r in self._rows:
                    first.setdefault(r.series, len(first) % ncolors)
                self._colors = (self.uid, first)
            return self._colors[1]

    def row(self, row_id: int) -> Row:
        """A copy of one row."""
        with self._lock:
            return self._get(row_id).copy()

    def get(self, row_id: Optional[int]) -> Optional[Row]:
        """A copy of one row, or None when there is no such row."""
        with self._lock:
            r = self._by_id.get(row_id) if row_id is not None else None
            return r.copy() if r is not None else None

    def find(self, path: str) -> Optional[int]:
        """Row id for a path (as added, or resolved), or None."""
        with self._lock:
            rid = self._by_path.get(path)
            if rid is None and path:
                rid = self._by_path.get(str(Path(path).resolve()))
            return rid

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
            new: List[Row] = []
            seen: Set[str] = set()
            fixed = set(self.fixed_series)
            next_id = self._next_id
            order = (self._rows[-1].order if self._rows else 0.0)
            for p in paths:
                key = str(Path(p).resolve())
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    raise QueueError(f"file name is not valid UTF-8: {key.encode('utf-8', 'replace').decode()} "
                                     "(rename it)") from None
                if key in self._by_path or key in seen:
                    log.info("%s already queued; skipped", key)
                    continue
                series, index = series_key(key)
                order += 1.0
                row = Row(id=next_id, path=key, series=series, index=index, phases=dict(want), order=order)
                next_id += 1
                if failed:
                    self._fail_new(row, failed)
                seen.add(key)
                # A new member reopens its series: Fix COR Outliers runs again once it is inferred.
                fixed.discard(series)
                new.append(row)
            if new:
                self._commit(new, fixed=fixed if fixed != self.fixed_series else None)
                self._next_id = next_id
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
            self._commit(removed=sorted({r.id for r in rows}))

    def move(self, row_id: int, position: int) -> None:
        """Move a row to ``position`` (0 = first; clamped); only that row's order key is written."""
        with self._lock:
            w = self._work(row_id)
            others = [r for r in self._rows if r.id != row_id]
            i = max(0, min(len(others), int(position)))
            before = others[i - 1].order if i > 0 else (others[0].order - 2.0 if others else 0.0)
            after = others[i].order if i < len(others) else before + 2.0
            w.order = (before + after) / 2.0
            self._commit([w])

    def _update(self, ids: Iterable[int], change: Callable[[Row], None]) -> None:
        rows = [self._work(i) for i in ids]
        for w in rows:
            change(w)
            w.updated = time.time()
        self._commit(rows)

    def set_enabled(self, ids: Iterable[int], enabled: bool) -> None:
        """Enable or disable rows (a disabled row is never dispatched)."""
        with self._lock:
            self._update(ids, lambda w: setattr(w, "enabled", bool(enabled)))

    def set_phases(self, ids: Iterable[int], phases: Dict[str, bool]) -> None:
        """Turn phases on (queued again) or off for rows that are not running."""
        with self._lock:
            ids = list(ids)
            for i in ids:
                if self._get(i).running_phase:
                    raise QueueError(f"cannot change phases of a running row: {self._get(i).path}")
            unknown = [p for p in phases if p not in PHASES]
            if unknown:
                raise QueueError(f"unknown phase {unknown[0]!r}")

            def change(w: Row) -> None:
                for p, on in phases.items():
                    w.phases[p] = bool(on)
                    target = PhaseState.QUEUED if on else PhaseState.OFF
                    if w.state[p] is not target and not (on and w.state[p] in FINISHED_OK):
                        transition(w, p, target, "phases changed")
            self._update(ids, change)

    def set_cor(self, row_id: int, cor: Optional[float], source: str = "manual", reason: str = "",
                rerun: bool = False, needs_review: Optional[bool] = None) -> List[str]:
        """Set (or clear, with None) a row's COR; the change is kept in the COR history.

        When the COR changes after phases that used it (full, TomoLog) finished,
        those phases become stale: queued again when ``rerun``, else left
        ``stale`` for Start.  Returns the phases that became stale.
        ``needs_review`` overrides the flag (a manual COR clears it by default).
        """
        with self._lock:
            w = self._work(row_id)
            value = None if cor is None else valid_cor(cor)
            event = {"row_id": w.id, "time": time.time(), "old": w.cor, "new": value, "source": source,
                     "reason": reason, "path": w.path}
            moved = (w.cor is None) != (value is None) or (value is not None and abs(value - w.cor) >= _COR_EPS)
            w.cor, w.cor_source = value, (source if value is not None else None)
            if source == "manual":
                w.needs_review, w.confidence = False, None
            elif value is not None and w.needs_review and source not in ("infer", "ai", "classical"):
                # Fix COR Outliers (or an import) replaced a COR that needed review: the
                # replacement is what the full phase should use, so it no longer waits.
                w.needs_review = False
            if needs_review is not None:
                w.needs_review = bool(needs_review)
            stale = [p for p in COR_CONSUMERS if moved and w.state[p] in FINISHED_OK]
            for p in stale:
                transition(w, p, PhaseState.STALE, f"COR {cor_text(event['old'])} -> {cor_text(value)} ({source})")
                if rerun and w.phases.get(p):
                    transition(w, p, PhaseState.QUEUED, "re-run: the COR changed")
            w.updated = time.time()
            self._commit([w], [event])
            return stale

    def set_review(self, row_id: int, needs_review: bool) -> None:
        """Set or clear a row's needs-review flag (an operator's accept, or a rule's doubt)."""
        with self._lock:
            self._update([row_id], lambda w: setattr(w, "needs_review", bool(needs_review)))

    def accept_cor(self, row_id: int, reason: str = "accepted by operator") -> float:
        """The operator accepts a row's COR as it is: it no longer needs review (a held full may start)."""
        with self._lock:
            w = self._work(row_id)
            if w.cor is None:
                raise QueueError(f"{Path(w.path).name} has no COR to accept")
            event = {"row_id": w.id, "time": time.time(), "old": w.cor, "new": w.cor, "source": "accepted",
                     "reason": reason, "path": w.path}
            w.needs_review = False
            w.updated = time.time()
            self._commit([w], [event])
            return float(w.cor)

    def mark_skipped(self, row_id: int, reason: str) -> None:
        """Disable a row as skipped (e.g. an aborted acquisition)."""
        with self._lock:
            if self._get(row_id).running_phase:
                raise QueueError(f"cannot skip a running row: {self._get(row_id).path}")
            self._update([row_id], lambda w: (setattr(w, "enabled", False), setattr(w, "skipped", reason)))

    def retry_failed(self, ids: Optional[Iterable[int]] = None) -> int:
        """Queue failed, cancelled, blocked and stale phases again; returns how many rows."""
        with self._lock:
            pick = [self._get(i) for i in ids] if ids is not None else self._rows
            touched = []
            for r in pick:
                again = [p for p in PHASES if r.state[p] in _RETRYABLE]
                if not again:
                    continue
                w = r.copy()
                for p in again:
                    transition(w, p, PhaseState.QUEUED, "retry")
                w.error, w.attempts = None, 0
                touched.append(w)
            if touched:
                self._commit(touched)
            return len(touched)

    def clear_finished(self) -> int:
        """Remove rows whose requested phases all finished successfully."""
        with self._lock:
            done = [r.id for r in self._rows if r.status in ("done", "review")]
            if done:
                self._commit(removed=done)
            return len(done)

    def pause(self) -> None:
        """Stop starting new jobs (running ones finish)."""
        with self._lock:
            self.paused = True
            self.uid += 1   # not durable: a restarted service dispatches

    def resume(self) -> None:
        """Start dispatching again."""
        with self._lock:
            self.paused = False
            self.uid += 1

    def abort(self) -> List[Tuple[int, str]]:
        """Cancel every queued and running phase; returns the (row, phase) pairs that were running."""
        with self._lock:
            running, touched = [], []
            for r in self._rows:
                hit = [p for p in PHASES if r.state[p] in (PhaseState.RUNNING, PhaseState.QUEUED,
                                                            PhaseState.BLOCKED)]
                if not hit:
                    continue
                w = r.copy()
                for p in hit:
                    if w.state[p] is PhaseState.RUNNING:
                        running.append((w.id, p))
                    transition(w, p, PhaseState.CANCELLED, "abort")
                w.error = "cancelled by operator"
                touched.append(w)
            self._commit(touched)
            return running

    # -- dispatch ----------------------------------------------------------------
    @staticmethod
    def _after_predecessors(r: Row, phase: str) -> bool:
        """Every phase before ``phase`` finished or is off."""
        return all(r.state[p] in FINISHED_OK or r.state[p] is PhaseState.OFF for p in PHASES[:PHASES.index(phase)])

    def _ready(self, r: Row, phase: str) -> bool:
        """Predecessors of ``phase`` finished (or off), and its own rules hold."""
        if not self._after_predecessors(r, phase):
            return False
        if phase == "full" and self.series_barrier and r.series not in self.fixed_series:
            return False
        if phase == "full" and self.hold_on_review and r.needs_review:
            return False   # until the operator accepts or corrects the COR, or Fix COR Outliers replaces it
        return True

    def held(self, r: Row) -> bool:
        """The row's full waits only for an operator: its COR needs review and fulls are held for it."""
        return (self.hold_on_review and r.needs_review and r.enabled and not r.skipped
                and r.state["full"] is PhaseState.QUEUED and self._after_predecessors(r, "full"))

    def set_hold_on_review(self, hold: bool) -> None:
        """Hold (or release) fulls whose COR needs review; screens see the change through ``uid``."""
        with self._lock:
            if self.hold_on_review != bool(hold):
                self.hold_on_review = bool(hold)
                self.uid += 1

    def series_awaiting_fix(self) -> List[str]:
        """Series (barrier or auto-fix on) whose infers are all finished but Fix COR Outliers has not run."""
        with self._lock:
            if not (self.series_barrier or self.auto_fix):
                return []
            if self._awaiting[0] == self.uid:   # the dispatcher asks every turn: recompute only on change
                return list(self._awaiting[1])
            members: Dict[str, List[Row]] = {}
            for r in self._rows:
                if r.enabled and r.series not in self.fixed_series:
                    members.setdefault(r.series, []).append(r)
            out = sorted(s for s, rows in members.items()
                         if all(r.state["infer"] in TERMINAL or r.state["infer"] is PhaseState.OFF for r in rows))
            self._awaiting = (self.uid, out)
            return list(out)

    def release_series(self, series: str) -> None:
        """Record that Fix COR Outliers ran on a series: its full phases may start."""
        with self._lock:
            self._commit(fixed=self.fixed_series | {series})

    def next_job(self, tomolog_busy: bool = False) -> Optional[Tuple[int, str]]:
        """The next (row id, phase) to start, in row order, or None."""
        with self._lock:
            if self.paused:
                return None
            for _, rid in self._queued:
                r = self._by_id[rid]
                if not r.enabled or r.skipped:
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
            w = self._work(row_id)
            transition(w, phase, PhaseState.RUNNING, "dispatched")
            w.error = None
            self._commit([w])
            return w.copy()

    def finish(self, row_id: int, phase: str, result: PhaseResult) -> None:
        """Record a phase's result; a failure blocks the row's later phases."""
        with self._lock:
            r = self._by_id.get(row_id)
            if r is None:
                log.warning("result for removed row %d ignored", row_id)
                return
            if r.state[phase] is not PhaseState.RUNNING:
                log.info("%s: late result for %s (%s) ignored", r.path, phase, r.state[phase].value)
                return
            w = r.copy()
            self._commit([w], self._apply(w, phase, result))

    @staticmethod
    def _apply(w: Row, phase: str, result: PhaseResult) -> List[dict]:
        """Put a result on a working copy of its row; returns the COR events."""
        events = []
        if result.success:
            transition(w, phase, PhaseState.UPTODATE if result.up_to_date else PhaseState.DONE, result.msg)
            w.attempts = 0
            if result.estimate is not None:
                w.estimate = float(result.estimate)
            w.notes.extend(n for n in result.notes if n not in w.notes)
            if result.cor is not None:
                events.append({"row_id": w.id, "time": time.time(), "old": w.cor, "new": result.cor,
                               "source": result.cor_source or phase, "reason": f"{phase} phase", "path": w.path})
                w.cor, w.cor_source = float(result.cor), result.cor_source
                w.confidence, w.needs_review = result.confidence, bool(result.needs_review)
        else:
            transition(w, phase, PhaseState.FAILED, result.msg)
            w.error = f"{phase}: {result.msg}"
            for p in PHASES[PHASES.index(phase) + 1:]:
                if w.state[p] is PhaseState.QUEUED:
                    transition(w, p, PhaseState.BLOCKED, f"{phase} failed")
        if result.seconds:
            w.timings[phase] = round(float(result.seconds), 3)
        w.results[phase] = result
        return events

    def worker_lost(self, row_id: int, phase: str, msg: str, counted: bool = True) -> bool:
        """A worker died or timed out on this job: requeue it (retries left) or fail it. True if requeued.

        ``counted=False``: the job never reached a worker (it died as the job was sent), so it is
        queued again without using a retry.
        """
        with self._lock:
            r = self._by_id.get(row_id)
            if r is None or r.state[phase] is not PhaseState.RUNNING:
                return False
            w = r.copy()
            if not counted:
                transition(w, phase, PhaseState.QUEUED, msg)
                self._commit([w])
                return True
            w.attempts += 1
            if w.attempts <= self.max_retries:
                transition(w, phase, PhaseState.QUEUED, f"{msg}; retry {w.attempts}/{self.max_retries}")
                w.error = f"{phase}: {msg} (retrying)"
                self._commit([w])
                return True
            self._commit([w], self._apply(w, phase, PhaseResult.failure(msg)))
            return False

    def idle(self) -> bool:
        """True when nothing is running, nothing can start and no series waits for its release."""
        with self._lock:
            return not self.tally.running and self.next_job() is None and not self.series_awaiting_fix()

    def has_running(self) -> bool:
        """True while any phase is running."""
        with self._lock:
            return self.tally.running > 0


__all__ = ["JobQueue", "QueueError", "TransitionError", "Tally", "ChangeHook"]
