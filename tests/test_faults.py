"""The service survives faults: a full state disk, names that are not UTF-8, runners that cannot start,
a restart whose autosave holds other settings, a SIGKILL during a burst of puts, a loopback-only host."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from _fixtures import wait_for
from _ioc import IOC  # noqa: I001 - before pyepics: sets the CA address list

from tomocorioc.core.result import Job
from tomocorioc.service.local import LocalDispatcher, SlotSpec
from tomocorioc.service.protocol import SlotState
from tomocorioc.service.service import Service
from tomocorioc.service.store import StoreError
from tomocorioc.sim import SimConfig, simulate_series

SMALL = dict(ncols=96, nrows=6, nproj=91, noise=20000, phantom="beads")
TRIVIAL = "tomocorioc.testing.trivial_runner:make_runner"
BAD_NAME = b"\xff\xfe_0001.h5"



def need_root_mount(tmp: Path) -> Path:
    """A small tmpfs mounted at ``tmp/small`` (root only; CI runs as root, so there it must work)."""
    mnt = tmp / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"cannot mount a tmpfs here: {r.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return mnt


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder``; returns the filler file (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:    # unbuffered: nothing left for close() to fail on
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


# -- persist or roll back ---------------------------------------------------------------------------------
class Flaky:
    """The store's save, refusing the writes ``refuse(rows)`` picks (what a full disk does to SQLite)."""

    def __init__(self, save):
        self.save, self.refuse = save, None

    def __call__(self, rows, events, removed, fixed):
        if self.refuse is not None and self.refuse(rows):
            raise StoreError("state store failing: no space left on device: /state")
        return self.save(rows, events, removed, fixed)


def test_a_refused_write_leaves_memory_as_it_was(tmp_path):
    svc = Service(tmp_path / "state", [SlotSpec("s0")], factory=TRIVIAL)
    flaky = svc.store.save = Flaky(svc.store.save)
    try:
        ids = svc.enqueue(["/d/a_0001.h5"], {"try": True, "infer": False, "full": False, "tomolog": False})
        uid, before = svc.queue.uid, [r.to_dict() for r in svc.queue.rows()]
        flaky.refuse = lambda rows: True
        for op in (lambda: svc.enqueue(["/d/a_0002.h5"]), lambda: svc.queue.set_cor(ids[0], 12.5),
                   lambda: svc.queue.set_enabled(ids, False), lambda: svc.queue.remove(ids),
                   lambda: svc.queue.abort(), lambda: svc.queue.move(ids[0], 3)):
            with pytest.raises(StoreError, match="no space left"):
                op()
        assert svc.queue.uid == uid and [r.to_dict() for r in svc.queue.rows()] == before
        assert svc.queue.tally.status == {"queued": 1} and svc.store_problem.startswith("state store failing")
        flaky.refuse = None
        svc.queue.set_cor(ids[0], 12.5)
        assert svc.store_problem is None
    finally:
        svc.stop()
    reopened = Service(tmp_path / "state", [SlotSpec("s0")], factory=TRIVIAL)
    try:
        rows = reopened.queue.rows()
        assert [r.path for r in rows] == ["/d/a_0001.h5"] and rows[0].cor == 12.5
    finally:
        reopened.stop()


def test_a_finished_phase_waits_for_the_store_and_is_not_lost(tmp_path):
    """The worker's result is kept while the store refuses, nothing new starts, and it lands when space returns."""
    svc = Service(tmp_path / "state", [SlotSpec("s0")], factory=TRIVIAL)
    flaky = svc.store.save = Flaky(svc.store.save)
    try:
        flaky.refuse = lambda rows: any(r.results for r in rows)   # starts pass, results are refused
        ids = svc.enqueue(["/d/b_0001.h5", "/d/b_0002.h5"], {"try": True, "infer": False, "full": False,
                                                              "tomolog": False})
        svc.start()
        assert wait_for(lambda: svc.store_problem is not None, 20), "the refused result was not reported"
        assert svc.queue.row(ids[0]).running_phase == "try"          # not lost, not done: held by the dispatcher
        assert svc.queue.row(ids[1]).state["try"].value == "queued"   # nothing new started meanwhile
        assert wait_for(lambda: any("state store failing" in m for m in svc.messages), 5)
        assert svc.dispatcher.heartbeat > 0
        flaky.refuse = None
        assert svc.wait_idle(30)
        assert [svc.queue.row(i).status for i in ids] == ["done", "done"] and svc.store_problem is None
    finally:
        svc.stop()


