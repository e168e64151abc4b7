"""In-process stand-ins for the tests' fast tier: a dispatcher without processes, a trigger without EPICS.

:class:`FakeDispatcher` implements :class:`~tomocorioc.service.protocol.Dispatcher`
and has the constructor a :class:`~tomocorioc.service.service.Service` calls
(``dispatcher_factory``), so :func:`make_service` builds a real service (queue,
store, settings) whose jobs run only when a test says so (:meth:`FakeDispatcher.take`,
:meth:`FakeDispatcher.finish`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import PhaseResult
from tomocorioc.service.local import SlotSpec
from tomocorioc.service.protocol import ClusterStatus, EventHook, JobBuilder, SlotState, SlotStatus
from tomocorioc.service.service import Service

CPU_SLOT = SlotSpec("cpu0", {"CUDA_VISIBLE_DEVICES": ""})


class FakeDispatcher:
    """A :class:`~tomocorioc.service.protocol.Dispatcher` that records calls and runs jobs only on request."""

    def __init__(self, queue: JobQueue, slots: Sequence[SlotSpec], factory: str = "",
                 config: Optional[Dict[str, Any]] = None, build_job: Optional[JobBuilder] = None,
                 timeouts: Optional[Dict[str, float]] = None,
                 on_series_ready: Optional[Callable[[str], None]] = None,
                 on_event: Optional[EventHook] = None) -> None:
        self.queue = queue
        self.slots: List[SlotSpec] = list(slots)
        self.factory, self.config = factory, dict(config or {})
        self.build_job = build_job
        self.timeouts: Dict[str, float] = dict(timeouts or {})
        self.on_series_ready = on_series_ready
        self.on_event = on_event
        self.heartbeat = 0
        self.connected = True
        self.started = self.stopped = False
        self.wakes = 0
        self.killed: List[Tuple[int, str]] = []
        self.calls: List[Tuple[str, Tuple[Any, ...]]] = []     # (method, arguments), in call order
        self.running: Dict[str, Tuple[int, str, float]] = {}   # slot name -> (row id, phase, start time)

    # -- the Dispatcher protocol -----------------------------------------------------------
    def start(self) -> None:
        """Record the start (no workers)."""
        self.calls.append(("start", ()))
        self.started, self.stopped = True, False

    def stop(self, timeout: float = 10.0) -> None:
        """Record the stop; jobs still running stay running in the queue (as after a crash)."""
        self.calls.append(("stop", (timeout,)))
        self.stopped, self.started = True, False
        self.running.clear()

    def wake(self) -> None:
        """Count the wake-up; the heartbeat moves as if the loop turned."""
        self.wakes += 1
        self.heartbeat += 1

    def kill_running(self, pairs: List[Tuple[int, str]]) -> None:
        """Record the kills and free the slots running those jobs (the queue already cancelled them)."""
        pairs = list(pairs)
        self.calls.append(("kill_running", (list(pairs),)))
        self.killed.extend(pairs)
        for name, (rid, phase, _t0) in list(self.running.items()):
            if (rid, phase) in pairs:
                del self.running[name]

    def slot_status(self) -> List[SlotStatus]:
        """One entry per slot: BUSY with its job, else IDLE."""
        now = time.monotonic()
        out = []
        for s in self.slots:
            job = self.running.get(s.name)
            if job is None:
                out.append(SlotStatus(s.name, SlotState.IDLE))
            else:
                out.append(SlotStatus(s.name, SlotState.BUSY, job[0], job[1], now - job[2]))
        return out

    def cluster_status(self) -> ClusterStatus:
        """The slots, in the local dispatcher's terms."""
        n = len(self.slots)
        return ClusterStatus(f"fake: {n} slot{'s' * (n != 1)}", n, sum(1 for s in self.slots
                                                                      if s.name.startswith("gpu")))

    def wait_connected(self, timeout: float) -> bool:
        """:attr:`connected` (True unless a test says otherwise)."""
        return self.connected

    # -- driving jobs from a test --------------------------------------------------------------
    def take(self) -> Optional[Tuple[int, str]]:
        """Start the queue's next job on a free slot, as the dispatch loop would; None when none can start."""
        free = [s for s in self.slots if s.name not in self.running]
        if not free:
            return None
        nxt = self.queue.next_job()
        if nxt is None:
            return None
        rid, phase = nxt
        self.queue.start(rid, phase)
        self.running[free[0].name] = (rid, phase, time.monotonic())
        self._emit("started", {"slot": free[0].name, "row": rid, "phase": phase})
        return rid, phase

    def finish(self, row_id: int, phase: str, result: Optional[PhaseResult] = None) -> None:
        """Report a running job's result (success when None) and free its slot."""
        result = result if result is not None else PhaseResult(True, "fake")
        slot = next((n for n, (r, p, _t0) in self.running.items() if (r, p) == (row_id, phase)), "")
        self.running.pop(slot, None)
        self.queue.finish(row_id, phase, result)
        self._emit("finished", {"slot": slot, "row": row_id, "phase": phase, "success": result.success,
                                "msg": result.msg})

    def run_until_idle(self, result: Optional[Callable[[int, str], PhaseResult]] = None, limit: int = 10000) -> int:
        """Take and finish jobs until none can start (``result(row, phase)``, default success); returns how many."""
        n = 0
        while n < limit:
            job = self.take()
            if job is None:
                return n
            self.finish(*job, result(*job) if result is not None else None)
            n += 1
        raise RuntimeError(f"still not idle after {limit} jobs")

    def _emit(self, kind: str, data: Dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)


class FakeTrigger:
    """What the controller uses of a TriggerManager: records tomoScan links, holds status and the timeout."""

    def __init__(self, complete_timeout: float = 300.0) -> None:
        self.complete_timeout = float(complete_timeout)
        self.status = "off"
        self.links: List[Optional[str]] = []   # every set_tomoscan prefix, in order

    def set_tomoscan(self, prefix: Optional[str]) -> None:
        """Record the link (None: stop watching)."""
        self.links.append(prefix)


def make_service(tmp_path: Optional[Path] = None, **kw: Any) -> Service:
    """A real Service on a :class:`FakeDispatcher`: in-memory state, or ``tmp_path/state``.

    Keyword arguments go to :class:`Service`; ``slots`` defaults to one CPU
    slot (pass ``slots=None`` for the service's own choice from the stored Gpus).
    """
    kw.setdefault("slots", [CPU_SLOT])
    kw.setdefault("dispatcher_factory", FakeDispatcher)
    state = Path(tmp_path) / "state" if tmp_path is not None else None
    return Service(state, **kw)


__all__ = ["FakeDispatcher", "FakeTrigger", "make_service", "CPU_SLOT"]
