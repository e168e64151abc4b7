"""Pure queue: every operation, the per-file phase flow, uid, retries, barrier, persistence hook."""
from typing import List

import pytest

from tomocorioc.core.jobs import PhaseState as S
from tomocorioc.core.jobs import Row, TransitionError, transition
from tomocorioc.core.queue import JobQueue, QueueError
from tomocorioc.core.result import PhaseResult


def mk(n=3, **kw):
    seen = []
    q = JobQueue(on_change=lambda rows, ev, rem, fixed: seen.append((rows, ev, rem)), **kw)
    ids = q.add([f"/d/s_{i:04d}.h5" for i in range(1, n + 1)])
    return q, ids, seen


def run_phase(q, ok=True, **out):
    rid, ph = q.next_job()
    q.start(rid, ph)
    q.finish(rid, ph, PhaseResult(ok, **out))
    return rid, ph


def test_add_skips_duplicates_and_sets_series():
    q, ids, seen = mk(2)
    assert q.add(["/d/s_0001.h5", "/d/s_0003.h5"]) == [3]
    r = q.row(3)
    assert r.series.endswith("s") and r.index == 3 and r.path == "/d/s_0003.h5"
    assert r.state == {"try": S.QUEUED, "infer": S.QUEUED, "full": S.QUEUED, "tomolog": S.OFF}
    assert len(seen) == 2


def test_uid_changes_on_every_mutation():
    q, ids, _ = mk(2)
    u = q.uid
    for op in (lambda: q.move(ids[1], 0), lambda: q.set_enabled([ids[0]], False), lambda: q.pause(),
               lambda: q.resume(), lambda: q.set_cor(ids[0], 10.5), lambda: q.remove([ids[0]])):
        op()
        assert q.uid > u
        u = q.uid


def test_per_file_flow_not_barriers():
    q, ids, _ = mk(2)
    # file 1 try -> infer -> full may proceed while file 2 waits in try
    assert q.next_job() == (ids[0], "try")
    q.start(ids[0], "try")
    assert q.next_job() == (ids[1], "try")   # another slot takes file 2's try
    q.finish(ids[0], "try", PhaseResult(True))
    assert q.next_job() == (ids[0], "infer")
    q.start(ids[0], "infer")
    q.finish(ids[0], "infer", PhaseResult(True, cor=12.5, cor_source="classical", confidence=0.9))
    assert q.next_job() == (ids[0], "full")  # before file 2's try even started
    assert q.row(ids[0]).cor == 12.5


def test_failure_blocks_later_phases_and_retry():
    q, ids, _ = mk(1)
    run_phase(q, ok=False, msg="not an HDF5 file")
    r = q.row(ids[0])
    assert r.state["try"] is S.FAILED and r.state["infer"] is S.BLOCKED and r.status == "failed"
    assert "not an HDF5 file" in r.error
    assert q.next_job() is None and q.idle()
    assert q.retry_failed() == 1
    assert q.next_job() == (ids[0], "try") and q.row(ids[0]).error is None


def test_phase_flags_any_combination():
    q = JobQueue()
    a, = q.add(["/d/a_1.h5"], phases={"try": False, "infer": False, "full": True})
    assert q.next_job() == (a, "full")
    b, = q.add(["/d/b_1.h5"], phases={"try": False, "infer": True, "full": False, "tomolog": True})
    q.set_enabled([a], False)
    assert q.next_job() == (b, "infer")
    with pytest.raises(QueueError, match="unknown phase"):
        q.add(["/d/c.h5"], phases={"bogus": True})


def test_set_phases_requeues_and_running_rows_are_protected():
    q, ids, _ = mk(1)
    for _ in range(3):
        run_phase(q, cor=5.0)
    assert q.row(ids[0]).status == "done"
    q.set_phases(ids, {"full": True, "tomolog": True})
    r = q.row(ids[0])
    assert r.state["full"] is S.DONE and r.state["tomolog"] is S.QUEUED
    q.start(*q.next_job())
    with pytest.raises(QueueError, match="running"):
        q.set_phases(ids, {"try": False})
    with pytest.raises(QueueError, match="running"):
        q.remove(ids)


def test_tomolog_runs_one_at_a_time():
    q = JobQueue()
    ids = q.add(["/d/a_1.h5", "/d/a_2.h5"], phases={"try": False, "infer": False, "full": False, "tomolog": True})
    assert q.next_job() == (ids[0], "tomolog")
    q.start(ids[0], "tomolog")
    assert q.next_job(tomolog_busy=True) is None


