"""The neutral screen layout: widgets, screens, colours and labels, named from the PV table (pure, no EPICS).

:mod:`tomocorioc.ioc.screens` lays the three screens out with it; :mod:`tomocorioc.ioc.screen_formats`
renders them as MEDM ``.adl`` and Phoebus ``.bob``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from tomocorioc.ioc.pvdefs import (
    DEFAULT_PREFIX,
    Kind,
    PVDef,
    Role,
    by_name,
    optional_number,
)

MACRO = "$(P)"

# MEDM's standard 65-colour map (the one every medm display carries); widgets name colours by index.
MEDM_COLORS: Tuple[str, ...] = tuple((
    "ffffff ececec dadada c8c8c8 bbbbbb aeaeae 9e9e9e 919191 858585 787878 696969 5a5a5a 464646 "
    "2d2d2d 000000 00d800 1ebb00 339900 2d7f00 216c00 fd0000 de1309 be190b a01207 820400 5893ff "
    "597ee1 4b6ec7 3a5eab 27548d fbf34a f9da3c eeb62b e19015 cd6100 ffb0ff d67fe2 ae4ebc 8b1a96 "
    "610a75 a4aaff 8793e2 6a73c1 4d52a4 343386 c7bb6d b79d5c a47e3c 7d5627 58340f 99ffff 73dfff "
    "4ea5f9 2a63e4 0a00b8 ebf1b5 d4db9d bbc187 a6a462 8b8239 73ff6b 52da3b 3cb420 289315 1a7309").split())
WHITE, LIGHT, BG, BLACK, TITLE_FG, GREEN, RED, ENTRY_BG, BUTTON_BG = 0, 2, 4, 14, 54, 15, 20, 51, 51
# Row status -> band colour (idle rows stay uncoloured); statuses missing here share the last colour.
STATUS_COLORS: Dict[str, int] = {"queued": 50, "running": 30, "done": 60, "review": 32, "stale": 34, "failed": 20,
                                 "cancelled": 8}
SERIES_COLORS: Tuple[int, ...] = (27, 33, 37, 17, 47, 52)   # Row<NN>:SeriesColor 0..5

H = 20       # widget height
PITCH = 23   # row pitch inside a section
CHAR_W = 8   # pixels per character budgeted for static text (MEDM's fonts for 20-pixel text are this wide)


_DEFS: Dict[str, PVDef] = by_name()


def pv_def(name: str) -> PVDef:
    """The table entry of ``name`` (KeyError for a PV the IOC does not serve)."""
    if name not in _DEFS:
        raise KeyError(f"screens name a PV that is not in the PV table: {name}")
    return _DEFS[name]


@dataclass(frozen=True)
class Cond:
    """Colour ``color`` while channel A (an index) lies in ``lo..hi`` (and channel B > 0 when gated)."""

    lo: int
    hi: int
    color: int

    def medm(self, gated: bool) -> str:
        core = f"A={self.lo}" if self.lo == self.hi else f"A>={self.lo}&&A<={self.hi}"
        return core + ("&&B>0" if gated else "")

    def phoebus(self, gated: bool) -> str:
        core = f"pv0=={self.lo}" if self.lo == self.hi else f"pv0>={self.lo} && pv0<={self.hi}"
        return core + (" && pv1>0" if gated else "")


@dataclass(frozen=True)
class Widget:
    """One widget of the neutral layout; :class:`AdlWriter` and :class:`BobWriter` render it."""

    kind: str                  # rect, text, update, entry, menu, button, related, colour
    x: int
    y: int
    w: int
    h: int
    pv: str = ""               # relative to the prefix
    text: str = ""             # label, button text, or related-display caption
    fg: int = BLACK
    bg: int = BG
    align: str = "left"        # left, center, right
    outline: bool = False      # rect: border only
    value: str = ""            # button: value written on press
    target: str = ""           # related: screen stem
    conds: Tuple[Cond, ...] = ()
    gate: str = ""             # colour: second channel that must be > 0
    alarm: bool = False        # update: alarm-sensitive colour
    big: bool = False          # text: title font

    @property
    def string(self) -> bool:
        """Long strings (char waveforms) are shown and entered with the string format."""
        return bool(self.pv) and pv_def(self.pv).kind in (Kind.LSI, Kind.LSO)


class Screen:
    """A display being laid out: a title bar, bordered sections, labelled controls."""

    def __init__(self, name: str, title: str, width: int) -> None:
        self.name, self.title, self.width = name, title, width
        self.widgets: List[Widget] = []
        self.add(Widget("rect", 0, 4, width, 30, fg=LIGHT))
        self.add(Widget("text", 0, 8, width, 24, text=f"{MACRO} {title}", fg=TITLE_FG, align="center", big=True))

    def add(self, w: Widget) -> Widget:
        if w.pv:
            pv_def(w.pv)
        if w.gate:
            pv_def(w.gate)
        if w.x < 0 or w.y < 0 or w.x + w.w > self.width:
            raise ValueError(f"{self.name}: widget {w.kind} {w.pv or w.text!r} outside the display")
        text = w.text.replace(MACRO, DEFAULT_PREFIX)
        if w.kind in ("text", "button", "related") and len(text) * CHAR_W > w.w:
            raise ValueError(f"{self.name}: {w.text!r} does not fit in {w.w} pixels")
        if "(" in text or ")" in text:   # adl2pydm turns every parenthesis into a macro brace
            raise ValueError(f"{self.name}: no parentheses in screen text: {w.text!r}")
        self.widgets.append(w)
        return w

    @property
    def height(self) -> int:
        """The display ends 6 pixels below its lowest widget."""
        return max(w.y + w.h for w in self.widgets) + 6

    def section(self, x: int, y: int, w: int, rows: int, title: str) -> int:
        """A bordered group of ``rows`` rows with a title band; returns the y of its first row."""
        self.add(Widget("rect", x, y, w, 24 + rows * PITCH + 6, fg=BLACK, outline=True))
        self.add(Widget("rect", x + 1, y + 1, w - 2, H, fg=LIGHT))
        self.add(Widget("text", x + 1, y + 1, w - 2, H, text=title, align="center"))
        return y + 26

    def label(self, x: int, y: int, w: int, text: str, align: str = "right") -> None:
        self.add(Widget("text", x, y, w, H, text=text, align=align))

    def control(self, x: int, y: int, w: int, name: str, alarm: bool = False, h: int = H) -> None:
        """The widget a PV's kind calls for: menu for a writable enum, entry for other outputs, else a readback."""
        p = pv_def(name)
        # A COR that does not exist yet is NaN with INVALID severity: alarm colours draw it as undefined.
        alarm = alarm or optional_number(name)
        if p.kind.writable and p.kind.is_enum:
            self.add(Widget("menu", x, y, w, h, pv=name, bg=ENTRY_BG))
        elif p.kind.writable:
            self.add(Widget("entry", x, y, w, h, pv=name, bg=ENTRY_BG, alarm=alarm))
        else:
            self.add(Widget("update", x, y, w, h, pv=name, fg=TITLE_FG, alarm=alarm))

    def field(self, col: Tuple[int, int, int], y: int, name: str, text: Optional[str] = None,
              alarm: bool = False) -> None:
        """``col`` = (x, label width, control width): label on the left, control on the right."""
        x, lw, cw = col
        self.label(x, y, lw - 6, text if text is not None else label_of(name, lw - 6))
        self.control(x + lw, y, cw, name, alarm)

    def button(self, x: int, y: int, w: int, name: str) -> None:
        """A command message button: caption = the bo's ON state, press writes 1."""
        p = pv_def(name)
        if p.kind is not Kind.BO or p.role is not Role.COMMAND:
            raise ValueError(f"{name} is not a command bo")
        self.add(Widget("button", x, y, w, H, pv=name, text=p.enums[1], value="1", bg=BUTTON_BG))

    def related(self, x: int, y: int, w: int, target: str, text: str) -> None:
        self.add(Widget("related", x, y, w, H, text=text, target=target, fg=WHITE, bg=27))


