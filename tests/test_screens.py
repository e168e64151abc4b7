"""Operator screens (adl/*.adl, adl/*.bob): generated from the PV table, served PVs only, rendered live.

* the committed files equal what ``python -m tomocorioc.ioc.screens`` writes;
* every PV a screen names (MEDM ``chan``/``chanB``.., Phoebus ``<pv_name>``) connects on a running IOC;
* pydm renders each ``.adl`` offscreen against that IOC, in a subprocess; the screenshots go to
  ``$TOMOCORIOC_ARTIFACTS/screens`` (default ``<repo>/test-artifacts/screens``).
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from _ioc import IOC

from tomocorioc.ioc import screens
from tomocorioc.ioc.pvdefs import ROW_STATUSES, by_name, pv_table

REPO = Path(__file__).resolve().parent.parent
ADL_DIR = REPO / "adl"
ARTIFACTS = Path(os.environ.get("TOMOCORIOC_ARTIFACTS", str(REPO / "test-artifacts"))) / "screens"
MACRO = "$(P)"
_ADL_CHANNEL = re.compile(r'^\s*(?:chan|chan[B-L]|rdbk|ctrl)="([^"]*)"', re.M)
_BOB_CHANNEL_TAGS = ("pv_name", "pv")   # widget and write_pv action <pv_name>, rule <pv_name> (legacy: <pv>)
_FILES = [f"{name}.{ext}" for name in screens.SCREENS for ext in ("adl", "bob")]


def screen_pvs(path: Path) -> List[str]:
    """Every channel named in a screen file, as written (with the ``$(P)`` macro)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".adl":
        return _ADL_CHANNEL.findall(text)
    root = ET.fromstring(text)
    return [e.text.strip() for tag in _BOB_CHANNEL_TAGS for e in root.iter(tag) if e.text and e.text.strip()]


