"""The dispatcher contract: the same cases against every :class:`~tomocorioc.service.protocol.Dispatcher`.

Modelled on bluesky-queueserver's interface tests: each test function below
runs once per backend, and only the ``harness`` fixture differs — ``local`` is
a :class:`~tomocorioc.service.local.LocalDispatcher` with two slots, ``dask`` a
:class:`~tomocorioc.service.cluster.ClusterDispatcher` on a ``distributed.LocalCluster``
of two GPU=1 worker processes (loopback, preload, shared by the module).  Both
run the trivial runner in real worker processes, so crashes, hangs and kills
are real.  Backend-specific behaviour (slot restarts and exit codes, worker
membership, path maps, a lost scheduler, GPU pinning) stays in
``test_dispatcher.py`` and ``test_cluster.py``.
"""
import contextlib
import logging
import os
import re

import pytest
from _fixtures import pid_alive, wait_for

from tomocorioc.core.jobs import PhaseState as S
from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import Job
from tomocorioc.service.local import LocalDispatcher, SlotSpec
from tomocorioc.service.protocol import ClusterStatus, SlotState, SlotStatus

TRIVIAL = "tomocorioc.testing.trivial_runner:make_runner"
NSLOTS = 2
TRY_ONLY = {"try": True, "infer": False, "full": False}
TRY_INFER = {"try": True, "infer": True, "full": False}
ALL3 = {"try": True, "infer": True, "full": True}
OK = {"action": "ok"}
HANG = {"action": "hang"}


@contextlib.contextmanager
def _local_cluster(n):
    """As in test_cluster.py: processes on loopback, one GPU token each, the preload pinning GPUs 0 and 1."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
            n_workers=n, processes=True, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
            dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},   # no fixed port 8787
            silence_logs=logging.CRITICAL, preload=["tomocorioc.worker.dask_plugin"],
            env={"TOMOCORIOC_GPU_LIST": ",".join(str(i) for i in range(n))}) as cl:
        yield cl


@pytest.fixture(scope="module")
def dask_cluster():
    """One cluster for the module (a killed worker is restarted by its nanny; the harness waits for it).

    A LocalCluster closes a worker's nanny for good when, ``lost-worker-timeout`` (15 s) after the worker
    left the scheduler, no worker of that name is there: true whenever this module's crashes, timeouts
    and aborts kill the same worker again at that moment (seen on a loaded machine), and every later case
    then waits for a second slot in vain.  The nannies restart their workers themselves, so that timer is
    pushed out of the module's reach.
    """
    dask = pytest.importorskip("dask")
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}), _local_cluster(NSLOTS) as cl:
        yield cl



class Harness:
    """A queue, files for its rows and one dispatcher of the backend under test; records the dispatcher's events."""

    def __init__(self, backend, folder, make_dispatcher):
        self.backend, self.folder, self._make = backend, folder, make_dispatcher
        self.q = self.d = None
        self.events, self.spec = [], {}

    def start(self, retries=0, timeouts=None, series_barrier=False, on_series_ready=None):
        """Build and start the dispatcher; return once every slot is ready."""
        self.q = JobQueue(on_change=lambda *a: self.d is not None and self.d.wake(), max_retries=retries,
                          series_barrier=series_barrier)
        self.d = self._make(self.q, self.build_job, timeouts=timeouts or {}, on_series_ready=on_series_ready,
                            on_event=lambda kind, data: self.events.append((kind, dict(data))))
        self.d.start()
        assert self.d.wait_connected(30), self.d.cluster_status()
        assert self.all_idle(60), self.d.slot_status()
        return self

    def build_job(self, row, phase):
        return Job(path=row.path, phase=phase, extra=self.spec[row.path])

    def add(self, jobs, phases=TRY_ONLY):
        """Queue files (written: the cluster's workers check they can open them); returns their row ids."""
        paths = []
        for name, action in jobs.items():
            path = self.folder / name
            path.write_bytes(b"scan")
            self.spec[str(path)] = action
            paths.append(str(path))
        ids = self.q.add(paths, phases=phases)
        assert len(ids) == len(paths)
        return ids

    def all_idle(self, timeout=30.0):
        """Wait until there are NSLOTS slots, all idle (a killed worker was replaced)."""
        def idle():
            slots = self.d.slot_status()
            return len(slots) == NSLOTS and all(s.state is SlotState.IDLE for s in slots)
        return wait_for(idle, timeout)

    def state(self, rid, phase="try"):
        return self.q.row(rid).state[phase]

    def of(self, kind, row=None):
        return [e for k, e in self.events if k == kind and (row is None or e["row"] == row)]

    def close(self):
        if self.d is not None:
            self.d.stop()


