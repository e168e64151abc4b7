"""The Dask cluster backend with a real LocalCluster (processes, loopback): what only the cluster does.

The cases both backends share (completion, failures, a crashing job retried,
timeouts, abort, slot and cluster status, series release) are in
``test_dispatcher_contract.py``.  Here: flow in phase order with the runner
(model) cache per worker process, GPU pinning by the preload and by the
documented worker command, a worker killed mid-job (re-run elsewhere), a
worker added mid-run, a hung job cancelled within its timeout (its process
tree killed, the worker restarted, the others working on), a runner that
cannot start, the path map and a file the workers cannot open, the scheduler
lost or unreachable, and the real phases runner through the Service, the IOC
and the command line.
"""
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
from _fixtures import pid_alive, wait_for  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from tomocorioc.core.jobs import PhaseState as S  # noqa: E402
from tomocorioc.core.params import ReconParams  # noqa: E402
from tomocorioc.core.pathmap import PathMap  # noqa: E402
from tomocorioc.core.queue import JobQueue  # noqa: E402
from tomocorioc.core.result import Job  # noqa: E402
from tomocorioc.service.cluster import ClusterDispatcher  # noqa: E402
from tomocorioc.service.protocol import SlotState  # noqa: E402
from tomocorioc.worker.dask_plugin import RunnerCache, gpu_for  # noqa: E402

TRIVIAL = "tomocorioc.testing.trivial_runner:make_runner"
TRY_ONLY = {"try": True, "infer": False, "full": False}
# The scheduler's HTTP server (health and metrics routes) runs even without a dashboard, on port
# 8787 unless told otherwise: a second cluster on the machine (two test runs at once) failed to start.
HTTP_ANY_PORT = {"dashboard_address": "127.0.0.1:0"}


@contextlib.contextmanager
def local_cluster(n=2, **kw):
    with LocalCluster(n_workers=n, processes=True, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT, silence_logs=logging.CRITICAL,
                      **kw) as cl:
        yield cl


class Run:
    """A queue, real files and a ClusterDispatcher; records events and the workers' results (flattened)."""

    def __init__(self, cl, folder, jobs, phases=TRY_ONLY, retries=0, timeouts=None, path_map=None, data=None,
                 factory=TRIVIAL):
        self.folder, self.data, self.phases = folder, data or folder, phases
        self.data.mkdir(parents=True, exist_ok=True)
        self.events, self.results, self.spec = [], [], {}
        self.q = JobQueue(max_retries=retries)
        self.ids = [self.add(name, action) for name, action in jobs.items()]
        self.d = ClusterDispatcher(self.q, [], factory, {},
                                   lambda row, phase: Job(path=row.path, phase=phase, extra=self.spec[row.path]),
                                   timeouts=timeouts or {}, on_event=self._event, cluster=cl.scheduler_address,
                                   path_map=path_map)
        self.q._on_change = lambda *a: self.d.wake()
        on_result = self.d._on_result

        def capture(gpu, job, result):   # result.data: the trivial runner's pid, jobs, env_gpu, runners_built...
            self.results.append(dict(result.data, success=result.success, msg=result.msg, row=job.row_id,
                                     phase=job.phase, slot=gpu.name))
            on_result(gpu, job, result)
        self.d._on_result = capture

    def add(self, name, action):
        """Queue one file (written unless its name starts with 'missing'); returns its row id."""
        if not name.startswith("missing"):
            (self.data / name).write_bytes(b"scan")
        self.spec[str(self.folder / name)] = action
        (rid,) = self.q.add([str(self.folder / name)], phases=self.phases)
        return rid

    def _event(self, kind, data):
        self.events.append((kind, dict(data, t=time.monotonic())))

    def __enter__(self):
        self.d.start()
        assert self.d.wait_connected(30), self.d.cluster_status()
        return self

    def __exit__(self, *exc):
        self.d.stop()

    def state(self, i, phase="try"):
        return self.q.row(self.ids[i]).state[phase]



def worker_of(cl, row_id):
    """(address, pid) of the worker processing row ``row_id``, from the scheduler's view."""
    with Client(cl.scheduler_address, set_as_default=False, timeout=10) as c:
        end = time.monotonic() + 10
        while time.monotonic() < end:   # the submission may not have reached the scheduler yet
            for addr, keys in c.processing().items():
                if any(re.search(rf"-r{row_id}-", str(k)) for k in keys):
                    return addr, c.run(os.getpid, workers=[addr])[addr]
            time.sleep(0.05)
    return None, None


