"""serve's CPU priority (tomocorioc.ioc.priority): taken where allowed, never inherited, harmless where refused.

Each case runs in a child process (a real-time priority must not leak into the test run)."""
import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import json, os, subprocess, sys, threading
from tomocorioc.ioc.priority import Priority
def now():
    return [os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.getpriority(os.PRIO_PROCESS, 0)]
if len(sys.argv) > 1:                       # drop to this uid first, as a user account would run serve
    uid = int(sys.argv[1]); os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
line = Priority(-5, 1).apply_to_process()
seen = {"line": line, "main": now()}
def probe():
    seen["thread"] = now()
    Priority(-5, 1).apply_to_thread()     # what the put and status executors run first
    seen["initialised"] = now()
t = threading.Thread(target=probe); t.start(); t.join()
if len(sys.argv) == 1:   # (another uid may not run this interpreter)
    code = "import os; print(os.sched_getscheduler(0), os.getpriority(0, 0))"
    seen["child"] = [int(x) for x in subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                    text=True).stdout.split()]
print(json.dumps(seen))
"""


def run(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_granted_the_answering_threads_are_real_time_and_nothing_they_start_is():
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the granted case must be tested there")
        pytest.skip("needs root (CAP_SYS_NICE)")
    out = run()
    assert out["line"] == "IOC runs at SCHED_RR 1 for its Python threads, niceness -5"
    assert out["main"] == [os.SCHED_RR, -5]
    assert out["thread"] == [os.SCHED_OTHER, 0]          # SCHED_RESET_ON_FORK: a new thread starts ordinary
    assert out["initialised"] == [os.SCHED_RR, 0]        # until the executor's initializer asks
    assert out["child"] == [os.SCHED_OTHER, 0]           # and no process the IOC starts inherits it


def test_refused_one_line_and_the_ioc_runs_as_started():
    if os.geteuid() != 0:
        out = run()
    else:
        import pwd
        out = run(str(pwd.getpwnam("nobody").pw_uid))
    if out["main"][0] == os.SCHED_RR:
        pytest.skip("this account may take real-time priority (RLIMIT_RTPRIO)")
    assert out["line"] == "IOC CPU priority unchanged (needs root or CAP_SYS_NICE)"
    assert out["main"] == [os.SCHED_OTHER, 0] and out["initialised"] == [os.SCHED_OTHER, 0]
