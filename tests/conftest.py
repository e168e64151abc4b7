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

import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

# libca spawns a caRepeater when none is bound to the repeater port, and that
# detached process inherits the spawning client's stdout/stderr: a `caget` run
# with captured output then waits for EOF on a pipe the repeater holds for
# ever (the first CA client on a fresh machine hung: seen on CI).  So the
# session gets its own repeater port and starts the repeater itself, detached
# from every pipe, and stops it at the end.
from tomocorioc.ioc.net import free_port, start_ca_repeater, stop_process  # noqa: E402

os.environ["EPICS_CA_REPEATER_PORT"] = str(free_port())
_REPEATER = []


def pytest_sessionstart(session):
    _REPEATER.append(start_ca_repeater(dict(os.environ)))


def pytest_sessionfinish(session, exitstatus):
    for proc in _REPEATER:
        stop_process(proc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report lists the EPICS client calls that failed while it ran (tests/_ioc.py)."""
    outcome = yield
    rep = outcome.get_result()
    ioc = sys.modules.get("_ioc")
    if ioc is None or not rep.failed:
        return
    since = time.time() - call.duration - 1.0
    misses = [f"{time.strftime('%H:%M:%S', time.localtime(t))} {text}" for t, text in ioc.CLIENT_MISSES if t >= since]
    if misses:
        rep.sections.append(("EPICS client calls that failed", "\n".join(misses[-40:])))