def test_pause_resume_abort_clear():
    q, ids, _ = mk(3)
    q.pause()
    assert q.next_job() is None
    q.resume()
    q.start(*q.next_job())
    running = q.abort()
    assert running == [(ids[0], "try")]
    assert all(q.row(i).status == "cancelled" for i in ids)
    assert q.row(ids[0]).error == "cancelled by operator"
    q.retry_failed()
    for _ in range(9):
        run_phase(q, cor=1.0)
    assert q.clear_finished() == 3 and q.rows() == []


def test_manual_cor_history_and_validation():
    q, ids, seen = mk(1)
    q.set_cor(ids[0], 100.25)
    assert q.row(ids[0]).cor_source == "manual"
    assert seen[-1][1][0]["new"] == 100.25 and seen[-1][1][0]["old"] is None
    for bad in (float("nan"), "abc", float("inf")):
        with pytest.raises(ValueError):
            q.set_cor(ids[0], bad)
    q.set_cor(ids[0], None)
    assert q.row(ids[0]).cor is None


def test_worker_lost_retries_then_fails():
    q, ids, _ = mk(1, max_retries=1)
    q.start(*q.next_job())
    assert q.worker_lost(ids[0], "try", "worker died (exit code -9)") is True
    assert q.row(ids[0]).state["try"] is S.QUEUED
    q.start(*q.next_job())
    assert q.worker_lost(ids[0], "try", "timed out after 5 s") is False
    r = q.row(ids[0])
    assert r.state["try"] is S.FAILED and "timed out" in r.error and r.state["full"] is S.BLOCKED


def test_late_results_ignored():
    q, ids, _ = mk(1)
    q.start(*q.next_job())
    q.abort()
    q.finish(ids[0], "try", PhaseResult(True))  # arrives after the abort: ignored
    assert q.row(ids[0]).state["try"] is S.CANCELLED


def test_series_barrier_holds_full_until_fixed():
    q = JobQueue(series_barrier=True)
    ids = q.add(["/d/x_1.h5", "/d/x_2.h5"])
    for _ in range(4):  # try+infer of both
        rid, ph = q.next_job()
        q.start(rid, ph)
        q.finish(rid, ph, PhaseResult(True, cor=10.0) if ph == "infer" else PhaseResult(True))
    assert q.next_job() is None
    assert q.series_awaiting_fix() == [q.row(ids[0]).series]
    q.release_series(q.row(ids[0]).series)
    assert q.next_job() == (ids[0], "full")


def _flagged(q: JobQueue, n: int = 1) -> List[int]:
    """``n`` rows whose try and infer ran; the infer flagged the COR (needs_review)."""
    ids = q.add([f"/d/h_{i + 1}.h5" for i in range(n)])
    for _ in range(2 * n):
        rid, ph = q.next_job()
        q.start(rid, ph)
        q.finish(rid, ph, PhaseResult(True, cor=10.0, cor_source="classical", confidence=0.1, needs_review=True)
                 if ph == "infer" else PhaseResult(True))
    return ids


def test_hold_on_review_holds_full_until_accepted_or_corrected():
    q = JobQueue(hold_on_review=True)
    ids = _flagged(q, 3)
    assert q.next_job() is None and q.idle()          # nothing can start: the CLI would finish, not hang
    assert q.accept_cor(ids[0]) == 10.0
    assert q.next_job() == (ids[0], "full") and q.row(ids[0]).cor_source == "classical"
    q.set_cor(ids[1], 11.0, "manual", "operator")
    q.set_cor(ids[2], 10.5, "outlier-fixed", "Fix COR Outliers")
    assert not q.row(ids[1]).needs_review and not q.row(ids[2]).needs_review
    with pytest.raises(QueueError, match="no COR to accept"):
        q.accept_cor(q.add(["/d/none_1.h5"])[0])


def test_without_hold_on_review_a_flagged_full_runs():
    q = JobQueue()
    ids = _flagged(q)
    assert q.next_job() == (ids[0], "full") and q.row(ids[0]).needs_review


def test_load_requeues_running_and_transition_rules():
    q, ids, _ = mk(1)
    q.start(*q.next_job())
    rows = q.rows()
    q2 = JobQueue()
    q2.load(rows)
    assert q2.row(ids[0]).state["try"] is S.QUEUED
    assert q2.add(["/d/new_1.h5"]) == [ids[0] + 1]  # ids continue
    r = Row(id=1, path="/x", series="x")
    with pytest.raises(TransitionError):
        transition(r, "try", S.DONE)
    assert Row.from_dict(r.to_dict()) == r


def test_add_failed_rows_arrive_failed_and_never_dispatch():
    q = JobQueue()
    (rid,) = q.add(["/d/a_0001.h5"], {"try": True, "infer": True, "full": False}, failed="never complete")
    r = q.row(rid)
    assert r.state["try"] is S.FAILED and r.state["infer"] is S.BLOCKED
    assert r.state["full"] is S.OFF and r.error == "never complete" and r.status == "failed"
    assert q.next_job() is None