def test_flow_in_phase_order_model_cache_and_gpu_pinning(tmp_path):
    env = {"TOMOCORIOC_GPU_LIST": "7,5"}
    with local_cluster(2, preload=["tomocorioc.worker.dask_plugin"], env=env) as cl, \
            Run(cl, tmp_path, {f"a_{i}.h5": {"action": "sleep", "seconds": 0.05} for i in range(6)},
                phases={"try": True, "infer": True, "full": True}) as r:
        assert wait_for(lambda: r.q.idle(), 60)
        assert all(r.q.row(i).status == "done" for i in r.ids)
        status = r.d.cluster_status()
        assert status.text == "connected: 2 workers, 2 GPUs" and (status.workers, status.gpus) == (2, 2)
        assert sorted(s.name for s in r.d.slot_status()) == ["127.0.0.1:gpu5", "127.0.0.1:gpu7"]
        assert r.d.heartbeat > 0
    assert len(r.results) == 18 and all(x["success"] for x in r.results)
    for rid in r.ids:   # per file, the phases ran in order
        assert [x["phase"] for x in r.results if x["row"] == rid] == ["try", "infer", "full"]
    assert {x["env_gpu"] for x in r.results} == {"7", "5"}
    by_pid = {}
    for x in r.results:
        by_pid.setdefault(x["pid"], []).append(x)
    assert len(by_pid) == 2
    for jobs in by_pid.values():   # one runner per worker process: its job counter keeps counting
        assert [x["jobs"] for x in jobs] == list(range(1, len(jobs) + 1))
        assert {x["runners_built"] for x in jobs} == {1}
    assert len([e for k, e in r.events if k == "started"]) == 18


