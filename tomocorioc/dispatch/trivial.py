"""A trivial runner for dispatcher tests and benchmarks (real processes, no numerics).

Each job's ``action`` says what the worker does: ``ok`` (answer at once),
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


def make_runner(config: Dict[str, Any]) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """Runner factory (called once per worker process)."""
    state = {"jobs": 0, "started": time.time()}

    def run(job: Dict[str, Any]) -> Dict[str, Any]:
        state["jobs"] += 1
        t_start = time.time()
        action = job.get("action", "ok")
        base = {"pid": os.getpid(), "jobs": state["jobs"], "env_gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
        if action == "sleep":
            time.sleep(float(job.get("seconds", 0.1)))
        elif action == "fail":
            return {**base, "success": False, "msg": "requested failure"}
        elif action == "crash":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)
        elif action == "child-hang":
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            if job.get("pidfile"):
                with open(job["pidfile"], "w") as fh:
                    fh.write(str(child.pid))
            time.sleep(3600)
        return {**base, "success": True, "msg": f"{action} done", "cor": job.get("cor_out"), "t_start": t_start,
                "t_end": time.time()}

    return run
