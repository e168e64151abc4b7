"""CPU priority of the IOC's threads: the ones that answer clients first.

Under load on a shared host (two slots of jobs, a dozen clients) the IOC's
event loop was runnable but waiting for a CPU a quarter to a third of the
time: a put's reply waited for the scheduler, not for work.  As EPICS base
does on Linux, the IOC takes what the host allows: a real-time round-robin
priority (SCHED_RR) for its Python threads (the event loop, the put and
status threads, and those that share the GIL and the state store's lock with
a put: the dispatcher, trigger, audit), and a negative niceness for every
thread.  Without the right (a user account without CAP_SYS_NICE or an
RLIMIT_RTPRIO/RLIMIT_NICE grant) it logs one line and runs as it was started.
A real-time thread's children (threads it starts, worker processes, a
caRepeater) begin as ordinary tasks at niceness 0 (SCHED_RESET_ON_FORK):
nothing the IOC spawns inherits a real-time priority.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Priority:
    """What ``serve --nice/--rt-priority`` asked for (0: do not ask)."""

    nice: int = -5
    realtime: int = 1

    def apply_to_process(self) -> str:
        """Niceness for every thread there is, real time for the calling one; one line saying what holds."""
        niced = raise_nice(self.nice)
        rt = realtime_thread(self.realtime)
        if not niced and not rt and (self.nice < 0 or self.realtime > 0):
            return "IOC CPU priority unchanged (needs root or CAP_SYS_NICE)"
        parts = ([f"SCHED_RR {self.realtime} for its Python threads"] if rt else []) + (
            [f"niceness {self.nice}"] if niced else [])
        return "IOC runs at " + ", ".join(parts)

    def apply_to_thread(self) -> None:
        """For a put or status thread as it starts (an executor's initializer)."""
        if not realtime_thread(self.realtime):
            raise_nice(self.nice, only_self=True)

    def apply_to_threads(self, tids: Iterable[Optional[int]]) -> int:
        """Real time for threads already running (by native id); how many now run in it.

        (Their niceness needs nothing more: they inherited it, or
        :meth:`apply_to_process` set it.)

        Every Python thread of the IOC takes the GIL and the state store's
        lock that a put needs: one left at an ordinary priority was preempted
        while holding them and the real-time put waited behind it.
        """
        done = 0
        for tid in tids:
            if tid is not None and realtime_thread(self.realtime, tid):
                done += 1
        return done


def raise_nice(nice: int, only_self: bool = False) -> bool:
    """Niceness ``nice`` (< 0) for the calling thread, and unless ``only_self`` every thread of the process
    (a library's, started at import, too); False when refused or not asked."""
    if nice >= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        for task in [0] if only_self else [0, *_threads()]:
            if os.getpriority(os.PRIO_PROCESS, task) > nice:
                os.setpriority(os.PRIO_PROCESS, task, nice)
    except OSError as exc:
        log.debug("nice %d refused: %s", nice, exc.strerror)
        return False
    return True


def realtime_thread(priority: int, tid: int = 0) -> bool:
    """SCHED_RR at ``priority`` (1-99) for thread ``tid`` (0: the calling one), reset in its children; False
    when refused."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(tid, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        log.debug("SCHED_RR %d refused: %s", priority, exc.strerror)
        return False
    return True


def _threads() -> List[int]:
    """This process's thread ids (Linux; empty elsewhere)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


__all__ = ["Priority", "raise_nice", "realtime_thread"]
