"""Latency under load: settings put -> ack and monitor delivery of the real IOC, idle and with two slots busy.

Goal (fault-survival issue): with two slots running real jobs and 8 clients (4 reading every status PV
in a loop, 4 monitoring every status PV), a settings put -> ack p99 <= 20 ms and every monitor update
within 100 ms, measured side by side with the idle figure.

Set-up (all on loopback, everything started here is killed at the end):

* one real ``tomocorioc serve --gpus 0,1 --backend torch`` (a unique prefix, its own CA/PVA ports,
  beacons to 127.0.0.1, its own caRepeater on a free port).  ``--gpus 0,1`` makes two slots, gpu0
  and gpu1; on a host without GPUs each slot's torch runs on the CPU (CUDA_VISIBLE_DEVICES is set
  per slot and torch falls back to the CPU);
* ``--base-files`` simulated DXfile scans (``tomocorioc.sim.simulate_series``: 128 px wide, 4 rows,
  181 projections), hard-linked into a fresh batch folder under the data root whenever the queue
  needs topping up, and queued with ``Enqueue`` (folder).  ``CenterSearchWidth`` is set to
  ``--search-width`` (10 px: 40 candidate centres) so that a job (try, infer, full) takes a few
  seconds; a warm-up measures the rate and each loaded phase starts with enough rows queued to
  keep both slots busy to its end (the table says what share of the window both slots ran).

Clients present in every phase (the measuring instruments):

* the writer: one pyepics process, ``PV.put(v, wait=True)`` on ``MaxCorDelta`` paced one every
  ``--put-period`` s, a new value each time; the put -> ack time is ``time.perf_counter`` around the
  call; the put's wall start (``time.time``) is kept for the monitor delays;
* the probe: one pyepics process monitoring ``MaxCorDelta`` (and NumRunning, NumDone, Watchdog,
  ServerRunning for the context columns).

Phases, ``--phase-seconds`` each, in ``--rounds`` rounds, shuffled within each round (fixed seed), so
that other load on the machine hits them alike:

* ``idle``    -- no jobs (queue paused, no job running), no extra clients;
* ``loaded``  -- both slots running jobs + 4 readers + 4 monitors;
* ``jobs``    -- both slots running jobs, no extra clients (attribution; default run only);
* ``clients`` -- the 8 extra clients, no jobs (attribution; default run only).

Extra clients (fresh processes for each phase that has them, in one process group; they connect while
no job runs, then the jobs start, so the queue cannot drain before the window opens):

* reader (x4): pyepics, every Role.STATUS PV of the PV table (142) as a persistent channel; a sweep
  issues a get on each channel at once and waits for all (``caget_many`` without its reconnect),
  then sleeps ``--read-pause`` s; counts reads and sweep times;
* monitor (x4): pyepics ``PV(auto_monitor=True, callback=...)`` on every Role.STATUS PV and on
  ``MaxCorDelta``; the callback stamps ``time.time()`` on arrival.

Measured per phase:

* put -> ack (writer): p50 / p99 / max;
* settings-PV monitor delay: arrival at each monitoring client (probe, and the 4 monitors where
  present) minus the writer's wall time at the start of that put; same host, same clock; also the
  share of (value, client) pairs delivered at all;
* status-PV monitor delay (phases with monitors): for every status update a monitor receives in the
  window, arrival minus the update's Channel Access timestamp (caproto stamps ``time.time()`` when the
  status task writes the PV): fan-out + transport; also whether each update reached all 4 monitors,
  and the largest gap between ``Slot<N>:Elapsed`` updates (published every 0.5 s while a job runs:
  the status task kept publishing to every client) and the lowest ``Watchdog`` value seen;
* context: CPU of the IOC process, of its workers and of the clients (psutil, % of one core), the
  host's busy CPU and the part of it used by other processes (the machine may be shared), the share
  of the window with both slots running (probe's NumRunning, from its value when the window opened),
  rows finished, reads/s.  A jobs window in which the workers used no CPU and no row finished is
  reported, with each process's state and ``py-spy dump``, and the temp dir is kept.

Diagnostics: ``--nice-workers N`` / ``--nice-clients N`` / ``--nice-writer N`` renice the workers / the 8
load clients / the writer and the probe (every thread) before each window: does the IOC meet the goal when it
has CPU priority, and how much of the ack time is the measuring client's own wait for a CPU?  (With the kernel's
autogroup scheduling, nice only ranks processes of one session: other sessions still get their share.)

Where the IOC's time goes: for every window, each IOC thread's CPU time and run-queue wait (time
runnable but waiting for a CPU) from /proc/PID/task/TID/schedstat, named through one ``py-spy dump``
(the event loop is MainThread, settings puts and status snapshots run in ``ioc-put_0``).  With
``--py-spy``, ``py-spy record --nonblocking --threads`` samples the IOC (100 Hz, without stopping it)
during the last round's windows; the report lists per thread the share of the window it was active
and what it ran (the asyncio task/callback or the executor job, and the innermost tomocorioc frame).

    python benchmarks/bench_load_latency.py [--quick] [--rounds N] [--phase-seconds S] [--phases idle,loaded,...]
           [--put-period S] [--read-pause S] [--search-width PX] [--py-spy] [--nice-workers N]
           [--nice-clients N] [--nice-writer N] [--json out.json] [--keep]

Default about 5-6 min on 2 cores (3 rounds x 4 phases x 15 s), ``--quick`` about 1.5 min (2 rounds x idle,
loaded x 10 s).  Nothing asserts on time; the exit status is non-zero only when the harness fails.
Each child is this script run again: ``--_client`` (the writer, from ``_ioclat_clients``),
``--_monitor``, ``--_reader``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Helper modules next to this file (the script's folder is on sys.path when run as a script).
from _common import load_average, machine_description, pct
from _ioclat_clients import Child, client_main
from _ioclat_servers import MARK, HarnessError, Procs, Server, find_apprun, log_errors, tracebacks
from _loadlat_children import monitor_main, reader_main
from _loadlat_host import descendants, host_cpu, proc_cpu, pyspy_summary, renice, thread_names, thread_sched
from _loadlat_report import (
    CLIENTS,
    JOBS,
    N_MONITORS,
    N_READERS,
    PHASES,
    PROBE_PVS,
    SETTING_PV,
    SPY_RATE,
    analyse,
    ms,
    report,
)

from tomocorioc.ioc.net import free_ports, start_ca_repeater, stop_process


class Ioc(Server):
    """The real IOC with two slots (``--gpus 0,1``) and the torch backend."""

    def __init__(self, tmp: Path, apprun: str, repeater_port: int, ports: Sequence[int], gpus: str,
                 nice: Tuple[int, int]) -> None:
        super().__init__("tomocorioc", tmp, apprun, repeater_port, ports)
        self.gpus, self.nice = gpus, nice
        self.state = self.dir / "state"
        self.data = self.dir / "data"

    def argv(self, script: str) -> List[str]:
        self.data.mkdir(exist_ok=True)
        return [sys.executable, "-m", "tomocorioc", "serve", "--prefix", self.prefix,
                "--state", str(self.state), "--data-root", str(self.data),
                "--interface", "127.0.0.1", "--gpus", self.gpus, "--backend", "torch",
                "--nice", str(self.nice[0]), "--rt-priority", str(self.nice[1])]

    def put(self, name: str, value: Any, string: bool = False) -> None:
        """``caput -c`` (waits for completion; a refused put is a harness failure)."""
        args = ["-c", "-w", "10"] + (["-S"] if string else []) + [self.prefix + name, str(value)]
        r = self.tool("caput", *args, timeout=30)
        if r.returncode != 0:
            raise HarnessError(f"caput {name} {value} failed: {r.stdout}{r.stderr}")

    def get_int(self, name: str) -> int:
        v = self.caget(self.prefix + name, 3.0)
        if v is None:
            raise HarnessError(f"caget {name} did not answer")
        return int(float(v))

    def wait_int(self, name: str, pred: Any, timeout: float, what: str) -> int:
        deadline = time.monotonic() + timeout
        while True:
            v = self.get_int(name)
            if pred(v):
                return v
            if time.monotonic() > deadline:
                raise HarnessError(f"{what}: {name} = {v} after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.2)


# ======================================================================================
# parent: the benchmark
# ======================================================================================
class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        import uuid
        self.a = a
        self.run_id = uuid.uuid4().hex
        ports = free_ports(4)
        self.repeater_port = ports[0]
        self.procs = Procs(self.run_id, self.repeater_port)
        self.apprun = find_apprun()
        self.script = str(Path(__file__).resolve())
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
        self.ioc = Ioc(self.tmp, self.apprun, self.repeater_port, ports[1:], a.gpus, (a.ioc_nice, a.ioc_rt))
        if a.state_dir is not None:   # diagnostic: the state on a file system the workers do not write
            self.ioc.state = Path(tempfile.mkdtemp(prefix="bench_load_state_", dir=a.state_dir))
        self.repeater: Optional[subprocess.Popen] = None
        self.writer: Optional[Child] = None
        self.probe: Optional[Child] = None
        self.rng = random.Random(a.seed)
        self.results: Dict[str, Any] = {"windows": []}
        self.value_k = 0
        self.batch = 0
        self.base_files: List[Path] = []
        self.row_seconds = 5.0
        self.status_names: List[str] = []
        self.thread_name: Dict[int, str] = {}
        self.keep_tmp = False          # set when a stall was recorded: its evidence stays
        self.probe_last: Dict[str, float] = {}   # latest value of each probe PV

    # -- children ---------------------------------------------------------------------------
    def child(self, argv: List[str], label: str, group: Optional[int] = None) -> Child:
        with open(self.ioc.dir / f"{label}.log", "ab") as err:
            p = self.procs.start([sys.executable, self.script, *argv], self.ioc.env, group=group,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        return Child(p, label)

    def names_file(self, name: str, names: Sequence[str]) -> str:
        f = self.tmp / name
        f.write_text(json.dumps([self.ioc.prefix + n for n in names]))
        return str(f)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.a
        from tomocorioc.ioc.pvdefs import Role, pv_table
        from tomocorioc.sim import SimConfig, simulate_series
        self.status_names = [p.name for p in pv_table() if p.role is Role.STATUS]
        t0 = time.monotonic()
        base = self.tmp / "base"
        base.mkdir()
        simulate_series(base, SimConfig(ncols=a.width, nrows=a.rows, nproj=a.nproj, seed=3), a.base_files,
                        name="load")
        self.base_files = sorted(base.glob("load_*.h5"))
        print(f"  simulated {len(self.base_files)} scans ({a.width} px, {a.rows} rows, {a.nproj} projections) "
              f"in {time.monotonic() - t0:.1f} s", flush=True)
        env = dict(self.ioc.env)
        env[MARK] = self.run_id
        self.repeater = start_ca_repeater(env)
        with open(self.ioc.log_path, "wb") as log:
            self.ioc.proc = self.procs.start(self.ioc.argv(self.script), self.ioc.env, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while self.ioc.caget(self.ioc.prefix + "ServerRunning", 1.0) != "Running":
            if self.ioc.proc.poll() is not None:
                raise HarnessError(f"IOC exited ({self.ioc.proc.returncode}):\n{self.ioc.log_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"IOC did not come up:\n{self.ioc.log_tail()}")
            time.sleep(0.3)
        print(f"  IOC {self.ioc.prefix} up after {time.monotonic() - t0:.1f} s (pid {self.ioc.proc.pid}, "
              f"CA port {self.ioc.ca_port})", flush=True)
        self.ioc.put("Pause", 1)
        self.ioc.put("CenterSearchWidth", a.search_width)
        self.writer = self.child(["--_client", self.ioc.prefix + SETTING_PV, "nomon"], "writer")
        self.probe = self.child(["--_monitor", self.names_file("probe.json", PROBE_PVS)], "probe")
        for c in (self.writer, self.probe):
            if not c.recv(60).get("ready"):
                raise HarnessError(f"{c.label} did not connect")
        self.warm_up()

    def warm_up(self) -> None:
        """Run a few rows with both slots (workers start, torch warms up) and measure the rate."""
        a = self.a
        self.top_up(2 * len(self.base_files))
        self.ioc.put("Resume", 1)
        t0 = time.monotonic()
        self.ioc.wait_int("NumRunning", lambda v: v >= 2, 180, "warm-up: both slots running")
        t1 = time.monotonic()
        n_target = max(4, len(self.base_files))
        done = self.ioc.wait_int("NumDone", lambda v: v >= n_target, 300, "warm-up: rows done")
        t2 = time.monotonic()
        self.row_seconds = max(0.5, (t2 - t1) * 2 / max(1, done))   # one slot's seconds per row
        self.pause_jobs()
        print(f"  warm-up: both slots running after {t1 - t0:.1f} s; {done} rows in {t2 - t1:.1f} s "
              f"(~{self.row_seconds:.1f} s per row per slot)", flush=True)
        self.writer_block(20, a.put_period)         # warm the writer and probe; discarded
        self.probe_dump("warmup")
        assert self.ioc.proc is not None
        self.thread_name = thread_names(self.ioc.proc.pid)

    def top_up(self, target: int) -> None:
        """Hard-link fresh copies of the base scans into a new batch folder and queue it, until
        ``target`` rows wait."""
        queued = self.ioc.get_int("NumQueued")
        while queued < target:
            self.batch += 1
            d = self.ioc.data / f"b{self.batch:03d}"
            d.mkdir()
            for f in self.base_files:
                os.link(f, d / f"b{self.batch:03d}_{f.name}")
            self.ioc.put("Enqueue", str(d), string=True)
            queued += len(self.base_files)
        self.results.setdefault("batches", 0)
        self.results["batches"] = self.batch

    def pause_jobs(self) -> None:
        self.ioc.put("Pause", 1)
        self.ioc.wait_int("NumRunning", lambda v: v == 0, 120, "pause: running jobs finish")
        self.ioc.put("ClearDone", 1)

    def resume_jobs(self, seconds: float) -> None:
        need = math.ceil(2 * (seconds + 15) / self.row_seconds * 1.5) + 2
        self.top_up(need)
        self.ioc.put("Resume", 1)
        self.ioc.wait_int("NumRunning", lambda v: v >= 2, 120, "resume: both slots running")

    # -- measuring clients ------------------------------------------------------------------
    def writer_block(self, n: int, period: float) -> Dict[str, Any]:
        vals = []
        for _ in range(n):
            self.value_k += 1
            vals.append(round(1.0 + 0.01 * (self.value_k % 99000), 2))   # unique over the run, within 0..1000
        assert self.writer is not None
        r = self.writer.call({"op": "paced", "values": vals, "period": period, "timeout": 5.0},
                             timeout=60 + n * (period + 5.0))
        r["values"] = vals
        return r

    def probe_dump(self, tag: str) -> List[List[Any]]:
        """The probe's records since its last dump; also keeps the latest value of each probe PV."""
        assert self.probe is not None
        f = self.tmp / f"probe-{tag}.json"
        self.probe.call({"op": "dump", "path": str(f)}, timeout=30)
        recs = json.loads(f.read_text())
        for i, _arr, _ts, num in recs:
            if 0 <= i < len(PROBE_PVS) and num is not None:
                self.probe_last[PROBE_PVS[i]] = num
        return recs

    def stall_dump(self, tag: str, pids: Sequence[int]) -> str:
        """Jobs 'running' but the workers idle for a whole window: keep each process's state and stack."""
        f = self.tmp / f"stall-{tag}.txt"
        parts = []
        for pid in pids:
            try:
                st = Path(f"/proc/{pid}/stat").read_text().split()[2]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
            except OSError:
                st, wchan = "?", "?"
            dump = ""
            if shutil.which("py-spy"):
                try:
                    dump = subprocess.run(["py-spy", "dump", "--nonblocking", "-p", str(pid)], capture_output=True,
                                          text=True, timeout=60).stdout
                except (OSError, subprocess.TimeoutExpired) as exc:
                    dump = str(exc)
            parts.append(f"== pid {pid} state {st} wchan {wchan}\n{dump}")
        f.write_text("\n".join(parts))
        self.keep_tmp = True
        print(f"  WARNING: {tag}: jobs should run but the workers used no CPU in the window; states and stacks "
              f"in {f}", flush=True)
        return str(f)

    def collect(self, tag: str, monitors: List[Child], last: float, late: float
                ) -> Tuple[List[List[Any]], List[List[List[Any]]]]:
        """The probe's and the monitors' records, dumped again until every one of them has the writer's
        last value (late updates count too), or ``late`` s after the window."""
        probe: List[List[Any]] = []
        mons: List[List[List[Any]]] = [[] for _ in monitors]
        i_probe, i_mon = PROBE_PVS.index(SETTING_PV), len(self.status_names)

        def has_last(recs: List[List[Any]], idx: int) -> bool:
            return any(r[0] == idx and r[3] is not None and round(r[3], 4) == last for r in recs)
        deadline = time.monotonic() + late
        k = 0
        while True:
            time.sleep(0.25)
            probe += self.probe_dump(f"{tag}-{k}")
            for i, c in enumerate(monitors):
                f = self.tmp / f"mon{i}-{tag}-{k}.json"
                c.call({"op": "dump", "path": str(f)}, timeout=60)
                mons[i] += json.loads(f.read_text())
            k += 1
            if (has_last(probe, i_probe) and all(has_last(m, i_mon) for m in mons)) or time.monotonic() > deadline:
                return probe, mons

    def start_load_clients(self, tag: str) -> Tuple[List[Child], List[Child], int]:
        """4 readers and 4 monitors in one new process group; returns once all are connected."""
        status_file = self.names_file("status.json", self.status_names)
        mon_file = self.names_file("monitor.json", self.status_names + [SETTING_PV])
        readers: List[Child] = []
        monitors: List[Child] = []
        pgid: Optional[int] = None
        for i in range(N_READERS):
            c = self.child(["--_reader", status_file, str(self.a.read_pause)], f"reader{i}-{tag}", group=pgid)
            pgid = pgid or c.proc.pid
            readers.append(c)
        for i in range(N_MONITORS):
            monitors.append(self.child(["--_monitor", mon_file], f"monitor{i}-{tag}", group=pgid))
        for c in readers + monitors:
            r = c.recv(90)
            if not r.get("ready"):
                raise HarnessError(f"{c.label} did not connect: {r}")
        assert pgid is not None
        return readers, monitors, pgid

    # -- one phase window -------------------------------------------------------------------
    def window(self, kind: str, rnd: int, spy: bool) -> Dict[str, Any]:
        a = self.a
        S = a.phase_seconds
        tag = f"{kind}-r{rnd}"
        t_setup = time.monotonic()
        readers: List[Child] = []
        monitors: List[Child] = []
        pgid = None
        if CLIENTS[kind]:
            # The clients connect with no job running (8 processes x 143 channels take many seconds on a
            # busy machine); the jobs start only then, so that the queue cannot drain before the window.
            self.pause_jobs()
            readers, monitors, pgid = self.start_load_clients(tag)
        if JOBS[kind]:
            self.resume_jobs(S)
        elif not CLIENTS[kind]:
            self.pause_jobs()
        for c in readers:
            c.send({"op": "go", "seconds": S + 30})
        time.sleep(a.settle)
        self.probe_dump(f"pre-{tag}")                     # drop what came before the window
        running0 = self.probe_last.get("NumRunning")
        done0 = self.probe_last.get("NumDone", 0.0)
        if JOBS[kind] and (running0 or 0) < 2:
            print(f"  WARNING: {tag}: NumRunning = {running0} when the window opens", flush=True)
        assert self.ioc.proc is not None
        ioc_pid = self.ioc.proc.pid
        workers = descendants(ioc_pid)
        client_pids = [c.proc.pid for c in readers + monitors]
        renice(workers, a.nice_workers)                   # diagnostics (default 0: nothing changes)
        renice(client_pids, a.nice_clients)
        if self.writer and self.probe:
            renice([self.writer.proc.pid, self.probe.proc.pid], a.nice_writer)
        mine = [self.writer.proc.pid, self.probe.proc.pid, os.getpid()] if self.writer and self.probe else []
        cpu0 = (proc_cpu([ioc_pid]), proc_cpu(workers), proc_cpu(client_pids), proc_cpu(mine), host_cpu())
        sched0 = thread_sched(ioc_pid)
        spy_proc = None
        spy_file = self.tmp / f"pyspy-{tag}.txt"
        if spy:
            spy_proc = subprocess.Popen(["py-spy", "record", "--nonblocking", "--threads", "-r", str(SPY_RATE),
                                         "-d", str(int(S)), "-f", "raw", "-o", str(spy_file), "-p", str(ioc_pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        process_group=0)
        t0, m0 = time.time(), time.monotonic()
        w = self.writer_block(max(5, int(S / a.put_period)), a.put_period)
        t1, m1 = time.time(), time.monotonic()
        cpu1 = (proc_cpu([ioc_pid]), proc_cpu(workers), proc_cpu(client_pids), proc_cpu(mine), host_cpu())
        sched1 = thread_sched(ioc_pid)
        rstats: List[Dict[str, Any]] = []
        for c in readers:
            c.send({"op": "stop"})
        for c in readers:
            rstats.append(c.recv(60))
        probe, mon_recs = self.collect(tag, monitors, round(w["values"][-1], 4), a.late)
        for c in readers + monitors:
            try:
                c.send({"op": "quit"})
            except HarnessError:
                pass
        if pgid is not None:
            time.sleep(0.3)
            self.procs.kill_group(pgid, signal.SIGKILL)
        spy_out: Dict[str, Any] = {}
        if spy_proc is not None:
            try:
                spy_proc.wait(S + 30)
            except subprocess.TimeoutExpired:
                self.procs.kill_group(spy_proc.pid, signal.SIGKILL)
                spy_proc.wait(5)
            spy_out = pyspy_summary(spy_file, S, SPY_RATE)
        res = analyse(self.status_names, kind, w, probe, mon_recs, rstats, t0, t1, running0 or 0.0, done0)
        res["setup_s"] = m0 - t_setup
        dt = m1 - m0
        threads: Dict[str, Tuple[float, float]] = {}
        for tid, (c1, q1) in sched1.items():
            c0, q0 = sched0.get(tid, (0.0, 0.0))
            name = self.thread_name.get(tid) or ("MainThread" if tid == ioc_pid else f"tid {tid}")
            threads[name] = ((c1 - c0) / dt, (q1 - q0) / dt)
        res["threads"] = threads
        res.update({"kind": kind, "round": rnd, "seconds": dt,
                    "cpu_ioc": (cpu1[0] - cpu0[0]) / dt, "cpu_workers": (cpu1[1] - cpu0[1]) / dt,
                    "cpu_clients": (cpu1[2] - cpu0[2]) / dt, "pyspy": spy_out, "pyspy_file": str(spy_file),
                    "cpu_host": (cpu1[4][0] - cpu0[4][0]) / dt, "cpu_steal": (cpu1[4][1] - cpu0[4][1]) / dt})
        res["cpu_other"] = res["cpu_host"] - sum((c1 - c0) / dt for c0, c1 in zip(cpu0[:4], cpu1[:4]))
        if JOBS[kind] and res["cpu_workers"] < 0.05 and not res["rows_done"]:
            res["stall"] = self.stall_dump(tag, [ioc_pid] + workers)
        print(f"  round {rnd + 1} {kind:8s} (set-up {res['setup_s']:.0f} s): {len(w['ack'])} puts, "
              f"ack p50 {ms(pct(w['ack'], 50))} "
              f"p99 {ms(pct(w['ack'], 99))} max {ms(max(w['ack']))} ms; settings monitor p99 "
              f"{ms(pct(res['set_delay'], 99))} ms; both slots busy {res['both_busy']:.0%}; "
              f"CPU ioc {res['cpu_ioc']:.0%} workers {res['cpu_workers']:.0%} clients {res['cpu_clients']:.0%}; "
              f"rows done {res['rows_done']:.0f}",
              flush=True)
        return res

    # -- run and report ---------------------------------------------------------------------
    def run(self) -> int:
        a = self.a
        t_start = time.monotonic()
        print(f"# Latency under load ({'quick' if a.quick else 'default'})", flush=True)
        print(machine_description(("caproto", "pyepics", "pvapy", "torch", "tomocorioc")), flush=True)
        print(f"{load_average()} at start; temp dir {self.tmp}", flush=True)
        print(f"phases {','.join(a.phases)} x {a.rounds} rounds x {a.phase_seconds:g} s; put every {a.put_period:g} s; "
              f"reader pause {a.read_pause:g} s; CenterSearchWidth {a.search_width:g}; --gpus {a.gpus}"
              + (f"; workers reniced to {a.nice_workers}" if a.nice_workers else "")
              + (f"; load clients reniced to {a.nice_clients}" if a.nice_clients else "")
              + (f"; writer and probe reniced to {a.nice_writer}" if a.nice_writer else ""), flush=True)
        self.results["load_start"] = os.getloadavg()
        self.results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        self.setup()
        windows = self.results["windows"]
        for rnd in range(a.rounds):
            order = list(a.phases)
            self.rng.shuffle(order)
            for kind in order:
                spy = a.py_spy and rnd == a.rounds - 1
                windows.append(self.window(kind, rnd, spy))
        self.pause_jobs()
        self.results["load_end"] = os.getloadavg()
        self.results["runtime_s"] = time.monotonic() - t_start
        log = self.ioc.log_tail(400000)
        self.results["log_errors"] = log_errors(log)
        self.results["log_tracebacks"] = tracebacks(log)
        report(self.a, self.results)
        return 0

    def close(self) -> None:
        for c in (self.writer, self.probe):
            if c is not None:
                try:
                    c.send({"op": "quit"})
                except HarnessError:
                    pass
        self.procs.stop_all()
        stop_process(self.repeater)
        if not (self.a.keep or self.keep_tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.a.state_dir is not None and self.ioc is not None:
                shutil.rmtree(self.ioc.state, ignore_errors=True)
        elif self.keep_tmp and not self.a.keep:
            print(f"kept {self.tmp} (a stall was recorded there)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_client"]:
        return client_main(argv[1], argv[2])
    if argv[:1] == ["--_monitor"]:
        return monitor_main(argv[1])
    if argv[:1] == ["--_reader"]:
        return reader_main(argv[1], float(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds x idle,loaded x 10 s (under 2 min)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 2)")
    ap.add_argument("--phase-seconds", type=float, help="length of each measured window (default 15, quick 10)")
    ap.add_argument("--phases", help=f"comma list from {','.join(PHASES)} (default all; quick idle,loaded)")
    ap.add_argument("--put-period", type=float, default=0.1, help="one settings put every S s (default 0.1)")
    ap.add_argument("--read-pause", type=float, default=0.1,
                    help="each reader sleeps this long between sweeps of the status PVs (default 0.1 s)")
    ap.add_argument("--settle", type=float, default=1.0, help="s between a phase's set-up and its window")
    ap.add_argument("--late", type=float, default=5.0,
                    help="after a window, wait up to this long for the last value at every monitor (default 5 s)")
    ap.add_argument("--search-width", type=float, default=10.0, help="CenterSearchWidth (default 10 px)")
    ap.add_argument("--width", type=int, default=128, help="simulated scan width (default 128 px)")
    ap.add_argument("--rows", type=int, default=4, help="simulated scan rows (default 4)")
    ap.add_argument("--nproj", type=int, default=181, help="simulated projections (default 181)")
    ap.add_argument("--base-files", type=int, default=6, help="scans simulated (hard-linked into each batch)")
    ap.add_argument("--gpus", default="0,1", help="serve --gpus (default 0,1: two slots, CPU here)")
    ap.add_argument("--py-spy", action="store_true",
                    help="sample the IOC with py-spy during the last round's windows")
    ap.add_argument("--ioc-nice", type=int, default=-5,
                    help="serve --nice (default -5, serve's default; 0: the IOC at the clients' priority)")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="diagnostic: put the IOC's state directory under this folder (e.g. /dev/shm) instead of "
                         "beside the data the workers write")
    ap.add_argument("--ioc-rt", type=int, default=1,
                    help="serve --rt-priority (default 1, serve's default; 0: no real-time threads)")
    ap.add_argument("--nice-workers", type=int, default=0,
                    help="diagnostic: renice the IOC's worker processes to this value before each window")
    ap.add_argument("--nice-clients", type=int, default=0,
                    help="diagnostic: renice the 8 load clients to this value (as if they ran on other hosts)")
    ap.add_argument("--nice-writer", type=int, default=0,
                    help="diagnostic: renice the writer and the probe to this value (the measuring clients "
                         "ahead of the load, as an operator's console on its own host would be)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="write every figure (and the raw samples) here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, records, py-spy output)")
    a = ap.parse_args(argv)
    if a.rounds is None:
        a.rounds = 2 if a.quick else 3
    if a.phase_seconds is None:
        a.phase_seconds = 10.0 if a.quick else 15.0
    a.phases = [x.strip() for x in (a.phases or ("idle,loaded" if a.quick else ",".join(PHASES))).split(",")
                if x.strip()]
    bad = [x for x in a.phases if x not in PHASES]
    if bad or not a.phases:
        ap.error(f"unknown phase(s) {bad}; choose from {PHASES}")
    if a.py_spy and shutil.which("py-spy") is None:
        ap.error("--py-spy: py-spy is not installed")

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
        if a.json is not None and bench.results.get("windows"):
            a.json.write_text(json.dumps(bench.results, indent=1, default=str))
            print(f"wrote {a.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