# -- runners that cannot start ------------------------------------------------------------------------------
def test_a_slot_whose_runner_cannot_start_is_broken_and_its_jobs_fail_with_the_reason():
    from tomocorioc.core.queue import JobQueue
    q = JobQueue()
    events = []
    d = LocalDispatcher(q, [SlotSpec("s0"), SlotSpec("s1")], TRIVIAL, {"fail_start": "no tomocupy here"},
                        lambda row, phase: Job(path=row.path, phase=phase),
                        on_event=lambda kind, data: events.append((kind, data)))
    q._on_change = lambda *a: d.wake()
    ids = q.add(["/d/x_0001.h5", "/d/x_0002.h5"], {"try": True, "infer": False, "full": False})
    d.start()
    try:
        assert wait_for(q.idle, 60), [s for s in d.slot_status()]
        rows = [q.row(i) for i in ids]
        assert all(r.status == "failed" for r in rows)
        assert all("no worker can start" in r.error and "no tomocupy here" in r.error for r in rows)
        status = d.slot_status()
        assert [s.state for s in status] == [SlotState.BROKEN, SlotState.BROKEN]
        assert all("no tomocupy here" in s.reason for s in status)
        spawned = sum(s.failures for s in d._slots)
        time.sleep(2.0)                    # backing off: no tight respawn loop
        assert sum(s.failures for s in d._slots) == spawned <= 2 * 3
        assert sum(1 for k, data in events if k == "fatal" and "broken" in data["msg"]) == 2
    finally:
        d.stop()


