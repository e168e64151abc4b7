"""What crosses the process boundary: the job a worker receives and the one result it returns (pure).

A :class:`Job` carries everything the worker needs for one phase of one file
(the COR and the sinogram estimate the row already holds too, so infer never
reopens the scan for them).  A :class:`PhaseResult` is what the worker
returns, what the dispatcher hands the queue, what the row and the store keep
and what the command line prints: one shape from end to end.  Both pickle (a
local slot's pipe, a Dask task) and have a JSON form (the store).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

# Environment variable giving the CPU niceness of worker processes (set by serve --worker-nice).
WORKER_NICE_ENV = "TOMOCORIOC_WORKER_NICE"


def _known(cls: Any, d: Mapping[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class Job:
    """One phase of one file, as a worker receives it."""

    path: str
    phase: str
    params: Dict[str, Any] = field(default_factory=dict)   # ReconParams.to_dict() (global + sidecar)
    job_id: int = 0
    cor: Optional[float] = None
    estimate: Optional[float] = None        # the row's sinogram estimate (infer uses it, never recomputes)
    cor_method: str = "auto"
    model: Optional[str] = None
    metric: str = "entropy"
    tomolog: Dict[str, Any] = field(default_factory=dict)
    force: bool = False                     # redo even when the outputs are up to date
    path_map: Tuple[Tuple[str, str], ...] = ()   # IOC-host -> worker-host prefixes (cluster backend)
    extra: Dict[str, Any] = field(default_factory=dict)   # what test and benchmark runners act on

    def with_id(self, job_id: int) -> "Job":
        """The same job under a dispatcher's job id."""
        return dataclasses.replace(self, job_id=int(job_id))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PhaseResult:
    """The outcome of one phase of one file; errors are data (``success`` False, ``msg`` one line)."""

    success: bool
    msg: str = ""
    up_to_date: bool = False                # the outputs existed with the same inputs: nothing was redone
    cor: Optional[float] = None
    cor_source: Optional[str] = None
    confidence: Optional[float] = None
    needs_review: bool = False
    estimate: Optional[float] = None        # sinogram (Vo) estimate of the COR
    seconds: float = 0.0
    notes: Tuple[str, ...] = ()
    fatal: bool = False                     # the worker cannot build its runner: the slot, not the file, failed
    data: Dict[str, Any] = field(default_factory=dict)   # runner-specific extras (diagnostics, benchmarks)

    @classmethod
    def failure(cls, msg: str, **kw: Any) -> "PhaseResult":
        """A failed phase with a one-line reason."""
        text = " ".join(str(msg).split())
        return cls(False, text, **kw)

    def with_seconds(self, seconds: float) -> "PhaseResult":
        """The same result with its duration filled in (when the runner did not time itself)."""
        return self if self.seconds else dataclasses.replace(self, seconds=float(seconds))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form (the store keeps it on the row)."""
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PhaseResult":
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        k = _known(cls, d)
        k["notes"] = tuple(k.get("notes") or ())
        k.setdefault("success", False)
        return cls(**k)


def as_result(value: Any) -> PhaseResult:
    """A runner's answer as a :class:`PhaseResult` (plain dicts from older runners are converted)."""
    if isinstance(value, PhaseResult):
        return value
    if isinstance(value, Mapping):
        return PhaseResult.from_dict(value)
    return PhaseResult.failure(f"the runner answered {type(value).__name__}, not a PhaseResult")


__all__ = ["Job", "PhaseResult", "as_result"]