# -- the committed files --------------------------------------------------------------
def test_committed_screens_equal_the_generated_ones(tmp_path: Path) -> None:
    assert sorted(p.name for p in ADL_DIR.glob("*.adl")) + sorted(p.name for p in ADL_DIR.glob("*.bob")) == \
        sorted(f for f in _FILES if f.endswith(".adl")) + sorted(f for f in _FILES if f.endswith(".bob"))
    stale = screens.check(ADL_DIR)
    assert not stale, f"{stale} differ from the PV table: run 'python -m tomocorioc.ioc.screens --out-dir adl'"
    # the command itself: --check passes on the committed files, a fresh write is byte-identical
    r = subprocess.run([sys.executable, "-m", "tomocorioc.ioc.screens", "--check", "--out-dir", str(ADL_DIR)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "tomocorioc.ioc.screens", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    for name in _FILES:
        assert (tmp_path / name).read_bytes() == (ADL_DIR / name).read_bytes(), name
    (tmp_path / "tomoCor.adl").write_text("changed\n")
    r = subprocess.run([sys.executable, "-m", "tomocorioc.ioc.screens", "--check", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1 and "tomoCor.adl" in r.stderr


def test_screens_name_table_pvs_only_and_cover_the_table() -> None:
    table = by_name()
    shown = set()
    for name in _FILES:
        pvs = screen_pvs(ADL_DIR / name)
        assert pvs, name
        for pv in pvs:
            assert pv.startswith(MACRO), f"{name}: {pv} lacks the $(P) macro"
            assert pv[len(MACRO):] in table, f"{name}: {pv} is not in the PV table"
        shown |= {pv[len(MACRO):] for pv in pvs}
    missing = [p.name for p in pv_table() if p.name not in shown]
    assert not missing, f"PVs on no screen: {missing}"


def test_screen_files_are_well_formed() -> None:
    """The MEDM files carry the 65-colour map and string formats for long strings; the .bob files parse."""
    table = by_name()
    for stem in screens.SCREENS:
        adl = (ADL_DIR / f"{stem}.adl").read_text(encoding="utf-8")
        assert adl.count("{") == adl.count("}")
        assert "ncolors=65" in adl and len(re.findall(r"^\t\t[0-9a-f]{6},$", adl, re.M)) == 65
        for block in re.split(r'\n(?="text update"|"text entry")', adl)[1:]:
            pv = _ADL_CHANNEL.search(block).group(1)[len(MACRO):]
            long_string = table[pv].kind.value in ("lsi", "lso")
            assert ('format="string"' in block.split("\n}\n")[0]) == long_string, pv
        root = ET.fromstring((ADL_DIR / f"{stem}.bob").read_text(encoding="utf-8"))
        assert root.tag == "display" and root.findtext("macros/P") == "TomoCor:"
        for w in root.iter("widget"):
            assert all(w.findtext(t) is not None for t in ("x", "y", "width", "height")), w.findtext("name")
            if w.get("type") in ("textupdate", "textentry"):
                long_string = table[w.findtext("pv_name")[len(MACRO):]].kind.value in ("lsi", "lso")
                assert (w.findtext("format") == "6") == long_string, w.findtext("name")
        for a in root.iter("action"):
            if a.get("type") == "write_pv":
                assert a.findtext("value") == "1" or a.findtext("pv_name") == MACRO + "RowOffset"
            else:
                assert a.get("type") == "open_display" and a.findtext("file") in {f"{s}.bob" for s in screens.SCREENS}


# -- against a running IOC ------------------------------------------------------------
@pytest.fixture(scope="module")
def ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IOC]:
    """One IOC with a paused queue of 8 files: 7 queued, 1 disabled, 1 manual COR, one selected."""
    tmp = tmp_path_factory.mktemp("screens")
    data = tmp / "data"
    data.mkdir()
    for i in range(1, 4):
        (data / f"beadB_{i:04d}.h5").write_bytes(b"\0" * 20000)
    for i in range(1, 6):
        (data / f"sampleA_{i:04d}.h5").write_bytes(b"\0" * 20000)
    server = IOC(tmp, data).start()
    try:
        for name, value, string in (("Pause", "1", False), ("Enqueue", str(data), True), ("Row03:Enable", "0", False),
                                    ("Row02:Cor", "1234.5", False), ("SelectFile", "sampleA_0002.h5", True)):
            r = server.caput(name, value, string=string)
            assert r.returncode == 0, (name, r.stdout, r.stderr, server.log())
        server.wait_for("Row03:Status", lambda v: v == "disabled", timeout=20)
        server.wait_for("Row02:CorSource", lambda v: v == "manual", timeout=20)
        yield server
    finally:
        server.terminate()


def _unreachable(ioc: IOC, names: List[str]) -> List[str]:
    """Names that do not connect: one caget for all; on failure, halve to find the culprits."""
    if not names:
        return []
    r = ioc.tool("caget", "-w", "3", *[ioc.pv(n) for n in names], timeout=30)
    if r.returncode == 0:
        return []
    if len(names) == 1:
        return names
    half = len(names) // 2
    return _unreachable(ioc, names[:half]) + _unreachable(ioc, names[half:])


def test_every_screen_pv_exists_in_the_running_ioc(ioc: IOC) -> None:
    names = sorted({pv[len(MACRO):] for f in _FILES for pv in screen_pvs(ADL_DIR / f)})
    assert len(names) > 100
    t0 = time.monotonic()
    assert _unreachable(ioc, names) == []
    assert time.monotonic() - t0 < 20


_RENDER = r'''
import json, os, sys, time, types
screen, png, prefix, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
from qtpy.QtWidgets import QApplication, QWidget
app = QApplication([])
# The bridges start_pydm uses too: adl2pydm's PyDMAbsoluteGeometry (not in pydm 1.29) and MEDM's
# enum-by-index calcs in pydm's rules.
from tomocorioc.ioc.pydm_launch import install_shims, medm_rules
install_shims()
from pydm.display import ScreenTarget, load_file
from pydm.widgets import PyDMPushButton
t0 = time.monotonic()
display = load_file(screen, macros={"P": prefix}, target=ScreenTarget.DIALOG)
medm_rules(display)
widgets = [w for w in display.findChildren(QWidget) if isinstance(getattr(w, "channel", None), str) and w.channel]
deadline, settled = time.monotonic() + limit, None
while time.monotonic() < deadline:
    app.processEvents()
    if all(getattr(w, "_connected", False) for w in widgets):
        settled = settled or time.monotonic()
        if time.monotonic() - settled > 1.5:     # values and rules arrive after the connections
            break
    time.sleep(0.02)
app.processEvents()
image = display.grab().toImage()
image.save(png)
colours = {image.pixel(x, y) for x in range(0, image.width(), 3) for y in range(0, image.height(), 3)}
rules = [w for w in display.findChildren(QWidget) if getattr(w, "rules", None)]
print(json.dumps({
    "seconds": round(time.monotonic() - t0, 2), "size": [image.width(), image.height()], "colours": len(colours),
    "channels": len(widgets), "unconnected": sorted(w.channel for w in widgets if not getattr(w, "_connected", False)),
    "texts": {w.channel.split(prefix, 1)[-1]: w.text() for w in widgets
              if hasattr(w, "text") and not isinstance(w, PyDMPushButton)},
    "rules": [{"expression": r["expression"], "channels": [c["channel"].split(prefix, 1)[-1] for c in r["channels"]],
               "visible": w.isVisibleTo(display)} for w in rules for r in json.loads(w.rules)],
}))
'''


def _png_size(path: Path) -> tuple:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def render(ioc: IOC, stem: str, tmp: Path) -> Dict:
    """Render adl/<stem>.adl with pydm offscreen in a subprocess; returns what the child saw."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f"{stem}.png"
    png.unlink(missing_ok=True)
    runtime = tmp / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(ioc.env, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime))
    # The child stops once every channel has connected and settled; 45 s is only the ceiling for a
    # loaded 2-core CI host, where 15 s once left one of 103 channels unconnected.
    r = subprocess.run([sys.executable, "-c", _RENDER, str(ADL_DIR / f"{stem}.adl"), str(png), ioc.prefix, "45"],
                       env=env, capture_output=True, text=True, timeout=150, cwd=tmp)
    assert r.returncode == 0, f"pydm render of {stem} failed:\n{r.stderr[-4000:]}"
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert png.is_file()
    assert tuple(seen["size"]) == _png_size(png)
    assert seen["size"][0] > 200 and seen["size"][1] > 200, seen["size"]
    assert seen["colours"] >= 6, f"{stem}: only {seen['colours']} colours"
    assert seen["channels"] > 5
    if seen["unconnected"]:
        # PyDM's CA plugin has been seen (2 CI runs in 3) to miss the connection event of one channel of
        # ~120 while the IOC served it (install_shims now mends the add_listener race that does this, see
        # test_pydm_launch; the allowance stays until CI shows it gone): a channel PyDM still shows
        # unconnected must answer caget, and
        # there may be at most one such (its text checks then read the IOC's value); any PV the IOC does
        # not serve still fails here.
        names = [c.split(ioc.prefix, 1)[-1] for c in seen["unconnected"]]
        assert len(names) <= 1 and _unreachable(ioc, names) == [], seen["unconnected"]
        for name in names:
            if name in seen["texts"]:
                seen["texts"][name] = ioc.caget(name)
    return seen


def _visible(seen: Dict, channel: str) -> List[str]:
    """Expressions of the colour rectangles on ``channel`` that show now."""
    return [r["expression"] for r in seen["rules"] if r["channels"][0] == channel and r["visible"]]


def test_main_screen_renders_live(ioc: IOC, tmp_path: Path) -> None:
    seen = render(ioc, "tomoCor", tmp_path)
    t = seen["texts"]
    assert t["ServerRunning"] == "Running" and t["Paused"] == "Paused"
    assert t["QueueLength"] == "8" and t["NumQueued"] == "7"
    assert t["SelectFile"] == "sampleA_0002.h5" and t["Selected:Series"] == "sampleA"   # char waveforms as text
    assert t["Selected:Status"] == "queued" and t["LastCor"] == "1234.50"
    assert t["Slot1:Name"] and t["Slot2:Name"] == ""                                 # one CPU slot
    assert _visible(seen, "ServerRunning") == ["ch[0]==1"]      # the green lamp only


def test_queue_screen_renders_live_with_status_and_series_colours(ioc: IOC, tmp_path: Path) -> None:
    seen = render(ioc, "tomoCorQueue", tmp_path)
    t = seen["texts"]
    files = [t[f"Row{n:02d}:File"] for n in range(1, 9)]
    assert files == [f"beadB_{i:04d}.h5" for i in range(1, 4)] + [f"sampleA_{i:04d}.h5" for i in range(1, 6)]
    assert t["Row03:Status"] == "disabled" and t["Row02:CorSource"] == "manual" and t["Row02:Cor"] == "1234.50"
    queued, last = ROW_STATUSES.index("queued"), ROW_STATUSES.index("cancelled")
    for n in range(1, 17):
        status, series = _visible(seen, f"Row{n:02d}:Status"), _visible(seen, f"Row{n:02d}:SeriesColor")
        if n > 8:     # empty rows: no colour at all
            assert status == [] and series == [], n
        elif n == 3:  # disabled shares the grey of cancelled/skipped/disabled
            assert status == [f"ch[0]>={last} and ch[0]<={len(ROW_STATUSES) - 1}"], status
        else:
            assert status == [f"ch[0]=={queued}"], (n, status)
        if n <= 8:    # beadB is the first series (colour 0), sampleA the second
            assert series == [f"ch[0]=={0 if n <= 3 else 1} and ch[1]>0"], (n, series)


def test_epics_pvs_screen_renders_live(ioc: IOC, tmp_path: Path) -> None:
    seen = render(ioc, "tomoCorEPICS_PVs", tmp_path)
    assert seen["texts"]["ServerRunning"] == "Running"
    assert "TomoScanPrefix" in seen["texts"] and "ModelPath" in seen["texts"]
