"""The local dispatcher with real worker processes: what only local slots do.

The cases every backend shares (completion, failures, retries, timeouts, abort, slot and cluster
status, series release) are in ``test_dispatcher_contract.py``; here: jobs spread over all slots with
persistent workers, a single slot restarted after a crash (with the exit code), a timeout killing
only its own slot's process tree, and the ``--gpus`` slot list.
"""

import pytest
from _fixtures import pid_alive, wait_for

from tomocorioc.core.jobs import PhaseState as S
from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import Job
from tomocorioc.service.local import LocalDispatcher, SlotSpec, slots_for
from tomocorioc.service.protocol import SlotState

TRIVIAL = "tomocorioc.testing.trivial_runner:make_runner"


def make(jobs, nslots=2, timeouts=None, retries=0, events=None):
    """jobs: {path: action dict}; every phase of a row runs that action (``Job.extra``)."""
    q = JobQueue(max_retries=retries)
    ids = q.add(list(jobs), phases={"try": True, "infer": False, "full": False})
    by_path = {q.row(i).path: spec for i, spec in zip(ids, jobs.values())}
    d = LocalDispatcher(q, [SlotSpec(f"s{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in range(nslots)], TRIVIAL,
                        {}, lambda row, phase: Job(path=row.path, phase=phase, extra=by_path[row.path]),
                        timeouts=timeouts or {},
                        on_event=(lambda k, d: events.append((k, d))) if events is not None else None)
    q._on_change = lambda *a: d.wake()
    return q, ids, d



def test_jobs_run_on_all_slots_and_workers_persist(tmp_path):
    events = []
    q, ids, d = make({f"/d/a_{i}.h5": {"action": "sleep", "seconds": 0.05} for i in range(8)}, events=events)
    d.start()
    try:
        assert wait_for(lambda: all(q.row(i).state["try"] is S.DONE for i in ids), 60)
    finally:
        d.stop()
    done = [e for k, e in events if k == "finished"]
    assert len(done) == 8 and {e["slot"] for e in done} == {"s0", "s1"}
    starts = [e for k, e in events if k == "started"]
    assert len(starts) == 8
    assert not [e for k, e in events if k == "worker-lost"]   # one worker per slot for the whole run


def test_killed_worker_is_restarted_and_job_failed_others_continue():
    q, ids, d = make({"/d/c_1.h5": {"action": "crash"}, "/d/c_2.h5": {"action": "ok"},
                      "/d/c_3.h5": {"action": "ok"}}, nslots=1, retries=2)
    d.start()
    try:
        assert wait_for(lambda: q.idle() and q.row(ids[2]).state["try"] is S.DONE, 60)
        r = q.row(ids[0])
        assert r.state["try"] is S.FAILED and r.error == "try: worker died (exit code 3)"
        assert r.attempts == 3  # first run + 2 retries, each on a restarted worker of the one slot
        assert q.row(ids[1]).state["try"] is S.DONE
        assert wait_for(lambda: [s.state for s in d.slot_status()] == [SlotState.IDLE], 30)
    finally:
        d.stop()


def test_timeout_kills_the_process_tree_and_only_that_slot(tmp_path):
    pidfile = tmp_path / "child.pid"
    q, ids, d = make({"/d/h_1.h5": {"action": "child-hang", "pidfile": str(pidfile)},
                      "/d/h_2.h5": {"action": "sleep", "seconds": 0.2},
                      "/d/h_3.h5": {"action": "sleep", "seconds": 0.2}}, nslots=2, timeouts={"try": 3.0})
    d.start()
    try:
        assert wait_for(lambda: q.row(ids[2]).state["try"] is S.DONE, 30)
        assert q.row(ids[0]).state["try"] is S.RUNNING  # the other slot carried on meanwhile
        assert wait_for(lambda: q.row(ids[0]).state["try"] is S.FAILED, 30)
        assert "timed out after 3 s" in q.row(ids[0]).error
        child = int(pidfile.read_text())
        assert wait_for(lambda: not pid_alive(child), 10), "the hung child must die with its worker"
    finally:
        d.stop()


def test_a_job_sent_to_a_worker_that_just_died_is_queued_again_not_left_running():
    """The probe's worker kills: a worker dead between its "ready" and the next job made the send raise
    BrokenPipeError in the loop; the row stayed "running" with no worker."""
    import multiprocessing as mp
    q = JobQueue(max_retries=0)
    d = LocalDispatcher(q, [SlotSpec("s0", {})], TRIVIAL, {},
                        lambda row, phase: Job(path=row.path, phase=phase, extra={"action": "ok"}))
    q._on_change = lambda *a: d.wake()
    d.start()
    try:
        assert wait_for(lambda: [s.state for s in d.slot_status()] == [SlotState.IDLE], 30)
        slot = d._slots[0]
        first = slot.proc.pid
        dead_end, gone = mp.Pipe()
        gone.close()             # the worker's end is gone: a send raises BrokenPipeError, as after its death
        slot.conn = dead_end
        (rid,) = q.add(["/d/p_1.h5"], phases={"try": True, "infer": False, "full": False})
        assert wait_for(lambda: q.row(rid).state["try"] is S.DONE, 30), q.row(rid)
        assert q.row(rid).attempts == 0 and q.row(rid).error is None     # no retry used: it never ran
        assert d._slots[0].proc.pid != first and not pid_alive(first)
        assert d.heartbeat and d._thread.is_alive()
    finally:
        d.stop()


def test_slots_from_gpus():
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots_for("0,2")] == ["0", "2"]
    assert slots_for("")[0].name == "cpu0"
    with pytest.raises(ValueError):
        slots_for("a,b")

