"""Clients for ``bench_ioc_latency.py``: the pyepics child, camonitor/caput helpers, the TCP send queue.

The entry script re-runs itself as ``--_client PV MODE`` for each pyepics client, which lands in
``client_main`` here (pyepics is imported only there, in the child).
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _ioclat_servers import HarnessError, Procs, Server

REPLY = "@@"


# ======================================================================================
# child: pyepics client
# ======================================================================================
def client_main(pvname: str, mode: str) -> int:
    """One libca client; commands (JSON lines) on stdin, replies '@@{json}' on stdout."""
    import epics

    seen: Dict[float, float] = {}

    def on_value(value=None, **_kw: Any) -> None:
        if value is not None:
            seen.setdefault(round(float(value), 4), time.perf_counter())

    if mode == "mon":
        pv = epics.PV(pvname, auto_monitor=True, callback=on_value)
    else:
        pv = epics.PV(pvname, auto_monitor=False)
    ok = pv.wait_for_connection(15.0)

    def reply(obj: Dict[str, Any]) -> None:
        sys.stdout.write(REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": bool(ok)})
    if not ok:
        return 1
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "puts":                      # timed round trips, one new value per put
            values = cmd["values"]
            seen.clear()
            dts, t0s, fails = [], [], 0
            for v in values:
                t0 = time.perf_counter()
                r = pv.put(v, wait=True, timeout=cmd.get("timeout", 5.0))
                t1 = time.perf_counter()
                if r != 1:
                    fails += 1
                dts.append(t1 - t0)
                t0s.append((t0, t1))
            mon_lat, before_ack = [], 0
            if mode == "mon":
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and round(values[-1], 4) not in seen:
                    time.sleep(0.002)
                for v, (t0, t1) in zip(values, t0s):
                    t = seen.get(round(v, 4))
                    if t is not None:
                        mon_lat.append(t - t0)
                        before_ack += t <= t1
            reply({"dt": dts, "fails": fails, "mon": mon_lat, "mon_before_ack": before_ack})
        elif op == "paced":                   # fan-out writer: wall time of each put start
            values, period = cmd["values"], float(cmd["period"])
            walls, acks, fails = [], [], 0
            nxt = time.perf_counter()
            for v in values:
                now = time.perf_counter()
                if period > 0 and now < nxt:
                    time.sleep(nxt - now)
                nxt = max(nxt + period, time.perf_counter()) if period > 0 else nxt
                w = time.time()
                t0 = time.perf_counter()
                r = pv.put(v, wait=True, timeout=cmd.get("timeout", 5.0))
                acks.append(time.perf_counter() - t0)
                walls.append(w)
                fails += r != 1
            reply({"wall": walls, "ack": acks, "fails": fails})
        elif op == "burst":                   # back-to-back puts for a while (kill test)
            stop = time.monotonic() + float(cmd["seconds"])
            lo, hi = cmd["range"]
            n, fails, v = 0, 0, lo
            while time.monotonic() < stop:
                r = pv.put(v, wait=True, timeout=2.0)
                fails += r != 1
                n += 1
                v = lo if v >= hi else v + 0.25
            reply({"n": n, "fails": fails})
        elif op == "set":
            r = pv.put(cmd["value"], wait=True, timeout=5.0)
            reply({"ok": r == 1})
        else:
            reply({"error": f"unknown op {op}"})
    pv.disconnect()
    return 0


# ======================================================================================
# parent: driving the clients
# ======================================================================================
class Child:
    """A pyepics client child: JSON commands in, '@@{json}' replies out, every read bounded."""

    def __init__(self, proc: subprocess.Popen, label: str) -> None:
        self.proc, self.label = proc, label
        self.buf = b""

    def send(self, obj: Dict[str, Any]) -> None:
        """Write one command line to the child."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise HarnessError(f"client {self.label} is gone") from exc

    def recv(self, timeout: float) -> Dict[str, Any]:
        """The next reply, skipping lines that are not replies; HarnessError after ``timeout`` s."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(REPLY):
                    return json.loads(text[len(REPLY):])
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError(f"client {self.label}: no reply in {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise HarnessError(f"client {self.label} exited (rc {self.proc.poll()})")
                self.buf += chunk

    def call(self, obj: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(obj)
        return self.recv(timeout)


CAMON_RE = re.compile(r"^(\S+)\s+\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)?\)\s+(\S+)")


def parse_camonitor(path: Path) -> List[Tuple[float, float]]:
    """(value, receive wall time) of every update line of a ``camonitor -tc`` output file."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = CAMON_RE.match(line)
        if not m:
            continue
        frac = (m.group(3) or ".0")[1:7].ljust(6, "0")
        try:
            t = datetime.strptime(f"{m.group(2)}.{frac}", "%Y-%m-%d %H:%M:%S.%f").timestamp()
            out.append((float(m.group(4)), t))
        except ValueError:
            continue
    return out