@pytest.fixture(params=["local", "dask"])
def harness(request, tmp_path):
    """The backend under test; the test calls ``harness.start(...)`` with the options it needs."""
    if request.param == "local":
        slots = [SlotSpec(f"gpu{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in range(NSLOTS)]

        def make(queue, build_job, **kw):
            return LocalDispatcher(queue, slots, TRIVIAL, {}, build_job, **kw)
    else:
        cluster = request.getfixturevalue("dask_cluster")
        from tomocorioc.service.cluster import ClusterDispatcher

        def make(queue, build_job, **kw):
            return ClusterDispatcher(queue, [], TRIVIAL, {}, build_job, cluster=cluster.scheduler_address, **kw)
    h = Harness(request.param, tmp_path, make)
    try:
        yield h
    finally:
        h.close()



# -- the contract ---------------------------------------------------------------------------------------------
def test_jobs_run_to_completion_in_phase_order(harness):
    h = harness.start()
    ids = h.add({f"a_{i}.h5": {"action": "sleep", "seconds": 0.05, "cor_out": 10.0 + i} for i in range(4)},
                TRY_INFER)
    assert wait_for(h.q.idle, 60)
    rows = [h.q.row(i) for i in ids]
    assert [r.status for r in rows] == ["done"] * 4, [r.error for r in rows]
    assert [r.cor for r in rows] == [10.0, 11.0, 12.0, 13.0]   # the worker's PhaseResult reached the row
    started, finished = h.of("started"), h.of("finished")
    assert len(started) == len(finished) == 8 and all(e["success"] for e in finished)
    assert {e["slot"] for e in finished} <= {s.name for s in h.d.slot_status()}
    for rid in ids:   # per file, the phases ran in order
        assert [e["phase"] for e in h.of("finished", rid)] == ["try", "infer"]


def test_failing_job_fails_its_row_and_blocks_later_phases(harness):
    h = harness.start()
    bad, good = h.add({"f_1.h5": {"action": "fail"}, "f_2.h5": OK}, ALL3)
    assert wait_for(h.q.idle, 60)
    row = h.q.row(bad)
    assert row.status == "failed" and row.error == "try: requested failure"
    assert [row.state[p] for p in ("try", "infer", "full")] == [S.FAILED, S.BLOCKED, S.BLOCKED]
    assert h.q.row(good).status == "done"
    (fin,) = h.of("finished", bad)
    assert not fin["success"] and fin["msg"] == "requested failure"
    assert not h.of("worker-lost")   # a failed job is an answer, not a lost worker


def test_crashing_worker_job_is_retried_then_failed_others_finish(harness):
    h = harness.start(retries=1)
    crash, *others = h.add({"c_1.h5": {"action": "crash"}, "c_2.h5": OK, "c_3.h5": OK})
    assert wait_for(lambda: h.q.idle() and h.state(crash) is S.FAILED, 90)
    row = h.q.row(crash)
    assert row.attempts == 2 and re.match(r"try: worker\b.*\b(died|left)\b", row.error), row.error
    assert [e["requeued"] for e in h.of("worker-lost", crash)] == [True, False]
    assert all(h.q.row(i).status == "done" for i in others), [h.q.row(i).error for i in others]
    assert h.all_idle(60), h.d.slot_status()   # the crashed workers were replaced


def test_job_past_its_timeout_is_killed_retried_and_failed_slot_keeps_working(harness, tmp_path):
    pidfile = tmp_path / "child.pid"
    h = harness.start(retries=1, timeouts={"try": 1.5})
    hung, quick = h.add({"h_1.h5": {"action": "child-hang", "pidfile": str(pidfile)},
                         "h_2.h5": {"action": "sleep", "seconds": 0.2}})
    assert wait_for(lambda: h.state(hung) is S.FAILED, 60)
    row = h.q.row(hung)
    assert row.attempts == 2 and row.error == "try: timed out after 1.5 s", row.error
    assert [e["requeued"] for e in h.of("worker-lost", hung)] == [True, False]
    assert h.state(quick) is S.DONE
    if pidfile.exists():   # the hung job's child dies with its worker
        child = int(pidfile.read_text())
        assert wait_for(lambda: not pid_alive(child), 15), "the hung job's child must die with its worker"
    assert h.all_idle(60), h.d.slot_status()
    later = h.add({f"h_{i}.h5": OK for i in range(3, 6)})
    assert wait_for(lambda: all(h.state(i) is S.DONE for i in later), 60)


def test_kill_running_after_abort_frees_the_slots(harness):
    h = harness.start()
    ids = h.add({"x_1.h5": HANG, "x_2.h5": HANG, "x_3.h5": OK})
    assert wait_for(lambda: all(h.state(i) is S.RUNNING for i in ids[:2]), 30)
    h.d.kill_running(h.q.abort())
    assert [h.q.row(i).status for i in ids] == ["cancelled"] * 3
    assert h.all_idle(60), h.d.slot_status()
    later = h.add({"x_4.h5": OK, "x_5.h5": OK})
    assert wait_for(lambda: all(h.state(i) is S.DONE for i in later), 30)
    assert all(h.state(i) is S.CANCELLED for i in ids)   # no late answer or retry revived them
    for rid in ids:
        assert not h.of("finished", rid) and not h.of("worker-lost", rid)


def test_slot_status_shows_busy_slot_with_its_row_and_phase(harness):
    h = harness.start()
    idle = h.d.slot_status()
    assert len(idle) == NSLOTS and len({s.name for s in idle}) == NSLOTS
    for s in idle:
        assert isinstance(s, SlotStatus) and s.state is SlotState.IDLE and s.ready
        assert (s.row, s.phase, s.elapsed) == (None, "", 0.0)
    (rid,) = h.add({"s_1.h5": {"action": "sleep", "seconds": 2.0}})
    seen = []

    def busy():
        slots = h.d.slot_status()
        seen.extend(slots)
        return [s for s in slots if s.state is SlotState.BUSY]
    assert wait_for(busy, 30)
    (b,) = busy()
    assert b.row == rid and b.phase == "try" and b.elapsed >= 0.0 and b.ready
    assert wait_for(h.q.idle, 60) and h.q.row(rid).status == "done"
    assert all(isinstance(s, SlotStatus) and isinstance(s.state, SlotState) for s in seen + h.d.slot_status())
    assert h.all_idle(10) and all(s.row is None and s.phase == "" for s in h.d.slot_status())


def test_cluster_status_counts_the_slots(harness):
    h = harness.start()
    cs = h.d.cluster_status()
    assert isinstance(cs, ClusterStatus)
    assert (cs.workers, cs.gpus) == (NSLOTS, NSLOTS)
    assert cs.text and not cs.text.startswith("lost: ")


def test_wake_after_stop_is_harmless(harness):
    h = harness.start()
    h.d.stop()
    # The wake-up pipe is closed now; descriptors it had may be reused by a new pipe: a wake must not write there.
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        for _ in range(3):
            h.d.wake()
        h.d.kill_running([(1, "try")])
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
    finally:
        os.close(r)
        os.close(w)
    h.d.stop()   # a second stop is harmless too


def test_series_barrier_releases_each_series_once_before_its_fulls(harness):
    calls = []

    def series_ready(series):   # on the dispatch thread, as Service's Fix COR Outliers
        rows = [r for r in harness.q.rows() if r.series == series]
        calls.append((series, {r.state["infer"] for r in rows}, {r.state["full"] for r in rows}))
    h = harness.start(series_barrier=True, on_series_ready=series_ready)
    ids = h.add({"sa_0001.h5": OK, "sa_0002.h5": OK, "sb_0001.h5": OK, "sb_0002.h5": OK}, ALL3)
    # Not q.idle(): it is already true between a series' last infer and its release (fulls still queued).
    assert wait_for(lambda: all(h.q.row(i).status == "done" for i in ids), 60), [h.q.row(i).state for i in ids]
    assert sorted(c[0] for c in calls) == ["sa", "sb"]   # once per series
    for _series, infer, full in calls:
        assert infer == {S.DONE} and full == {S.QUEUED}   # all infers finished, no full started yet


def test_heartbeat_moves_while_idle(harness):
    h = harness.start()
    beat = h.d.heartbeat
    assert wait_for(lambda: h.d.heartbeat > beat + 1, 10)
