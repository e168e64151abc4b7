"""The cluster backend: queue jobs run on the GPU workers of a Dask distributed cluster.

:class:`ClusterDispatcher` implements the same
:class:`~tomocorioc.service.protocol.Dispatcher` protocol as the local slots, on
the same base (:mod:`.dispatch_base`).  One thread owns all
state; it blocks on a wake-up pipe until the nearest deadline (at most 1 s, for
the heartbeat).  Dask callbacks and the helper threads doing the blocking
cluster calls (connect, read the worker table, fetch a result, kill a worker)
only queue events and write the pipe.  Each worker GPU is a row, like a local
slot: a job goes only to a free row, pinned to that worker with
``resources={"GPU": 1}``, ``pure=False`` and no Dask retries, so queue order
and retries stay with the service (``queue.worker_lost``).  A job past its
timeout is cancelled and its worker's process tree killed through the nanny,
which starts a fresh one; a worker leaving mid-job hands its job back to the
queue.  The durable state is the IOC's database: the cluster holds nothing
the service cannot rebuild.  The worker side is :mod:`tomocorioc.worker.dask_plugin`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import enum
import logging
import queue as queue_mod
import select
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from distributed import Client, KilledWorker

from tomocorioc.core.pathmap import PathMap, PathPairs
from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import PhaseResult, as_result
from tomocorioc.service.dispatch_base import DispatcherBase
from tomocorioc.service.local import SlotSpec
from tomocorioc.service.protocol import ClusterStatus, EventHook, JobBuilder, SlotState, SlotStatus
from tomocorioc.worker.dask_plugin import (
    GPU_METRIC,
    PLUGIN_NAME,
    TomocoriocWorker,
    display_name,
    kill_worker_process,
    run_on_worker,
    stop_this_worker,
)
from tomocorioc.worker.dask_plugin import first_line as _brief

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0    # s for one attempt to reach the scheduler
RECONNECT_MAX = 10.0      # s between attempts, at most (doubling from 1 s)
RECONCILE_S = 5.0         # s between full worker-table reads (events keep it current in between)
FETCH_TIMEOUT = 60.0      # s to fetch a finished job's result from its worker
KILL_TIMEOUT = 20.0       # s for the nanny to kill a worker's processes


class ClusterState(str, enum.Enum):
    """The dispatcher's link to the scheduler."""
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"
    STOPPED = "stopped"


class GpuState(str, enum.Enum):
    """One worker GPU row."""
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"   # its job was killed; the worker process is being replaced
    BROKEN = "broken"           # the runner could not be built on this worker


class Ev(enum.Enum):
    """Events handed to the loop thread."""
    CONNECTED = "connected"     # with client and table, or error
    TABLE = "table"             # with table, or error
    MEMBERSHIP = "membership"
    DONE = "done"
    RESULT = "result"
    KILLED = "killed"


_SLOT_STATE = {GpuState.IDLE: SlotState.IDLE, GpuState.BUSY: SlotState.BUSY,
               GpuState.RESTARTING: SlotState.RESTARTING, GpuState.BROKEN: SlotState.BROKEN}


@dataclass
class _Worker:
    address: str
    name: Any
    host: str
    gpus: int
    nanny: Optional[str]
    status: str
    gpu_label: Optional[str] = None


@dataclass
class _Job:
    row_id: int
    phase: str
    job_id: int
    gpu: Tuple[str, int]
    future: Any
    started: float
    deadline: Optional[float]


@dataclass
class _Gpu:
    key: Tuple[str, int]          # (worker address, GPU index on that worker)
    name: str
    state: GpuState = GpuState.IDLE
    job: Optional[_Job] = None
    freed_at: Optional[float] = None
    reason: str = ""              # why it is broken


@dataclass
class _Link:
    """The current client and the bookkeeping of the helper calls that use it."""
    gen: int = 0
    client: Optional[Client] = None
    connecting: bool = False
    next_connect: float = 0.0
    backoff: float = 1.0
    refreshing: bool = False
    refresh_dirty: bool = False
    next_refresh: float = 0.0
    refresh_seq: int = 0
    # gone workers: address -> refresh seq when the scheduler dropped it, or None: killed, not yet noticed
    removed: Dict[str, Optional[int]] = field(default_factory=dict)


