"""The worker side of the Dask cluster backend (``tomocorioc serve --cluster ...``).

One Dask worker process per GPU.  Each job is a plain call of
:func:`run_on_worker` submitted by :class:`~tomocorioc.service.cluster.ClusterDispatcher`
with ``resources={"GPU": 1}``, so a GPU never runs two jobs at once.  The
runner (and with it the AI model) is built once per worker process and kept in
a cache that lives on the ``distributed.Worker`` object, keyed by the runner
factory, its configuration and the checkpoint's path and content hash.

Worker-host commands
--------------------
The scheduler, on any host that the IOC and the GPU hosts reach::

    dask scheduler --port 8786

On each GPU host (here four GPUs), the same Python environment with
``tomocorioc`` installed, and the data mounted::

    TOMOCORIOC_GPU_LIST=0,1,2,3 dask worker tcp://scheduler:8786 \\
        --nworkers 4 --nthreads 1 --resources GPU=1 --memory-limit 0 \\
        --name $(hostname -s)-gpu --preload tomocorioc.worker.dask_plugin

``--nworkers 4`` starts four worker processes (each under its own nanny, which
restarts it when the IOC kills a hung job) named ``<host>-gpu-0`` ...
``<host>-gpu-3``; ``--resources GPU=1`` gives each process one GPU token;
``--memory-limit 0`` keeps Dask from pausing or killing a worker whose
reconstruction needs much host memory.  The preload pins each process to one
GPU before anything can initialise CUDA: ``CUDA_VISIBLE_DEVICES`` is the
entry of ``TOMOCORIOC_GPU_LIST`` at the index that ends the worker's name
(``...-gpu-2`` -> third entry); without ``TOMOCORIOC_GPU_LIST`` a multi-entry
``CUDA_VISIBLE_DEVICES`` is used as the list, else the index itself is the GPU
number.  One worker per GPU can also be started by hand::

    CUDA_VISIBLE_DEVICES=3 dask worker tcp://scheduler:8786 --nthreads 1 \\
        --resources GPU=1 --memory-limit 0 --name $(hostname -s)-gpu3 \\
        --preload tomocorioc.worker.dask_plugin

The IOC, with the data at ``/data`` on its host and ``/mnt/data`` on the
workers::

    tomocorioc serve --state /var/lib/tomocor --cluster tcp://scheduler:8786 \\
        --path-map /data=/mnt/data

The IOC talks to the scheduler only (results come through it); the scheduler
must reach the workers (on hosts with several networks add ``--interface
ib0`` or ``--host <address>`` to ``dask worker``).  Workers may join and leave
at any time; the IOC registers :class:`TomocoriocWorker` on connecting, so
the preload is needed only for the GPU pinning.  Keep the workers' Python,
``dask``/``distributed`` and ``tomocorioc`` versions equal to the IOC's.  The
cluster should be dedicated to the IOC: a phase timeout counts from
submission, and a timed-out job's worker process tree is killed (the nanny
starts a fresh process; with ``--no-nanny`` the worker just leaves).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from typing import Any, Dict, Mapping, MutableMapping, Optional, Tuple

from distributed import Worker, WorkerPlugin, get_worker

from tomocorioc.core.pathmap import PathMap
from tomocorioc.core.result import Job, PhaseResult
from tomocorioc.worker.process import Runner, load_factory, run_job

log = logging.getLogger(__name__)



PLUGIN_NAME = "tomocorioc"
CACHE_ATTR = "tomocorioc_runners"      # the RunnerCache attribute on the distributed.Worker
GPU_METRIC = "tomocorioc_gpu"          # worker metric: the pinned CUDA_VISIBLE_DEVICES (shown per row by the IOC)
GPU_LIST_ENV = "TOMOCORIOC_GPU_LIST"
DEFAULT_FACTORY = "tomocorioc.worker.runner:make_runner"
RUNNERS_KEPT = 2                       # runners (models) kept per worker process


# -- GPU pinning --------------------------------------------------------------------------------------
def gpu_for(name: Any, env: Mapping[str, str]) -> Optional[str]:
    """The GPU a worker named ``name`` gets (see the module docstring); None leaves the environment alone."""
    listed = env.get(GPU_LIST_ENV, "").strip()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if listed:
        gpus = [g.strip() for g in listed.split(",") if g.strip()]
    elif visible is not None and "," in visible:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    elif visible is not None:
        return visible.strip()       # pinned by hand (or hidden with ''): keep it
    else:
        gpus = []
    m = re.search(r"(\d+)$", str(name))
    if m is None:
        if len(gpus) == 1:
            return gpus[0]
        log.warning("worker %r: no index at the end of its name; CUDA_VISIBLE_DEVICES left alone", name)
        return None
    index = int(m.group(1))
    if not gpus:
        return str(index)
    if index >= len(gpus):
        log.warning("worker %r: index %d is beyond the GPU list %s; it shares GPU %s", name, index, gpus,
                    gpus[index % len(gpus)])
    return gpus[index % len(gpus)]


def pin_gpu(name: Any, env: MutableMapping[str, str]) -> Optional[str]:
    """Set ``CUDA_VISIBLE_DEVICES`` for this worker process (before CUDA initialises); returns it."""
    gpu = gpu_for(name, env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def display_name(host: str, name: Any, gpu: Optional[str], index: int = 0, gpus: int = 1) -> str:
    """A worker GPU's row name: ``host:gpuN`` when pinned, else ``host:<worker name>`` (``/i`` when it has several)."""
    if gpu and gpus == 1 and "," not in gpu:
        return f"{host}:gpu{gpu}"
    label = str(name)
    if label.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        label = label.rsplit(":", 1)[-1]
    return f"{host}:{label}" + (f"/{index}" if gpus > 1 else "")


