"""A pyepics (libca) client that runs as another uid: ``python tests/_as_user.py UID PV [PV ...]``.

Started as root (this repository and the virtual environment may be readable by
root only), it loads libca, then drops to ``UID`` (``setresgid``/``setresuid``,
no supplementary groups) *before* it creates its CA context, so libca reports
that uid's user name to the IOC exactly as a process of that user would.  It
prints one JSON object: ``{"user": ..., "pvs": {name: {"connected", "read", "write"}}}``
and, with ``--put NAME=VALUE`` (repeat), the status of each put (pyepics' wait=True).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import pwd
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("uid", type=int)
    ap.add_argument("pvs", nargs="*")
    ap.add_argument("--put", action="append", default=[])
    args = ap.parse_args()
    import epics
    import epics.ca
    libca = epics.ca.find_libca()
    ctypes.CDLL(libca, mode=ctypes.RTLD_GLOBAL)   # mapped now: dlopen finds it loaded after the drop
    epics.ca.find_libca = lambda: libca            # its search stats files the new uid cannot reach
    user = pwd.getpwuid(args.uid).pw_name
    os.setgroups([])
    os.setresgid(args.uid, args.uid, args.uid)
    os.setresuid(args.uid, args.uid, args.uid)
    os.environ.update(USER=user, LOGNAME=user)
    epics.ca.initialize_libca()
    pvs = {name: epics.PV(name, auto_monitor=False) for name in args.pvs}
    deadline = time.monotonic() + 20
    for pv in pvs.values():
        pv.wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
    out = {"user": user, "uid": os.getuid(),
           "pvs": {n: {"connected": bool(pv.connected), "read": bool(pv.read_access), "write": bool(pv.write_access)}
                   for n, pv in pvs.items()},
           "puts": {}}
    for item in args.put:
        name, _, value = item.partition("=")
        pv = epics.PV(name, auto_monitor=False)
        pv.wait_for_connection(timeout=10)
        try:
            status = pv.put(value, wait=True, timeout=10)
        except Exception as exc:   # noqa: BLE001 - reported to the test as data
            status = f"{type(exc).__name__}: {exc}"
        out["puts"][name] = status
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)   # libca's exit handlers are not needed here


if __name__ == "__main__":
    sys.exit(main())
