"""The dispatcher: N slots, each a persistent supervised worker process.

One thread owns every slot.  It blocks in ``multiprocessing.connection.wait``
on the workers' pipes, their process sentinels and a wake-up pipe (written on
every queue change), with a timeout equal to the nearest job deadline — so a
freed slot gets its next job at once, with no polling sleep.  A worker that
dies is restarted and its job retried or failed; a job past its phase timeout
is killed with its whole process group; only that slot is affected.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, List, Optional, Tuple

from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import PhaseResult
from tomocorioc.service.dispatch_base import BROKEN_RETRY_S, START_FAILURES, DispatcherBase
from tomocorioc.service.protocol import ClusterStatus, EventHook, JobBuilder, SlotState, SlotStatus
from tomocorioc.worker.process import worker_main

log = logging.getLogger(__name__)


@dataclass
class SlotSpec:
    """One execution slot: a name and the environment that pins its device."""

    name: str
    env: Dict[str, str] = field(default_factory=dict)


def slots_for(gpus: Optional[str]) -> List[SlotSpec]:
    """Slots from ``--gpus`` ('0,1,2'), or all visible GPUs, or one CPU slot."""
    if gpus is None:
        n = _visible_gpus()
        ids = [str(i) for i in range(n)]
    else:
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
        if any(not g.isdigit() for g in ids):
            raise ValueError(f"--gpus must be a comma list of GPU numbers, got {gpus!r}")
    if not ids:
        return [SlotSpec("cpu0", {"CUDA_VISIBLE_DEVICES": ""})]
    return [SlotSpec(f"gpu{g}", {"CUDA_VISIBLE_DEVICES": g}) for g in ids]


def host_gpus() -> int:
    """CUDA devices on this host (its /dev/nvidiaN files), whatever CUDA_VISIBLE_DEVICES says."""
    return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()]) \
        if os.path.isdir("/dev") else 0


def _visible_gpus() -> int:
    """GPU count without importing CUDA in this (IOC) process: ask nvidia-smi's device files."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([v for v in vis.split(",") if v.strip() and v.strip() != "-1"])
    return host_gpus()


@dataclass
class _Slot:
    spec: SlotSpec
    proc: Optional[Any] = None
    conn: Optional[Any] = None
    ready: bool = False
    job: Optional[Tuple[int, str, int]] = None   # (row id, phase, job id)
    started: float = 0.0
    deadline: Optional[float] = None
    freed_at: Optional[float] = None
    broken: str = ""    # why its worker could not start (until a worker comes up ready)
    failures: int = 0   # start failures in a row
    retry_at: Optional[float] = None   # a broken slot's next start attempt (monotonic s)

    @property
    def is_broken(self) -> bool:
        return self.failures >= START_FAILURES


