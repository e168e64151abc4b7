"""The tomoScan scan-end rules (pure) and the trigger's completeness check on real files."""
import h5py
import numpy as np

from tomocorioc.core.scanwatch import ActionKind, LinkState, ScanEndDetector, Stability, as_text, busy_value
from tomocorioc.service.trigger.manager import check_complete, inspect_file
from tomocorioc.sim import SimConfig, simulate_scan


def connect(d, start=0, status="Scan complete", name="/data/s_0001.h5", t=0.0):
    out = []
    for pv, v in (("ServerRunning", 1), ("ScanStatus", status), ("FullFileName", name), ("StartScan", start)):
        out += d.update(pv, v, True, t)
    return out


def test_first_values_are_a_baseline_even_after_a_restart():
    d = ScanEndDetector()
    assert connect(d, start=0, name="/data/s_0007.h5") == []   # autosave restored the name: nothing
    assert d.state is LinkState.IDLE
    # the tomoScan IOC restarts: disconnect, reconnect with restored values, still nothing
    for pv in ("StartScan", "FullFileName", "ScanStatus", "ServerRunning"):
        assert d.update(pv, None, False, 1.0) == []
    assert d.state is LinkState.DISCONNECTED
    assert connect(d, start=0, name="/data/s_0007.h5", t=2.0) == []
    assert d.update("FullFileName", "/data/s_0007.h5", True, 2.1) == []


def test_a_scan_end_then_the_new_file_name_queues_it():
    d = ScanEndDetector()
    connect(d, name="/data/s_0001.h5")
    assert d.update("StartScan", 1, True, 10.0) == [] and d.state is LinkState.SCANNING
    d.update("ScanStatus", "Collecting projections", True, 11.0)
    d.update("ScanStatus", "Scan complete", True, 12.0)
    assert d.update("StartScan", 0, True, 12.5) == []            # name not copied yet
    assert d.state is LinkState.AWAITING_NAME and d.ended_at == 12.5
    acts = d.update("FullFileName", "/data/s_0002.h5", True, 12.6)
    assert [(a.kind, a.file) for a in acts] == [(ActionKind.QUEUE, "/data/s_0002.h5")]
    assert d.state is LinkState.IDLE


def test_string_states_and_char_arrays_are_understood():
    assert busy_value("Acquire") == 1 and busy_value("Done") == 0 and busy_value(np.int16(1)) == 1
    assert busy_value("weird") is None
    assert as_text(np.frombuffer(b"/a/b.h5\x00\x00", dtype=np.uint8)) == "/a/b.h5"
    d = ScanEndDetector()
    connect(d, start="Done", name="/d/a.h5")
    d.update("StartScan", "Acquire", True, 1.0)
    d.update("FullFileName", np.frombuffer(b"/d/b.h5\x00", dtype=np.uint8), True, 1.5)   # changed during the scan
    acts = d.update("StartScan", "Done", True, 2.0)
    assert [a.file for a in acts] == ["/d/b.h5"]


def test_aborted_scans_are_skipped():
    d = ScanEndDetector()
    connect(d)
    d.update("StartScan", 1, True, 1.0)
    d.update("ScanStatus", "Abort: Bad File Path", True, 2.0)
    d.update("ScanStatus", "Scan complete", True, 2.5)      # a later status does not hide the abort
    assert d.update("StartScan", 0, True, 3.0) == []         # FullFileName still names the previous scan
    acts = d.update("FullFileName", "/data/s_0002.h5", True, 3.2)
    assert [(a.kind, a.file) for a in acts] == [(ActionKind.SKIP, "/data/s_0002.h5")] and "Abort" in acts[0].text
    # a bad scan whose name never comes is still skipped, not queued
    d.update("StartScan", 1, True, 4.0)
    d.update("ScanStatus", "Abort: scan aborted by user", True, 4.5)
    d.update("StartScan", 0, True, 5.0)
    assert [a.kind for a in d.poll(16.0)] == [ActionKind.SKIP]


