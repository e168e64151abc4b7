"""What access security and the audit trail cost a put: caput->ack before and after issue 14, side by side.

Servers (the real ``tomocorioc serve``, each on its own loopback ports, all running at once):

* ``before`` -- this repository at ``--reference`` (default: the commit before issue 14), extracted with
                ``git archive`` into a temp folder: no access checks, no audit trail (the reference, ratio 1);
* ``off``    -- this tree, no ``--acf``: every put is audited (``<state>/audit.jsonl``, AuditLast);
* ``acf``    -- this tree with ``--acf`` (the example file plus this user and host): every put checked
                against the rules and audited.

One pyepics client (libca) puts to ``MaxCorDelta`` (a validated setting: executor hop, validation,
SQLite, autosave) and to ``Pause`` (a command PV, 0 = no action) with ``wait=True``, each put timed
with ``time.perf_counter`` around the call.  Blocks of ``--block`` puts are interleaved over the
servers in a shuffled order each round (fixed seed), after one discarded warm-up block, so other load
on the machine hits every server alike.  Also: the in-process cost of ``AuditLog.record`` (the only
audit work on the put path).  Nothing asserts on time.

    python benchmarks/bench_access_latency.py [--rounds 20] [--block 50] [--reference COMMIT]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from _common import load_average, machine_description, pct, ratio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tomocorioc.ioc.net import free_ports, start_ca_repeater, stop_process  # noqa: E402

REFERENCE = "a50a733"   # the branch point of issue 14


def _env(ca_port: int, pva: List[int], ports: List[int], repeater: int, pythonpath: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": pythonpath, "EPICS_CA_SERVER_PORT": str(ca_port), "EPICS_CA_REPEATER_PORT": str(repeater),
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ports), "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVAS_SERVER_PORT": str(pva[0]),
        "EPICS_PVA_SERVER_PORT": str(pva[0]), "EPICS_PVAS_BROADCAST_PORT": str(pva[1]),
        "EPICS_PVA_BROADCAST_PORT": str(pva[1]), "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "CUDA_VISIBLE_DEVICES": ""})
    return env


def _acf(path: Path) -> Path:
    """The example ACF with this user and host added to its groups (so every put here is allowed)."""
    text = (REPO / "iocBoot" / "iocTomoCor_2bma" / "tomoCor.acf").read_text()
    user = os.environ.get("USER") or "root"
    text = text.replace("UAG(operators) {", f"UAG(operators) {{ {user},")
    text = text.replace("UAG(admin) {", f"UAG(admin) {{ {user},")
    text = text.replace("HAG(consoles) {", f"HAG(consoles) {{ {socket.gethostname()},")
    path.write_text(text)
    return path


def audit_record_cost(n: int = 20000) -> float:
    """Microseconds per ``AuditLog.record`` call (the put path's share of the audit)."""
    from tomocorioc.ioc.audit import AuditLog
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(Path(tmp) / "audit.jsonl")
        t0 = time.perf_counter()
        for i in range(n):
            log.record({"host": "h", "user": "u", "address": "127.0.0.1", "pv": "T:MaxCorDelta", "asg": "SETTINGS",
                        "old": 1.0, "new": float(i), "outcome": "accepted"})
        dt = time.perf_counter() - t0
        log.close()
    return dt / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--reference", default=REFERENCE)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-access-"))
    ref = base / "reference"
    ref.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.reference, "tomocorioc"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(ref)], input=archive, check=True)
    kinds = {"before": (str(ref), []), "off": (str(REPO), []), "acf": (str(REPO), ["--acf", str(_acf(base / "t.acf"))])}
    ports = free_ports(3 + 2 * len(kinds) + 1)
    repeater = ports.pop()
    ca_ports = dict(zip(kinds, ports[:3]))
    pva_ports = {k: ports[3 + 2 * i: 5 + 2 * i] for i, k in enumerate(kinds)}
    os.environ.update(_env(0, [0, 0], list(ca_ports.values()), repeater, str(REPO)))
    os.environ.pop("EPICS_CA_SERVER_PORT")
    rep = start_ca_repeater(dict(os.environ))
    procs = {}
    print(f"# access security + audit: caput->ack ({args.rounds} rounds x {args.block} puts per server and PV)")
    print(machine_description(["caproto", "pyepics"]) + f"; {load_average()} at start")
    try:
        for k, (pp, extra) in kinds.items():
            (base / k / "data").mkdir(parents=True)
            cmd = [sys.executable, "-m", "tomocorioc", "serve", "--prefix", f"B{k}:", "--state",
                   str(base / k / "state"), "--data-root", str(base / k / "data"), "--interface", "127.0.0.1"] + extra
            log = open(base / k / "log", "wb")
            procs[k] = subprocess.Popen(cmd, env=_env(ca_ports[k], pva_ports[k], list(ca_ports.values()), repeater, pp),
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import epics
        pvs = {(k, name): epics.PV(f"B{k}:{name}", auto_monitor=False)
               for k in kinds for name in ("MaxCorDelta", "Pause")}
        for pv in pvs.values():
            if not pv.wait_for_connection(timeout=120):
                raise SystemExit(f"{pv.pvname} did not connect; logs in {base}")
        times: Dict[tuple, List[float]] = {key: [] for key in pvs}
        rng = random.Random(14)
        keys = list(pvs)
        for rnd in range(args.rounds + 1):
            rng.shuffle(keys)
            for key in keys:
                pv = pvs[key]
                for i in range(args.block):
                    v = 1.0 + (i % 10) if key[1] == "MaxCorDelta" else 0
                    t0 = time.perf_counter()
                    pv.put(v, wait=True, timeout=10)
                    dt = (time.perf_counter() - t0) * 1e3
                    if rnd:   # round 0 is the warm-up
                        times[key].append(dt)
        print()
        print("| server | PV | puts | p50 ms | p99 ms | mean ms | p50 / before | p99 / before |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("MaxCorDelta", "Pause"):
            b = times[("before", name)]
            for k in kinds:
                xs = times[(k, name)]
                print(f"| {k} | {name} | {len(xs)} | {pct(xs, 50):.3f} | {pct(xs, 99):.3f} | {sum(xs) / len(xs):.3f} | "
                      f"{ratio(pct(xs, 50), pct(b, 50))} | {ratio(pct(xs, 99), pct(b, 99))} |")
        lines = sum(1 for _ in open(base / "acf" / "state" / "audit.jsonl"))
        print(f"\naudit lines written by 'acf': {lines}; AuditLog.record on the put path: "
              f"{audit_record_cost():.1f} µs per call")
        print(f"{load_average()} at end")
    finally:
        for p in procs.values():
            stop_process(p, timeout=20)
        stop_process(rep)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