class LocalDispatcher(DispatcherBase):
    """Feeds queue jobs to local slot workers and supervises them."""

    def __init__(self, queue: JobQueue, slots: List[SlotSpec], factory: str, config: Dict[str, Any],
                 build_job: JobBuilder, timeouts: Optional[Dict[str, float]] = None,
                 on_series_ready: Optional[Callable[[str], None]] = None,
                 on_event: Optional[EventHook] = None) -> None:
        super().__init__(queue, factory, config, build_job, timeouts, on_series_ready, on_event)
        self._slots = [_Slot(s) for s in slots]
        self._ctx = mp.get_context("spawn")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start all workers and the dispatch thread."""
        for s in self._slots:
            self._spawn(s)
        self._start_loop("dispatcher", self._loop)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching, ask workers to exit, kill those that do not."""
        stopped = self._stop_loop(timeout)
        for s in self._slots:
            self._shutdown(s, timeout=2.0)
        if stopped:
            self._close_pipe()

    def slot_status(self) -> List[SlotStatus]:
        """Per slot: name, state, row id, phase, elapsed seconds (for the status PVs)."""
        now = time.monotonic()
        out = []
        for s in self._slots:
            if s.job:
                state = SlotState.BUSY
            elif s.ready:
                state = SlotState.IDLE
            else:
                state = SlotState.BROKEN if s.is_broken else SlotState.STARTING
            out.append(SlotStatus(s.spec.name, state, s.job[0] if s.job else None, s.job[1] if s.job else "",
                                  (now - s.started) if s.job else 0.0, s.broken))
        return out

    def cluster_status(self) -> ClusterStatus:
        """The local slots, in the cluster backend's terms."""
        n = len(self._slots)
        return ClusterStatus(f"local: {n} slot{'s' * (n != 1)}", n,
                             sum(1 for s in self._slots if s.spec.name.startswith("gpu")))

    # -- workers -------------------------------------------------------------------
    def _spawn(self, s: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"tomocorioc-{s.spec.name}", daemon=True,
                                 args=(child, s.spec.name, s.spec.env, self.factory, self.config,
                                       logging.getLogger().level))
        proc.start()
        child.close()
        s.proc, s.conn, s.ready, s.job, s.deadline = proc, parent, False, None, None
        log.info("slot %s: worker pid %s started", s.spec.name, proc.pid)

    def _kill(self, s: _Slot) -> None:
        if s.proc is None:
            return
        try:
            os.killpg(s.proc.pid, signal.SIGKILL)  # the worker and every child it started
        except (ProcessLookupError, PermissionError, OSError):
            s.proc.kill()
        s.proc.join(5)
        if s.conn:
            s.conn.close()

    def _shutdown(self, s: _Slot, timeout: float) -> None:
        if s.proc is None:
            return
        try:
            if s.conn and s.job is None:
                s.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        s.proc.join(timeout if s.job is None else 0)
        if s.proc.is_alive():
            self._kill(s)

    def _restart(self, s: _Slot, why: str) -> None:
        job = s.job
        self._kill(s)
        self._spawn(s)
        if job:
            row_id, phase, _ = job
            requeued = self._requeue_or_fail(row_id, phase, why)
            self._emit("worker-lost", {"slot": s.spec.name, "row": row_id, "phase": phase, "msg": why,
                                       "requeued": requeued})

    def _worker_exited(self, s: _Slot) -> None:
        """A worker process ended: its job is lost; one that never came up counts towards a broken slot."""
        why = s.broken or f"worker died (exit code {s.proc.exitcode})"
        if s.job or s.ready:
            s.failures = 0
            self._restart(s, why)
            return
        s.failures += 1
        self._kill(s)
        if not s.is_broken:
            self._spawn(s)
            return
        delay = min(BROKEN_RETRY_S[1], BROKEN_RETRY_S[0] * 2 ** (s.failures - START_FAILURES))
        s.proc, s.conn, s.broken = None, None, why
        s.retry_at = time.monotonic() + delay
        log.error("slot %s is broken: %s (%d failed starts; next try in %.0f s)", s.spec.name, why, s.failures,
                  delay)
        self._emit("fatal", {"slot": s.spec.name, "msg": f"broken: {why}"})

    # -- the loop ---------------------------------------------------------------
    def _assign(self) -> None:
        tomolog_busy = any(s.job and s.job[1] == "tomolog" for s in self._slots)
        for s in self._slots:
            if not s.ready or s.job is not None:
                continue
            taken = self._take_job(tomolog_busy)
            if taken is None:
                return
            row_id, phase, job = taken
            job_id = job.job_id
            try:
                s.conn.send(job)
            except OSError as exc:   # BrokenPipeError: the worker died after its "ready"
                # The row is running now: give it back (no retry used) and restart the slot, or it stayed
                # "running" with no worker (the pipe error escaped to the loop's guard).
                why = f"worker gone before it took the job ({exc.strerror or exc})"
                log.warning("slot %s: %s; %s %s queued again", s.spec.name, why, os.path.basename(job.path), phase)
                self._requeue_or_fail(row_id, phase, why, counted=False)
                self._restart(s, why)
                continue
            now = time.monotonic()
            if s.freed_at is not None:
                self.latencies.append(now - s.freed_at)
            s.job, s.started, s.freed_at = (row_id, phase, job_id), now, None
            timeout = self.timeout_for(phase)
            s.deadline = now + timeout if timeout else None
            tomolog_busy = tomolog_busy or phase == "tomolog"
            self._emit("started", {"slot": s.spec.name, "row": row_id, "phase": phase})

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeat += 1
            self._guarded(self._turn)

    def _turn(self) -> None:
        self._flush_pending()
        self._release_series()
        self._handle_kills()
        now = time.monotonic()
        for s in self._slots:
            if s.proc is None and s.retry_at is not None and now >= s.retry_at:
                s.retry_at = None
                self._spawn(s)
        if all(s.is_broken and s.proc is None for s in self._slots):
            self._fail_unrunnable(sorted({s.broken for s in self._slots}))
        self._assign()
        now = time.monotonic()
        wake_at = [s.deadline for s in self._slots if s.deadline is not None]
        wake_at += [s.retry_at for s in self._slots if s.retry_at is not None]
        # Wake at least every second so the heartbeat (watchdog) keeps moving.
        timeout = max(0.0, min([1.0] + [d - now for d in wake_at]))
        waitables = [self._wake_r]
        for s in self._slots:
            if s.proc is not None:
                waitables += [s.conn, s.proc.sentinel]
        ready = wait(waitables, timeout)
        if self._wake_r in ready:
            self._drain_wake()
        for s in self._slots:
            if s.proc is not None:
                self._service(s, ready)
        now = time.monotonic()
        for s in self._slots:
            if s.job and s.deadline is not None and now > s.deadline:
                _, phase, _ = s.job
                self._restart(s, f"timed out after {self.timeout_for(phase):g} s")

    def _service(self, s: _Slot, ready: List[Any]) -> None:
        if s.conn in ready:
            try:
                msg = s.conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is not None:
                self._on_message(s, msg)
                return
        if s.proc.sentinel in ready and not s.proc.is_alive():
            self._worker_exited(s)

    def _on_message(self, s: _Slot, msg: Dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ready":
            s.ready, s.broken, s.failures = True, "", 0
            s.freed_at = None
            return
        if kind == "fatal":   # the worker exits next; _worker_exited counts the failure
            if s.broken != msg.get("msg"):
                log.error("slot %s: %s", s.spec.name, msg.get("msg"))
            s.ready, s.broken = False, str(msg.get("msg") or "worker start failed")
            return
        if kind == "result" and s.job and msg.get("job_id") == s.job[2]:
            row_id, phase, _ = s.job
            s.job, s.deadline, s.freed_at = None, None, time.monotonic()
            result: PhaseResult = msg["result"]
            self._finish(row_id, phase, result)
            self._emit("finished", {"slot": s.spec.name, "row": row_id, "phase": phase,
                                    "success": result.success, "msg": result.msg})

    def _handle_kills(self) -> None:
        for row_id, phase in self._take_kills():
            for s in self._slots:
                if s.job and s.job[0] == row_id and s.job[1] == phase:
                    s.job = None  # the queue already marked it cancelled
                    self._kill(s)
                    self._spawn(s)