def test_documented_worker_command_pins_one_gpu_per_worker_and_restarts_one(tmp_path):
    """`dask scheduler` + `dask worker --nworkers 2 --resources GPU=1 --name h-gpu --preload ...` as documented."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = [sys.executable, "-m", "dask"]
    log = open(tmp_path / "dask.log", "w")
    procs = [subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                                      "--dashboard-address", "127.0.0.1:0"],
                              stdout=log, stderr=log, start_new_session=True)]
    try:
        procs.append(subprocess.Popen(
            dask + ["worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2", "--nthreads", "1", "--resources", "GPU=1",
                    "--memory-limit", "0", "--name", "h-gpu", "--preload", "tomocorioc.worker.dask_plugin",
                    "--host", "127.0.0.1", "--no-dashboard"],
            env=dict(os.environ, TOMOCORIOC_GPU_LIST="3,4"), stdout=log, stderr=log, start_new_session=True))
        cl = types.SimpleNamespace(scheduler_address=f"tcp://127.0.0.1:{port}")
        jobs = {"w_0.h5": {"action": "hang"}}
        jobs.update({f"w_{i}.h5": {"action": "sleep", "seconds": 0.1} for i in range(1, 5)})
        with Run(cl, tmp_path / "d", {}, timeouts={"try": 2.0}) as r:
            assert wait_for(lambda: r.d.cluster_status().gpus == 2, 60), r.d.cluster_status()
            assert sorted(s.name for s in r.d.slot_status()) == ["127.0.0.1:gpu3", "127.0.0.1:gpu4"]
            ids = [r.add(name, action) for name, action in jobs.items()]
            assert wait_for(lambda: r.q.idle(), 60)
            assert [r.q.row(i).status for i in ids] == ["failed"] + ["done"] * 4
            assert "timed out after 2 s" in r.q.row(ids[0]).error
            assert {(x["slot"], x["env_gpu"]) for x in r.results} <= {("127.0.0.1:gpu3", "3"), ("127.0.0.1:gpu4", "4")}
            # only the hung worker's process was replaced; it is pinned to its GPU again and takes jobs
            assert wait_for(lambda: sorted(s.name for s in r.d.slot_status())
                            == ["127.0.0.1:gpu3", "127.0.0.1:gpu4"] and all(s.ready for s in r.d.slot_status()), 30)
            before = {x["slot"]: x["pid"] for x in r.results}
            more = [r.add(f"w_{i}.h5", {"action": "sleep", "seconds": 0.2}) for i in range(5, 9)]
            assert wait_for(lambda: all(r.q.row(i).status == "done" for i in more), 30)
            after = {x["slot"]: x["pid"] for x in r.results[len(jobs) - 1:]}
            assert set(after) == {"127.0.0.1:gpu3", "127.0.0.1:gpu4"}
            assert len(before) == 1 and all(after[k] == v for k, v in before.items())   # the other one kept going
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        log.close()


def test_worker_killed_mid_job_reruns_elsewhere_nothing_lost(tmp_path):
    jobs = {"k_0.h5": {"action": "sleep", "seconds": 3.0}}
    jobs.update({f"k_{i}.h5": {"action": "sleep", "seconds": 0.2} for i in range(1, 6)})
    with local_cluster(2) as cl, Run(cl, tmp_path, jobs, retries=1) as r:
        assert wait_for(lambda: r.state(0) is S.RUNNING, 30)
        addr, pid = worker_of(cl, r.ids[0])
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: r.q.idle(), 60)
        assert all(r.q.row(i).status == "done" for i in r.ids), [r.q.row(i).error for i in r.ids]
    final = [x for x in r.results if x["row"] == r.ids[0]]
    assert len(final) == 1 and final[0]["pid"] != pid
    lost = [e for k, e in r.events if k == "worker-lost"]
    assert len(lost) == 1 and lost[0]["row"] == r.ids[0] and lost[0]["requeued"]


def test_worker_added_mid_run_gets_jobs(tmp_path):
    with local_cluster(1) as cl, \
            Run(cl, tmp_path, {f"n_{i}.h5": {"action": "sleep", "seconds": 0.3} for i in range(12)}) as r:
        assert wait_for(lambda: r.state(0) is not S.QUEUED, 30)
        assert r.d.cluster_status().gpus == 1
        cl.scale(2)
        assert wait_for(lambda: r.d.cluster_status().gpus == 2, 30)
        assert wait_for(lambda: r.q.idle(), 60)
        assert all(r.q.row(i).status == "done" for i in r.ids)
    pids = [x["pid"] for x in r.results]
    assert len(set(pids)) == 2 and pids.count(pids[-1]) >= 2


def test_hung_job_cancelled_within_timeout_worker_restarted_others_work(tmp_path):
    pidfile = tmp_path / "child.pid"
    jobs = {"h_0.h5": {"action": "child-hang", "pidfile": str(pidfile)}}
    jobs.update({f"h_{i}.h5": {"action": "sleep", "seconds": 0.2} for i in range(1, 6)})
    with local_cluster(2) as cl, Run(cl, tmp_path / "d", jobs, timeouts={"try": 2.0}) as r:
        assert wait_for(lambda: r.state(5) is S.DONE, 30)
        assert r.state(0) is S.RUNNING   # the other worker carried on meanwhile
        assert wait_for(lambda: r.state(0) is S.FAILED, 20)
        started = next(e["t"] for k, e in r.events if k == "started" and e["row"] == r.ids[0])
        failed = next(e["t"] for k, e in r.events if k == "worker-lost" and e["row"] == r.ids[0])
        assert 2.0 <= failed - started < 3.5
        assert "timed out after 2 s" in r.q.row(r.ids[0]).error
        child = int(pidfile.read_text())
        assert wait_for(lambda: not pid_alive(child), 15), "the hung job's child must die with its worker"
        assert wait_for(lambda: r.d.cluster_status().gpus == 2, 30)   # restarted, not the cluster
        later = [r.add(f"h_{i}.h5", {"action": "ok"}) for i in (7, 8, 9)]
        assert wait_for(lambda: all(r.q.row(i).state["try"] is S.DONE for i in later), 30)


def test_runner_that_cannot_start_marks_the_worker_broken(tmp_path):
    with local_cluster(2) as cl, Run(cl, tmp_path, {"b_1.h5": {"action": "ok"}}, retries=1,
                                     factory="tomocorioc.dispatch.no_such_module:make_runner") as r:
        assert wait_for(lambda: r.q.idle(), 30)
        row = r.q.row(r.ids[0])
        assert row.state["try"] is S.FAILED and row.attempts == 2
        assert re.search(r"worker \S+ start failed: ModuleNotFoundError", row.error), row.error
        assert [s.state for s in r.d.slot_status()] == [SlotState.BROKEN, SlotState.BROKEN]
        assert not any(s.ready for s in r.d.slot_status())
        assert len([e for k, e in r.events if k == "fatal"]) == 2


def test_path_map_and_a_file_the_worker_cannot_open(tmp_path):
    mnt = tmp_path / "mnt"
    ioc = "/tomocorioc-test-ioc-only/data"   # exists on the "IOC host" only: the worker must map it
    jobs = {"p_1.h5": {"action": "ok"}, "missing_2.h5": {"action": "ok"}, "p_3.h5": {"action": "ok"}}
    with local_cluster(2) as cl, Run(cl, Path(ioc), jobs, data=mnt,
                                     path_map=[f"{ioc}={mnt}"]) as r:
        assert wait_for(lambda: r.q.idle(), 30)
        assert r.state(0) is S.DONE and r.state(2) is S.DONE
        err = r.q.row(r.ids[1]).error
        assert r.state(1) is S.FAILED
        assert re.fullmatch(rf"try: worker 127\.0\.0\.1:\S+ cannot open {mnt}/missing_2\.h5: "
                            r"No such file or directory", err), err


def test_scheduler_lost_requeues_running_jobs(tmp_path):
    cl = LocalCluster(n_workers=1, processes=True, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT, silence_logs=logging.CRITICAL)
    try:
        with Run(cl, tmp_path, {"l_1.h5": {"action": "sleep", "seconds": 2.0}}, retries=1) as r:
            assert wait_for(lambda: r.state(0) is S.RUNNING, 30)
            cl.close()
            assert wait_for(lambda: r.d.cluster_status().text.startswith("lost: "), 20), r.d.cluster_status()
            assert r.state(0) is S.QUEUED and r.q.row(r.ids[0]).attempts == 1
            assert r.d.slot_status() == []
    finally:
        cl.close()


def test_unreachable_scheduler_reports_connecting_and_keeps_beating():
    q = JobQueue()
    d = ClusterDispatcher(q, [], TRIVIAL, {}, lambda row, phase: Job(path=row.path, phase=phase),
                          cluster="tcp://127.0.0.1:9",
                          connect_timeout=1.0)
    d.start()
    try:
        assert not d.wait_connected(1.5)
        beat = d.heartbeat
        assert wait_for(lambda: d.heartbeat > beat, 3)
        status = d.cluster_status()
        assert status.text.startswith("connecting to tcp://127.0.0.1:9") and (status.workers, status.gpus) == (0, 0)
        assert d.slot_status() == []
    finally:
        t0 = time.monotonic()
        d.stop()
        assert time.monotonic() - t0 < 5


def test_runner_cache_keyed_by_checkpoint_content(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights v1")
    cache = RunnerCache()
    a = cache.get(TRIVIAL, {}, str(ckpt))
    assert cache.get(TRIVIAL, {}, str(ckpt)) is a and cache.built == 1
    ckpt.write_bytes(b"weights v2, retrained")
    assert cache.get(TRIVIAL, {}, str(ckpt)) is not a and cache.built == 2
    assert cache.get(TRIVIAL, {"device": "cpu"}, str(ckpt)) is not a and cache.built == 3


def test_path_map_and_gpu_pinning_rules():
    m = PathMap(["/data=/mnt/data", "/data/fast=/scratch"])
    assert m.to_worker("/data/a/b.h5") == "/mnt/data/a/b.h5"
    assert m.to_worker("/data/fast/b.h5") == "/scratch/b.h5"
    assert m.to_worker("/database/b.h5") == "/database/b.h5"
    with pytest.raises(ValueError):
        PathMap(["data=/mnt"])
    assert gpu_for("host-gpu-2", {"TOMOCORIOC_GPU_LIST": "4,5,6"}) == "6"
    assert gpu_for("host-gpu-1", {"CUDA_VISIBLE_DEVICES": "2,3"}) == "3"
    assert gpu_for("host-gpu3", {"CUDA_VISIBLE_DEVICES": "3"}) == "3"
    assert gpu_for(1, {}) == "1"


def test_service_runs_the_phases_on_the_cluster(tmp_path):
    from tomocorioc.core import layout
    from tomocorioc.service.service import Service, ServiceSettings
    from tomocorioc.sim import SimConfig, simulate_scan
    data = tmp_path / "data"
    data.mkdir()
    truths = [simulate_scan(data / f"s_{i:04d}.h5", SimConfig(ncols=64, nrows=4, nproj=61, offset=off, seed=i,
                                                                 noise=20000))
              for i, off in ((1, 1.5), (2, -2.0))]
    settings = ServiceSettings(params=ReconParams(search_width=6), try_timeout=120.0, infer_timeout=120.0,
                               full_timeout=120.0, tomolog_timeout=60.0)
    with local_cluster(2) as cl:
        svc = Service(tmp_path / "state", [], {"backend": "torch", "device": "cpu"}, settings,
                      cluster=cl.scheduler_address)
        assert isinstance(svc.dispatcher, ClusterDispatcher)
        svc.enqueue([str(p) for p in sorted(data.glob("*.h5"))], {"try": True, "infer": True, "full": True})
        svc.start()
        try:
            assert svc.wait_idle(120)
            rows = svc.queue.rows()
            assert [r.status for r in rows] == ["done", "done"], [r.error for r in rows]
            for r, t in zip(rows, truths):
                assert abs(r.cor - t["cor"]) < 0.5 and r.cor_source
                assert layout.full_dir(Path(r.path)).is_dir() and layout.try_dir(Path(r.path)).is_dir()
            assert {e["slot"] for e in svc.finished_events} <= {s.name for s in svc.dispatcher.slot_status()}
        finally:
            svc.stop()



def test_ioc_with_cluster_shows_the_workers_and_runs_the_pipeline(tmp_path):
    """``tomocorioc serve --cluster``: the queue runs on a real LocalCluster; the cluster PVs show it."""
    from _ioc import IOC
    from distributed import LocalCluster

    from tomocorioc.sim import SimConfig, simulate_series

    data = tmp_path / "data"
    data.mkdir()
    truth = simulate_series(data, SimConfig(ncols=64, nrows=4, nproj=61, noise=20000, phantom="beads", offset=1.5,
                                            seed=4), 2, name="c")
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT) as cluster:
        ioc = IOC(tmp_path, data, extra=["--cluster", cluster.scheduler_address])
        try:
            ioc.start()
            ioc.wait_for("ClusterStatus", lambda v: v.startswith("connected: 2 workers"), timeout=60)
            assert int(ioc.caget("NumWorkers")) == 2 and int(ioc.caget("NumGpus")) == 2
            assert ioc.caget("Slot2:Name") != "" and ioc.caget("Slot3:Name") == ""
            assert ioc.caput("Gpus", "0,1").returncode != 0          # the cluster's workers are the slots
            assert ioc.caput("CenterSearchWidth", "4").returncode == 0
            assert ioc.caput("Enqueue", str(data), string=True).returncode == 0
            ioc.wait_for("NumDone", lambda v: int(v) == 2, timeout=180)
            for t in truth:
                assert ioc.caput("SelectFile", str(data / t["file"]), string=True).returncode == 0
                ioc.wait_for("Selected:Status", lambda v: v == "done", timeout=5)
                assert abs(float(ioc.caget("Selected:Cor")) - t["cor"]) < 0.5
            assert ioc.terminate(30) == 0
        finally:
            ioc.kill()


def test_run_cli_with_cluster_and_its_usage_errors(tmp_path):
    import json as _json
    import subprocess
    import sys as _sys

    from distributed import LocalCluster

    from tomocorioc.sim import SimConfig, simulate_scan

    t = simulate_scan(tmp_path / "r_0001.h5", SimConfig(ncols=64, nrows=4, nproj=61, noise=20000, phantom="beads",
                                                      offset=-1.5, seed=8))
    base = [_sys.executable, "-m", "tomocorioc", "run", str(tmp_path / "r_0001.h5"), "--json", "--search-width", "4"]
    bad = subprocess.run(base + ["--path-map", "/data=/mnt/data"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--path-map needs --cluster" in bad.stderr
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT) as cluster:
        out = subprocess.run(base + ["--cluster", cluster.scheduler_address], capture_output=True, text=True,
                             timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = _json.loads(out.stdout.splitlines()[-1])
    assert rec["status"] == "ok" and abs(rec["cor"] - t["cor"]) < 0.5
