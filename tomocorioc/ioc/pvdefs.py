"""The IOC's PV definitions: the one source of truth (pure: no EPICS imports).

The caproto server, the generated ``db/tomoCor.template`` and
``db/tomoCor_settings.req``, and the screens all come from :func:`pv_table`.
Names are relative to the prefix (default ``TomoCor:``).  A setting PV names
the settings field it drives (``setting="params.search_width"``) and its
converter; its default, limits and units are read from that field's spec
(:mod:`tomocorioc.core.settings`), so each lives in one place.  Adding a
setting is one settings field plus one ``bound(...)`` line here.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from tomocorioc.core.params import COR_METHODS, FILTERS, METRICS
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import spec_at
from tomocorioc.ioc.convert import Choice, Converter, Flag, Number, NumberText, Text

MAX_SLOTS = 8           # Slot1..Slot8 always exist; unused ones stay blank
PAGE_ROWS = 16          # Row01..Row16 on the queue screen
LONG_STRING = 4096      # characters of a long-string (path) PV, read with .$
DEFAULT_PREFIX = "TomoCor:"

ROW_STATUSES = ("idle", "queued", "running", "done", "review", "failed", "cancelled", "skipped", "disabled")
# Alarm severity per row status (0 none, 1 minor, 2 major): MEDM's alarm colour mode shows it.
ROW_SEVERITY = {"failed": 2, "cancelled": 1, "review": 1, "skipped": 1}
COR_METHOD_LABELS = ("Auto", "AI", "Classical")   # the CorMethod states, for COR_METHODS
BINNING_LABELS = ("1x1", "2x2", "4x4", "8x8")


class Kind(str, enum.Enum):
    """EPICS record type of a PV (what the template says and how caproto serves it)."""

    BI = "bi"
    BO = "bo"
    MBBI = "mbbi"
    MBBO = "mbbo"
    AI = "ai"
    AO = "ao"
    LONGIN = "longin"
    LONGOUT = "longout"
    STRINGIN = "stringin"
    STRINGOUT = "stringout"
    LSI = "lsi"      # long string in (paths, messages): a char waveform, caget -S or PV.$
    LSO = "lso"      # long string out: a char waveform, caput -S

    @property
    def writable(self) -> bool:
        """Output records accept puts; input records are read-only to clients."""
        return self in (Kind.BO, Kind.MBBO, Kind.AO, Kind.LONGOUT, Kind.STRINGOUT, Kind.LSO)

    @property
    def is_enum(self) -> bool:
        return self in (Kind.BI, Kind.BO, Kind.MBBI, Kind.MBBO)


class Role(str, enum.Enum):
    """What a PV is for (decides autosave and how a put is handled)."""

    STATUS = "status"      # published by the service
    SETTING = "setting"    # autosaved, applied to the service settings
    COMMAND = "command"    # a put triggers an action; never autosaved
    SELECT = "select"      # per-file access by scripts/screens; never autosaved


@dataclass(frozen=True)
class PVDef:
    """One PV: record kind, role, default, limits and description."""

    name: str
    kind: Kind
    role: Role
    desc: str
    default: Any = None
    enums: Tuple[str, ...] = ()
    lo: Optional[float] = None
    hi: Optional[float] = None
    units: str = ""
    prec: int = 0
    setting: Optional[str] = None          # dotted path into ServiceSettings (Role.SETTING PVs)
    conv: Optional[Converter] = None       # PV value <-> setting value

    @property
    def autosave(self) -> bool:
        """Settings are autosaved and restored; nothing else is."""
        return self.role is Role.SETTING

    def __post_init__(self) -> None:
        if len(self.desc) > 40:
            raise ValueError(f"{self.name}: DESC longer than 40 characters: {self.desc!r}")
        if self.kind.is_enum and not self.enums:
            raise ValueError(f"{self.name}: enum record without states")
        if (self.setting is None) != (self.conv is None):
            raise ValueError(f"{self.name}: a bound PV needs both setting and conv")


def bound(name: str, kind: Kind, setting: str, conv: Converter, desc: str = "", *,
          enums: Tuple[str, ...] = (), prec: int = 0) -> PVDef:
    """A setting PV driving ``setting``: default, limits, units (and DESC unless given) from its spec."""
    spec = spec_at(ServiceSettings(), setting)
    p = PVDef(name, kind, Role.SETTING, desc or spec.doc, None, enums, spec.lo, spec.hi, spec.units, prec,
              setting, conv)
    return _with_default(p, conv.to_pv(p, spec.default))


def _with_default(p: PVDef, default: Any) -> PVDef:
    return PVDef(p.name, p.kind, p.role, p.desc, default, p.enums, p.lo, p.hi, p.units, p.prec, p.setting, p.conv)


def _b(name: str, role: Role, desc: str, znam: str, onam: str, default: int = 0, out: bool = True) -> PVDef:
    return PVDef(name, Kind.BO if out else Kind.BI, role, desc, default, (znam, onam))


def _cmd(name: str, desc: str, label: str) -> PVDef:
    return PVDef(name, Kind.BO, Role.COMMAND, desc, 0, ("Done", label))


def pv_table() -> List[PVDef]:
    """Every PV of the IOC, in screen order."""
    return list(_table())


@functools.lru_cache(maxsize=1)
def _table() -> Tuple[PVDef, ...]:
    """The table, built once (PVDefs are immutable)."""
    S, C, X = Role.STATUS, Role.COMMAND, Role.SELECT
    pvs: List[PVDef] = [
        # -- status (tomoStream style)
        _b("ServerRunning", S, "Python server alive (watchdog)", "Stopped", "Running", out=False),
        PVDef("Watchdog", Kind.LONGIN, S, "Counts down unless dispatcher alive", 0, lo=0, hi=4),
        PVDef("ReconStatus", Kind.LSI, S, "What the service is doing now", ""),
        PVDef("ReconTime", Kind.AI, S, "Duration of the last phase", 0.0, units="s", prec=2),
        _b("Busy", S, "Jobs queued or running", "Done", "Busy", out=False),
        PVDef("Message", Kind.LSI, S, "Last error or notice (one line)", ""),
        # -- phase enables
        bound("PhaseTry", Kind.BO, "phase_try", Flag(), enums=("Disable", "Enable")),
        bound("PhaseInfer", Kind.BO, "phase_infer", Flag(), enums=("Disable", "Enable")),
        bound("PhaseFull", Kind.BO, "phase_full", Flag(), enums=("Disable", "Enable")),
        bound("PhaseTomoLog", Kind.BO, "phase_tomolog", Flag(), enums=("Disable", "Enable")),
        # -- settings
        bound("MaxCorDelta", Kind.AO, "max_cor_delta", Number(), prec=2),
        bound("CenterSearchWidth", Kind.AO, "params.search_width", Number(), prec=2),
        bound("CenterSearchStep", Kind.AO, "params.search_step", Number(), prec=2),
        bound("NSino", Kind.AO, "params.nsino", Number(), prec=3),
        bound("Binning", Kind.MBBO, "params.binning", Choice((0, 1, 2, 3)), "Binning", enums=BINNING_LABELS),
        bound("FbpFilter", Kind.MBBO, "params.fbp_filter", Choice(FILTERS), enums=FILTERS),
        bound("CorMethod", Kind.MBBO, "cor_method", Choice(COR_METHODS), enums=COR_METHOD_LABELS),
        bound("Metric", Kind.MBBO, "metric", Choice(METRICS), enums=METRICS),
        bound("ModelPath", Kind.LSO, "model", Text(blank_is_none=True, existing_file=True)),
        bound("TryTimeout", Kind.AO, "try_timeout", Number()),
        bound("InferTimeout", Kind.AO, "infer_timeout", Number()),
        bound("FullTimeout", Kind.AO, "full_timeout", Number()),
        bound("Gpus", Kind.STRINGOUT, "gpus", Text(blank_is_none=True, squeeze=True)),
        bound("AutoFixOutliers", Kind.BO, "auto_fix_outliers", Flag(), enums=("No", "Yes")),
        bound("SeriesBarrier", Kind.BO, "series_barrier", Flag(), enums=("No", "Yes")),
        bound("HoldFullOnReview", Kind.BO, "hold_full_on_review", Flag(), enums=("No", "Yes")),
        bound("TomoLogUrl", Kind.LSO, "tomolog.presentation_url", Text(blank_is_none=True),
              "TomoLog presentation URL"),
        bound("TomoLogCloud", Kind.STRINGOUT, "tomolog.cloud_service", Text(blank_is_none=True),
              "TomoLog cloud service"),
        bound("TomoLogBeamline", Kind.STRINGOUT, "tomolog.beamline", Text(blank_is_none=True), "TomoLog beamline"),
        bound("TomoLogMin", Kind.STRINGOUT, "tomolog.vmin", NumberText(), "TomoLog min (blank: auto)"),
        bound("TomoLogMax", Kind.STRINGOUT, "tomolog.vmax", NumberText(), "TomoLog max (blank: auto)"),
        bound("TomoScanPrefix", Kind.STRINGOUT, "tomoscan_prefix", Text()),
        bound("AutoTrigger", Kind.BO, "auto_trigger", Flag(), enums=("Off", "On")),
        bound("TriggerPhases", Kind.STRINGOUT, "trigger_phases", Text(squeeze=True)),
        bound("TriggerTimeout", Kind.AO, "trigger_timeout", Number()),
        PVDef("TriggerStatus", Kind.LSI, S, "Trigger state, last file or error", "off"),
        # -- commands
        PVDef("Enqueue", Kind.LSO, C, "Queue a file, directory or glob", ""),
        _cmd("Start", "Start: requeue cancelled, run", "Start"),
        _cmd("Abort", "Cancel queued and running jobs", "Abort"),
        _cmd("Pause", "Start no new jobs", "Pause"),
        _cmd("Resume", "Start jobs again", "Resume"),
        _cmd("FixOutliers", "Fix COR outliers in each series", "Fix"),
        _cmd("RetryFailed", "Requeue failed rows", "Retry"),
        _cmd("ClearDone", "Remove finished rows", "Clear"),
        _cmd("ApplyParams", "Selected sidecar to enabled rows", "Apply"),
        _cmd("RemoveSelected", "Remove the selected row", "Remove"),
        _cmd("AcceptCor", "Accept the selected file's COR", "Accept"),
        _b("Paused", S, "Queue paused", "Running", "Paused", out=False),
        # -- queue status
        PVDef("QueueLength", Kind.LONGIN, S, "Rows in the queue", 0),
        PVDef("NumQueued", Kind.LONGIN, S, "Rows waiting", 0),
        PVDef("NumRunning", Kind.LONGIN, S, "Rows running", 0),
        PVDef("NumDone", Kind.LONGIN, S, "Rows done", 0),
        PVDef("NumFailed", Kind.LONGIN, S, "Rows failed", 0),
        PVDef("NumSkipped", Kind.LONGIN, S, "Rows skipped or disabled", 0),
        PVDef("NumNeedsReview", Kind.LONGIN, S, "Rows whose COR needs review", 0),
        PVDef("Progress", Kind.AI, S, "Finished share of requested phases", 0.0, lo=0, hi=100, units="%", prec=1),
        PVDef("CurrentFile", Kind.LSI, S, "File of the latest started job", ""),
        PVDef("LastFile", Kind.LSI, S, "File of the latest COR", ""),
        PVDef("LastCor", Kind.AI, S, "Latest COR found", 0.0, units="px", prec=2),
        PVDef("NumSlots", Kind.LONGIN, S, "Worker slots", 0),
        PVDef("ClusterStatus", Kind.LSI, S, "Dask cluster link, or local slots", ""),
        PVDef("NumWorkers", Kind.LONGIN, S, "Worker processes (cluster or local)", 0),
        PVDef("NumGpus", Kind.LONGIN, S, "GPUs that run jobs", 0),
        # -- per file, for scripts
        PVDef("SelectFile", Kind.LSO, X, "Select a queued file by path", ""),
        PVDef("Selected:Cor", Kind.AO, X, "COR of the selected file", 0.0, lo=-1e6, hi=1e6, units="px", prec=2),
        PVDef("Selected:CorSource", Kind.STRINGIN, S, "Where the COR came from", ""),
        PVDef("Selected:Status", Kind.MBBI, S, "Status of the selected file", 0, ROW_STATUSES),
        PVDef("Selected:Phase", Kind.STRINGIN, S, "Running or next phase", ""),
        _b("Selected:Enable", X, "Selected file enabled", "Disable", "Enable", 1),
        PVDef("Selected:Series", Kind.LSI, S, "Series of the selected file", ""),
        PVDef("Selected:Confidence", Kind.AI, S, "COR confidence (0..1)", 0.0, lo=0, hi=1, prec=3),
        _b("Selected:NeedsReview", S, "COR needs review", "No", "Yes", out=False),
        PVDef("Selected:Error", Kind.LSI, S, "Error of the selected file", ""),
        # -- per file, for screens
        PVDef("RowOffset", Kind.LONGOUT, X, "First queue row on the page", 0, lo=0, hi=100000),
    ]
    for n in range(1, MAX_SLOTS + 1):
        pvs += [PVDef(f"Slot{n}:Name", Kind.STRINGIN, S, f"Slot {n} device", ""),
                PVDef(f"Slot{n}:File", Kind.LSI, S, f"Slot {n} file", ""),
                PVDef(f"Slot{n}:Phase", Kind.STRINGIN, S, f"Slot {n} phase", ""),
                PVDef(f"Slot{n}:Elapsed", Kind.AI, S, f"Slot {n} seconds in phase", 0.0, units="s", prec=1)]
    for n in range(1, PAGE_ROWS + 1):
        r = f"Row{n:02d}"
        pvs += [PVDef(f"{r}:File", Kind.LSI, S, f"Row {n} file name", ""),
                PVDef(f"{r}:Cor", Kind.AO, X, f"Row {n} COR (put: manual)", 0.0, lo=-1e6, hi=1e6, units="px",
                      prec=2),
                PVDef(f"{r}:Status", Kind.MBBI, S, f"Row {n} status", 0, ROW_STATUSES),
                PVDef(f"{r}:Series", Kind.LSI, S, f"Row {n} series", ""),
                PVDef(f"{r}:SeriesColor", Kind.LONGIN, S, f"Row {n} series colour index 0-5", 0, lo=0, hi=5),
                _b(f"{r}:Enable", X, f"Row {n} enabled", "Disable", "Enable", 1),
                PVDef(f"{r}:CorSource", Kind.STRINGIN, S, f"Row {n} COR source", "")]
    names = [p.name for p in pvs]
    if len(set(names)) != len(names):
        raise AssertionError("duplicate PV names")
    return tuple(pvs)


def by_name() -> Dict[str, PVDef]:
    """The table keyed by name."""
    return {p.name: p for p in pv_table()}


def settings_pvs() -> List[PVDef]:
    """The setting PVs (each bound to a settings field)."""
    return [p for p in pv_table() if p.role is Role.SETTING]


__all__ = ["PVDef", "Kind", "Role", "bound", "pv_table", "by_name", "settings_pvs", "MAX_SLOTS", "PAGE_ROWS",
           "LONG_STRING", "DEFAULT_PREFIX", "ROW_STATUSES", "ROW_SEVERITY", "COR_METHOD_LABELS", "BINNING_LABELS"]