def test_run_with_a_runner_that_cannot_start_exits_1_with_the_reason(tmp_path):
    simulate_series(tmp_path, SimConfig(seed=2, **SMALL), 2, name="r")
    p = subprocess.run([sys.executable, "-m", "tomocorioc", "run", str(tmp_path), "--json", "--backend", "torch",
                        "--device", "bogus", "--phases", "try"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 1, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(recs) == 2 and all(r["status"] == "failed" and "no worker can start" in r["error"] for r in recs)
    assert all("bogus" in r["error"] for r in recs)


def test_serve_refuses_a_missing_tomocupy_in_one_line(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin", TOMOCUPY="")
    env.pop("TOMOCUPY")
    p = subprocess.run([sys.executable, "-m", "tomocorioc", "serve", "--state", str(tmp_path / "s"), "--data-root",
                        str(tmp_path), "--backend", "tomocupy", "--interface", "127.0.0.1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "tomocupy program not found" in err[0] and "Traceback" not in p.stderr


@pytest.mark.parametrize("option, value, why", [
    ("--prefix", "", "a PV prefix is letters, digits"),
    ("--prefix", "2bma TomoCor:", "a PV prefix is letters, digits"),     # caget would see two names
    ("--prefix", "2bma.TomoCor:", "a PV prefix is letters, digits"),     # "." starts a field name
    ("--state", "/proc/tomocorioc-state", "cannot use it as the state directory (No such file or directory)"),
    ("--data-root", "/nonexistent-data", "data root is not a directory: /nonexistent-data"),
    ("--interface", "eth0", "--interface 'eth0': not an IPv4 address"),
    ("--interface", "198.51.100.254", "--interface 198.51.100.254: not an address of this host (it has "),
])
def test_serve_refuses_bad_options_in_one_line(tmp_path, option, value, why):
    args = {"--prefix": "T0:", "--state": str(tmp_path / "s"), "--data-root": str(tmp_path), option: value}
    p = subprocess.run([sys.executable, "-m", "tomocorioc", "serve", "--interface", "127.0.0.1",
                        *[x for kv in args.items() for x in kv]], capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and why in err[0], p.stderr


def test_a_corrupt_state_database_is_one_line_for_serve_and_run(tmp_path):
    state = tmp_path / "s"
    state.mkdir()
    (state / "tomocorioc.sqlite").write_bytes(os.urandom(4096))     # was a sqlite3.DatabaseError traceback
    serve = subprocess.run([sys.executable, "-m", "tomocorioc", "serve", "--interface", "127.0.0.1", "--prefix",
                            "T0:", "--state", str(state), "--data-root", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    run = subprocess.run([sys.executable, "-m", "tomocorioc", "run", str(tmp_path / "x.h5"), "--state", str(state)],
                         capture_output=True, text=True, timeout=120)
    why = f"state database {state}/tomocorioc.sqlite: file is not a database (move it away to start with an empty"
    for p, code in ((serve, 1), (run, 2)):
        err = [line for line in p.stderr.splitlines() if "tomocorioc" in line and "WARNING" not in line]
        assert p.returncode == code and len(err) == 1 and why in err[0] and "Traceback" not in p.stderr, p.stderr


def test_a_state_directory_serves_one_service_at_a_time(tmp_path):
    """A second IOC (or a run --state) on the same state would dispatch the same rows twice."""
    data = tmp_path / "data"
    data.mkdir()
    ioc = IOC(tmp_path, data, extra=["--no-pva"]).start()
    try:
        why = f"state directory {ioc.state} is in use by another tomocorioc (pid {ioc.proc.pid}): stop it, or give"
        second = subprocess.run([sys.executable, "-m", "tomocorioc", "serve", "--interface", "127.0.0.1", "--prefix",
                                 "T1:", "--state", str(ioc.state), "--data-root", str(data), "--no-pva"],
                                capture_output=True, text=True, timeout=120, env=ioc.env)
        run = subprocess.run([sys.executable, "-m", "tomocorioc", "run", str(data / "x.h5"), "--state",
                              str(ioc.state)], capture_output=True, text=True, timeout=120)
        for p, code in ((second, 1), (run, 2)):
            err = [line for line in p.stderr.splitlines() if line.startswith("tomocorioc ")]
            assert p.returncode == code and len(err) == 1 and why in err[0] and "Traceback" not in p.stderr, p.stderr
        assert ioc.caget("ServerRunning") == "Running"
    finally:
        ioc.kill()        # SIGKILL: the kernel drops the lock with the process
    again = IOC(tmp_path, data, prefix=ioc.prefix, state=ioc.state, ca_port=ioc.ca_port, extra=["--no-pva"]).start()
    again.kill()


# -- the IOC, from outside -------------------------------------------------------------------------------------
def test_a_full_state_disk_fails_puts_without_phantom_rows_and_the_ioc_recovers(tmp_path):
    small = need_root_mount(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    simulate_series(data, SimConfig(offset=1.5, seed=6, **SMALL), 2, name="f")
    ioc = IOC(tmp_path, data, state=small / "state")
    try:
        ioc.start()
        assert ioc.caput("CenterSearchWidth", "6").returncode == 0
        assert ioc.caput("PhaseFull", "Disable").returncode == 0
        filler = fill(small)
        out = ioc.caput("MaxCorDelta", "44")
        assert out.returncode != 0
        msg = ioc.wait_for("Message", lambda m: "MaxCorDelta" in m and "no space left" in m, timeout=10)
        assert "\n" not in msg and float(ioc.caget("MaxCorDelta")) == 50
        assert ioc.caput("Enqueue", str(data / "f_0001.h5"), string=True).returncode != 0
        ioc.wait_for("Message", lambda m: m.startswith("Enqueue") and "no space left" in m, timeout=10)
        assert int(ioc.caget("QueueLength")) == 0                     # no phantom row
        time.sleep(6)                                                 # the watchdog would have fallen by now
        assert ioc.caget("ServerRunning") == "Running" and ioc.proc.poll() is None
        filler.unlink()
        assert ioc.caput("MaxCorDelta", "44").returncode == 0
        assert ioc.caput("Enqueue", str(data), string=True).returncode == 0
        ioc.wait_for("NumDone", lambda v: int(v) == 2, timeout=180)
        assert int(ioc.caget("NumFailed")) == 0 and int(ioc.caget("QueueLength")) == 2
    finally:
        ioc.kill()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_name_that_is_not_utf8_is_refused_and_the_rest_of_the_folder_runs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    simulate_series(data, SimConfig(offset=-0.8, seed=7, **SMALL), 1, name="u")
    shutil.copy(data / "u_0001.h5", os.fsdecode(os.fsencode(data) + b"/" + BAD_NAME))
    ioc = IOC(tmp_path, data).start()
    try:
        assert ioc.caput("CenterSearchWidth", "6").returncode == 0
        assert ioc.caput("PhaseFull", "Disable").returncode == 0
        assert ioc.caput("Enqueue", str(data), string=True).returncode == 0
        ioc.wait_for("Message", lambda m: "not valid UTF-8" in m or "queued 1 of" in m, timeout=10)
        assert any("not valid UTF-8" in line for line in ioc.log().splitlines())
        assert int(ioc.caget("QueueLength")) == 1
        ioc.wait_for("NumDone", lambda v: int(v) == 1, timeout=180)
        r = ioc.tool("caget", "-t", "-S", ioc.pv("Row01:File"))
        assert r.returncode == 0 and r.stdout.strip() == "u_0001.h5"
        assert len(ioc.pva_get("Queue").value["file"]) == 1
        assert ioc.caget("ServerRunning") == "Running"
    finally:
        ioc.kill()


def test_restart_restores_autosave_then_the_command_line_wins(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = tmp_path / "state"
    ioc = IOC(tmp_path, data, state=state, extra=["--gpus", "0"]).start()
    try:
        assert ioc.caget("Slot1:Name") == "gpu0"
        for name, value in (("TryTimeout", "120"), ("InferTimeout", "60"), ("FullTimeout", "0")):
            assert ioc.caput(name, value).returncode == 0
        saved: dict = {}
        deadline = time.monotonic() + 10   # the file follows the acknowledged puts on its own thread
        while saved.get(ioc.pv("FullTimeout"), {}).get("value") != 0:
            assert time.monotonic() < deadline, saved
            time.sleep(0.05)
            try:
                saved = json.loads((state / "autosave" / "tomoCor_settings.json").read_text())
            except (OSError, ValueError):
                saved = {}
    finally:
        ioc.kill()
    assert saved[ioc.pv("Gpus")]["value"] == "0" and saved[ioc.pv("TryTimeout")]["value"] == 120
    again = IOC(tmp_path, data, prefix=ioc.prefix, state=state, ca_port=ioc.ca_port, extra=["--gpus", ""]).start()
    try:
        assert again.caget("Slot1:Name") == "cpu0" and again.caget("Gpus") == ""   # --gpus beats the autosave
        assert [float(again.caget(n)) for n in ("TryTimeout", "InferTimeout", "FullTimeout")] == [120, 60, 0]
        text = again.log_path.read_text(errors="replace")   # both runs: one worker started by each
        assert text.count("worker pid") == 2 and "broken" not in text
        # the autosaved Gpus "0" is not restored first (refused on this host: "no CUDA devices" on Message)
        assert "no CUDA devices" not in text and "Gpus" not in again.caget("Message")
        assert "not restored: the command line sets it" in text
    finally:
        again.kill()


def test_sigkill_during_a_burst_of_puts_keeps_every_acknowledged_put(tmp_path):
    """Acknowledged = caput -c exited 0 (the binary: it exits non-zero when the write fails or the IOC dies)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(30):   # tiny scans (Enqueue checks the signature); no phase runs, only the puts matter
        with h5py.File(data / f"p_{i:04d}.h5", "w") as f:
            f.create_dataset("exchange/data", shape=(3, 1, 8), dtype="uint16")
    ioc = IOC(tmp_path, data, extra=["--no-pva"]).start()
    acked_value, acked_files = None, []
    try:
        for name in ("PhaseTry", "PhaseInfer", "PhaseFull"):
            assert ioc.caput(name, "Disable").returncode == 0
        killer = None
        for i in range(30):
            if i == 18:   # SIGKILL mid-burst, while the next puts are on their way
                killer = subprocess.Popen(["sh", "-c", f"sleep 0.05; kill -9 {ioc.proc.pid}"])
            if ioc.caput("MaxCorDelta", str(10.0 + i)).returncode == 0:
                acked_value = 10.0 + i
            path = str(data / f"p_{i:04d}.h5")
            if ioc.caput("Enqueue", path, string=True).returncode == 0:
                acked_files.append(path)
            if ioc.proc.poll() is not None:
                break
        if killer is not None:
            killer.wait(10)
    finally:
        ioc.kill()
    assert acked_value is not None and acked_files
    again = IOC(tmp_path, data, prefix=ioc.prefix, state=ioc.state, ca_port=ioc.ca_port).start()
    try:
        assert float(again.caget("MaxCorDelta")) >= acked_value     # every acknowledged put is there
        n = int(again.caget("QueueLength"))
        assert len(acked_files) <= n <= len(acked_files) + 1         # at most the one in flight, no phantom
        for path in acked_files:
            assert again.caput("SelectFile", path, string=True).returncode == 0, path
    finally:
        again.kill()


def test_serve_on_a_loopback_only_host_binds_loopback_without_a_traceback(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        msg = "no network namespaces here (unshare -n)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    log = tmp_path / "serve.log"
    cmd = (f"ip link set lo up && exec {sys.executable} -m tomocorioc serve --state {tmp_path / 's'} "
           f"--data-root {tmp_path}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_CAS_INTF", "EPICS_PVAS_INTF"))}
    with open(log, "wb") as out:
        p = subprocess.Popen(["unshare", "-n", "sh", "-c", cmd], stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        try:
            ok = wait_for(lambda: "serving on" in log.read_text(errors="replace"), 60, 0.2)
            time.sleep(1.0)
            alive = p.poll() is None
        finally:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
    text = log.read_text(errors="replace")
    assert ok and alive, text[-3000:]
    assert "only the loopback interface" in text and "serving on 127.0.0.1" in text
    assert "Traceback" not in text and "RuntimeError" not in text


def test_a_full_data_disk_fails_the_job_with_no_space_left(tmp_path):
    small = need_root_mount(tmp_path)
    try:
        scans = small / "data"            # outputs go to the sibling data_rec/, on the same full disk
        scans.mkdir()
        simulate_series(scans, SimConfig(seed=9, **SMALL), 1, name="n")
        filler = fill(small)
        p = subprocess.run([sys.executable, "-m", "tomocorioc", "run", str(scans / "n_0001.h5"), "--json",
                            "--backend", "torch", "--phases", "try", "--search-width", "6"],
                           capture_output=True, text=True, timeout=240)
        assert p.returncode == 1, p.stderr
        rec = json.loads(p.stdout)
        assert rec["status"] == "failed" and "no space left on device" in rec["error"], rec
        assert rec["phases"] == {"try": "failed"}
        filler.unlink()
        again = subprocess.run([sys.executable, "-m", "tomocorioc", "run", str(scans / "n_0001.h5"), "--json",
                                "--backend", "torch", "--phases", "try", "--search-width", "6"],
                               capture_output=True, text=True, timeout=240)
        assert again.returncode == 0 and json.loads(again.stdout)["phases"] == {"try": "done"}   # nothing half-kept
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_commits_reach_the_disk_from_the_sync_thread_and_a_killed_writer_loses_none(tmp_path):
    """No fsync per commit: a commit is in the OS when it returns (SIGKILL loses nothing), on disk within
    SYNC_PERIOD (the store's own thread), and close() syncs what is left and stops that thread."""
    from tomocorioc.service.store import SYNC_PERIOD, StateStore

    code = ("import os, signal, sys\n"
            "from tomocorioc.service.store import StateStore\n"
            "s = StateStore(sys.argv[1])\n"
            "for i in range(50):\n"
            "    s.set_setting(f'k{i}', i)\n"
            "print('acked', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a")], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL and "acked" in r.stdout, r.stderr
    s = StateStore(tmp_path / "a")
    assert s.settings() == {f"k{i}": i for i in range(50)}
    s.set_setting("x", 1)
    assert s._dirty
    assert wait_for(lambda: not s._dirty, timeout=SYNC_PERIOD + 5)    # the sync thread fsynced the WAL
    s.set_setting("y", 2)
    syncer = s._syncer
    s.close()
    assert not s._dirty and not syncer.is_alive()
