"""The service's settings: one validated, immutable record; each default and limit is declared here once.

The IOC's setting PVs name the field they drive (``PVDef.setting``), the
command line reads its defaults from these specs, and the durable store keeps
:meth:`ServiceSettings.to_dict`.  A change is a new record
(:meth:`ServiceSettings.changed`), validated as a whole before anyone sees it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from tomocorioc.core.jobs import PHASES
from tomocorioc.core.params import COR_METHODS, DEFAULT_METRIC, METRICS, ReconParams
from tomocorioc.core.series import DEFAULT_MAX_DELTA, DEFAULT_SKIP_THRESHOLD
from tomocorioc.core.spec import SettingError, check_fields, setting, with_path

_PREFIX = re.compile(r"^[A-Za-z0-9_:.\-]{1,36}$")
_WEEK = 604800


@dataclass(frozen=True)
class ServiceSettings:
    """Service-wide settings (persisted in the store; the IOC's setting PVs are bound to these fields)."""

    params: ReconParams = setting(factory=ReconParams)
    cor_method: str = setting("auto", choices=COR_METHODS, doc="COR method")
    model: Optional[str] = setting(None, doc="tomocor checkpoint (blank: none)")
    metric: str = setting(DEFAULT_METRIC, choices=METRICS, doc="Classical sharpness metric")
    # Per-phase timeouts in seconds (0: none).
    try_timeout: float = setting(1800.0, lo=0, hi=_WEEK, units="s", doc="Timeout of a try phase (0: none)")
    infer_timeout: float = setting(900.0, lo=0, hi=_WEEK, units="s", doc="Timeout of an infer phase (0: none)")
    full_timeout: float = setting(7200.0, lo=0, hi=_WEEK, units="s", doc="Timeout of a full phase (0: none)")
    tomolog_timeout: float = setting(600.0, lo=0, hi=_WEEK, units="s", doc="Timeout of a TomoLog phase")
    max_retries: int = setting(1, lo=0, hi=10, integer=True, doc="Re-runs after a worker dies")
    series_barrier: bool = setting(False, doc="Full waits for its series' CORs")
    auto_fix_outliers: bool = setting(False, doc="Fix Outliers when a series ends")
    rerun_on_cor_change: bool = setting(True, doc="Re-run full when its COR changes")
    hold_full_on_review: bool = setting(True, doc="Full waits while its COR needs review")
    max_cor_delta: float = setting(DEFAULT_MAX_DELTA, lo=0, hi=1000, units="px", doc="Fix Outliers: max COR jump")
    skip_threshold: float = setting(DEFAULT_SKIP_THRESHOLD, lo=0, hi=1, doc="Auto-skip below this share")
    tomolog: Dict[str, Any] = setting(factory=dict, doc="TomoLog settings (see core.tomolog_settings)")
    # What a newly queued file gets.
    phase_try: bool = setting(True, doc="Phase A: try reconstruction")
    phase_infer: bool = setting(True, doc="Phase B: infer the COR")
    phase_full: bool = setting(True, doc="Phase C: full reconstruction")
    phase_tomolog: bool = setting(False, doc="Phase D: TomoLog summary")
    gpus: Optional[str] = setting(None, doc="GPU numbers, e.g. 0,1 (blank: auto)")
    tomoscan_prefix: str = setting("", doc="tomoScan prefix, e.g. 2bma:TomoScan:")
    auto_trigger: bool = setting(False, doc="Queue each scan tomoScan finishes")
    trigger_phases: str = setting("", doc="Phases for auto-queued files")
    trigger_timeout: float = setting(300.0, lo=1, hi=86400, units="s", doc="Wait for a complete file at most")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.gpus is not None:
            ids = [g.strip() for g in self.gpus.split(",")]
            if not self.gpus.strip() or any(not g.isdigit() for g in ids):
                raise SettingError(f"gpus must be a comma list of GPU numbers, got {self.gpus!r}")
        if self.tomoscan_prefix and not _PREFIX.match(self.tomoscan_prefix):
            raise SettingError(f"tomoscan_prefix {self.tomoscan_prefix!r} is not a PV prefix")
        if self.auto_trigger and not self.tomoscan_prefix:
            raise SettingError("auto_trigger needs a tomoscan_prefix")
        want = [p for p in self.trigger_phases.replace(" ", "").split(",") if p]
        if any(p not in PHASES for p in want) or (self.trigger_phases.strip() and not want):
            raise SettingError(f"trigger_phases {self.trigger_phases!r} is not a comma list of {','.join(PHASES)}")

    # -- derived views ---------------------------------------------------------------
    @property
    def phases(self) -> Dict[str, bool]:
        """The phase enables: what a newly queued file gets."""
        return {p: bool(getattr(self, f"phase_{p}")) for p in PHASES}

    @property
    def timeouts(self) -> Dict[str, float]:
        """Timeout per phase in seconds (0: none)."""
        return {p: float(getattr(self, f"{p}_timeout")) for p in PHASES}

    def trigger_phase_map(self) -> Dict[str, bool]:
        """Phases an auto-queued file gets."""
        if not self.trigger_phases.strip():
            return self.phases
        want = {p.strip() for p in self.trigger_phases.split(",") if p.strip()}
        return {p: p in want for p in PHASES}

    # -- changes and the durable form ---------------------------------------------------
    def changed(self, changes: Mapping[str, Any]) -> "ServiceSettings":
        """A new record with ``changes`` (dotted paths, e.g. ``params.search_width``) applied, validated whole."""
        new = self
        for path, value in changes.items():
            try:
                new = with_path(new, path, value)
            except (AttributeError, TypeError):
                raise SettingError(f"unknown setting {path!r}") from None
        return new

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["params"] = self.params.to_dict()
        d["tomolog"] = dict(self.tomolog)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ServiceSettings":
        """Inverse of :meth:`to_dict`; unknown keys are ignored and older forms migrated, so old state loads."""
        d = dict(d)
        for p, on in (d.pop("phases", None) or {}).items():      # before per-phase fields
            d.setdefault(f"phase_{p}", bool(on))
        for p, secs in (d.pop("timeouts", None) or {}).items():
            d.setdefault(f"{p}_timeout", float(secs or 0.0))
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "params" in d:
            d["params"] = ReconParams.from_dict(d["params"])
        return cls(**d)


__all__ = ["ServiceSettings", "SettingError"]
