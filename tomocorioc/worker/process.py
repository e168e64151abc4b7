"""The worker process: one per slot, persistent, supervised by the dispatcher.

It puts itself in a new session (so the dispatcher can kill it together with
any tomocupy/TomoLog children), pins its GPU through the environment before
anything imports CUDA, builds its runner once (so an AI model stays loaded
between files) and then executes jobs sent over its pipe.  Every job answer,
success or not, is a :class:`~tomocorioc.core.result.PhaseResult`: errors
cross the process boundary as data.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
import traceback
from typing import Any, Callable, Dict

from tomocorioc.core.result import WORKER_NICE_ENV, Job, PhaseResult, as_result
from tomocorioc.data.errors import DatasetError, ReconError

log = logging.getLogger(__name__)

Runner = Callable[[Job], PhaseResult]


def load_factory(spec: str) -> Callable[[Dict[str, Any]], Runner]:
    """Import ``package.module:function`` (the runner factory)."""
    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


def _die_with_parent(parent: int) -> None:
    """Kill this worker's process group when the dispatcher's process goes away.

    Workers live in their own session (so a timeout can kill a whole tree),
    which also means a SIGKILLed service would leave them running on the GPU
    and writing outputs the restarted service redoes; this watch prevents that.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(runner: Runner, job: Job) -> PhaseResult:
    """Run one job; any exception becomes a failed result with a one-line reason (never raises)."""
    t0 = time.perf_counter()
    try:
        result = as_result(runner(job))
    except Exception as exc:  # noqa: BLE001 - the process boundary: report, don't die
        logging.getLogger("tomocorioc.worker").debug("job failed: %s", traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # Our own errors say what happened; anything else is named by its type too.
        result = PhaseResult.failure(first if isinstance(exc, (DatasetError, ReconError))
                                     else f"{type(exc).__name__}: {first}")
    return result.with_seconds(time.perf_counter() - t0)


def lower_priority(nice: int) -> None:
    """Run this worker at a lower CPU priority than the IOC, so puts and monitors stay prompt under load.

    The worker is a session leader (setsid), and with the kernel's autogroup
    scheduling each session shares the CPU as a group, whatever its members'
    nice values; so the session's autogroup is lowered too (where it exists).
    """
    if nice <= 0:
        return
    try:
        # absolute, not relative: the IOC that spawned us may run at a raised priority (serve --nice)
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.debug("nice %d refused: %s", nice, exc)
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(min(nice, 19)))
    except OSError:
        pass   # no autogroup scheduling here (or not Linux): the process nice value is all there is


def worker_main(conn, slot: str, env: Dict[str, str], factory_spec: str, config: Dict[str, Any],
                log_level: int = logging.WARNING) -> None:
    """Process entry point: handshake, then answer jobs until told to stop."""
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    _die_with_parent(os.getppid())
    os.environ.update(env)  # before the runner imports torch: CUDA_VISIBLE_DEVICES must win
    lower_priority(int(os.environ.get(WORKER_NICE_ENV, "0") or 0))
    logging.basicConfig(level=log_level, format=f"%(levelname)s [{slot}] %(name)s: %(message)s")
    try:
        runner = load_factory(factory_spec)(config)
    except Exception as exc:  # noqa: BLE001 - any start-up failure must reach the dispatcher as data
        conn.send({"type": "fatal", "msg": f"worker start failed: {type(exc).__name__}: {exc}"})
        return
    conn.send({"type": "ready", "pid": os.getpid()})
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # dispatcher gone
        if job is None:
            return
        result = run_job(runner, job)
        try:
            conn.send({"type": "result", "job_id": job.job_id, "result": result})
        except (BrokenPipeError, OSError):
            return
