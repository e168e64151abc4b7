#!/usr/bin/env python3
"""Latency of the automatic start: tomoScan's StartScan -> Done until the file's first job starts.

Starts ``tomocorioc serve`` and ``tomocorioc sim-tomoscan`` on loopback (as
``tomocorioc demo`` does), switches AutoTrigger on and runs K scans.  Every
time comes from a Channel Access timestamp set by the server that changed the
value (both on this host, one clock), read by pyepics monitors:

* t_done   StartScan -> Done                       (sim-tomoscan)
* t_name   FullFileName names the new file          (sim-tomoscan; tomoScan copies it after the drop)
* t_queued QueueLength counts the file              (IOC: completeness wait over)
* t_start  Slot1:File names the file                (IOC: its try job was sent to a worker)

The completeness wait (file opens, ``is_complete()``, size stable for the
trigger's quiet period, 1 s) is ``t_queued - t_name``; the goal is that the
rest, ``(t_start - t_done) - (t_queued - t_name)``, stays under 1 s.  Each
scan waits for the previous file's jobs to finish so a slot is free.

Usage: ``python benchmarks/bench_trigger_latency.py [--scans 10] [--quick]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

from tomocorioc.cli.demo import IOC_PREFIX, SCANNER_PREFIX, _Proc
from tomocorioc.ioc.net import free_ports, loopback_env, start_ca_repeater, stop_process


def _stamp_monitor(pvname: str, events: List[tuple], lock: threading.Lock):
    import epics

    def cb(pvname: str = "", value=None, char_value=None, timestamp=None, **_):
        text = char_value if isinstance(char_value, str) else value
        with lock:
            events.append((pvname, text, timestamp))
    pv = epics.PV(pvname, auto_monitor=True, form="time", callback=cb)
    if not pv.wait_for_connection(15):
        raise RuntimeError(f"cannot connect to {pvname}")
    return pv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 scans")
    args = ap.parse_args()
    n = 3 if args.quick else args.scans
    out = Path(tempfile.mkdtemp(prefix="bench-trigger-"))
    data = out / "data"
    data.mkdir()
    ioc_ca, sim_ca, pva, bcast, repeater = free_ports(5)   # together: one at a time they can repeat
    ca = [ioc_ca, sim_ca]
    # a private caRepeater, as the demo does: one libca spawned would outlive the run and hold our stdout
    loop_env = dict(loopback_env(ca, pva, bcast), EPICS_CA_REPEATER_PORT=str(repeater))
    env = dict(os.environ, **loop_env, CUDA_VISIBLE_DEVICES="")
    os.environ.update(loop_env)
    repeater_proc = start_ca_repeater(env)
    import epics
    py = [sys.executable, "-m", "tomocorioc"]
    procs = [
        _Proc("IOC", py + ["serve", "--prefix", IOC_PREFIX, "--state", str(out / "state"), "--data-root", str(data),
                           "--interface", "127.0.0.1"], dict(env, EPICS_CA_SERVER_PORT=str(ca[0])), out / "ioc.log"),
        _Proc("sim", py + ["sim-tomoscan", "--prefix", SCANNER_PREFIX, "--outdir", str(data), "--interface",
                           "127.0.0.1", "--width", "96", "--rows", "4", "--nproj", "91", "--offset", "2.5",
                           "--frame-delay", "0.002"], dict(env, EPICS_CA_SERVER_PORT=str(ca[1])), out / "sim.log"),
    ]
    events: List[tuple] = []
    lock = threading.Lock()
    mons = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if epics.caget(IOC_PREFIX + "ServerRunning", as_string=True, timeout=1) == "Running" and \
                    epics.caget(SCANNER_PREFIX + "ServerRunning", as_string=True, timeout=1) == "Running":
                break
            time.sleep(0.3)
        for name, value in (("CenterSearchWidth", 6.0), ("PhaseFull", 0), ("TomoScanPrefix", SCANNER_PREFIX),
                            ("AutoTrigger", 1)):
            epics.caput(IOC_PREFIX + name, value, wait=True, timeout=10)
        while "waiting for a scan" not in str(epics.caget(IOC_PREFIX + "TriggerStatus", as_string=True)):
            time.sleep(0.2)
        for pv in (SCANNER_PREFIX + "StartScan", SCANNER_PREFIX + "FullFileName", IOC_PREFIX + "QueueLength",
                   IOC_PREFIX + "Slot1:File"):
            mons.append(_stamp_monitor(pv, events, lock))
        rows: List[Dict[str, float]] = []
        for i in range(1, n + 1):
            with lock:
                events.clear()
            epics.caput(SCANNER_PREFIX + "StartScan", 1, wait=True, timeout=10)
            end = time.monotonic() + 120
            name = None
            while time.monotonic() < end:
                with lock:
                    ev = list(events)
                names = [v for p, v, _ in ev if p.endswith("FullFileName") and v]
                name = names[-1] if names else None
                if name and any(p.endswith("Slot1:File") and v == name for p, v, _ in ev):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"scan {i}: no job start seen")
            t_done = next(t for p, v, t in ev if p.endswith("StartScan") and str(v) in ("0", "Done"))
            t_name = next(t for p, v, t in ev if p.endswith("FullFileName") and v == name)
            t_queued = next(t for p, v, t in ev if p.endswith("QueueLength") and int(v) == i)
            t_start = next(t for p, v, t in ev if p.endswith("Slot1:File") and v == name)
            rows.append({"total": t_start - t_done, "name": t_name - t_done, "complete": t_queued - t_name,
                         "dispatch": t_start - t_queued})
            # let the try/infer of this file finish so the next one finds the slot free
            end = time.monotonic() + 120
            while time.monotonic() < end and int(epics.caget(IOC_PREFIX + "NumDone") or 0) < i:
                time.sleep(0.1)
            print(f"scan {i}: {Path(name).name}: total {rows[-1]['total']:.3f} s = name {rows[-1]['name']:.3f} + "
                  f"completeness {rows[-1]['complete']:.3f} + dispatch {rows[-1]['dispatch']:.3f}", flush=True)
        print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()}")
        print(f"\n{n} scans (96 px, 91 projections), StartScan -> Done to the first job start, from CA timestamps\n")
        print("| part | median s | max s |\n|---|---|---|")
        for key, label in (("total", "StartScan Done -> first job started"),
                           ("name", "Done -> FullFileName (tomoScan's own copy, 0.1 s in the simulator)"),
                           ("complete", "FullFileName -> queued (completeness wait incl. 1 s stable size)"),
                           ("dispatch", "queued -> job sent to the worker")):
            vals = [r[key] for r in rows]
            print(f"| {label} | {statistics.median(vals):.3f} | {max(vals):.3f} |")
        over = [r["total"] - r["complete"] for r in rows]
        print(f"| total minus the completeness wait | {statistics.median(over):.3f} | {max(over):.3f} |")
        print(f"\nGoal (under 1 s plus the completeness wait): {'met' if max(over) < 1.0 else 'NOT met'} "
              f"(worst {max(over):.3f} s)")
        return 0
    finally:
        for m in mons:
            m.disconnect()
        for p in reversed(procs):
            p.stop()
        stop_process(repeater_proc)


if __name__ == "__main__":
    sys.exit(main())