def test_a_name_that_never_changes_is_reported_not_guessed():
    d = ScanEndDetector(name_wait=5.0)
    connect(d, name="/data/s_0001.h5")
    d.update("StartScan", 1, True, 1.0)
    d.update("StartScan", 0, True, 2.0)
    assert d.poll(6.9) == []
    acts = d.poll(7.1)
    assert [a.kind for a in acts] == [ActionKind.NOTICE] and "not queued" in acts[0].text
    assert d.state is LinkState.IDLE


def test_disconnect_while_waiting_for_the_name_is_reported():
    d = ScanEndDetector()
    connect(d)
    d.update("StartScan", 1, True, 1.0)
    d.update("StartScan", 0, True, 2.0)
    acts = d.update("FullFileName", None, False, 2.1)
    assert [a.kind for a in acts] == [ActionKind.NOTICE]


def test_a_scan_running_at_connect_is_not_queued_when_it_ends():
    """We did not see it start, but it ends while we watch: that is a transition seen while connected."""
    d = ScanEndDetector()
    connect(d, start=1, name="/data/s_0003.h5")
    assert d.state is LinkState.SCANNING
    d.update("StartScan", 0, True, 5.0)
    acts = d.update("FullFileName", "/data/s_0004.h5", True, 5.1)
    assert [a.file for a in acts] == ["/data/s_0004.h5"]


def test_stability_needs_a_quiet_period():
    s = Stability(quiet=1.0)
    assert not s.observe(100, 1.0, 0.0)
    assert not s.observe(100, 1.0, 0.5)
    assert not s.observe(200, 2.0, 0.9)    # grew: the clock restarts
    assert not s.observe(200, 2.0, 1.5)
    assert s.observe(200, 2.0, 1.95)


def test_check_complete_on_real_files(tmp_path):
    cfg = SimConfig(ncols=32, nrows=4, nproj=31, noise=0, phantom="beads")
    simulate_scan(tmp_path / "ok.h5", cfg)
    assert check_complete(str(tmp_path / "ok.h5")) is None
    assert "does not exist" in check_complete(str(tmp_path / "missing.h5"))
    with h5py.File(tmp_path / "ok.h5", "a") as f:   # tomoScan appends theta last
        del f["exchange/theta"]
    assert "incomplete" in check_complete(str(tmp_path / "ok.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    assert "cannot open" in check_complete(str(tmp_path / "junk.h5"))
    # open for writing by another handle: HDF5's lock refuses readers -> not ready yet
    w = h5py.File(tmp_path / "w.h5", "w")
    try:
        assert check_complete(str(tmp_path / "w.h5")) is not None
    finally:
        w.close()


def test_folder_watch_sees_new_scan_files_with_events_and_with_polling(tmp_path):
    import queue as q
    import time

    from tomocorioc.service.trigger.folder import FolderWatch
    for poll in (False, True):
        folder = tmp_path / f"poll{int(poll)}"
        folder.mkdir()
        got = q.SimpleQueue()
        w = FolderWatch(folder, lambda *ev: got.put(ev), poll=poll)
        w.start()
        try:
            time.sleep(0.3)
            (folder / "notes.txt").write_text("not a scan")
            (folder / ".hidden.h5").write_bytes(b"x")
            (folder / "s_0001.h5").write_bytes(b"partial")
            seen = set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not seen:
                try:
                    seen.add(got.get(timeout=0.2))
                except q.Empty:
                    pass
            assert seen and all(ev == ("file", str(folder / "s_0001.h5")) for ev in seen), (poll, seen)
        finally:
            w.stop()


def test_an_aborted_file_is_recognised_by_its_planned_angles(tmp_path):
    cfg = SimConfig(ncols=32, nrows=4, nproj=31, noise=0, phantom="beads", aborted=True)
    simulate_scan(tmp_path / "a.h5", cfg)
    short, why = inspect_file(str(tmp_path / "a.h5"))
    assert short and "of 31 planned projections" in why
    simulate_scan(tmp_path / "ok.h5", SimConfig(ncols=32, nrows=4, nproj=31, noise=0, phantom="beads"))
    assert inspect_file(str(tmp_path / "ok.h5")) == (False, None)
