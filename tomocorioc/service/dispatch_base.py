"""What both dispatchers do alike: the wake-up pipe, kill requests, series release, taking the next job.

Each backend owns one loop thread that blocks on the wake-up pipe (and its
own waitables) until the nearest deadline.  Other threads only write the pipe
(:meth:`DispatcherBase.wake`) or append kill requests; the pipe is closed only
once the loop thread has stopped, and a write after that is a no-op, so a late
wake from a helper thread never touches a closed (or reused) descriptor.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import Job, PhaseResult
from tomocorioc.service.protocol import EventHook, JobBuilder

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 10000   # recent slot-free -> job-sent latencies kept (bounded: the IOC runs for months)
START_FAILURES = 3        # a slot whose worker fails to start this many times in a row is broken
BROKEN_RETRY_S = (10.0, 300.0)   # a broken slot tries again after 10 s, doubling up to 5 min
LOOP_ERROR_PAUSE = 1.0    # s a loop rests after an unexpected error before its next turn


class DispatcherBase:
    """Shared state and plumbing of the local and the cluster dispatcher."""

    def __init__(self, queue: JobQueue, factory: str, config: Dict[str, Any], build_job: JobBuilder,
                 timeouts: Optional[Dict[str, float]] = None,
                 on_series_ready: Optional[Callable[[str], None]] = None,
                 on_event: Optional[EventHook] = None) -> None:
        self.queue = queue
        self.factory, self.config = factory, dict(config or {})
        self.build_job = build_job
        self.timeouts: Dict[str, float] = dict(timeouts or {})
        self.on_series_ready = on_series_ready
        self.on_event = on_event
        self.heartbeat = 0
        self.latencies: Deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._kill_requests: List[Tuple[int, str]] = []
        self._job_ids = itertools.count(1)
        # Results the store could not take yet (disk full...): kept in order and written when it can.
        self._pending: Deque[Tuple[str, int, str, Any]] = deque()
        self._last_error: Optional[str] = None

    # -- thread-safe surface -----------------------------------------------------------
    def wake(self) -> None:
        """Tell the loop something changed (safe from any thread, also after :meth:`stop`)."""
        with self._pipe_lock:
            if not self._pipe_open:
                return
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass   # pipe full: the loop is awake anyway

    def kill_running(self, pairs: List[Tuple[int, str]]) -> None:
        """Kill the workers running these (row, phase) jobs (after an abort)."""
        with self._lock:
            self._kill_requests.extend(pairs)
        self.wake()

    def wait_connected(self, timeout: float) -> bool:
        """Local slots can take jobs at once; the cluster backend overrides this."""
        return True

    def timeout_for(self, phase: str) -> Optional[float]:
        """Seconds a phase may run, or None for no limit."""
        t = self.timeouts.get(phase) or self.timeouts.get("default")
        return float(t) if t else None

    # -- loop-thread helpers -----------------------------------------------------------------
    def _start_loop(self, name: str, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def _stop_loop(self, timeout: float) -> bool:
        """Signal and join the loop thread; True when it has stopped."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _close_pipe(self) -> None:
        """Close the wake-up pipe (only once the loop no longer waits on it)."""
        with self._pipe_lock:
            if not self._pipe_open:
                return
            self._pipe_open = False
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 65536)
        except (BlockingIOError, OSError):
            pass

    def _take_kills(self) -> List[Tuple[int, str]]:
        with self._lock:
            pairs, self._kill_requests = self._kill_requests, []
        return pairs

    def _release_series(self) -> None:
        """Run Fix COR Outliers on each series whose infers all finished, then let its fulls start."""
        for series in self.queue.series_awaiting_fix():
            if self.on_series_ready:
                self.on_series_ready(series)
            self.queue.release_series(series)

    def _take_job(self, tomolog_busy: bool) -> Optional[Tuple[int, str, Job]]:
        """The next queue job, marked running, with a job id; None when there is none.

        A job whose description cannot be built (a bad sidecar, an unreadable
        path) fails at once and the next one is taken.  While the state store
        refuses writes (results pending) nothing new starts.
        """
        while not self._pending:
            nxt = self.queue.next_job(tomolog_busy=tomolog_busy)
            if nxt is None:
                return None
            row_id, phase = nxt
            try:
                row = self.queue.start(row_id, phase)
            except OSError as exc:   # the store refused: the row stays queued, nothing starts
                self._report_store(exc)
                return None
            try:
                return row_id, phase, self.build_job(row, phase).with_id(next(self._job_ids))
            except (ValueError, OSError) as exc:
                self._finish(row_id, phase, PhaseResult.failure(str(exc).splitlines()[0]))
        return None

    # -- results reach the queue even when the store is failing -------------------------------
    def _finish(self, row_id: int, phase: str, result: PhaseResult) -> None:
        """Hand a result to the queue; kept pending (in order) while the store refuses it."""
        self._pending.append(("finish", row_id, phase, result))
        self._flush_pending()

    def _requeue_or_fail(self, row_id: int, phase: str, msg: str, counted: bool = True) -> Optional[bool]:
        """A worker died or timed out on a job: requeue or fail it (None: pending, the store refused).

        ``counted=False``: the job never reached the worker; requeued without using a retry.
        """
        self._pending.append(("lost" if counted else "unsent", row_id, phase, msg))
        return self._flush_pending()

    def _flush_pending(self) -> Optional[bool]:
        """Write pending results oldest first; stops at the first refusal. The last call's answer, if it ran."""
        answer: Optional[bool] = None
        while self._pending:
            kind, row_id, phase, payload = self._pending[0]
            try:
                if kind == "finish":
                    self.queue.finish(row_id, phase, payload)
                else:
                    answer = self.queue.worker_lost(row_id, phase, payload, counted=kind == "lost")
            except OSError as exc:
                self._report_store(exc)
                return None
            self._pending.popleft()
        if self._last_error and self._last_error.startswith("state store failing"):
            log.warning("state store writes again; pending results written")
            self._last_error = None
        return answer

    def _fail_unrunnable(self, reasons: List[str]) -> None:
        """No slot can start a worker: the queued jobs fail with the reason instead of waiting for ever."""
        why = f"no worker can start: {'; '.join(reasons)}"
        while not self._pending:
            nxt = self.queue.next_job()
            if nxt is None:
                return
            try:
                self.queue.start(*nxt)
            except OSError as exc:
                self._report_store(exc)
                return
            self._finish(nxt[0], nxt[1], PhaseResult.failure(why))

    def _report_store(self, exc: BaseException) -> None:
        text = str(exc) if "state store failing" in str(exc) else f"state store failing: {exc}"
        if text != self._last_error:
            log.error("%s; %d result(s) kept until it writes again", text, len(self._pending))
            self._emit("fatal", {"slot": "dispatcher", "msg": text})
            self._last_error = text

    def _guarded(self, turn: Callable[[], None]) -> None:
        """Run one loop turn; anything unexpected is logged once with its traceback, reported, and rested on."""
        try:
            turn()
        except Exception as exc:  # noqa: BLE001 - the loop that owns the slots must outlive any bug
            text = f"dispatcher: {type(exc).__name__}: {exc}"
            if text != self._last_error:
                log.exception("%s (the loop goes on)", text)
                self._emit("fatal", {"slot": "dispatcher", "msg": text})
                self._last_error = text
            self._stop.wait(LOOP_ERROR_PAUSE)

    def _emit(self, kind: str, data: Dict[str, Any]) -> None:
        if self.on_event:
            self.on_event(kind, data)


__all__ = ["DispatcherBase", "LATENCY_SAMPLES", "START_FAILURES", "BROKEN_RETRY_S"]
