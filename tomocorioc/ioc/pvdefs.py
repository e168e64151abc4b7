"""The IOC's PV definitions: the one source of truth (pure: no EPICS imports).

The caproto server, the generated ``db/tomoCor.template`` and
``db/tomoCor_settings.req``, and the screens all come from :func:`pv_table`.
Names are relative to the prefix (default ``TomoCor:``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..core.params import FILTERS

MAX_SLOTS = 8           # Slot1..Slot8 always exist; unused ones stay blank
PAGE_ROWS = 16          # Row01..Row16 on the queue screen
LONG_STRING = 4096      # characters of a long-string (path) PV, read with .$
DEFAULT_PREFIX = "TomoCor:"

ROW_STATUSES = ("idle", "queued", "running", "done", "review", "failed", "cancelled", "skipped", "disabled")
# Alarm severity per row status (0 none, 1 minor, 2 major): MEDM's alarm colour mode shows it.
ROW_SEVERITY = {"failed": 2, "cancelled": 1, "review": 1, "skipped": 1}
COR_METHODS = ("Auto", "AI", "Classical")
METRICS = ("entropy", "negative", "tv", "std")


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

    @property
    def autosave(self) -> bool:
        return self.role is Role.SETTING

    def __post_init__(self) -> None:
        if len(self.desc) > 40:
            raise ValueError(f"{self.name}: DESC longer than 40 characters: {self.desc!r}")
        if self.kind.is_enum and not self.enums:
            raise ValueError(f"{self.name}: enum record without states")


def _b(name: str, role: Role, desc: str, znam: str, onam: str, default: int = 0, out: bool = True) -> PVDef:
    return PVDef(name, Kind.BO if out else Kind.BI, role, desc, default, (znam, onam))


def _cmd(name: str, desc: str, label: str) -> PVDef:
    return PVDef(name, Kind.BO, Role.COMMAND, desc, 0, ("Done", label))


def pv_table() -> List[PVDef]:
    """Every PV of the IOC, in screen order."""
    S, T, C, X = Role.STATUS, Role.SETTING, Role.COMMAND, Role.SELECT
    pvs: List[PVDef] = [
        # -- status (tomoStream style)
        _b("ServerRunning", S, "Python server alive (watchdog)", "Stopped", "Running", out=False),
        PVDef("Watchdog", Kind.LONGIN, S, "Counts down unless dispatcher alive", 0, lo=0, hi=4),
        PVDef("ReconStatus", Kind.LSI, S, "What the service is doing now", ""),
        PVDef("ReconTime", Kind.AI, S, "Duration of the last phase", 0.0, units="s", prec=2),
        _b("Busy", S, "Jobs queued or running", "Done", "Busy", out=False),
        PVDef("Message", Kind.LSI, S, "Last error or notice (one line)", ""),
        # -- phase enables
        _b("PhaseTry", T, "Phase A: try reconstruction", "Disable", "Enable", 1),
        _b("PhaseInfer", T, "Phase B: infer the COR", "Disable", "Enable", 1),
        _b("PhaseFull", T, "Phase C: full reconstruction", "Disable", "Enable", 1),
        _b("PhaseTomoLog", T, "Phase D: TomoLog summary", "Disable", "Enable", 0),
        # -- settings
        PVDef("MaxCorDelta", Kind.AO, T, "Fix Outliers: max COR jump", 50.0, lo=0, hi=1000, units="px", prec=2),
        PVDef("CenterSearchWidth", Kind.AO, T, "Try grid half width", 50.0, lo=0.5, hi=1000, units="px", prec=2),
        PVDef("CenterSearchStep", Kind.AO, T, "Try grid step", 0.5, lo=0.01, hi=100, units="px", prec=2),
        PVDef("NSino", Kind.AO, T, "Try row (0 top .. 1 bottom)", 0.5, lo=0, hi=1, prec=3),
        PVDef("Binning", Kind.MBBO, T, "Binning", 0, ("1x1", "2x2", "4x4", "8x8")),
        PVDef("FbpFilter", Kind.MBBO, T, "FBP filter", 0, tuple(FILTERS)),
        PVDef("CorMethod", Kind.MBBO, T, "COR method", 0, COR_METHODS),
        PVDef("Metric", Kind.MBBO, T, "Classical sharpness metric", 0, METRICS),
        PVDef("ModelPath", Kind.LSO, T, "tomocor checkpoint (blank: none)", ""),
        PVDef("JobTimeout", Kind.AO, T, "Timeout of one phase (0: none)", 7200.0, lo=0, hi=604800, units="s"),
        PVDef("Gpus", Kind.STRINGOUT, T, "GPU numbers, e.g. 0,1 (blank: auto)", ""),
        _b("AutoFixOutliers", T, "Fix Outliers when a series ends", "No", "Yes", 0),
        _b("SeriesBarrier", T, "Full waits for its series' CORs", "No", "Yes", 0),
        PVDef("TomoLogUrl", Kind.LSO, T, "TomoLog presentation URL", ""),
        PVDef("TomoLogCloud", Kind.STRINGOUT, T, "TomoLog cloud service", "imgur"),
        PVDef("TomoLogBeamline", Kind.STRINGOUT, T, "TomoLog beamline", ""),
        PVDef("TomoLogMin", Kind.STRINGOUT, T, "TomoLog min (blank: auto)", ""),
        PVDef("TomoLogMax", Kind.STRINGOUT, T, "TomoLog max (blank: auto)", ""),
        PVDef("TomoScanPrefix", Kind.STRINGOUT, T, "tomoScan prefix, e.g. 2bma:TomoScan:", ""),
        _b("AutoTrigger", T, "Queue each scan tomoScan finishes", "Off", "On", 0),
        PVDef("TriggerPhases", Kind.STRINGOUT, T, "Phases for auto-queued files", ""),
        PVDef("TriggerTimeout", Kind.AO, T, "Wait for a complete file at most", 300.0, lo=1, hi=86400, units="s"),
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
    return pvs


def by_name() -> Dict[str, PVDef]:
    """The table keyed by name."""
    return {p.name: p for p in pv_table()}


__all__ = ["PVDef", "Kind", "Role", "pv_table", "by_name", "MAX_SLOTS", "PAGE_ROWS", "LONG_STRING",
           "DEFAULT_PREFIX", "ROW_STATUSES", "ROW_SEVERITY", "COR_METHODS", "METRICS"]
