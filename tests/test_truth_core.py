"""Operator truth in the pure core and the service (no EPICS): stale phases, protected manual CORs,
auto-skip by the file's own evidence, the COR files beside a scan, and ``run``'s per-file report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tomocorioc.core import layout
from tomocorioc.core.jobs import PhaseState
from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import PhaseResult
from tomocorioc.core.rotcen import read_rot_cen
from tomocorioc.core.series import ScanSize, fix_cor_outliers, own_verdict, undersized_scans
from tomocorioc.data.scansize import read_scan_size
from tomocorioc.service.service import Service
from tomocorioc.sim import SimConfig, simulate_scan
from tomocorioc.testing.fakes import FakeDispatcher, make_service

ALL = {"try": True, "infer": True, "full": True, "tomolog": True}


def finished_row(q: JobQueue, path: str = "/d/s_0001.h5", cor: float = 100.0) -> int:
    rid = q.add([path], ALL)[0]
    for phase in ("try", "infer", "full", "tomolog"):
        q.start(rid, phase)
        q.finish(rid, phase, PhaseResult(True, "ok", cor=cor if phase == "infer" else None, cor_source="classical"))
    return rid


# -- stale phases (pure queue) -------------------------------------------------------------
def test_a_cor_change_after_full_makes_full_and_tomolog_stale() -> None:
    q = JobQueue()
    rid = finished_row(q)
    assert q.row(rid).status == "done"
    assert q.set_cor(rid, 104.5, "manual") == ["full", "tomolog"]
    r = q.row(rid)
    assert r.state["full"] is PhaseState.STALE and r.state["tomolog"] is PhaseState.STALE
    assert r.status == "stale" and q.tally.status.get("stale") == 1
    assert q.next_job() is None                      # stale waits: nothing runs by itself
    assert q.retry_failed() == 1                     # what Start does
    assert q.next_job() == (rid, "full") and q.tally.status.get("stale", 0) == 0


def test_rerun_queues_the_stale_phases_and_a_same_cor_changes_nothing() -> None:
    q = JobQueue()
    rid = finished_row(q)
    assert q.set_cor(rid, 100.001, "manual", rerun=True) == []     # below the 2-decimal precision
    assert q.row(rid).status == "done"
    assert q.set_cor(rid, 90.0, "outlier-fixed", rerun=True) == ["full", "tomolog"]
    assert q.row(rid).state["full"] is PhaseState.QUEUED and q.next_job() == (rid, "full")


def test_a_cor_change_before_full_is_no_staleness() -> None:
    q = JobQueue()
    rid = q.add(["/d/s_0001.h5"], ALL)[0]
    assert q.set_cor(rid, 12.0, "manual") == []
    assert q.row(rid).status == "queued"


# -- Fix COR Outliers: manual CORs are ground truth ----------------------------------------------
def _table(cors: List[float], manual: int = -1) -> List[dict]:
    return [{"file": f"/d/a_{i + 1:04d}.h5", "cor": c, "manual": i == manual} for i, c in enumerate(cors)]


def test_a_manual_outlier_is_kept_reported_and_still_an_anchor() -> None:
    res = fix_cor_outliers(_table([100.0, 100.2, 130.0, 100.4, 100.1], manual=2))
    assert not res.changes and res.rows[2]["cor"] == 130.0
    assert [f for f, _ in res.manual_flagged] == ["/d/a_0003.h5"] and "kept" in res.manual_flagged[0][1]
    # an automatic outlier next to a manual value takes that value as its neighbour
    res = fix_cor_outliers(_table([100.0, 150.0, 130.0, 100.4, 100.1, 100.2], manual=2))
    (change,) = res.changes
    assert change.file == "/d/a_0002.h5" and change.new == pytest.approx((100.0 + 130.0) / 2)


def test_without_the_manual_key_the_rule_is_tomoguis() -> None:
    plain = [{k: v for k, v in row.items() if k != "manual"} for row in _table([100, 100.2, 130, 100.4])]
    res = fix_cor_outliers(plain)
    assert [c.file for c in res.changes] == ["/d/a_0003.h5"]


def test_service_fix_outliers_skips_disabled_rows_and_protects_manual(tmp_path: Path) -> None:
    svc = make_service()
    try:
        ids = svc.enqueue([f"/d/a_{i:04d}.h5" for i in range(1, 7)], {"try": True})
        for rid, cor in zip(ids, (100.0, 100.2, 140.0, 100.4, 100.1)):
            svc.queue.set_cor(rid, cor, "classical")
        svc.queue.set_cor(ids[3], 160.0, "manual")
        svc.queue.set_enabled([ids[5]], False)       # disabled, no COR: neither changed nor filled
        changes = svc.fix_outliers()
        assert [Path(c["file"]).name for c in changes] == ["a_0003.h5"]
        rows = {r.id: r for r in svc.queue.rows()}
        assert rows[ids[3]].cor == 160.0 and rows[ids[3]].cor_source == "manual" and rows[ids[3]].needs_review
        assert rows[ids[5]].cor is None
        assert any("a_0004.h5: manual COR 160.00" in m for m in svc.messages)
    finally:
        svc.stop()


def test_service_set_cor_rewrites_the_cor_file_and_rot_cen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "s_0001.h5"
    scan.write_bytes(b"")
    layout.try_dir(scan).mkdir(parents=True)
    layout.write_cor_file(layout.try_dir(scan), [101.25])
    (data / "rot_cen.json").write_text(json.dumps({str(scan): "101.25", "/other.h5": "5"}))
    svc = make_service()
    try:
        rid = svc.enqueue([str(scan)], {"try": True})[0]
        svc.set_cor(rid, 98.5, "manual", "set by operator")
        assert layout.read_cor_file(layout.try_dir(scan)) == 98.5
        assert "# manual: set by operator" in (layout.try_dir(scan) / layout.COR_FILE).read_text()
        assert read_rot_cen(data / "rot_cen.json") == {str(scan): 98.5, "/other.h5": 5.0}
    finally:
        svc.stop()


def test_service_rerun_follows_rerun_on_cor_change_and_phase_full() -> None:
    svc: Service = make_service()
    try:
        rid = svc.enqueue(["/d/s_0001.h5"], ALL)[0]
        fake = svc.dispatcher
        assert isinstance(fake, FakeDispatcher)
        fake.run_until_idle(lambda r, p: PhaseResult(True, "ok", cor=50.0 if p == "infer" else None))
        assert svc.set_cor(rid, 55.0, "manual") == ["full", "tomolog"]
        assert svc.queue.row(rid).state["full"] is PhaseState.QUEUED          # default: re-run
        fake.run_until_idle(lambda r, p: PhaseResult(True, "ok"))
        svc.update_settings(rerun_on_cor_change=False)
        svc.set_cor(rid, 57.0, "manual")
        assert svc.queue.row(rid).status == "stale"
        assert svc.start_queue() == 1 and svc.queue.row(rid).state["full"] is PhaseState.QUEUED
    finally:
        svc.stop()


# -- auto-skip: the file's own evidence first ----------------------------------------------------
@pytest.mark.parametrize("size,verdict", [
    (ScanSize("a", nproj=181, ntheta=181, planned=181), False),
    (ScanSize("a", nproj=72, ntheta=72, planned=181), True),
    (ScanSize("a", nproj=181, ntheta=100, planned=181), True),
    (ScanSize("a", nproj=72, ntheta=181), True),
    (ScanSize("a", nproj=181, ntheta=181), None),
    (ScanSize("a", nproj=181), None),
])
def test_own_verdict(size: ScanSize, verdict) -> None:
    assert own_verdict(size)[0] is verdict


def test_a_mixed_series_with_plans_is_not_judged_by_its_median() -> None:
    sizes = [ScanSize(f"/d/a_{i:02d}.h5", nproj=n, ntheta=n, planned=n)
             for i, n in enumerate([721, 181, 181, 721, 181, 721, 721])]
    assert undersized_scans(sizes) == []
    sizes.append(ScanSize("/d/a_07.h5", nproj=300, ntheta=300, planned=721))
    (skip,) = undersized_scans(sizes)
    assert skip.file == "/d/a_07.h5" and "300 of 721 planned" in skip.reason
    # without a plan the series median still decides
    plain = [ScanSize(f"/d/b_{i:02d}.h5", nproj=n) for i, n in enumerate([721, 721, 721, 181])]
    assert [s.file for s in undersized_scans(plain)] == ["/d/b_03.h5"]


def _sim(folder: Path, name: str, nproj: int, aborted: bool = False, ncols: int = 64) -> Path:
    cfg = SimConfig(ncols=ncols, nrows=4, nproj=nproj, noise=20000, phantom="beads", aborted=aborted)
    simulate_scan(folder / name, cfg)
    return folder / name


def test_read_scan_size_reads_plan_and_theta(tmp_path: Path) -> None:
    s = read_scan_size(_sim(tmp_path, "a_0001.h5", 91))
    assert (s.nproj, s.ntheta, s.planned) == (91, 91, 91)
    s = read_scan_size(_sim(tmp_path, "a_0002.h5", 91, aborted=True))
    assert s.nproj < 91 and s.planned == 91 and own_verdict(s)[0] is True


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tomocorioc", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))


def test_run_processes_a_mixed_series_and_reports_a_skip(tmp_path: Path) -> None:
    files = [_sim(tmp_path, f"m_{i:04d}.h5", n) for i, n in enumerate([181, 45, 181, 45, 45], start=1)]
    files.append(_sim(tmp_path, "m_0006.h5", 181, aborted=True))
    p = run_cli("run", *files, "--phases", "try", "--json", "--search-width", "2", "--search-step", "1")
    recs = {Path(r["file"]).name: r for r in map(json.loads, p.stdout.splitlines())}
    assert p.returncode == 0, p.stderr          # a skipped file is reported, not a failure
    assert [recs[f"m_{i:04d}.h5"]["status"] for i in range(1, 6)] == ["ok"] * 5
    assert recs["m_0006.h5"]["status"] == "skipped" and "planned projections" in recs["m_0006.h5"]["error"]
    p = run_cli("run", files[-1], "--phases", "try", "--json", "--no-auto-skip", "--search-width", "2",
                "--search-step", "1")
    (rec,) = map(json.loads, p.stdout.splitlines())
    assert rec["status"] == "ok", rec


def test_run_prints_each_file_as_it_finishes(tmp_path: Path) -> None:
    first = _sim(tmp_path, "f_0001.h5", 45)
    # a much bigger scan: its try and infer take seconds after the first file's line (about 3 s on an
    # idle 2-core machine; 0.3 s with 361 x 64 was too short a margin for a loaded CI runner)
    second = _sim(tmp_path, "g_0001.h5", 721, ncols=128)
    with subprocess.Popen([sys.executable, "-m", "tomocorioc", "run", str(first), str(second), "--phases",
                           "try,infer", "--json", "--search-width", "8", "--search-step", "0.25"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="")) as proc:
        try:
            line = proc.stdout.readline()
            assert json.loads(line)["file"] == str(first)
            # the second file's infer had not finished when the first line came
            assert not (layout.try_dir(second) / layout.COR_FILE).exists()
            rest = proc.stdout.read()
            assert proc.wait(300) == 0
        finally:
            proc.kill()
    assert json.loads(rest.splitlines()[0])["file"] == str(second)


def test_run_reports_a_name_that_is_not_utf8_as_failed(tmp_path: Path) -> None:
    """It was left out with a log line only, and run exited 0 as if every file had been done."""
    good = _sim(tmp_path, "u_0001.h5", 45)
    os.link(good, os.fsencode(tmp_path) + b"/\xff_0002.h5")
    p = run_cli("run", tmp_path, "--phases", "try", "--json", "--search-width", "2", "--search-step", "1")
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    assert p.returncode == 1, p.stderr
    assert [(r["file"], r["status"]) for r in recs] == [(f"{tmp_path}/\ufffd_0002.h5", "failed"), (str(good), "ok")]
    assert recs[0]["error"] == "the name is not valid UTF-8 (rename it); not queued"