# -- the runner cache -----------------------------------------------------------------------------------
class RunnerCache:
    """Runners of one worker process, kept between jobs (the model stays loaded)."""

    def __init__(self, size: int = RUNNERS_KEPT) -> None:
        self.size = size
        self.built = 0
        self._lock = threading.Lock()
        self._runners: "collections.OrderedDict[tuple, Runner]" = collections.OrderedDict()
        self._hashes: Dict[str, Tuple[tuple, str]] = {}

    def checkpoint_hash(self, path: Optional[str]) -> Optional[str]:
        """SHA-256 of a checkpoint, recomputed only when its size, time or inode change."""
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._hashes.get(path)
        if known and known[0] == sig:
            return known[1]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        self._hashes[path] = (sig, digest.hexdigest())
        return self._hashes[path][1]

    def get(self, factory: str, config: Dict[str, Any], model: Optional[str]) -> Runner:
        """The runner for this factory, configuration and checkpoint (built on first use)."""
        with self._lock:
            key = (factory, json.dumps(config, sort_keys=True, default=str), model, self.checkpoint_hash(model))
            runner = self._runners.get(key)
            if runner is not None:
                self._runners.move_to_end(key)
                return runner
            runner = load_factory(factory)(config)
            self.built += 1
            self._runners[key] = runner
            while len(self._runners) > self.size:
                self._runners.popitem(last=False)
            log.info("runner %s built (%d this process)", factory, self.built)
            return runner


def runner_cache(worker: Worker) -> RunnerCache:
    """The worker's runner cache, created on first use (the plugin normally does that)."""
    cache = getattr(worker, CACHE_ATTR, None)
    if cache is None:
        cache = RunnerCache()
        setattr(worker, CACHE_ATTR, cache)
    return cache


class TomocoriocWorker(WorkerPlugin):
    """Installs the runner cache on each worker and publishes its GPU as a worker metric.

    The cache is an attribute of the worker, not of the plugin, so registering
    the plugin again (a restarted IOC) keeps the loaded models.
    """

    idempotent = True

    def setup(self, worker: Worker) -> None:
        """Called by Dask when the plugin is added to a worker."""
        runner_cache(worker)
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpu is not None:
            worker.metrics[GPU_METRIC] = lambda _w, _gpu=gpu: _gpu


