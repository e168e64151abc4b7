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
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from tomocorioc.core.params import COR_METHODS, FILTERS, METRICS
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import spec_at
from tomocorioc.ioc.convert import Choice, Converter, Flag, Number, NumberText, Text

MAX_SLOTS = 8           # Slot1..Slot8 always exist; unused ones stay blank
PAGE_ROWS = 16          # Row01..Row16 on the queue screen
LONG_STRING = 4096      # characters of a long-string (path) PV, read with .$
DEFAULT_PREFIX = "TomoCor:"

ROW_STATUSES = ("idle", "queued", "running", "done", "review", "stale", "failed", "cancelled", "skipped",
                "disabled")
# Alarm severity per row status (0 none, 1 minor, 2 major): MEDM's alarm colour mode shows it.
ROW_SEVERITY = {"failed": 2, "cancelled": 1, "review": 1, "stale": 1, "skipped": 1}
SHORT_STRING = 39       # characters a stringin/stringout holds (40 with its NUL)
# Numeric PVs that may have no value (no COR yet): shown as NaN with INVALID severity, never as 0.
OPTIONAL_NUMBERS = ("Cor", "Selected:Cor", "LastCor", "Selected:Confidence")
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


# Access-security groups (EPICS ASG): what a site's ACF file grants per group (see core/acf.py).
ASGS = ("DEFAULT", "SETTINGS", "COMMANDS", "ADMIN")
# The group of a PV that names none, by role: status DEFAULT, settings SETTINGS, the rest COMMANDS.
_ROLE_ASG = {"status": "DEFAULT", "setting": "SETTINGS", "command": "COMMANDS", "select": "COMMANDS"}


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
    asg: Optional[str] = None              # access-security group (None: by role, see ASGS)

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
        if self.asg is None:
            object.__setattr__(self, "asg", _ROLE_ASG[self.role.value])
        if self.asg not in ASGS:
            raise ValueError(f"{self.name}: unknown access-security group {self.asg!r} (one of {', '.join(ASGS)})")


def bound(name: str, kind: Kind, setting: str, conv: Converter, desc: str = "", *,
          enums: Tuple[str, ...] = (), prec: int = 0, asg: Optional[str] = None) -> PVDef:
    """A setting PV driving ``setting``: default, limits, units (and DESC unless given) from its spec."""
    spec = spec_at(ServiceSettings(), setting)
    p = PVDef(name, kind, Role.SETTING, desc or spec.doc, None, enums, spec.lo, spec.hi, spec.units, prec,
              setting, conv, asg)
    return replace(p, default=conv.to_pv(p, spec.default))


def _b(name: str, role: Role, desc: str, znam: str, onam: str, default: int = 0, out: bool = True) -> PVDef:
    return PVDef(name, Kind.BO if out else Kind.BI, role, desc, default, (znam, onam))