def _worker_table(info: Dict[str, Any]) -> Dict[str, _Worker]:
    out = {}
    for addr, w in (info.get("workers") or {}).items():
        gpus = int(float((w.get("resources") or {}).get("GPU", 0)))
        label = (w.get("metrics") or {}).get(GPU_METRIC)
        out[addr] = _Worker(addr, w.get("name", addr), w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0],
                            gpus, w.get("nanny"), str(w.get("status", "running")),
                            str(label) if label is not None else None)
    return out


class ClusterDispatcher(DispatcherBase):
    """Feeds queue jobs to the GPU workers of a Dask cluster and supervises them."""

    def __init__(self, queue: JobQueue, slots: Optional[List[SlotSpec]], factory: str, config: Dict[str, Any],
                 build_job: JobBuilder, timeouts: Optional[Dict[str, float]] = None,
                 on_series_ready: Optional[Callable[[str], None]] = None,
                 on_event: Optional[EventHook] = None, *,
                 cluster: str, path_map: PathPairs = None, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """``slots`` is accepted for the local dispatcher's signature and ignored: the workers' GPUs are the slots."""
        super().__init__(queue, factory, config, build_job, timeouts, on_series_ready, on_event)
        self.address = cluster
        self.path_map = PathMap(path_map)
        self.connect_timeout = connect_timeout
        self._events: "queue_mod.SimpleQueue[Tuple[Ev, int, Dict[str, Any]]]" = queue_mod.SimpleQueue()
        self._pool = cf.ThreadPoolExecutor(8, thread_name_prefix="tomocorioc-cluster")
        self._link = _Link()
        self._state = ClusterState.CONNECTING
        self._reason = ""
        self._connected = threading.Event()
        self._workers: Dict[str, _Worker] = {}
        self._gpus: Dict[Tuple[str, int], _Gpu] = {}
        self._jobs: Dict[int, _Job] = {}
        self._spent: List[Any] = []   # futures of finished jobs, released after the next submissions
        self._rows: List[Tuple[str, Optional[int], str, Optional[float], SlotState, str]] = []
        self._status = ClusterStatus("", 0, 0)
        self._publish()

    # -- public surface ----------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatch thread; it connects in the background (see :meth:`cluster_status`)."""
        self._start_loop("cluster-dispatcher", self._loop)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching, kill the workers running our jobs (they are re-queued on the next start), disconnect."""
        stopped = self._stop_loop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if stopped:
            self._close_pipe()

    def slot_status(self) -> List[SlotStatus]:
        """Per worker GPU: name, state, row id, phase, elapsed seconds (for the status PVs)."""
        now = time.monotonic()
        return [SlotStatus(name, state, row, phase, (now - started) if started else 0.0, reason)
                for name, row, phase, started, state, reason in self._rows]

    def cluster_status(self) -> ClusterStatus:
        """'connected: 3 workers, 3 GPUs', 'connecting to ...' or 'lost: ...', with the counts."""
        return self._status

    def wait_connected(self, timeout: float) -> bool:
        """Block until the scheduler was reached (True) or ``timeout`` passed (False)."""
        return self._connected.wait(timeout)

    # -- plumbing ------------------------------------------------------------------------
    def _post(self, kind: Ev, gen: int, **data: Any) -> None:
        self._events.put((kind, gen, data))
        self.wake()

    def _background(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:
            log.debug("cluster helper %s not started: shutting down", getattr(fn, "__name__", fn))

    # -- helper-thread calls: each ends by posting one event ----------------------------
    def _connect(self, gen: int) -> None:
        client = None
        try:
            client = Client(self.address, timeout=self.connect_timeout, set_as_default=False)
            client.register_plugin(TomocoriocWorker(), name=PLUGIN_NAME)
            client.subscribe_topic("all", lambda event: self._on_cluster_event(gen, event))
            table = _worker_table(client.scheduler_info(n_workers=-1))
        except Exception as exc:  # noqa: BLE001 - a helper thread's boundary: the failure goes to the loop
            if client is not None:
                self._close_client(client)
            self._post(Ev.CONNECTED, gen, error=_brief(exc))
            return
        if self._stop.is_set():
            self._close_client(client)
            return
        self._post(Ev.CONNECTED, gen, client=client, table=table)

    def _refresh(self, gen: int, seq: int, client: Client) -> None:
        try:
            self._post(Ev.TABLE, gen, seq=seq, table=_worker_table(client.scheduler_info(n_workers=-1)))
        except Exception as exc:  # noqa: BLE001 - a helper thread's boundary
            self._post(Ev.TABLE, gen, error=_brief(exc))

    def _fetch(self, gen: int, job_id: int, future: Any) -> None:
        try:
            self._post(Ev.RESULT, gen, job_id=job_id, result=as_result(future.result(timeout=FETCH_TIMEOUT)))
        except KilledWorker as exc:
            self._post(Ev.RESULT, gen, job_id=job_id, lost=f"worker died running it ({_brief(exc)})")
        except (cf.CancelledError, asyncio.CancelledError):
            self._post(Ev.RESULT, gen, job_id=job_id, lost="cancelled by the cluster")
        except (OSError, TimeoutError) as exc:
            self._post(Ev.RESULT, gen, job_id=job_id, lost=f"result lost: {_brief(exc)}")
        except Exception as exc:  # noqa: BLE001 - the task raised (run_on_worker answers errors as data)
            self._post(Ev.RESULT, gen, job_id=job_id, result=PhaseResult.failure(_brief(exc)))

    def _kill(self, gen: int, client: Client, worker: _Worker) -> None:
        try:
            if worker.nanny:
                out = client.run(kill_worker_process, worker.address, workers=[worker.address], nanny=True)
            else:
                out = client.run(stop_this_worker, workers=[worker.address])
            msg, ok = str(next(iter(out.values()), "no answer")), True
        except Exception as exc:  # noqa: BLE001 - a helper thread's boundary
            msg, ok = _brief(exc), False
        self._post(Ev.KILLED, gen, address=worker.address, ok=ok, msg=msg)

    @staticmethod
    def _close_client(client: Client) -> None:
        try:
            client.unsubscribe_topic("all")
            client.close(timeout=5)
        except Exception as exc:  # noqa: BLE001 - closing a broken link must not raise
            log.debug("closing the Dask client: %s", _brief(exc))

    def _on_cluster_event(self, gen: int, event: Tuple[float, Dict[str, Any]]) -> None:
        """Scheduler topic 'all' (runs in the client's event loop): hand worker changes to the loop."""
        msg = event[1] if isinstance(event, tuple) and len(event) > 1 else {}
        if isinstance(msg, dict) and msg.get("action") in ("add-worker", "remove-worker"):
            self._post(Ev.MEMBERSHIP, gen, action=msg["action"], address=msg.get("worker"))

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.heartbeat += 1
                self._guarded(self._turn)
                self._sleep()
        finally:
            self._shutdown()

    def _turn(self) -> None:
        self._drain()
        self._check_link()
        self._flush_pending()
        self._release_series()
        self._handle_kills()
        gpus = list(self._gpus.values())
        if gpus and all(g.state is GpuState.BROKEN for g in gpus):
            self._fail_unrunnable(sorted({g.reason for g in gpus}))
        self._assign()
        self._spent.clear()
        self._check_deadlines()
        self._publish()

    def _sleep(self) -> None:
        now = time.monotonic()
        wake = [now + 1.0] + [j.deadline for j in self._jobs.values() if j.deadline is not None]
        if self._state is not ClusterState.CONNECTED and not self._link.connecting:
            wake.append(self._link.next_connect)
        if self._state is ClusterState.CONNECTED and not self._link.refreshing:
            wake.append(self._link.next_refresh)
        timeout = max(0.0, min(wake) - now) if self._events.empty() else 0.0
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
            if ready:
                self._drain_wake()
        except (BlockingIOError, InterruptedError):
            pass

    def _drain(self) -> None:
        while True:
            try:
                kind, gen, data = self._events.get_nowait()
            except queue_mod.Empty:
                return
            if kind is Ev.CONNECTED and gen != self._link.gen and "client" in data:
                self._background(self._close_client, data["client"])   # a stale attempt: not ours any more
            elif gen == self._link.gen:
                self._handle(kind, data)

    def _handle(self, kind: Ev, data: Dict[str, Any]) -> None:
        link, now = self._link, time.monotonic()
        if kind is Ev.CONNECTED and "error" in data:
            link.connecting, self._reason = False, data["error"]
            link.next_connect, link.backoff = now + link.backoff, min(RECONNECT_MAX, link.backoff * 2)
            log.warning("cannot reach the Dask scheduler %s: %s", self.address, data["error"])
        elif kind is Ev.CONNECTED:
            link.client, link.connecting, link.backoff = data["client"], False, 1.0
            self._state, self._reason = ClusterState.CONNECTED, ""
            log.info("connected to the Dask scheduler %s", self.address)
            link.next_refresh = now + self._apply_table(link.refresh_seq, data["table"])
            self._publish()
            self._connected.set()
        elif kind is Ev.TABLE:
            link.refreshing = False
            if "error" in data:
                link.next_refresh = now + 1.0
                log.warning("reading the Dask worker table failed: %s", data["error"])
            else:
                link.next_refresh = now + self._apply_table(data["seq"], data["table"])
        elif kind is Ev.MEMBERSHIP:
            link.refresh_dirty = True
            if data["action"] == "remove-worker" and data["address"]:
                link.removed[data["address"]] = link.refresh_seq
                self._remove_worker(data["address"], "left the cluster")
        elif kind is Ev.DONE:
            job = self._jobs.get(data["job_id"])
            if job is not None:
                self._background(self._fetch, link.gen, job.job_id, job.future)
        elif kind is Ev.RESULT:
            job = self._jobs.get(data["job_id"])
            gpu = self._gpus.get(job.gpu) if job else None
            if job is None or gpu is None:
                return   # cancelled, timed out or its worker left meanwhile: already handled
            if "lost" in data:
                self._lost(job, data["lost"])
            else:
                self._on_result(gpu, job, data["result"])
        elif kind is Ev.KILLED:
            if data["ok"]:
                log.info("worker %s: %s", data["address"], data["msg"])
                if data["address"] in self._workers:   # else the scheduler's removal came first
                    link.removed[data["address"]] = None
                self._remove_worker(data["address"], "was restarted")
            else:
                log.error("worker %s could not be killed: %s", data["address"], data["msg"])
                self._emit("fatal", {"slot": data["address"], "msg": f"worker restart failed: {data['msg']}"})
            link.refresh_dirty = True

    def _check_link(self) -> None:
        link, now = self._link, time.monotonic()
        if self._state is ClusterState.CONNECTED and link.client is not None and link.client.status != "running":
            self._lose(f"scheduler connection {link.client.status}")
        if self._state is not ClusterState.CONNECTED:
            if not link.connecting and now >= link.next_connect:
                link.gen += 1
                link.connecting = True
                self._background(self._connect, link.gen)
            return
        if not link.refreshing and (link.refresh_dirty or now >= link.next_refresh):
            link.refresh_seq += 1
            link.refreshing, link.refresh_dirty = True, False
            self._background(self._refresh, link.gen, link.refresh_seq, link.client)

    def _lose(self, reason: str) -> None:
        """The scheduler link broke: every running job goes back to the queue; reconnect with a fresh client."""
        log.warning("lost the Dask scheduler %s: %s", self.address, reason)
        self._state, self._reason = ClusterState.LOST, reason
        for addr in list(self._workers):
            self._remove_worker(addr, f"unreachable ({reason})")
        old, self._link = self._link.client, _Link(gen=self._link.gen + 1, next_connect=time.monotonic() + 1.0)
        if old is not None:
            self._background(self._close_client, old)

    # -- workers and their GPU rows ------------------------------------------------------------
    def _apply_table(self, seq: int, table: Dict[str, _Worker]) -> float:
        """Adopt a worker table read at ``seq``; returns the seconds until the next read."""
        for addr in [a for a in self._workers if a not in table]:
            self._remove_worker(addr, "left the cluster")
        removed = self._link.removed
        for addr in [a for a in removed if a not in table]:
            if removed[addr] is None or seq > removed[addr]:   # the scheduler has dropped it too
                del removed[addr]
        for addr, w in table.items():
            if addr in removed and (removed[addr] is None or seq <= removed[addr]):
                continue   # read before it left, or killed and not yet noticed: do not bring it back
            removed.pop(addr, None)
            if addr not in self._workers:
                log.info("worker %s (%s) joined with %d GPU(s), %s", w.name, addr, w.gpus, w.status)
            self._workers[addr] = w
            for i in range(w.gpus):
                name = display_name(w.host, w.name, w.gpu_label, i, w.gpus)
                gpu = self._gpus.setdefault((addr, i), _Gpu((addr, i), name))
                gpu.name = name
        settling = any(w.status in ("created", "init", "starting") for w in self._workers.values())
        return 0.2 if settling else RECONCILE_S   # a joining worker is read again until it runs

    def _remove_worker(self, addr: str, why: str) -> None:
        w = self._workers.pop(addr, None)
        for key in [k for k in self._gpus if k[0] == addr]:   # its jobs go back to the queue
            gpu = self._gpus[key]
            if gpu.job is not None:
                self._lost(gpu.job, f"worker {gpu.name} {why}")
            del self._gpus[key]
        if w is not None:
            log.info("worker %s (%s) %s", w.name, addr, why)

    def _lost(self, job: _Job, msg: str) -> None:
        """A job whose worker died, left or timed out: back to the queue (retry) or failed."""
        name = self._gpus[job.gpu].name if job.gpu in self._gpus else job.gpu[0]
        self._drop(job)
        requeued = self._requeue_or_fail(job.row_id, job.phase, msg)
        self._emit("worker-lost", {"slot": name, "row": job.row_id, "phase": job.phase, "msg": msg,
                                   "requeued": requeued})

    def _drop(self, job: _Job, finished: bool = False) -> None:
        """Forget a job and free its GPU row; cancel its future unless it ``finished``."""
        self._jobs.pop(job.job_id, None)
        gpu = self._gpus.get(job.gpu)
        if gpu is not None and gpu.job is job:
            gpu.job, gpu.state, gpu.freed_at = None, GpuState.IDLE, time.monotonic()
        if finished:   # released after this turn's submissions: Dask batches client messages (10 ms)
            self._spent.append(job.future)
            return
        try:
            job.future.cancel()
        except Exception as exc:  # noqa: BLE001 - a closed client cannot cancel; the key dies with it
            log.debug("cancel %s: %s", job.future, _brief(exc))

    def _restart_worker(self, addr: str) -> None:
        worker = self._workers.get(addr)
        if worker is None or self._link.client is None:
            return
        for g in self._gpus.values():
            if g.key[0] == addr:
                g.state = GpuState.RESTARTING
        self._background(self._kill, self._link.gen, self._link.client, worker)

    # -- jobs --------------------------------------------------------------------------------------
    def _assign(self) -> None:
        if self._state is not ClusterState.CONNECTED or self._link.client is None:
            return
        tomolog_busy = any(j.phase == "tomolog" for j in self._jobs.values())
        for gpu in [g for g in self._gpus.values() if g.state is GpuState.IDLE and g.job is None
                    and getattr(self._workers.get(g.key[0]), "status", None) == "running"]:
            taken = self._take_job(tomolog_busy)
            if taken is None:
                return
            row_id, phase, job = taken
            job_id = job.job_id
            if self.path_map:
                job = dataclasses.replace(job, path_map=tuple(tuple(p) for p in self.path_map.to_list()))
            try:
                future = self._link.client.submit(
                    run_on_worker, job, self.factory, self.config, key=f"tomocorioc-{phase}-r{row_id}-{job_id}-"
                    f"{uuid.uuid4().hex[:8]}", workers=[gpu.key[0]], allow_other_workers=False,
                    resources={"GPU": 1}, pure=False, retries=0)
            except Exception as exc:  # noqa: BLE001 - a job that cannot be sent: retry (dead link) or fail
                self._requeue_or_fail(row_id, phase, f"submit failed: {_brief(exc)}")
                continue
            now = time.monotonic()
            if gpu.freed_at is not None:
                self.latencies.append(now - gpu.freed_at)
            timeout = self.timeout_for(phase)
            gpu.job = _Job(row_id, phase, job_id, gpu.key, future, now, now + timeout if timeout else None)
            gpu.state, gpu.freed_at = GpuState.BUSY, None
            self._jobs[job_id] = gpu.job
            future.add_done_callback(lambda _f, g=self._link.gen, j=job_id: self._post(Ev.DONE, g, job_id=j))
            tomolog_busy = tomolog_busy or phase == "tomolog"
            self._emit("started", {"slot": gpu.name, "row": row_id, "phase": phase})

    def _on_result(self, gpu: _Gpu, job: _Job, result: PhaseResult) -> None:
        """A job's answer from its worker (the benchmark wraps this to read the worker's time stamps)."""
        if result.fatal:   # the runner cannot start there: use other workers, retry the job
            log.error("%s: %s", gpu.name, result.msg)
            self._emit("fatal", {"slot": gpu.name, "msg": result.msg})
            self._lost(job, result.msg)
            gpu.state, gpu.reason = GpuState.BROKEN, result.msg
            return
        self._drop(job, finished=True)
        self._finish(job.row_id, job.phase, result)
        self._emit("finished", {"slot": gpu.name, "row": job.row_id, "phase": job.phase,
                                "success": result.success, "msg": result.msg})

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._jobs.values() if j.deadline is not None and now > j.deadline]:
            limit = self.timeout_for(job.phase) or (job.deadline - job.started)
            self._lost(job, f"timed out after {limit:g} s")
            self._restart_worker(job.gpu[0])

    def _handle_kills(self) -> None:
        for row_id, phase in self._take_kills():
            for job in [j for j in self._jobs.values() if (j.row_id, j.phase) == (row_id, phase)]:
                self._drop(job)   # the queue already marked it cancelled
                self._restart_worker(job.gpu[0])

    def _publish(self) -> None:
        rows = []
        for g in self._gpus.values():
            w = self._workers.get(g.key[0])
            running = w is not None and w.status == "running"
            state = _SLOT_STATE[g.state] if running or g.state is not GpuState.IDLE else SlotState.STARTING
            rows.append((g.name, g.job.row_id if g.job else None, g.job.phase if g.job else "",
                         g.job.started if g.job else None, state, g.reason if state is SlotState.BROKEN else ""))
        self._rows = rows
        nw, ng = len(self._workers), len(self._gpus)
        if self._state is ClusterState.CONNECTED:
            text = f"connected: {nw} worker{'s' * (nw != 1)}, {ng} GPU{'s' * (ng != 1)}"
            if nw and not ng:
                text += " (start workers with --resources GPU=1)"
        elif self._state is ClusterState.LOST:
            text = f"lost: {self._reason}; reconnecting"
        elif self._state is ClusterState.STOPPED:
            text = "stopped"
        else:
            text = f"connecting to {self.address}" + (f" ({self._reason})" if self._reason else "")
        self._status = ClusterStatus(text, nw, ng)

    def _shutdown(self) -> None:
        """Loop exit: cancel our jobs, kill the worker processes that ran them, disconnect."""
        client, busy = self._link.client, {j.gpu[0] for j in self._jobs.values()}
        for job in list(self._jobs.values()):
            self._drop(job)
        if client is not None:
            try:
                kills = [self._pool.submit(self._kill, self._link.gen, client, self._workers[a])
                         for a in busy if a in self._workers]
                cf.wait(kills, KILL_TIMEOUT)
            except RuntimeError as exc:
                log.warning("workers running jobs not killed on stop: %s", exc)
            self._close_client(client)
        self._link = _Link(gen=self._link.gen + 1)
        self._workers, self._gpus, self._state = {}, {}, ClusterState.STOPPED
        self._publish()


__all__ = ["ClusterDispatcher", "ClusterState", "GpuState"]
