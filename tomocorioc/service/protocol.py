"""The seams of the IOC-process side: what the service needs from a dispatcher, and what the IOC and the
trigger need from the service.  Both dispatchers (local slots, Dask cluster) implement :class:`Dispatcher`;
``tests/test_dispatcher_contract.py`` runs the same cases against each.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from tomocorioc.core.jobs import Row
from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import Job
from tomocorioc.core.settings import ServiceSettings

JobBuilder = Callable[[Row, str], Job]
EventHook = Callable[[str, Dict[str, Any]], None]


class SlotState(str, enum.Enum):
    """One execution slot: a local worker process, or one GPU of a cluster worker."""

    STARTING = "starting"       #: its worker is being started
    IDLE = "idle"               #: ready for a job
    BUSY = "busy"               #: running a job
    RESTARTING = "restarting"   #: its worker was killed (timeout, abort) and is being replaced
    BROKEN = "broken"           #: its runner cannot be built (see ``reason``)


@dataclass(frozen=True)
class SlotStatus:
    """What the status PVs show of one slot."""

    name: str
    state: SlotState
    row: Optional[int] = None
    phase: str = ""
    elapsed: float = 0.0
    reason: str = ""

    @property
    def ready(self) -> bool:
        """The slot's worker is up (idle or running a job)."""
        return self.state in (SlotState.IDLE, SlotState.BUSY)


@dataclass(frozen=True)
class ClusterStatus:
    """``ClusterStatus``/``NumWorkers``/``NumGpus``: the Dask link, or the local slots."""

    text: str
    workers: int
    gpus: int


class Dispatcher(Protocol):
    """Runs queue jobs in supervised workers; every call is safe from any thread."""

    heartbeat: int                  #: moves while the dispatch loop turns (the watchdog reads it)
    timeouts: Dict[str, float]      #: seconds per phase (0 or missing: none)

    def start(self) -> None:
        """Start the workers and the dispatch loop."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching and the workers (running jobs are re-queued on the next start)."""

    def wake(self) -> None:
        """Something changed in the queue: look again now."""

    def kill_running(self, pairs: List[Tuple[int, str]]) -> None:
        """Kill the workers running these (row id, phase) jobs (the queue already cancelled them)."""

    def slot_status(self) -> List[SlotStatus]:
        """One entry per slot, in display order."""

    def cluster_status(self) -> ClusterStatus:
        """The backend's link and size."""

    def wait_connected(self, timeout: float) -> bool:
        """True once jobs can be dispatched (at once for local slots)."""


class ServiceAPI(Protocol):
    """What the IOC's controller and the trigger use of the service."""

    settings: ServiceSettings
    queue: JobQueue
    dispatcher: Dispatcher
    messages: List[str]
    last_started: Optional[Dict[str, Any]]
    last_finished: Optional[Dict[str, Any]]
    finished_events: Deque[Dict[str, Any]]   # recent 'finished' events with a sequence number
    store_problem: Optional[str]              # why the state store refuses writes, until it accepts one
    loaded_generation: int                    # settings generation the state store had at start-up

    def settings_record(self) -> Tuple[int, ServiceSettings]:
        """The settings in force and their generation, read together."""

    def notice(self, msg: str) -> None:
        """Record a one-line operator message."""

    def enqueue(self, paths: Iterable[str], phases: Optional[Dict[str, bool]] = None) -> List[int]:
        """Add files; returns the new row ids."""

    def enqueue_failed(self, path: str, reason: str, phases: Optional[Dict[str, bool]] = None) -> Optional[int]:
        """Add a file already failed with ``reason``."""

    def abort(self) -> int:
        """Cancel everything; returns how many running jobs were killed."""

    def start_queue(self) -> int:
        """Queue failed/cancelled phases again and resume."""

    def fix_outliers(self, ids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
        """Fix COR Outliers; returns the changes."""

    def apply_params(self, source_id: int, target_ids: Iterable[int]) -> int:
        """Copy one row's sidecar to others."""

    def update_settings(self, changes: Mapping[str, Any]) -> None:
        """Apply setting changes (dotted paths) as one validated record."""

    def set_slots(self, slots: Sequence[Any], wait: bool = True) -> None:
        """Replace the worker slots (``wait=False``: on a thread of its own)."""

    def set_cor(self, row_id: int, cor: Optional[float], source: str = "manual", reason: str = "",
                needs_review: Optional[bool] = None) -> List[str]:
        """Change a row's COR; returns the phases it made stale."""

    def cluster_status(self) -> ClusterStatus:
        """The dispatcher's link and size."""


__all__ = ["Dispatcher", "ServiceAPI", "SlotState", "SlotStatus", "ClusterStatus", "JobBuilder", "EventHook"]
