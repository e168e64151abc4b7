"""Automatic start end to end: the IOC queues scans that tomoScan finishes, or that appear in a watched folder."""
import shutil
import time

import h5py
import pytest
from _ioc import IOC, SimTomoScan  # noqa: I001 - before pyepics

from tomocorioc.sim import SimConfig, simulate_scan

SMALL = dict(ncols=64, nrows=4, nproj=61, noise=20000, phantom="beads")


def slow_copy(src, dst, chunk=64 * 1024, pause=0.05):
    """Copy like scp/fdt would: the file grows over a while."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            block = fi.read(chunk)
            if not block:
                break
            fo.write(block)
            fo.flush()
            time.sleep(pause)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    data, inbox, src = tmp / "data", tmp / "data" / "inbox", tmp / "src"
    inbox.mkdir(parents=True)
    src.mkdir()
    ioc = IOC(tmp, data, extra=["--watch", str(inbox)]).start()
    try:
        assert ioc.caput("CenterSearchWidth", "4").returncode == 0
        assert ioc.caput("TriggerTimeout", "6").returncode == 0
        assert ioc.caput("TriggerPhases", "try,infer").returncode == 0
        yield ioc, inbox, src
    finally:
        ioc.kill()


def counts(ioc):
    """(QueueLength, NumDone, NumFailed) now: the tests share an IOC, so each compares with its own start."""
    return tuple(int(ioc.caget(name)) for name in ("QueueLength", "NumDone", "NumFailed"))


def test_folder_watcher_queues_a_file_copied_in_slowly(watched):
    ioc, inbox, src = watched
    n, done, _ = counts(ioc)
    truth = simulate_scan(src / "w_0001.h5", SimConfig(offset=1.7, seed=5, **SMALL))
    slow_copy(src / "w_0001.h5", inbox / "w_0001.h5")
    ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=30)
    ioc.wait_for("NumDone", lambda v: int(v) == done + 1, timeout=120)
    assert ioc.caput("SelectFile", str(inbox / "w_0001.h5"), string=True).returncode == 0
    ioc.wait_for("Selected:Status", lambda v: v == "done", timeout=5)
    assert abs(float(ioc.caget("Selected:Cor")) - truth["cor"]) < 0.5
    assert "queued w_0001.h5" in ioc.caget("TriggerStatus")


def test_folder_watcher_applies_trigger_phases(watched):
    ioc, inbox, src = watched
    n, done, _ = counts(ioc)
    simulate_scan(src / "w_0004.h5", SimConfig(offset=-1.2, seed=4, **SMALL))
    shutil.copy(src / "w_0004.h5", inbox / "w_0004.h5")
    ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=30)
    ioc.wait_for("NumDone", lambda v: int(v) == done + 1, timeout=120)
    table = ioc.pva_get("Queue").value
    files = list(table["file"])
    assert len(files) == n + 1 and files.count(str(inbox / "w_0004.h5")) == 1, files
    # try,infer only: no full phase was requested, so nothing is left and the row is done
    assert table["status"][files.index(str(inbox / "w_0004.h5"))] == "done"
    assert not (inbox.parent / "inbox_rec" / "w_0004_rec").exists()


def test_a_file_that_never_completes_is_queued_as_failed(watched):
    ioc, inbox, src = watched
    n, _, failed = counts(ioc)
    simulate_scan(src / "w_0002.h5", SimConfig(seed=6, **SMALL))
    with h5py.File(src / "w_0002.h5", "a") as f:   # theta never arrives
        del f["exchange/theta"]
    shutil.copy(src / "w_0002.h5", inbox / "w_0002.h5")
    ioc.wait_for("NumFailed", lambda v: int(v) == failed + 1, timeout=30)
    assert int(ioc.caget("QueueLength")) == n + 1
    assert ioc.caput("SelectFile", str(inbox / "w_0002.h5"), string=True).returncode == 0
    err = ioc.wait_for("Selected:Error", lambda v: "never became complete" in v, timeout=5)
    assert "theta" in err


def test_an_aborted_scan_copied_in_is_skipped_not_failed(watched):
    """Fewer projections than tomoScan planned, closed and stable: aborted, whatever ScanStatus said."""
    ioc, inbox, src = watched
    n = int(ioc.caget("QueueLength"))
    simulate_scan(src / "w_0009.h5", SimConfig(seed=9, aborted=True, **SMALL))
    shutil.copy(src / "w_0009.h5", inbox / "w_0009.h5")
    ioc.wait_for("TriggerStatus", lambda v: "w_0009.h5" in v and "aborted scan" in v, timeout=15)
    assert int(ioc.caget("QueueLength")) == n


def test_a_file_completed_late_is_still_processed(watched):
    ioc, inbox, src = watched
    n, done, _ = counts(ioc)
    simulate_scan(src / "w_0003.h5", SimConfig(seed=7, **SMALL))
    with h5py.File(src / "w_0003.h5", "r") as f:
        theta = f["exchange/theta"][...]
    shutil.copy(src / "w_0003.h5", inbox / "w_0003.h5")
    with h5py.File(inbox / "w_0003.h5", "a") as f:
        del f["exchange/theta"]
    time.sleep(2.0)                                   # the trigger is waiting (timeout 6 s)
    assert int(ioc.caget("QueueLength")) == n
    assert "waiting for w_0003.h5" in ioc.caget("TriggerStatus")
    with h5py.File(inbox / "w_0003.h5", "a") as f:   # tomoScan appends theta last
        f["exchange/theta"] = theta
    ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=15)
    ioc.wait_for("NumDone", lambda v: int(v) == done + 1, timeout=120)


# -- tomoScan ------------------------------------------------------------------------------------
SIM = ["--width", "96", "--rows", "4", "--nproj", "91", "--flats", "4", "--darks", "4", "--frame-delay", "0.005",
       "--offset", "2.5", "--noise", "20000"]


LINK_SETTINGS = (("CenterSearchWidth", "6"), ("TriggerTimeout", "30"), ("TriggerPhases", "try,infer"))


def _link(tmp):
    """A simulated tomoScan (with autosave state) and an IOC whose trigger follows it."""
    data = tmp / "data"
    data.mkdir()
    scanner = SimTomoScan(tmp, data, extra=SIM, state=tmp / "scanner-state")
    ioc = IOC(tmp, data)
    try:
        scanner.start()
        ioc.start()
        for name, value in LINK_SETTINGS + (("TomoScanPrefix", scanner.prefix), ("AutoTrigger", "On")):
            assert ioc.caput(name, value).returncode == 0, name
        ioc.wait_for("TriggerStatus", lambda v: "waiting for a scan" in v, timeout=20)
        yield ioc, scanner, data
    finally:
        ioc.kill()
        scanner.kill()


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """Shared by the tests that leave both servers running and the settings as they found them."""
    yield from _link(tmp_path_factory.mktemp("tomoscan"))


@pytest.fixture
def own_linked(tmp_path):
    """A tomoScan and IOC of this test alone: for a test that stops the simulated tomoScan."""
    yield from _link(tmp_path)


def truth_of(data, path):
    import json
    return json.loads((data / "truth.json").read_text())[path.name]["cor"]


def test_scan_end_queues_the_file_and_its_cor_appears(linked):
    ioc, scanner, data = linked
    n, done, _ = counts(ioc)
    path = scanner.scan()
    ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=30)
    ioc.wait_for("NumDone", lambda v: int(v) == done + 1, timeout=120)
    assert ioc.caget("LastFile") == str(path)
    assert abs(float(ioc.caget("LastCor")) - truth_of(data, path)) < 0.5
    table = ioc.pva_get("Queue").value
    files = list(table["file"])
    assert len(files) == n + 1 and files.count(str(path)) == 1, files   # this scan's row, once
    row = files.index(str(path))
    assert table["status"][row] == "done"
    assert abs(table["cor"][row] - truth_of(data, path)) < 0.5
    # TriggerPhases try,infer: no full reconstruction was made
    assert not (data.parent / "data_rec" / f"{path.stem}_rec").exists()
    assert (data.parent / "data_rec" / "try_center" / path.stem / "center_of_rotation.txt").exists()


def test_aborted_scan_is_not_queued(linked):
    ioc, scanner, data = linked
    n = int(ioc.caget("QueueLength"))
    scanner.put("SimNextAbort", "1")
    try:
        path = scanner.scan()
    finally:
        if scanner.caget("SimNextAbort") != "No":   # the scan never started: spare the next test an abort
            scanner.put("SimNextAbort", "0")
    ioc.wait_for("TriggerStatus", lambda v: "skipped" in v and "Abort" in v, timeout=15)
    time.sleep(1.0)
    assert int(ioc.caget("QueueLength")) == n
    assert path.exists()


def test_late_completion_is_waited_for(linked):
    ioc, scanner, data = linked
    n, done, _ = counts(ioc)
    complete_delay = scanner.caget("SimCompleteDelay")
    scanner.put("SimCompleteDelay", "3")
    try:
        path = scanner.scan()
        ioc.wait_for("TriggerStatus", lambda v: f"waiting for {path.name}" in v, timeout=10)
        assert int(ioc.caget("QueueLength")) == n
        ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=30)
        ioc.wait_for("NumDone", lambda v: int(v) == done + 1, timeout=120)
    finally:
        scanner.put("SimCompleteDelay", complete_delay)


def test_restarted_tomoscan_restoring_fullfilename_queues_nothing(own_linked):
    ioc, scanner, data = own_linked
    first = scanner.scan()                                # a scan, so that there is a name to restore
    ioc.wait_for("QueueLength", lambda v: int(v) == 1, timeout=30)
    n = int(ioc.caget("QueueLength"))
    last = scanner.caget("FullFileName")
    assert last == str(first)
    scanner.terminate()
    ioc.wait_for("TriggerStatus", lambda v: "disconnected" in v, timeout=30)
    again = SimTomoScan(scanner.tmp, data, extra=SIM, state=scanner.state, prefix=scanner.prefix,
                        ca_port=scanner.ca_port).start()
    try:
        assert again.caget("FullFileName") == last          # autosave restored it
        ioc.wait_for("TriggerStatus", lambda v: "waiting for a scan" in v, timeout=30)
        time.sleep(1.5)
        assert int(ioc.caget("QueueLength")) == n            # nothing queued on reconnect
        path = again.scan()                                  # and the link works again, once per scan
        ioc.wait_for("QueueLength", lambda v: int(v) == n + 1, timeout=30)
        ioc.wait_for("NumDone", lambda v: int(v) == n + 1, timeout=120)   # the first scan's row too
        assert ioc.caget("LastFile") == str(path)
    finally:
        again.kill()


def test_autotrigger_needs_a_prefix_and_can_be_switched_off(linked):
    ioc, scanner, _ = linked
    try:
        assert ioc.caput("TomoScanPrefix", "").returncode != 0     # not while AutoTrigger is On
        assert ioc.caput("AutoTrigger", "Off").returncode == 0
        ioc.wait_for("TriggerStatus", lambda v: v == "off", timeout=10)
        assert ioc.caput("TriggerPhases", "try,bogus").returncode != 0
        ioc.wait_for("Message", lambda m: "TriggerPhases" in m, timeout=5)
    finally:   # the link as the fixture made it, for the tests after this one
        for name, value in LINK_SETTINGS + (("TomoScanPrefix", scanner.prefix), ("AutoTrigger", "On")):
            assert ioc.caput(name, value).returncode == 0, name
        ioc.wait_for("TriggerStatus", lambda v: "waiting for a scan" in v, timeout=20)