def client_port(pid: int, server_port: int) -> Optional[int]:
    """Local port of process ``pid``'s TCP connection to ``server_port`` on loopback."""
    import psutil
    try:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == server_port:
                return c.laddr.port
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def tcp_send_queue(server_port: int, peer_port: int) -> Optional[int]:
    """Bytes queued (unsent + unacknowledged) on the server's socket to ``peer_port`` (/proc/net/tcp)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) < 5:
            continue
        try:
            lport, rport = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
            if lport == server_port and rport == peer_port:
                return int(f[4].split(":")[0], 16)
        except (IndexError, ValueError):
            continue
    return None


class CaClients:
    """Starts the clients of the servers under test: pyepics children, camonitor, caput."""

    def __init__(self, procs: Procs, apprun: str, script: str) -> None:
        self.procs = procs
        self.apprun = apprun
        self.script = script          # the entry script, re-run as ``--_client PV MODE``

    def pyepics(self, s: Server, pv: str, mode: str, log_name: str, label: str) -> Child:
        """Start a pyepics child on ``pv``; does not wait for it (several can connect at once)."""
        with open(s.dir / log_name, "wb") as err:
            p = self.procs.start([sys.executable, self.script, "--_client", pv, mode], s.env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        return Child(p, label)

    def new_writer(self, s: Server, label: str) -> Child:
        """A connected pyepics writer (no monitor) on PV A of ``s``."""
        c = self.pyepics(s, s.pv_a, "nomon", f"client-{label}.log", f"{s.kind}/{label}")
        if not c.recv(40.0).get("ready"):
            raise HarnessError(f"client {c.label} did not connect")
        return c

    def camon(self, s: Server, pvs: Sequence[str], name: str, group: Optional[int] = None
              ) -> Tuple[subprocess.Popen, Path]:
        """``camonitor -tc`` on ``pvs`` writing to ``s.dir / name``, in a new process group or ``group``."""
        f = s.dir / name
        with open(f, "wb") as fh:
            p = self.procs.start([self.apprun, "camonitor", "-tc", "-g", "12", *pvs], s.env, group=group,
                                 stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return p, f

    def start_monitors(self, s: Server, tag: str, count: int) -> Tuple[int, List[Path]]:
        """``count`` camonitor -tc on PV A in one new process group; returns (pgid, output files) once all
        print."""
        files: List[Path] = []
        pgid: Optional[int] = None
        for i in range(count):
            p, f = self.camon(s, [s.pv_a], f"camon-{tag}-{i:02d}.out", group=pgid)
            if pgid is None:
                pgid = p.pid
            files.append(f)
        assert pgid is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(f.stat().st_size > 0 for f in files):
                return pgid, files
            time.sleep(0.1)
        raise HarnessError(f"{s.kind}: camonitors did not connect:\n" +
                           "\n".join(f.read_text(errors='replace')[:200] for f in files[:3]))

    def caput_all(self, servers: Dict[str, Server], kinds: Sequence[str], value: float) -> Dict[str, float]:
        """``caput -c`` of ``value`` to PV B of every server at once; returns each put's start (wall clock)."""
        started: Dict[str, Tuple[subprocess.Popen, float]] = {}
        for kind in kinds:
            s = servers[kind]
            t = time.time()
            p = self.procs.start([self.apprun, "caput", "-c", "-w", "3", s.pv_b, str(value)], s.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            started[kind] = (p, t)
        for p, _ in started.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                self.procs.kill_group(p.pid, signal.SIGKILL)
                p.wait(5)
        return {kind: t for kind, (_, t) in started.items()}

    def stall_clients(self, servers: Dict[str, Server], label: str, channels: int) -> Dict[str, Dict[str, Any]]:
        """Per server, for the stalled-client test: a writer on PV A, a monitor of PV B ("hf"), the monitor
        that will be stopped ("stalled": ``channels`` channels on PV A) and 10 other monitors of A (one
        process group, "others"); returns once every monitor has printed."""
        kit: Dict[str, Dict[str, Any]] = {}
        for kind, s in servers.items():
            writer = self.new_writer(s, label)
            _healthy, hf = self.camon(s, [s.pv_b], "stall-healthy.out")
            stalled, sf = self.camon(s, [s.pv_a] * channels, "stall-stalled.out")
            first, _ = self.camon(s, [s.pv_a], "stall-other-00.out")
            for i in range(1, 10):
                self.camon(s, [s.pv_a], f"stall-other-{i:02d}.out", group=first.pid)
            kit[kind] = {"writer": writer, "hf": hf, "stalled": stalled, "sf": sf, "others": first.pid}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(k["hf"].stat().st_size > 0 and len(parse_camonitor(k["sf"])) >= channels
                   for k in kit.values()):
                return kit
            time.sleep(0.1)
        raise HarnessError("stalled-client test: monitors did not connect")


def fill_send_queues(kit: Dict[str, Dict[str, Any]], servers: Dict[str, Server], out: Dict[str, Dict[str, Any]],
                     stall_max: float) -> float:
    """Back-to-back puts (1 s bursts, all servers at once) until the server's TCP send queue to each stopped
    client ("peer" in ``kit``) stops growing for 2 bursts, or ``stall_max`` s; counts go into ``out``.

    Returns when the puts started (``time.monotonic``)."""
    t0 = time.monotonic()
    active = list(kit)
    while active and time.monotonic() - t0 < stall_max:
        for kind in active:
            kit[kind]["writer"].send({"op": "burst", "seconds": 1.0, "range": [1.0, 900.0]})
        for kind in list(active):
            k, o = kit[kind], out[kind]
            r = k["writer"].recv(60)
            o["burst_puts"] += r["n"]
            o["burst_fails"] += r["fails"]
            q = tcp_send_queue(servers[kind].ca_port, k["peer"]) if k["peer"] else None
            if q is None:
                active.remove(kind)
                continue
            if q > o["send_queue_bytes"] * 1.01:
                k["flat"] = 0
            elif q > 0 and r["n"] >= 50:             # puts went on (>= 2500 updates) and it did not grow
                k["flat"] += 1
            o["send_queue_bytes"] = max(o["send_queue_bytes"], q)
            if k["flat"] >= 2:
                o["socket_full"], o["socket_full_after_s"] = True, time.monotonic() - t0
                active.remove(kind)
    return t0


def wait_values(files: Dict[str, Path], value: float, timeout: float,
                t0: Dict[str, float]) -> Dict[str, Optional[float]]:
    """Delay from ``t0[kind]`` (wall clock) to the arrival of ``value`` in each camonitor file, as
    camonitor stamped it; None when it has not arrived ``timeout`` s after this call."""
    start = time.monotonic()
    got: Dict[str, Optional[float]] = {k: None for k in files}
    while True:
        for k, f in files.items():
            if got[k] is None:
                hits = [t for v, t in parse_camonitor(f) if abs(v - value) < 1e-6]
                if hits:
                    got[k] = max(0.0, hits[0] - t0[k])
        if all(v is not None for v in got.values()) or time.monotonic() - start >= timeout:
            return got
        time.sleep(0.05)
