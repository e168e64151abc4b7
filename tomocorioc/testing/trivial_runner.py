"""A trivial runner for dispatcher tests and benchmarks (real processes, no numerics).

Each job's ``extra["action"]`` says what the worker does: ``ok`` (answer at once),
``sleep`` (``seconds``), ``fail`` (report a failure), ``crash`` (the process
dies), ``hang`` (never answers) or ``child-hang`` (starts a child process that
hangs, then hangs itself — killing the worker must take the child too).
The runner counts its jobs, showing that state persists between jobs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict

from tomocorioc.core.result import Job, PhaseResult


def make_runner(config: Dict[str, Any]) -> Callable[[Job], PhaseResult]:
    """Runner factory (called once per worker process)."""
    state = {"jobs": 0, "started": time.time()}
    if config.get("fail_start"):   # a runner that cannot be built (e.g. its backend is missing)
        raise RuntimeError(str(config["fail_start"]))

    def run(job: Job) -> PhaseResult:
        state["jobs"] += 1
        t_start = time.time()
        extra = job.extra
        action = extra.get("action", "ok")
        base = {"pid": os.getpid(), "jobs": state["jobs"], "env_gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if action == "sleep":
            time.sleep(float(extra.get("seconds", 0.1)))
        elif action == "fail":
            return PhaseResult(False, "requested failure", data=base)
        elif action == "crash":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)
        elif action == "child-hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            if extra.get("pidfile"):
                with open(extra["pidfile"], "w") as fh:
                    fh.write(str(child.pid))
            time.sleep(3600)
        return PhaseResult(True, f"{action} done", cor=extra.get("cor_out"),
                           data={**base, "t_start": t_start, "t_end": time.time()})

    return run
