"""Operator screens generated from the PV table: MEDM ``.adl`` and Phoebus ``.bob`` (pure, no EPICS imports).

Three screens, each written in both formats from one layout:

* ``tomoCor``: status, worker slots, the selected file, commands, phase enables, settings;
* ``tomoCorQueue``: one page of queue rows, coloured by status and by series;
* ``tomoCorEPICS_PVs``: the PV prefix, the tomoScan link, the model and TomoLog fields.

Every PV name goes through :func:`_def` (a lookup in the PV table), so a screen names only PVs the IOC
serves.  ``python -m tomocorioc.ioc.screens [--out-dir adl] [--check]`` writes (or checks) the six files,
deterministically.  Names carry the ``$(P)`` macro (``medm -x -macro P=TomoCor: tomoCor.adl``).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tomocorioc.ioc.genfiles import stale_files, write_files
from tomocorioc.ioc.pvdefs import (
    DEFAULT_PREFIX,
    MAX_SLOTS,
    PAGE_ROWS,
    ROW_STATUSES,
    Kind,
    PVDef,
    Role,
    by_name,
    optional_number,
    pv_table,
)

log = logging.getLogger(__name__)

MACRO = "$(P)"
SCREENS = ("tomoCor", "tomoCorQueue", "tomoCorEPICS_PVs")

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


def _def(name: str) -> PVDef:
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
        return bool(self.pv) and _def(self.pv).kind in (Kind.LSI, Kind.LSO)


class Screen:
    """A display being laid out: a title bar, bordered sections, labelled controls."""

    def __init__(self, name: str, title: str, width: int) -> None:
        self.name, self.title, self.width = name, title, width
        self.widgets: List[Widget] = []
        self.add(Widget("rect", 0, 4, width, 30, fg=LIGHT))
        self.add(Widget("text", 0, 8, width, 24, text=f"{MACRO} {title}", fg=TITLE_FG, align="center", big=True))

    def add(self, w: Widget) -> Widget:
        if w.pv:
            _def(w.pv)
        if w.gate:
            _def(w.gate)
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
        p = _def(name)
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
        p = _def(name)
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
    desc = _def(name).desc
    if name in LABELS:
        return LABELS[name]
    if len(desc) * CHAR_W <= width and "(" not in desc:
        return desc
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.split(":")[-1]).lower()
    return words[:1].upper() + words[1:]


def _phase_label(p: PVDef) -> str:
    return p.desc.replace("Phase ", "", 1)


def _width(p: PVDef, wide: int) -> int:
    """Control width: paths and messages get ``wide``, other strings 220, numbers and menus 110."""
    return wide if p.kind in (Kind.LSI, Kind.LSO) else 220 if p.kind in (Kind.STRINGIN, Kind.STRINGOUT) else 110


# -- the three screens --------------------------------------------------------------
_COUNTS = (("QueueLength", "Rows"), ("NumQueued", "Queued"), ("NumRunning", "Running"), ("NumDone", "Done"),
           ("NumFailed", "Failed"), ("NumSkipped", "Skipped"), ("NumNeedsReview", "Review"), ("NumStale", "Stale"))


def main_screen() -> Screen:
    """``tomoCor``: status, slots and selection on the left; commands, phases and settings on the right."""
    s = Screen("tomoCor", "tomoCor", 1110)
    lx, rx, cw = 5, 560, 545
    left, right, wide = (lx + 4, 122, 124), (lx + 270, 120, 140), (lx + 4, 122, cw - 132)
    rows = [((left, "Busy"), (right, "Paused")), ((wide, "ReconStatus"),), ((wide, "Message"),),
            ((left, "Progress"), (right, "ReconTime")), ((wide, "CurrentFile"),),
            (((lx + 4, 122, 70), "LastCor"), ((lx + 196, 40, cw - 242), "LastFile"))]
    placed = {"ServerRunning", "Watchdog"} | {name for row in rows for _, name in row} | {c[0] for c in _COUNTS}
    rows += [(((lx + 4, 122, _width(p, cw - 132)), p.name),) for p in pv_table()     # e.g. TriggerStatus
             if p.role is Role.STATUS and p.name not in placed and not p.name.startswith(("Slot", "Row", "Selected:"))]
    y = s.section(lx, 40, cw, len(rows) + 3, "Status")
    s.label(lx + 4, y, 116, "Server")
    s.add(Widget("colour", lx + 126, y + 2, 16, 16, pv="ServerRunning", conds=(Cond(0, 0, RED), Cond(1, 1, GREEN))))
    s.control(lx + 146, y, 104, "ServerRunning")
    s.field((right[0], right[1], 60), y, "Watchdog")
    for row in rows:
        y += PITCH
        for col, name in row:
            s.field(col, y, name)
    y += PITCH
    step = (cw - 8) // len(_COUNTS)
    for i, (name, text) in enumerate(_COUNTS):
        s.add(Widget("text", lx + 4 + i * step, y, step - 4, H, text=text, align="center"))
        s.add(Widget("update", lx + 4 + i * step, y + PITCH, step - 4, H, pv=name, fg=TITLE_FG, align="center"))
    y = s.section(lx, y + 2 * PITCH + 12, cw, MAX_SLOTS + 1, "Worker slots")
    cols = ((":Name", 80, "Device"), (":File", 280, "File"), (":Phase", 80, "Phase"), (":Elapsed", 88, "Elapsed [s]"))
    for n in range(0, MAX_SLOTS + 1):
        x = lx + 5
        for suffix, w, text in cols:
            if n:
                s.add(Widget("update", x, y, w, H, pv=f"Slot{n}{suffix}", fg=TITLE_FG))
            else:
                s.add(Widget("text", x, y, w, H, text=text, align="center"))
            x += w + 4
        y += PITCH
    pairs: List[Tuple[str, ...]] = [("Selected:Status", "Selected:Phase"), ("Selected:Cor", "Selected:CorSource"),
                                     ("Selected:Confidence", "Selected:NeedsReview"),
                                     ("Selected:Enable", "Selected:Series")]
    shown = {n for pair in pairs for n in pair} | {"Selected:Error"}
    more = [p.name for p in pv_table() if p.name.startswith("Selected:") and p.name not in shown
            and p.role is not Role.COMMAND and p.kind not in (Kind.LSI, Kind.LSO)]   # e.g. the scan's geometry
    pairs += [tuple(more[i:i + 2]) for i in range(0, len(more), 2)]
    y = s.section(lx, y + 12, cw, len(pairs) + 3, "Selected file")
    s.field(wide, y, "SelectFile")
    for pair in pairs:
        y += PITCH
        s.field(left, y, pair[0], alarm=pair[0] == "Selected:Status")
        if len(pair) > 1:
            s.field(right, y, pair[1])
    s.field(wide, y + PITCH, "Selected:Error")
    s.field(wide, y + 2 * PITCH, "Selected:TiltStatus")   # CamRot (Selected:Tilt/TiltR2 are among the pairs)
    # right column
    y = s.section(rx, 40, cw, 3, "Commands")
    s.field((rx + 4, 106, cw - 116), y, "Enqueue")
    cmds = [p.name for p in pv_table() if p.role is Role.COMMAND and p.kind is Kind.BO and p.asg != "ADMIN"]
    per_row = (len(cmds) + 1) // 2
    bw = (cw - 10) // per_row
    for i, name in enumerate(cmds):
        s.button(rx + 5 + (i % per_row) * bw, y + PITCH * (1 + i // per_row) + 2, bw - 6, name)
    phases = [p for p in pv_table() if p.role is Role.SETTING and p.name.startswith("Phase")]
    y = s.section(rx, y + 3 * PITCH + 20, cw, len(phases), "Phases")
    for p in phases:
        s.field((rx + 4, 250, 110), y, p.name, _phase_label(p))
        y += PITCH
    settings = [p for p in pv_table() if p.role is Role.SETTING and p not in phases]
    y = s.section(rx, y + 12, cw, len(settings), "Settings")
    for p in settings:
        s.field((rx + 4, 180, _width(p, cw - 190)), y, p.name)
        y += PITCH
    s.related(5, 8, 90, "tomoCorQueue", "Queue...")
    s.related(s.width - 115, 8, 110, "tomoCorEPICS_PVs", "EPICS PVs...")
    return s


def _status_conds() -> Tuple[Cond, ...]:
    """Row status index -> band colour; the last colour also covers the statuses after it."""
    items = [(ROW_STATUSES.index(st), c) for st, c in STATUS_COLORS.items()]
    return tuple(Cond(i, len(ROW_STATUSES) - 1 if k == len(items) - 1 else i, c) for k, (i, c) in enumerate(items))


def queue_screen() -> Screen:
    """``tomoCorQueue``: PAGE_ROWS rows (file, COR, status, series, enable, COR source, error) and page buttons."""
    band, inset = 27, 4    # row pitch; the status colour shows as a frame this wide around the row's widgets
    s = Screen("tomoCorQueue", "queue", 1240)
    y = 42
    s.field((5, 80, 60), y, "RowOffset")
    for i in range(5):      # page buttons: RowOffset = 0, 16, 32, ...
        first = i * PAGE_ROWS
        s.add(Widget("button", 150 + i * 76, y, 70, H, pv="RowOffset", text=f"{first + 1}-{first + PAGE_ROWS}",
                     value=str(first), bg=BUTTON_BG))
    s.field((540, 120, 60), y, "QueueLength")
    s.related(s.width - 115, y, 110, "tomoCor", "Main...")
    cols = (("File", 300, "File"), ("Cor", 90, "COR [px]"), ("Status", 90, "Status"), ("Series", 216, "Series"),
            ("Enable", 90, "Enable"), ("CorSource", 170, "COR source"), ("Error", 224, "Error"))
    y = 70
    x = 12
    for _, w, text in cols:
        s.add(Widget("text", x, y, w, H, text=text, align="center"))
        x += w + 6
    status_conds = _status_conds()
    for n in range(1, PAGE_ROWS + 1):
        r = f"Row{n:02d}"
        y = 94 + (n - 1) * band
        s.add(Widget("colour", 5, y, s.width - 10, band - 1, pv=f"{r}:Status", conds=status_conds))
        x, h = 12, band - 1 - 2 * inset
        for suffix, w, _ in cols:
            name = f"{r}:{suffix}"
            if suffix == "Series":
                s.add(Widget("colour", x, y + inset, 16, h, pv=f"{r}:SeriesColor", gate=f"{r}:Status",
                             conds=tuple(Cond(i, i, c) for i, c in enumerate(SERIES_COLORS))))
                s.control(x + 20, y + inset, w - 20, name, h=h)
            else:
                s.control(x, y + inset, w, name, alarm=suffix == "Status", h=h)
            x += w + 6
    y = 94 + PAGE_ROWS * band + 8
    s.label(5, y, 60, "Status:")
    x = 70
    for c in status_conds:
        text = "/".join(ROW_STATUSES[c.lo:c.hi + 1])
        s.add(Widget("rect", x, y + 2, 16, 16, fg=c.color))
        s.label(x + 20, y, 9 * len(text), text, align="left")
        x += 32 + 9 * len(text)
    return s


def pvs_screen() -> Screen:
    """``tomoCorEPICS_PVs``: the prefix in use, the tomoScan link, the model and the TomoLog fields."""
    s = Screen("tomoCorEPICS_PVs", "EPICS PV names", 620)
    x, w, lw = 5, 610, 170
    col, full = (x + 4, lw, 220), (x + 4, lw, w - lw - 10)
    y = s.section(x, 40, w, 5, "IOC")
    s.label(x + 4, y, lw - 6, "PV prefix")
    s.add(Widget("text", x + lw, y, 200, H, text=MACRO, fg=TITLE_FG))
    s.field((x + 4, lw, 120), y + PITCH, "ServerRunning")
    s.field(full, y + 2 * PITCH, "Message")
    s.field(full, y + 3 * PITCH, "AuditLast")
    s.label(x + 4, y + 4 * PITCH, lw - 6, "Access rules")
    for i, p in enumerate(p for p in pv_table() if p.role is Role.COMMAND and p.asg == "ADMIN"):   # ReloadAcf
        s.button(x + lw + i * 126, y + 4 * PITCH + 2, 120, p.name)
    link = [p for p in pv_table() if p.name.startswith("TomoScan") or "Trigger" in p.name]   # the tomoScan link
    y = s.section(x, y + 5 * PITCH + 12, w, len(link), "tomoScan link")
    for p in link:
        s.field((x + 4, lw, _width(p, w - lw - 10)), y, p.name)
        y += PITCH
    y = s.section(x, y + 12, w, 2, "Reconstruction")
    s.field(full, y, "ModelPath")
    s.field(col, y + PITCH, "Gpus")
    tomolog = [p for p in pv_table() if p.role is Role.SETTING and "TomoLog" in p.name]
    y = s.section(x, y + 2 * PITCH + 12, w, len(tomolog), "TomoLog")
    for p in tomolog:
        s.field((x + 4, lw, _width(p, w - lw - 10)), y, p.name, _phase_label(p) if p.name.startswith("Phase") else None)
        y += PITCH
    s.related(5, 8, 90, "tomoCor", "Main...")
    s.related(s.width - 95, 8, 90, "tomoCorQueue", "Queue...")
    return s


def screens() -> List[Screen]:
    return [main_screen(), queue_screen(), pvs_screen()]


# -- MEDM ADL -----------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AdlWriter:
    """MEDM display file text (format version 030111) for a :class:`Screen`."""

    ALIGN = {"left": "horiz. left", "center": "horiz. centered", "right": "horiz. right"}

    def __init__(self) -> None:
        self.lines: List[str] = []

    def block(self, name: str, body: Sequence[Any], depth: int = 0) -> None:
        """``name { ... }`` where body items are ``key=value`` strings or ``(name, body)`` sub-blocks."""
        tab = "\t" * depth
        self.lines.append(f"{tab}{_q(name) if ' ' in name else name} {{")
        for item in body:
            if isinstance(item, tuple):
                self.block(item[0], item[1], depth + 1)
            else:
                self.lines.append(f"{tab}\t{item}")
        self.lines.append(f"{tab}}}")

    @staticmethod
    def obj(w: Widget) -> Tuple[str, List[str]]:
        return ("object", [f"x={w.x}", f"y={w.y}", f"width={w.w}", f"height={w.h}"])

    def write(self, s: Screen) -> str:
        self.lines = []
        self.block("file", [f"name={_q(s.name + '.adl')}", "version=030111"])
        self.block("display", [("object", ["x=100", "y=100", f"width={s.width}", f"height={s.height}"]),
                               f"clr={BLACK}", f"bclr={BG}", 'cmap=""', "gridSpacing=5", "gridOn=0",
                               "snapToGrid=0"])
        self.block("color map", [f"ncolors={len(MEDM_COLORS)}", ("colors", [c + "," for c in MEDM_COLORS])])
        for w in s.widgets:
            getattr(self, "w_" + w.kind)(w)
        return "\n".join(self.lines) + "\n"

    def w_rect(self, w: Widget) -> None:
        basic = [f"clr={w.fg}"] + (['fill="outline"', "width=1"] if w.outline else [])
        self.block("rectangle", [self.obj(w), ("basic attribute", basic)])

    def w_colour(self, w: Widget) -> None:
        """One rectangle per condition, each visible while its calc is true (MEDM's colour-by-value idiom)."""
        for c in w.conds:
            dyn = ['vis="calc"', f"calc={_q(c.medm(bool(w.gate)))}", f"chan={_q(MACRO + w.pv)}"]
            if w.gate:
                dyn.append(f"chanB={_q(MACRO + w.gate)}")
            self.block("rectangle", [self.obj(w), ("basic attribute", [f"clr={c.color}"]), ("dynamic attribute", dyn)])

    def w_text(self, w: Widget) -> None:
        self.block("text", [self.obj(w), ("basic attribute", [f"clr={w.fg}"]), f"textix={_q(w.text)}",
                            f"align={_q(self.ALIGN[w.align])}"])

    @staticmethod
    def chan(w: Widget, block: str) -> Tuple[str, List[str]]:
        return (block, [f"chan={_q(MACRO + w.pv)}", f"clr={w.fg}", f"bclr={w.bg}"])

    def w_update(self, w: Widget) -> None:
        body = [self.obj(w), self.chan(w, "monitor")] + (['clrmod="alarm"'] if w.alarm else [])
        body += [f"align={_q(self.ALIGN[w.align])}"] + (['format="string"'] if w.string else []) + [("limits", [])]
        self.block("text update", body)

    def w_entry(self, w: Widget) -> None:
        body = [self.obj(w), self.chan(w, "control")] + (['clrmod="alarm"'] if w.alarm else [])
        body += (['format="string"'] if w.string else []) + [("limits", [])]
        self.block("text entry", body)

    def w_menu(self, w: Widget) -> None:
        self.block("menu", [self.obj(w), self.chan(w, "control")])

    def w_button(self, w: Widget) -> None:
        self.block("message button", [self.obj(w), self.chan(w, "control"), f"label={_q(w.text)}",
                                      f"press_msg={_q(w.value)}"])

    def w_related(self, w: Widget) -> None:
        target = [f"label={_q(w.text.rstrip('.'))}", f"name={_q(w.target + '.adl')}", f"args={_q('P=' + MACRO)}"]
        self.block("related display", [self.obj(w), ("display[0]", target), f"clr={w.fg}", f"bclr={w.bg}",
                                       f"label={_q('-' + w.text)}"])


# -- Phoebus BOB ----------------------------------------------------------------------
def _rgb(parent: ET.Element, tag: str, index: int) -> None:
    h = MEDM_COLORS[index]
    ET.SubElement(ET.SubElement(parent, tag), "color", red=str(int(h[0:2], 16)), green=str(int(h[2:4], 16)),
                  blue=str(int(h[4:6], 16)))


class BobWriter:
    """Phoebus display builder XML (display version 2.0.0) for a :class:`Screen`."""

    ALIGN = {"left": "0", "center": "1", "right": "2"}

    def write(self, s: Screen) -> str:
        root = ET.Element("display", version="2.0.0")
        self.sub(root, "name", s.name)
        macros = ET.SubElement(root, "macros")
        self.sub(macros, "P", DEFAULT_PREFIX)
        self.sub(root, "width", str(s.width))
        self.sub(root, "height", str(s.height))
        _rgb(root, "background_color", BG)
        for i, w in enumerate(s.widgets):
            getattr(self, "w_" + w.kind)(self.widget(root, w, i), w)
        ET.indent(root, space="  ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    @staticmethod
    def sub(parent: ET.Element, tag: str, text: str) -> ET.Element:
        e = ET.SubElement(parent, tag)
        e.text = text
        return e

    _TYPES = {"rect": ("rectangle", "2.0.0"), "colour": ("rectangle", "2.0.0"), "text": ("label", "2.0.0"),
              "update": ("textupdate", "2.0.0"), "entry": ("textentry", "3.0.0"), "menu": ("combo", "2.0.0"),
              "button": ("action_button", "3.0.0"), "related": ("action_button", "3.0.0")}

    def widget(self, root: ET.Element, w: Widget, i: int) -> ET.Element:
        typ, version = self._TYPES[w.kind]
        e = ET.SubElement(root, "widget", type=typ, version=version)
        self.sub(e, "name", f"{typ}_{i}" + (f"_{w.pv}" if w.pv else ""))
        for tag, v in (("x", w.x), ("y", w.y), ("width", w.w), ("height", w.h)):
            self.sub(e, tag, str(v))
        if w.pv and w.kind != "colour":
            self.sub(e, "pv_name", MACRO + w.pv)
        return e

    def w_rect(self, e: ET.Element, w: Widget) -> None:
        self.sub(e, "line_width", "1" if w.outline else "0")
        _rgb(e, "line_color", w.fg)
        _rgb(e, "background_color", w.fg)
        if w.outline:
            self.sub(e, "transparent", "true")

    def w_colour(self, e: ET.Element, w: Widget) -> None:
        """One rectangle whose background follows a rule (display colour when no condition holds)."""
        self.sub(e, "line_width", "0")
        _rgb(e, "background_color", BG)
        rule = ET.SubElement(ET.SubElement(e, "rules"), "rule", name="colour", prop_id="background_color",
                             out_exp="false")
        for c in w.conds:
            exp = ET.SubElement(rule, "exp", bool_exp=c.phoebus(bool(w.gate)))
            _rgb(exp, "value", c.color)
        for pv in (w.pv, w.gate):
            if pv:
                self.sub(rule, "pv_name", MACRO + pv)

    def w_text(self, e: ET.Element, w: Widget) -> None:
        self.sub(e, "text", w.text)
        if w.big:
            ET.SubElement(ET.SubElement(e, "font"), "font", family="Liberation Sans", style="BOLD", size="18.0")
        _rgb(e, "foreground_color", w.fg)
        self.sub(e, "horizontal_alignment", self.ALIGN[w.align])
        self.sub(e, "vertical_alignment", "1")

    def _format(self, e: ET.Element, w: Widget) -> None:
        if w.string:
            self.sub(e, "format", "6")    # STRING: a char waveform as text

    def w_update(self, e: ET.Element, w: Widget) -> None:
        self._format(e, w)
        _rgb(e, "foreground_color", w.fg)
        _rgb(e, "background_color", w.bg)
        self.sub(e, "horizontal_alignment", self.ALIGN[w.align])
        self.sub(e, "vertical_alignment", "1")
        self.sub(e, "border_alarm_sensitive", "true" if w.alarm else "false")

    def w_entry(self, e: ET.Element, w: Widget) -> None:
        self._format(e, w)
        _rgb(e, "background_color", w.bg)
        if w.alarm:
            self.sub(e, "border_alarm_sensitive", "true")

    w_menu = w_entry    # a combo takes its states from the PV; only the colour is set

    def _action(self, e: ET.Element, w: Widget, typ: str, fields: Sequence[Tuple[str, str]]) -> None:
        self.sub(e, "text", w.text)
        action = ET.SubElement(ET.SubElement(e, "actions"), "action", type=typ)
        for tag, text in fields:
            self.sub(action, tag, text)
        self.sub(action, "description", w.text)
        _rgb(e, "background_color", w.bg)
        _rgb(e, "foreground_color", w.fg)

    def w_button(self, e: ET.Element, w: Widget) -> None:
        self._action(e, w, "write_pv", (("pv_name", MACRO + w.pv), ("value", w.value)))

    def w_related(self, e: ET.Element, w: Widget) -> None:
        self._action(e, w, "open_display", (("file", w.target + ".bob"), ("target", "tab")))


# -- files ----------------------------------------------------------------------------
def generated() -> Dict[str, str]:
    """File name -> content, for every screen in both formats."""
    out: Dict[str, str] = {}
    for s in screens():
        out[s.name + ".adl"] = AdlWriter().write(s)
        out[s.name + ".bob"] = BobWriter().write(s)
    return out


def write(out_dir: Path) -> List[Path]:
    """Write the six files into ``out_dir``; returns their paths."""
    return write_files(out_dir, generated())


def check(out_dir: Path) -> List[str]:
    """Names of screen files in ``out_dir`` that are missing or differ from the generated text."""
    return stale_files(out_dir, generated())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tomocorioc.ioc.screens [--out-dir adl] [--check]``."""
    ap = argparse.ArgumentParser(prog="python -m tomocorioc.ioc.screens",
                                 description="write the MEDM (.adl) and Phoebus (.bob) screens from the PV table")
    ap.add_argument("--out-dir", type=Path, default=Path("adl"), help="output directory (default: adl)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the files there differ from the PV table")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.check:
        bad = check(args.out_dir)
        for name in bad:
            log.error("%s differs from the PV table; run 'python -m tomocorioc.ioc.screens --out-dir %s'",
                      args.out_dir / name, args.out_dir)
        return 1 if bad else 0
    write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
