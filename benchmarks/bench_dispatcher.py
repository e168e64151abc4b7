"""Dispatcher overhead: 4 slots, N trivial jobs, against a new process per job polled every 200 ms.

Each job sleeps a fixed time inside a worker.  Dispatch latency is measured
from the wall-clock moment a job ends in one slot to the moment the next job
starts executing in that slot (both stamped inside the worker / child
process), so it includes the result pipe, the dispatcher and the send.
Utilisation = time spent inside jobs / (slots x wall time).

    python benchmarks/bench_dispatcher.py [--jobs 500] [--slots 4] [--job-seconds 0.1]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

from tomocorioc.core.queue import JobQueue
from tomocorioc.core.result import Job
from tomocorioc.service.local import LocalDispatcher, SlotSpec

CHILD = "import sys, time; t=time.time(); time.sleep(float(sys.argv[1])); print(t, time.time())"


def run_dispatcher(jobs: int, slots: int, seconds: float) -> Tuple[float, List[float], float]:
    """(wall s, latencies s, utilisation) for the dispatcher with persistent workers."""
    q = JobQueue()
    results: Dict[str, List[Tuple[float, float]]] = {}
    d = LocalDispatcher(q, [SlotSpec(f"s{i}") for i in range(slots)], "tomocorioc.testing.trivial_runner:make_runner",
                        {}, lambda row, phase: Job(path=row.path, phase=phase,
                                                   extra={"action": "sleep", "seconds": seconds}))
    q._on_change = lambda *a: d.wake()
    # Collect the worker's own time stamps from the result messages (the PhaseResult's data).
    orig_on_message = d._on_message

    def on_message(slot, msg):
        data = msg["result"].data if msg.get("type") == "result" else {}
        if "t_start" in data:
            results.setdefault(slot.spec.name, []).append((data["t_start"], data["t_end"]))
        orig_on_message(slot, msg)
    d._on_message = on_message  # type: ignore[method-assign]
    d.start()
    # wait until every worker is up, so start-up is not counted as dispatch latency
    while not all(s.ready for s in d._slots):
        time.sleep(0.01)
    t0 = time.time()
    q.add([f"/bench/j_{i}.h5" for i in range(jobs)], {"try": True, "infer": False, "full": False})
    while not q.idle():
        time.sleep(0.01)
    wall = time.time() - t0
    d.stop()
    lat, busy = [], 0.0
    for spans in results.values():
        spans.sort()
        busy += sum(e - s for s, e in spans)
        lat += [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
    return wall, lat, busy / (slots * wall)


def run_reference(jobs: int, slots: int, seconds: float, poll: float = 0.2) -> Tuple[float, List[float], float]:
    """TomoGUI's way: a new process per job, each slot polled every ``poll`` seconds."""
    pending = list(range(jobs))
    running: Dict[int, subprocess.Popen] = {}
    spans: Dict[int, List[Tuple[float, float]]] = {i: [] for i in range(slots)}
    t0 = time.time()
    while pending or running:
        for slot in range(slots):
            p = running.get(slot)
            if p is not None and p.poll() is not None:
                out = p.communicate()[0].split()
                spans[slot].append((float(out[0]), float(out[1])))
                del running[slot]
            if slot not in running and pending:
                pending.pop()
                running[slot] = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds)],
                                                 stdout=subprocess.PIPE, text=True)
        time.sleep(poll)
    wall = time.time() - t0
    lat, busy = [], 0.0
    for sp in spans.values():
        busy += sum(e - s for s, e in sp)
        lat += [sp[i + 1][0] - sp[i][1] for i in range(len(sp) - 1)]
    return wall, lat, busy / (slots * wall)


def main() -> None:
    """Run both and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--job-seconds", type=float, default=0.1)
    a = ap.parse_args()
    rows = [("tomocorioc dispatcher", *run_dispatcher(a.jobs, a.slots, a.job_seconds)),
            ("new process per job, 200 ms poll", *run_reference(a.jobs, a.slots, a.job_seconds))]
    print(f"{a.jobs} jobs of {a.job_seconds * 1000:.0f} ms on {a.slots} slots")
    print(f"{'method':<34} {'wall s':>8} {'lat p50 ms':>11} {'lat p99 ms':>11} {'util %':>7}")
    for name, wall, lat, util in rows:
        lat_ms = sorted(x * 1000 for x in lat)
        p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
        print(f"{name:<34} {wall:>8.2f} {statistics.median(lat_ms):>11.2f} {p99:>11.2f} {util * 100:>7.1f}")
    ref, ours = rows[1], rows[0]
    print(f"ratio (reference / tomocorioc): wall {ref[1] / ours[1]:.1f}x, "
          f"median latency {statistics.median(ref[2]) / max(statistics.median(ours[2]), 1e-9):.0f}x")


if __name__ == "__main__":
    main()
