"""The service: durable state across SIGKILL, sidecars, auto-skip, fix-outliers, the run CLI's dispatcher."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tomocorioc.core import sidecar
from tomocorioc.core.params import ReconParams
from tomocorioc.service.local import SlotSpec
from tomocorioc.service.service import Service, ServiceSettings
from tomocorioc.sim import SimConfig, simulate_series

SMALL = dict(ncols=96, nrows=6, nproj=91, noise=20000, phantom="beads")
TRIVIAL = "tomocorioc.testing.trivial_runner:make_runner"


def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    truth = simulate_series(d, SimConfig(offset=2.2, seed=3, **SMALL), 3, name="k")
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "tomocorioc", "run", str(d), "--json", "--backend", "torch", "--state", str(state),
           "--search-width", "6", "--phases", "try,infer,full"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    db = state / "tomocorioc.sqlite"
    deadline = time.monotonic() + 120
    done_one = False
    try:
        while time.monotonic() < deadline and not done_one:  # kill once the first file has its COR
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(db) as con:
                        rows = [json.loads(x) for (x,) in con.execute("SELECT data FROM rows")]
                except sqlite3.OperationalError:
                    continue  # the file exists a moment before its schema does
                done_one = any(r["state"]["infer"] == "done" for r in rows)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert done_one, "first COR never appeared"
    with sqlite3.connect(db) as con:
        before = {json.loads(x)["path"]: json.loads(x) for (x,) in con.execute("SELECT data FROM rows")}
        hist = con.execute("SELECT COUNT(*) FROM cor_history").fetchone()[0]
    assert len(before) == 3 and hist >= 1
    first = next(r for r in before.values() if r["state"]["infer"] == "done")
    # restart on the same state: nothing lost, nothing finished is redone, the rest completes
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    recs = {json.loads(x)["file"]: json.loads(x) for x in out.stdout.splitlines()}
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs.values())
    assert recs[first["path"]]["cor"] == pytest.approx(first["cor"], abs=1e-3)   # the JSON line rounds to 3 decimals
    for t in truth:
        assert abs(recs[str(d / t["file"])]["cor"] - t["cor"]) < 0.5


def test_service_sidecars_skip_and_outliers(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    simulate_series(d, SimConfig(nproj=40, **{k: v for k, v in SMALL.items() if k != "nproj"}), 4, name="s",
                    aborted_index=3)
    settings = ServiceSettings(params=ReconParams(search_width=6))
    svc = Service(tmp_path / "state", [SlotSpec("cpu0")], {}, settings, factory=TRIVIAL)
    ids = svc.enqueue(sorted(str(p) for p in d.glob("*.h5")))
    rows = {r.id: r for r in svc.queue.rows()}
    assert rows[ids[3]].skipped and "projections" in rows[ids[3]].skipped  # the aborted scan
    # per-dataset parameters from the sidecar; a broken sidecar is reported and ignored, never overwritten
    f0, f1 = rows[ids[0]].path, rows[ids[1]].path
    sidecar.write(f0, ReconParams(search_width=6, fbp_filter="shepp"), settings.params)
    assert svc.params_for(f0).fbp_filter == "shepp" and svc.params_for(f1).fbp_filter == "parzen"
    sidecar.copy_to(f0, f1)
    assert svc.params_for(f1).fbp_filter == "shepp"
    sidecar.sidecar_path(f1).write_text("{broken")
    assert svc.params_for(f1).fbp_filter == "parzen" and "unreadable sidecar" in svc.messages[-1]
    with pytest.raises(sidecar.SidecarError, match="not overwritten"):
        sidecar.write(f1, ReconParams(), settings.params)
    assert sidecar.sidecar_path(f1).read_text() == "{broken"
    # Fix COR Outliers through the service: history kept
    for rid, cor in zip(ids, (50.0, 51.0, 90.0)):
        svc.queue.set_cor(rid, cor, "classical")
    changes = svc.fix_outliers(ids[:3])
    # 90 is the last of its series: replaced by its one neighbour (51)
    assert [c["new"] for c in changes] == [51.0] and svc.queue.row(ids[2]).cor_source == "outlier-fixed"
    hist = svc.store.cor_history(ids[2])
    assert [h["new"] for h in hist] == [90.0, 51.0] and "outlier" in hist[-1]["reason"]
    svc.store.close()
    # reopen: rows, skip reason, CORs and settings are all there
    again = Service(tmp_path / "state", [SlotSpec("cpu0")], {}, factory=TRIVIAL)
    r2 = {r.id: r for r in again.queue.rows()}
    assert r2[ids[2]].cor == 51.0 and r2[ids[3]].skipped and again.settings.params.search_width == 6
    again.store.close()


def test_service_dispatches_with_trivial_runner(tmp_path):
    svc = Service(None, [SlotSpec("a"), SlotSpec("b")], {}, factory=TRIVIAL)
    ids = svc.enqueue([f"/nonexistent/t_{i}.h5" for i in range(6)], {"try": True, "infer": True, "full": False})
    svc.start()
    try:
        assert svc.wait_idle(60)
    finally:
        svc.stop()
    assert all(svc.queue.row(i).status == "done" for i in ids)


def test_rot_cen_round_trip_and_apply_params(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    files = [str(d / f"r_{i}.h5") for i in range(1, 4)]
    svc = Service(None, [SlotSpec("a")], {}, factory=TRIVIAL)
    ids = svc.enqueue(files)
    svc.queue.set_cor(ids[0], 1024.5, "classical")
    out = svc.export_rot_cen(tmp_path / "rot_cen.json")
    data = json.loads(out.read_text())
    assert data[files[0]] == "1024.5" and data[files[1]] == ""
    (tmp_path / "in.json").write_text(json.dumps({files[1]: "1001.25", "/elsewhere/x.h5": "5"}))
    assert svc.import_rot_cen(tmp_path / "in.json") == 1
    assert svc.queue.row(ids[1]).cor == 1001.25 and svc.queue.row(ids[1]).cor_source == "imported"
    sidecar.write(files[0], ReconParams(binning=1), ReconParams())
    assert svc.apply_params(ids[0], ids) == 2
    assert all(svc.params_for(f).binning == 1 for f in files)