def _cmd(name: str, desc: str, label: str, asg: Optional[str] = None) -> PVDef:
    return PVDef(name, Kind.BO, Role.COMMAND, desc, 0, ("Done", label), asg=asg)


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
        bound("RerunOnCorChange", Kind.BO, "rerun_on_cor_change", Flag(), enums=("No", "Yes")),
        bound("CenterSearchWidth", Kind.AO, "params.search_width", Number(), prec=2),
        bound("CenterSearchStep", Kind.AO, "params.search_step", Number(), prec=2),
        bound("NSino", Kind.AO, "params.nsino", Number(), prec=3),
        bound("Binning", Kind.MBBO, "params.binning", Choice((0, 1, 2, 3)), "Binning", enums=BINNING_LABELS),
        bound("FbpFilter", Kind.MBBO, "params.fbp_filter", Choice(FILTERS), enums=FILTERS),
        bound("CorMethod", Kind.MBBO, "cor_method", Choice(COR_METHODS), enums=COR_METHOD_LABELS),
        bound("Metric", Kind.MBBO, "metric", Choice(METRICS), enums=METRICS),
        bound("ModelPath", Kind.LSO, "model", Text(blank_is_none=True), asg="ADMIN"),
        bound("TryTimeout", Kind.AO, "try_timeout", Number()),
        bound("InferTimeout", Kind.AO, "infer_timeout", Number()),
        bound("FullTimeout", Kind.AO, "full_timeout", Number()),
        bound("Gpus", Kind.STRINGOUT, "gpus", Text(blank_is_none=True, squeeze=True), asg="ADMIN"),
        bound("AutoFixOutliers", Kind.BO, "auto_fix_outliers", Flag(), enums=("No", "Yes")),
        bound("SeriesBarrier", Kind.BO, "series_barrier", Flag(), enums=("No", "Yes")),
        bound("HoldFullOnReview", Kind.BO, "hold_full_on_review", Flag(), enums=("No", "Yes")),
        bound("TomoLogUrl", Kind.LSO, "tomolog.presentation_url", Text(blank_is_none=True),
              "TomoLog presentation URL", asg="ADMIN"),
        bound("TomoLogCloud", Kind.STRINGOUT, "tomolog.cloud_service", Text(blank_is_none=True),
              "TomoLog cloud service", asg="ADMIN"),
        bound("TomoLogBeamline", Kind.STRINGOUT, "tomolog.beamline", Text(blank_is_none=True), "TomoLog beamline",
              asg="ADMIN"),
        bound("TomoLogMin", Kind.STRINGOUT, "tomolog.vmin", NumberText(), "TomoLog min (blank: auto)"),
        bound("TomoLogMax", Kind.STRINGOUT, "tomolog.vmax", NumberText(), "TomoLog max (blank: auto)"),
        bound("TomoScanPrefix", Kind.STRINGOUT, "tomoscan_prefix", Text(), asg="ADMIN"),
        bound("AutoTrigger", Kind.BO, "auto_trigger", Flag(), enums=("Off", "On"), asg="ADMIN"),
        bound("TriggerPhases", Kind.STRINGOUT, "trigger_phases", Text(squeeze=True), asg="ADMIN"),
        bound("TriggerTimeout", Kind.AO, "trigger_timeout", Number(), asg="ADMIN"),
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
        _cmd("CamRot", "Measure the selected file's camera tilt", "Measure"),
        _cmd("ApplyTilt", "Store the tilt in the selected sidecar", "Apply"),
        _cmd("AcceptCor", "Accept the selected file's COR", "Accept"),
        _b("Paused", S, "Queue paused", "Running", "Paused", out=False),
        # -- access security (serve --acf) and the audit trail of puts
        _cmd("ReloadAcf", "Reload the access-security file", "Reload", asg="ADMIN"),
        PVDef("AuditLast", Kind.LSI, S, "Last put: who, what, outcome", ""),
        # -- queue status
        PVDef("QueueLength", Kind.LONGIN, S, "Rows in the queue", 0),
        PVDef("NumQueued", Kind.LONGIN, S, "Rows waiting", 0),
        PVDef("NumRunning", Kind.LONGIN, S, "Rows running", 0),
        PVDef("NumDone", Kind.LONGIN, S, "Rows done", 0),
        PVDef("NumFailed", Kind.LONGIN, S, "Rows failed", 0),
        PVDef("NumSkipped", Kind.LONGIN, S, "Rows skipped or disabled", 0),
        PVDef("NumNeedsReview", Kind.LONGIN, S, "Rows whose COR needs review", 0),
        PVDef("NumStale", Kind.LONGIN, S, "Rows whose outputs predate their COR", 0),
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
        PVDef("Selected:Series", Kind.STRINGIN, S, "Series of the selected file", ""),
        PVDef("Selected:Confidence", Kind.AI, S, "COR confidence (0..1)", 0.0, lo=0, hi=1, prec=3),
        _b("Selected:NeedsReview", S, "COR needs review", "No", "Yes", out=False),
        PVDef("Selected:Error", Kind.LSI, S, "Error of the selected file", ""),
        PVDef("Selected:Geometry", Kind.STRINGIN, S, "Scan geometry: 180, 360 or 360-offset", ""),
        PVDef("Selected:Tilt", Kind.AI, S, "CamRot tilt (rotate-proj-angle)", math.nan, units="deg", prec=3),
        PVDef("Selected:TiltR2", Kind.AI, S, "CamRot line fit R^2", math.nan, prec=4),
        PVDef("Selected:TiltStatus", Kind.LSI, S, "CamRot: measuring, the result or error", ""),
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
                PVDef(f"{r}:Series", Kind.STRINGIN, S, f"Row {n} series", ""),
                PVDef(f"{r}:SeriesColor", Kind.LONGIN, S, f"Row {n} series colour index 0-5", 0, lo=0, hi=5),
                _b(f"{r}:Enable", X, f"Row {n} enabled", "Disable", "Enable", 1),
                PVDef(f"{r}:CorSource", Kind.STRINGIN, S, f"Row {n} COR source", ""),
                PVDef(f"{r}:Error", Kind.STRINGIN, S, f"Row {n} error (short)", "")]
    names = [p.name for p in pvs]
    if len(set(names)) != len(names):
        raise AssertionError("duplicate PV names")
    return tuple(pvs)


def optional_number(name: str) -> bool:
    """True for a numeric PV that shows NaN (INVALID) when it has no value."""
    return name in OPTIONAL_NUMBERS or (name.startswith("Row") and name.endswith(":Cor"))


def short(text: str) -> str:
    """``text`` cut to what a stringin holds, marked with '...' when cut (ASCII: DBF_STRING is 8-bit)."""
    text = text.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= SHORT_STRING else text[:SHORT_STRING - 3] + "..."


def fit_long(text: str) -> str:
    """``text`` cut (at a character) so its UTF-8 bytes and the NUL fit a long-string PV; a lone surrogate
    (a name ``os.fsdecode`` could not decode) becomes ``?``, which the PV's UTF-8 encoding would refuse."""
    raw = text.encode("utf-8", "replace")
    return raw[:LONG_STRING - 1].decode("utf-8", "ignore")


def by_name() -> Dict[str, PVDef]:
    """The table keyed by name."""
    return {p.name: p for p in pv_table()}


def settings_pvs() -> List[PVDef]:
    """The setting PVs (each bound to a settings field)."""
    return [p for p in pv_table() if p.role is Role.SETTING]


__all__ = ["PVDef", "Kind", "Role", "bound", "pv_table", "by_name", "settings_pvs", "MAX_SLOTS", "PAGE_ROWS",
           "LONG_STRING", "DEFAULT_PREFIX", "ASGS", "ROW_STATUSES", "ROW_SEVERITY", "SHORT_STRING",
           "OPTIONAL_NUMBERS", "optional_number", "short", "COR_METHOD_LABELS", "BINNING_LABELS"]