def dask_setup(worker: Any) -> Any:
    """Preload hook (``dask worker --preload tomocorioc.worker.dask_plugin``): pin the GPU, add the plugin."""
    if not isinstance(worker, Worker):
        log.warning("tomocorioc preload: %s is not a worker (use --preload, not --preload-nanny)", type(worker))
        return None
    gpu = pin_gpu(worker.name, os.environ)
    log.info("worker %s pinned to CUDA_VISIBLE_DEVICES=%s", worker.name, gpu)
    return worker.plugin_add(TomocoriocWorker(), name=PLUGIN_NAME)


# -- the job ------------------------------------------------------------------------------------------------
def _cannot_open(path: str) -> Optional[str]:
    """Why this worker cannot open ``path`` for reading, or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    return None


def first_line(exc: BaseException) -> str:
    """'Type: first line of the message' of an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_on_worker(job: Job, factory: str = DEFAULT_FACTORY,
                  config: Optional[Dict[str, Any]] = None) -> PhaseResult:
    """Run one phase of one file on the current Dask worker; the answer is always a :class:`PhaseResult`.

    ``job.path_map`` (pairs IOC prefix -> worker prefix) is applied to the
    job's ``path`` and ``model``; a file the worker cannot open fails the job
    with ``worker <name> cannot open <path>: <reason>``.  A runner that cannot
    be built answers ``fatal=True`` (the dispatcher stops using this worker).
    """
    t_start = time.time()
    worker = get_worker()
    name = display_name(worker.host, worker.name, os.environ.get("CUDA_VISIBLE_DEVICES"))
    base = {"worker": name, "worker_address": worker.address, "worker_pid": os.getpid()}
    pmap = PathMap(job.path_map or ())
    moved: Dict[str, Any] = {}
    for key in ("path", "model"):
        value = getattr(job, key)
        if value:
            moved[key] = pmap.to_worker(str(value))
            problem = _cannot_open(moved[key])
            if problem:
                return PhaseResult.failure(f"worker {name} cannot open {moved[key]}: {problem}", data=base)
    job = dataclasses.replace(job, path_map=(), **moved)
    try:
        runner = runner_cache(worker).get(factory, dict(config or {}), job.model)
    except Exception as exc:  # noqa: BLE001 - any start-up failure goes back to the dispatcher as data
        log.exception("runner %s failed to start", factory)
        return PhaseResult.failure(f"worker {name} start failed: {first_line(exc)}", fatal=True, data=base)
    result = run_job(runner, job)
    data = {**base, "t_start": t_start, "t_end": time.time(), "runners_built": runner_cache(worker).built,
            **result.data}
    return dataclasses.replace(result, data=data)


# -- killing a hung job ----------------------------------------------------------------------------------------
def _kill_tree(pid: int) -> int:
    """SIGKILL ``pid``'s descendants and then ``pid``; returns how many processes were signalled."""
    import psutil
    try:
        top = psutil.Process(pid)
        procs = top.children(recursive=True) + [top]
    except psutil.Error:
        return 0
    n = 0
    for p in procs:
        try:
            p.kill()
            n += 1
        except psutil.Error:
            pass
    return n


def kill_worker_process(expected_address: str, dask_worker: Any = None) -> str:
    """Run on a nanny (``client.run(..., nanny=True)``): kill its worker process tree; the nanny starts a new one.

    Does nothing when the nanny's worker is no longer ``expected_address``
    (it was restarted already).
    """
    nanny = dask_worker
    if getattr(nanny, "worker_address", None) != expected_address:
        return f"stale: the nanny's worker is now {getattr(nanny, 'worker_address', None)}"
    pid = getattr(nanny, "pid", None)
    if not pid:
        return "no worker process"
    n = _kill_tree(int(pid))
    return f"killed worker pid {pid} ({n} processes)"


def stop_this_worker(dask_worker: Any = None) -> str:
    """Run on a worker without a nanny: kill its child processes and exit (it leaves the cluster)."""
    import psutil
    for child in psutil.Process().children(recursive=True):
        _kill_tree(child.pid)
    threading.Timer(0.2, os._exit, args=(70,)).start()   # after the answer went out
    return f"worker {getattr(dask_worker, 'address', '?')} exits"


__all__ = ["RunnerCache", "TomocoriocWorker", "run_on_worker", "dask_setup", "gpu_for", "pin_gpu",
           "display_name", "kill_worker_process", "stop_this_worker", "PLUGIN_NAME"]
