"""bench_load_latency's load clients: the monitor and the reader (pyepics is imported only in them)."""
from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# Helper modules next to this file (the script's folder is on sys.path when run as a script).
from _ioclat_clients import REPLY


def _reply(obj: Dict[str, Any]) -> None:
    sys.stdout.write(REPLY + json.dumps(obj) + "\n")
    sys.stdout.flush()


def monitor_main(names_file: str) -> int:
    """Monitor every PV named in ``names_file``; stamp each update's arrival; dump records on request."""
    import epics

    names: List[str] = json.loads(Path(names_file).read_text())
    index = {n: i for i, n in enumerate(names)}
    recs: List[Tuple[int, float, float, Optional[float]]] = []   # (pv index, arrival, CA timestamp, number)

    def on_value(pvname: str = "", value: Any = None, timestamp: Any = None, **_kw: Any) -> None:
        t = time.time()
        try:
            num: Optional[float] = float(value) if value is not None and not isinstance(value, (str, bytes)) \
                and getattr(value, "ndim", 0) == 0 else None
        except (TypeError, ValueError):
            num = None
        recs.append((index.get(pvname, -1), t, float(timestamp or 0.0), num))

    pvs = [epics.PV(n, auto_monitor=True, callback=on_value, form="time") for n in names]
    deadline = time.monotonic() + 60
    ok = all(pv.wait_for_connection(max(0.1, deadline - time.monotonic())) for pv in pvs)
    while time.monotonic() < deadline and len({r[0] for r in recs}) < len(names):   # first value of each
        time.sleep(0.02)
    _reply({"ready": bool(ok), "connected": sum(pv.connected for pv in pvs),
            "first_values": len({r[0] for r in list(recs)})})
    since = 0
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "dump":                 # the records since the last dump, to a file
            upto = len(recs)
            Path(cmd["path"]).write_text(json.dumps(recs[since:upto]))
            _reply({"n": upto - since})
            since = upto
        else:
            _reply({"error": f"unknown op {cmd['op']}"})
    for pv in pvs:
        pv.clear_callbacks()
    return 0


def reader_main(names_file: str, pause: float) -> int:
    """Read every PV of ``names_file`` in a loop (persistent channels, all gets in flight at once)."""
    from epics import ca, dbr

    names: List[str] = json.loads(Path(names_file).read_text())
    chids = [ca.create_channel(n, auto_cb=False, connect=False) for n in names]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(ca.state(c) == dbr.CS_CONN for c in chids):
        ca.poll(0.01)
    connected = sum(ca.state(c) == dbr.CS_CONN for c in chids)
    _reply({"ready": connected == len(chids), "connected": connected})
    fd = sys.stdin.fileno()
    buf = b""

    def next_cmd(timeout: float) -> Optional[Dict[str, Any]]:
        nonlocal buf
        end = time.monotonic() + timeout
        while b"\n" not in buf:
            left = end - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(0.0, left))
            if not r:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return {"op": "quit"}
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        return json.loads(line)

    while True:
        cmd = next_cmd(3600.0)
        if cmd is None or cmd["op"] == "quit":
            return 0
        if cmd["op"] != "go":
            _reply({"error": f"unknown op {cmd['op']}"})
            continue
        stop_at = time.monotonic() + float(cmd["seconds"])     # bounded even if "stop" never comes
        sweeps: List[float] = []
        reads = fails = 0
        t_start = time.monotonic()
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            for c in chids:
                ca.get(c, wait=False)
            ca.poll()
            for c in chids:
                v = ca.get_complete(c, timeout=5.0)
                reads += 1
                fails += v is None
            sweeps.append(time.perf_counter() - t0)
            stop = next_cmd(pause)
            if stop is not None:
                break
        _reply({"sweeps": sweeps, "reads": reads, "fails": fails, "seconds": time.monotonic() - t_start})
