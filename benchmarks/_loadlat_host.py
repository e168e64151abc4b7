"""bench_load_latency's view of the host: process CPU, renice, per-thread run-queue wait, py-spy."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

# Helper modules next to this file (the script's folder is on sys.path when run as a script).


def proc_cpu(pids: Sequence[int]) -> float:
    """Sum of user + system CPU seconds of ``pids`` (gone ones count 0)."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def renice(pids: Sequence[int], nice: int) -> None:
    """Set the nice value of every thread of ``pids`` (a diagnostic: what if the IOC had priority?)."""
    if not nice:
        return
    import psutil
    for pid in pids:
        try:
            for t in psutil.Process(pid).threads():
                os.setpriority(os.PRIO_PROCESS, t.id, nice)   # Linux: per thread
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            pass


def host_cpu() -> Tuple[float, float]:
    """Busy CPU seconds of the whole host (all cores: everything but idle and iowait) and steal seconds."""
    import psutil
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0) \
        - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)     # guest time is already in user
    return busy, getattr(t, "steal", 0.0)


def descendants(pid: int) -> List[int]:
    import psutil
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# ======================================================================================
# parent: where the IOC's threads spend their time
# ======================================================================================
def thread_sched(pid: int) -> Dict[int, Tuple[float, float]]:
    """Per thread of ``pid``: (seconds on a CPU, seconds runnable but waiting for a CPU) from
    /proc/PID/task/TID/schedstat; empty where the kernel has no schedstats."""
    out: Dict[int, Tuple[float, float]] = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return out
    for tid in tids:
        try:
            f = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            out[tid] = (int(f[0]) / 1e9, int(f[1]) / 1e9)
        except (OSError, IndexError, ValueError):
            continue
    return out


def thread_names(pid: int) -> Dict[int, str]:
    """TID -> Python thread name, from ``py-spy dump --nonblocking`` (empty without py-spy)."""
    import re
    if shutil.which("py-spy") is None:
        return {}
    try:
        r = subprocess.run(["py-spy", "dump", "--nonblocking", "-p", str(pid)], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', r.stdout, re.M)}


def _short(frame: str) -> str:
    """'func (path/to/file.py:12)' -> 'func (file.py:12)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else frame


def pyspy_summary(path: Path, seconds: float, rate: int, top: int = 8) -> Dict[str, Any]:
    """Per thread of a ``py-spy record --threads -f raw`` file (idle samples left out by py-spy): the share
    of the window it was active, and what it ran: the task or callback the event loop ran
    (the frame under ``Handle._run``) or the function the executor ran (under ``_WorkItem.run``), with the
    innermost tomocorioc frame below it."""
    import re
    threads: Dict[str, Dict[str, Any]] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        m = re.match(r"thread \((\d+)\): ([^;]*);?(.*)$", stack)
        if not m or not count.isdigit():
            continue
        n = int(count)
        name = f"{m.group(2)} (tid {m.group(1)})"
        frames = m.group(3).split(";") if m.group(3) else []
        t = threads.setdefault(name, {"active": 0, "what": defaultdict(int)})
        t["active"] += n
        task, below = "?", frames
        for i, f in enumerate(frames):
            if f.startswith(("Handle._run ", "_WorkItem.run ")) and i + 1 < len(frames):
                task, below = _short(frames[i + 1]), frames[i + 1:]
                break
        own = [f for f in below if "tomocorioc/" in f]
        detail = _short(own[-1]) if own else _short(frames[-1]) if frames else "?"
        t["what"][f"{task} > {detail}" if detail != task else task] += n
    total = max(1.0, seconds * rate)
    out = {}
    for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["active"]):
        out[name] = {"active": t["active"] / total,
                     "top": [(w, n / total) for w, n in sorted(t["what"].items(), key=lambda kv: -kv[1])[:top]]}
    return out
