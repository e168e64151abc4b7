"""Queue rows and their phase states (pure: no EPICS, no torch).

A row is one dataset.  Each of its four phases (try, infer, full, tomolog)
has its own state; every change of a phase state goes through
:func:`transition`, which checks the change is allowed and logs it.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from tomocorioc.core.result import PhaseResult

log = logging.getLogger(__name__)

PHASES = ("try", "infer", "full", "tomolog")
DEFAULT_PHASES = {"try": True, "infer": True, "full": True, "tomolog": False}
COR_SOURCES = ("ai", "classical", "manual", "outlier-fixed", "series-filled", "file", "imported")


class PhaseState(str, enum.Enum):
    """State of one phase of one row."""

    OFF = "off"              #: phase not requested for this row
    QUEUED = "queued"        #: waiting for its turn (and its predecessors)
    RUNNING = "running"      #: a worker is executing it
    DONE = "done"            #: finished and its outputs verified
    UPTODATE = "up-to-date"  #: outputs already existed with the same parameters: skipped
    FAILED = "failed"        #: ran and failed (error on the row)
    CANCELLED = "cancelled"  #: aborted by the operator
    BLOCKED = "blocked"      #: cannot run because an earlier phase failed or was cancelled
    STALE = "stale"          #: finished, but the row's COR changed since: its outputs are out of date


FINISHED_OK = (PhaseState.DONE, PhaseState.UPTODATE)
# Phases whose outputs are made with the row's COR: a COR change after them makes them stale.
COR_CONSUMERS = ("full", "tomolog")
TERMINAL = (PhaseState.DONE, PhaseState.UPTODATE, PhaseState.FAILED, PhaseState.CANCELLED, PhaseState.BLOCKED)

_ALLOWED = {
    PhaseState.OFF: {PhaseState.QUEUED},
    PhaseState.QUEUED: {PhaseState.RUNNING, PhaseState.OFF, PhaseState.CANCELLED, PhaseState.BLOCKED,
                        PhaseState.FAILED, PhaseState.UPTODATE},
    PhaseState.RUNNING: {PhaseState.DONE, PhaseState.UPTODATE, PhaseState.FAILED, PhaseState.CANCELLED,
                         PhaseState.QUEUED},
    PhaseState.DONE: {PhaseState.QUEUED, PhaseState.OFF, PhaseState.STALE},
    PhaseState.UPTODATE: {PhaseState.QUEUED, PhaseState.OFF, PhaseState.STALE},
    PhaseState.STALE: {PhaseState.QUEUED, PhaseState.OFF},
    PhaseState.FAILED: {PhaseState.QUEUED, PhaseState.OFF},
    PhaseState.CANCELLED: {PhaseState.QUEUED, PhaseState.OFF},
    PhaseState.BLOCKED: {PhaseState.QUEUED, PhaseState.OFF, PhaseState.CANCELLED},
}


class TransitionError(ValueError):
    """A phase state change that the state machine does not allow."""


@dataclass
class Row:
    """One dataset in the queue."""

    id: int
    path: str
    series: str
    index: Optional[int] = None
    enabled: bool = True
    phases: Dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_PHASES))
    state: Dict[str, PhaseState] = field(default_factory=dict)
    cor: Optional[float] = None
    cor_source: Optional[str] = None
    confidence: Optional[float] = None
    needs_review: bool = False
    error: Optional[str] = None
    skipped: Optional[str] = None    # reason, when auto-skip disabled it
    attempts: int = 0                # failed runs of the current phase (for retries)
    estimate: Optional[float] = None  # sinogram (Vo) estimate of the COR
    notes: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    results: Dict[str, PhaseResult] = field(default_factory=dict)   # the last result of each phase
    updated: float = field(default_factory=time.time)
    order: float = 0.0               # queue position key (sparse: a move rewrites only the moved row)

    def __post_init__(self) -> None:
        for p in PHASES:
            want = self.phases.get(p, False)
            self.state.setdefault(p, PhaseState.QUEUED if want else PhaseState.OFF)
        self.state = {p: PhaseState(s) for p, s in self.state.items()}

    # -- derived views ---------------------------------------------------------
    @property
    def running_phase(self) -> Optional[str]:
        """The phase now running, if any."""
        for p in PHASES:
            if self.state[p] is PhaseState.RUNNING:
                return p
        return None

    @property
    def status(self) -> str:
        """One word for screens: disabled/skipped/running/failed/cancelled/queued/stale/done/review/idle."""
        if self.skipped:
            return "skipped"
        if not self.enabled:
            return "disabled"
        states = [self.state[p] for p in PHASES]
        if PhaseState.RUNNING in states:
            return "running"
        if PhaseState.FAILED in states:
            return "failed"
        if PhaseState.CANCELLED in states:
            return "cancelled"
        if PhaseState.QUEUED in states or PhaseState.BLOCKED in states:
            return "queued" if PhaseState.QUEUED in states else "failed"
        if PhaseState.STALE in states:
            return "stale"
        if any(s in FINISHED_OK for s in states):
            return "review" if self.needs_review else "done"
        return "idle"

    @property
    def current_phase(self) -> Optional[str]:
        """Running phase, else the next queued one, else None."""
        run = self.running_phase
        if run:
            return run
        for p in PHASES:
            if self.state[p] is PhaseState.QUEUED:
                return p
        return None

    @property
    def geometry(self) -> str:
        """Scan geometry the last successful try or full reported (180, 360, 360-offset); '' before."""
        for p in ("full", "try"):
            r = self.results.get(p)
            g = r.data.get("geometry") if r is not None and r.success and r.data else None
            if g:
                return str(g)
        return ""

    def copy(self) -> "Row":
        """An independent copy (its containers copied; results are immutable and shared)."""
        return dataclasses.replace(self, phases=dict(self.phases), state=dict(self.state), notes=list(self.notes),
                                   timings=dict(self.timings), results=dict(self.results))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able record (the durable form)."""
        d = asdict(self)
        d["state"] = {p: s.value for p, s in self.state.items()}
        d["results"] = {p: r.to_dict() for p, r in self.results.items()}
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Row":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["state"] = {p: PhaseState(s) for p, s in d.get("state", {}).items()}
        d["results"] = {p: PhaseResult.from_dict(r) for p, r in (d.get("results") or {}).items()}
        return cls(**d)


def transition(row: Row, phase: str, new: PhaseState, reason: str = "") -> None:
    """Change one phase's state, enforcing the state machine, and log it."""
    if phase not in PHASES:
        raise TransitionError(f"unknown phase {phase!r}")
    old = row.state[phase]
    if old is new:
        return
    if new not in _ALLOWED[old]:
        raise TransitionError(f"{row.path}: {phase} cannot go {old.value} -> {new.value}")
    row.state[phase] = new
    row.updated = time.time()
    log.info("%s: %s %s -> %s%s", row.path, phase, old.value, new.value, f" ({reason})" if reason else "")


def cor_text(cor: Optional[float]) -> str:
    """A COR as messages show it: 2 decimals (the precision of try-slice names), or 'none'."""
    return "none" if cor is None else f"{cor:.2f}"


def valid_cor(value: Any) -> float:
    """A COR from an operator or a file: finite float, else ValueError with a clear message."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"COR must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"COR must be finite, got {value!r}")
    if not (-1e6 < v < 1e6):
        raise ValueError(f"COR {v} is out of range")
    return v
