"""Cost of a job state change against the queue's length: a 10-row queue vs a 10,000-row queue, side by side.

Each change is what the dispatcher does for one phase of one row (start, then
finish with a result), through the real Service, JobQueue and SQLite store
(WAL, synchronous=FULL) in a temporary state directory.  The goal (issue 12):
the time per change on the long queue within 2x of the short one.  The two
sizes are measured interleaved, in blocks, so machine noise hits both alike.

    python benchmarks/bench_queue_scale.py [--rows 10000] [--changes 1000] [--blocks 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

from _common import load_average

from tomocorioc.core.result import PhaseResult
from tomocorioc.service.local import SlotSpec
from tomocorioc.service.service import Service
from tomocorioc.testing.fakes import FakeDispatcher

TRY_ONLY = {"try": True, "infer": False, "full": False, "tomolog": False}


def make(tmp: Path, rows: int) -> Tuple[Service, List[int]]:
    """A service with ``rows`` queued rows (try only), on a fake dispatcher: only the queue and store work."""
    svc = Service(tmp, [SlotSpec("cpu0")], dispatcher_factory=FakeDispatcher)
    paths = [f"/bench/s{i // 100:04d}_{i % 100:04d}.h5" for i in range(rows)]
    t0 = time.perf_counter()
    ids = svc.queue.add(paths, TRY_ONLY)
    print(f"  {rows} rows queued in {time.perf_counter() - t0:.2f} s", flush=True)
    return svc, ids


def changes(svc: Service, n: int) -> float:
    """Seconds per state change for ``n`` changes (start + finish of the next queued phase)."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        nxt = svc.queue.next_job()
        if nxt is None:
            svc.queue.retry_failed()
            nxt = svc.queue.next_job()
        row_id, phase = nxt
        svc.queue.start(row_id, phase)
        svc.queue.finish(row_id, phase, PhaseResult(False, "bench"))   # failed: the row can run again later
        done += 2
    return (time.perf_counter() - t0) / done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000, help="rows of the long queue (default 10000)")
    ap.add_argument("--short", type=int, default=10, help="rows of the short queue (default 10)")
    ap.add_argument("--changes", type=int, default=1000, help="state changes per queue (default 1000)")
    ap.add_argument("--blocks", type=int, default=5, help="interleaved blocks (default 5)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as td:
        short, _ = make(Path(td) / "short", args.short)
        long_, _ = make(Path(td) / "long", args.rows)
        per = max(2, args.changes // args.blocks)
        s_times, l_times = [], []
        for _ in range(args.blocks):
            s_times.append(changes(short, per))
            l_times.append(changes(long_, per))
        short.stop()
        long_.stop()
    s, lg = statistics.median(s_times), statistics.median(l_times)
    print(f"{args.changes} state changes per queue, {args.blocks} interleaved blocks; {load_average()}")
    print(f"{'queue':<22}{'ms per change (median of blocks)':>34}")
    print(f"{f'{args.short} rows':<22}{s * 1e3:>34.3f}")
    print(f"{f'{args.rows} rows':<22}{lg * 1e3:>34.3f}")
    ratio = lg / s
    print(f"ratio long/short: {ratio:.2f}x (goal: within 2x)")
    return 0 if ratio <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