# Short labels for the left column (the PV's DESC when absent).
LABELS: Dict[str, str] = {
    "ServerRunning": "Server", "Watchdog": "Watchdog", "Busy": "Busy", "Paused": "Queue", "ReconStatus": "Status",
    "Message": "Message", "ReconTime": "Recon time [s]", "Progress": "Progress [%]", "CurrentFile": "Current file",
    "LastFile": "file", "LastCor": "Last COR [px]", "MaxCorDelta": "Outlier max jump [px]",
    "RerunOnCorChange": "Re-run on COR change",
    "CenterSearchWidth": "Try half width [px]", "CenterSearchStep": "Try step [px]", "NSino": "Try row 0..1",
    "FbpFilter": "FBP filter", "CorMethod": "COR method", "Metric": "Sharpness metric", "ModelPath": "AI model file",
    "TryTimeout": "Try timeout [s]", "InferTimeout": "Infer timeout [s]", "FullTimeout": "Full timeout [s]",
    "Gpus": "GPUs, e.g. 0,1", "AutoFixOutliers": "Auto Fix Outliers", "SeriesBarrier": "Series barrier",
    "TomoLogUrl": "TomoLog URL", "TomoLogCloud": "TomoLog cloud",
    "TomoLogBeamline": "TomoLog beamline", "TomoLogMin": "TomoLog min", "TomoLogMax": "TomoLog max",
    "TomoScanPrefix": "tomoScan prefix", "AutoTrigger": "Auto trigger", "TriggerPhases": "Trigger phases",
    "TriggerTimeout": "Trigger timeout [s]", "TriggerStatus": "Trigger status", "SelectFile": "Select file",
    "Selected:Status": "Status", "Selected:Phase": "Phase", "Selected:Cor": "COR [px]", "Selected:CorSource": "Source",
    "Selected:Confidence": "Confidence", "Selected:NeedsReview": "Needs review", "Selected:Enable": "Enable",
    "Selected:Series": "Series", "Selected:Error": "Error", "RowOffset": "First row", "QueueLength": "Rows in queue",
    "AuditLast": "Last put",
    "Selected:Tilt": "Tilt [deg]", "Selected:TiltR2": "Tilt fit R2", "Selected:TiltStatus": "CamRot",
}


def label_of(name: str, width: int = 10 ** 6) -> str:
    """The screen label of a PV: :data:`LABELS`, else its DESC when that fits, else its name in words."""
    desc = pv_def(name).desc
    if name in LABELS:
        return LABELS[name]
    if len(desc) * CHAR_W <= width and "(" not in desc:
        return desc
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.split(":")[-1]).lower()
    return words[:1].upper() + words[1:]


def phase_label(p: PVDef) -> str:
    """A phase enable's label: its DESC without the word "Phase"."""
    return p.desc.replace("Phase ", "", 1)


def control_width(p: PVDef, wide: int) -> int:
    """Control width: paths and messages get ``wide``, other strings 220, numbers and menus 110."""
    return wide if p.kind in (Kind.LSI, Kind.LSO) else 220 if p.kind in (Kind.STRINGIN, Kind.STRINGOUT) else 110
