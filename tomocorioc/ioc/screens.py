"""Operator screens generated from the PV table: MEDM ``.adl`` and Phoebus ``.bob`` (pure, no EPICS imports).

Three screens, each written in both formats from one layout:

* ``tomoCor``: status, worker slots, the selected file, commands, phase enables, settings;
* ``tomoCorQueue``: one page of queue rows, coloured by status and by series;
* ``tomoCorEPICS_PVs``: the PV prefix, the tomoScan link, the model and TomoLog fields.

Every PV name goes through :func:`~tomocorioc.ioc.screen_model.pv_def` (a lookup in the PV table), so a
screen names only PVs the IOC serves.  The layout model is :mod:`~tomocorioc.ioc.screen_model`; the two
file formats are :mod:`~tomocorioc.ioc.screen_formats`.  ``python -m tomocorioc.ioc.screens [--out-dir adl]
[--check]`` writes (or checks) the six files, deterministically.  Names carry the ``$(P)`` macro
(``medm -x -macro P=TomoCor: tomoCor.adl``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tomocorioc.ioc.genfiles import stale_files, write_files
from tomocorioc.ioc.pvdefs import (
    MAX_SLOTS,
    PAGE_ROWS,
    ROW_STATUSES,
    Kind,
    Role,
    pv_table,
)
from tomocorioc.ioc.screen_formats import AdlWriter, BobWriter
from tomocorioc.ioc.screen_model import (
    BUTTON_BG,
    GREEN,
    MACRO,
    PITCH,
    RED,
    SERIES_COLORS,
    STATUS_COLORS,
    TITLE_FG,
    Cond,
    H,
    Screen,
    Widget,
    control_width,
    phase_label,
)

log = logging.getLogger(__name__)

SCREENS = ("tomoCor", "tomoCorQueue", "tomoCorEPICS_PVs")


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
    rows += [(((lx + 4, 122, control_width(p, cw - 132)), p.name),) for p in pv_table()     # e.g. TriggerStatus
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
        s.field((rx + 4, 250, 110), y, p.name, phase_label(p))
        y += PITCH
    settings = [p for p in pv_table() if p.role is Role.SETTING and p not in phases]
    y = s.section(rx, y + 12, cw, len(settings), "Settings")
    for p in settings:
        s.field((rx + 4, 180, control_width(p, cw - 190)), y, p.name)
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
        s.field((x + 4, lw, control_width(p, w - lw - 10)), y, p.name)
        y += PITCH
    y = s.section(x, y + 12, w, 2, "Reconstruction")
    s.field(full, y, "ModelPath")
    s.field(col, y + PITCH, "Gpus")
    tomolog = [p for p in pv_table() if p.role is Role.SETTING and "TomoLog" in p.name]
    y = s.section(x, y + 2 * PITCH + 12, w, len(tomolog), "TomoLog")
    for p in tomolog:
        label = phase_label(p) if p.name.startswith("Phase") else None
        s.field((x + 4, lw, control_width(p, w - lw - 10)), y, p.name, label)
        y += PITCH
    s.related(5, 8, 90, "tomoCor", "Main...")
    s.related(s.width - 95, 8, 90, "tomoCorQueue", "Queue...")
    return s


def screens() -> List[Screen]:
    return [main_screen(), queue_screen(), pvs_screen()]


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
