"""``tomocorioc serve``: the IOC process (CA via caproto, PVA via pvapy, work in the dispatcher's workers).

Start-up order: network environment (interfaces, beacons) -> durable service
state -> PVs showing the stored settings -> autosave restore (through the same
validated put path) -> serve.  SIGTERM/SIGINT: autosave written, workers
stopped, servers closed, exit 0.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import List

from tomocorioc.core.pathmap import check_cluster_options
from tomocorioc.core.result import WORKER_NICE_ENV
from tomocorioc.ioc.priority import Priority
from tomocorioc.ioc.pvdefs import DEFAULT_PREFIX

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL = 0.0005   # s (CPython default 0.005): see run_serve
GC_THRESHOLDS = (2000, 10, 100)  # CPython default (700, 10, 10): see _serve


def add_serve_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``tomocorioc serve``."""
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"PV prefix (default {DEFAULT_PREFIX})")
    ap.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                    help="directory whose files may be queued (repeat for several); Enqueue outside is refused")
    ap.add_argument("--state", type=Path, required=True,
                    help="state directory: queue database and autosave files")
    ap.add_argument("--model-root", action="append", type=Path, default=[], metavar="DIR",
                    help="folder a ModelPath checkpoint may come from (repeat; default: the data roots)")
    ap.add_argument("--autosave-dir", type=Path,
                    help="where the settings autosave file goes (default STATE/autosave)")
    ap.add_argument("--gpus", help="GPU slots, e.g. 0,1 (default: the autosaved Gpus, else all visible GPUs, "
                    "else one CPU slot)")
    ap.add_argument("--interface", action="append", default=[], metavar="ADDR",
                    help="serve CA/PVA on this address only (repeat; default EPICS_CAS_INTF_ADDR_LIST or all)")
    ap.add_argument("--backend", choices=("torch", "tomocupy"), default="torch", help="reconstruction backend")
    ap.add_argument("--tomocupy", default="tomocupy", help="tomocupy program (with --backend tomocupy)")
    ap.add_argument("--device", help="torch device for the workers (default: the slot's GPU, else cpu)")
    ap.add_argument("--cluster", metavar="ADDR",
                    help="run jobs on the GPU workers of this Dask scheduler (tcp://host:8786) instead of local slots")
    ap.add_argument("--path-map", action="append", default=[], metavar="IOC=WORKER",
                    help="a data prefix on this host and where the workers mount it, e.g. /data=/mnt/data (repeat)")
    ap.add_argument("--no-pva", action="store_true", help="serve Channel Access only")
    ap.add_argument("--worker-nice", type=int, default=10, choices=range(0, 20), metavar="0..19",
                    help="CPU niceness of the local worker processes, so the IOC answers promptly while they "
                         "work (default %(default)s; 0: same priority as the IOC)")
    ap.add_argument("--nice", type=int, default=Priority.nice, choices=range(-20, 1), metavar="-20..0",
                    help="CPU niceness the IOC's threads ask for where the host allows it (root or CAP_SYS_NICE); "
                         "elsewhere it runs as started (default %(default)s; 0: do not ask)")
    ap.add_argument("--rt-priority", type=int, default=Priority.realtime, choices=range(0, 100), metavar="0..99",
                    help="SCHED_RR priority of the IOC's Python threads (event loop, puts, status, dispatcher) "
                         "where the host allows it, as EPICS base takes real-time priorities on Linux; what they "
                         "start (workers, caRepeater) runs as an ordinary task (default %(default)s; 0: none)")
    ap.add_argument("--watch", action="append", type=Path, default=[], metavar="DIR",
                    help="queue new scan files appearing in DIR (repeat; must be under a data root)")
    ap.add_argument("--watch-poll", action="store_true",
                    help="poll the --watch folders (for network file systems where file events do not arrive)")
    ap.add_argument("--acf", type=Path, metavar="FILE",
                    help="EPICS access-security file (UAG/HAG/ASG rules) enforced per PV; ReloadAcf re-reads it "
                    "(default: access security off)")
    ap.add_argument("--acf-check-ip", action="store_true",
                    help="match HAG hosts by the client's address (HAG names resolved at load), not the name the "
                    "client reports")
    ap.add_argument("--read-only", action="store_true",
                    help="every PV read-only to every client (a mirror IOC for a control-room display)")
    ap.add_argument("--tomolog-allow", action="append", default=[], metavar="PREFIX",
                    help="TomoLogUrl must start with this prefix (repeat; default: any Google Slides URL)")


def configure_network(interfaces: List[str]) -> List[str]:
    """Bind CA (and PVA) to ``interfaces`` and send beacons there only; returns the interfaces."""
    if not interfaces:
        env = os.environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split()
        interfaces = env or ["0.0.0.0"]
    if interfaces == ["0.0.0.0"] and not any(not a.startswith("127.") for a in ipv4_addresses()):
        # pvAccess refuses "all interfaces" on a host that has only loopback: serve there, and say so.
        log.warning("this host has only the loopback interface: serving on 127.0.0.1 (pass --interface ADDR)")
        interfaces = ["127.0.0.1"]
    if interfaces != ["0.0.0.0"]:
        os.environ["EPICS_CAS_INTF_ADDR_LIST"] = " ".join(interfaces)
        os.environ.setdefault("EPICS_CAS_BEACON_ADDR_LIST", " ".join(interfaces))
        os.environ.setdefault("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
        os.environ.setdefault("EPICS_PVAS_INTF_ADDR_LIST", interfaces[0])
        os.environ.setdefault("EPICS_PVAS_BEACON_ADDR_LIST", " ".join(interfaces))
        os.environ.setdefault("EPICS_PVAS_AUTO_BEACON_ADDR_LIST", "NO")
    # caproto batches monitor updates for 10 ms before sending the first one; an
    # operator's put-and-watch round trip should not pay that (read at import).
    os.environ.setdefault("CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC", "0.001")
    return interfaces


def ipv4_addresses() -> List[str]:
    """The IPv4 addresses of this host's interfaces that are up (Linux; empty when they cannot be read)."""
    import fcntl
    import struct
    out = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))   # SIOCGIFADDR
            except OSError:
                continue   # no IPv4 address, or down
            out.append(socket.inet_ntoa(raw[20:24]))
    return out


async def _serve(args: argparse.Namespace, interfaces: List[str]) -> int:
    from tomocorioc.ioc.access import AccessControl
    from tomocorioc.ioc.audit import AUDIT_FILE, AuditLog, summary
    from tomocorioc.ioc.ca_server import RobustContext, build_group, install_log_filter
    from tomocorioc.ioc.controller import Controller
    from tomocorioc.service.local import slots_for
    from tomocorioc.service.service import Service

    install_log_filter()

    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.environ[WORKER_NICE_ENV] = str(args.worker_nice)    # the workers' spawn inherits it
    runner = {"backend": args.backend, "tomocupy": args.tomocupy, "device": args.device}
    # Start-up order: the stored state, then autosave (through the validated put path), then the
    # command line on top (it wins: --gpus over an autosaved Gpus), and only then dispatch.
    service = Service(state, None, runner, cluster=args.cluster, path_map=args.path_map)
    from tomocorioc.service.trigger.manager import TriggerManager
    controller = Controller(service, args.data_root, slot_factory=None if args.cluster else slots_for,
                            model_roots=args.model_root)
    controller.tomolog_allow = tuple(args.tomolog_allow)
    access = AccessControl(args.acf, args.read_only, args.acf_check_ip, AuditLog(state / AUDIT_FILE))
    if args.acf is not None:
        controller.reload_acf = access.reload

    def accept(path: str) -> str:
        return str(controller.under_roots(Path(path)))   # PutError is a ValueError: reported by the trigger
    trigger = TriggerManager(service, lambda: service.settings.trigger_phase_map(), accept,
                             complete_timeout=service.settings.trigger_timeout)
    controller.trigger = trigger
    autosave_dir = (args.autosave_dir or state / "autosave").resolve()
    autosave_file = autosave_dir / "tomoCor_settings.json"
    priority = Priority(args.nice, args.rt_priority)
    group = build_group(args.prefix, controller, autosave_file, thread_init=priority.apply_to_thread)
    access.install(group.defs, group.pv_instances)
    await group.publish_settings()
    gpus_given = args.gpus is not None and not args.cluster
    await group.autosave_helper.restore_from_file(autosave_file, command_line={"Gpus"} if gpus_given else ())
    if gpus_given:
        try:
            controller.set_gpus(controller.defs["Gpus"].conv.to_setting(controller.defs["Gpus"], args.gpus),
                                command_line=True)
        except ValueError as exc:   # PutError, QueueError, SettingError: one line, as any bad option
            log.error("--gpus %s: %s", args.gpus, exc)
            return 2
    await group.publish_settings()
    group.autosave_soon()   # the file catches up with the store (the command line's values, the start-up write)
    trigger.start()
    for folder in args.watch:
        trigger.watch_folder(folder, poll=args.watch_poll)
    controller.relink()
    pva_pub = None
    if not args.no_pva:
        from tomocorioc.ioc.pva_server import PvaPublisher
        try:
            pva_pub = PvaPublisher(args.prefix)
        except RuntimeError as exc:   # pvapy: no usable network interface
            trigger.stop()
            service.stop()
            raise UsageError(f"PVAccess cannot start: {str(exc).splitlines()[0]}; "
                             "pass --interface ADDR (or --no-pva)") from None
    service.start()
    ctx = RobustContext(group.pvdb, interfaces)
    ctx.host_by_address = args.acf_check_ip
    # What exists now (PV database, caproto, pvapy, the service, imported modules) lives as long as the
    # IOC: keep it out of the cyclic collector's full passes, which scanned all of it with the event loop
    # stopped (75-130 ms under load, the worst put acks).
    gc.collect()
    gc.freeze()
    # The full passes that remain scan what connected clients hold (tens of thousands of objects, 10-35 ms
    # with the loop stopped) to find next to no garbage: cycles are left when a client disconnects, not
    # while it reads.  Fewer full passes (at most one per ~2 million net allocations).
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    access.attach(ctx, loop)
    access.on_entry = lambda entry: loop.call_soon(group.publish_soon, {"AuditLast": summary(entry)})
    log.warning("%s", access.describe())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def status() -> None:
        await group.status_loop_with(pva_pub)

    priority.apply_to_threads(t.native_id for t in threading.enumerate())
    server = asyncio.ensure_future(ctx.run(log_pv_names=False))
    status_task = asyncio.ensure_future(status())
    log.warning("tomocorioc IOC %s serving on %s (state %s)", args.prefix, ", ".join(interfaces), state)
    done, _ = await asyncio.wait({asyncio.ensure_future(stop.wait()), server}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if server in done and server.exception() is not None:
        log.error("CA server failed: %s", server.exception())
        code = 1
    log.warning("shutting down: saving settings, stopping workers")
    try:
        await group.save_now()
    except OSError as exc:
        log.error("autosave on exit failed: %s", exc)
    status_task.cancel()
    server.cancel()
    await asyncio.gather(status_task, server, return_exceptions=True)
    trigger.stop()
    if pva_pub is not None:
        pva_pub.stop()
    await loop.run_in_executor(None, service.stop)
    controller.camrot.close()   # a CamRot measurement still running is not left behind
    group.close()
    if access.audit is not None:
        access.audit.close()
    return code


# EPICS record-name characters (a "." would start a field name); at least one
_PV_PREFIX = re.compile(r"[A-Za-z0-9_\-+:\[\]<>;]+")


class UsageError(ValueError):
    """A bad ``serve`` option (the command exits 2 with this one line)."""


def check_arguments(args: argparse.Namespace) -> None:
    """Validate the options before anything starts; UsageError with a one-line reason."""
    if not _PV_PREFIX.fullmatch(args.prefix):
        raise UsageError(f"--prefix {args.prefix!r}: a PV prefix is letters, digits and _-+:[]<>; (e.g. 2bma:TomoCor:)")
    try:
        args.state.mkdir(parents=True, exist_ok=True)
        if not os.access(args.state, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise UsageError(f"--state {args.state}: cannot use it as the state directory ({exc.strerror or exc})") \
            from None
    for addr in args.interface:
        check_interface(addr)
    missing = [str(r) for r in list(args.data_root) + list(args.watch) if not r.is_dir()]
    if missing:
        raise UsageError(f"data root is not a directory: {missing[0]}")
    try:
        check_cluster_options(args.cluster, args.path_map)
        if args.gpus is not None:
            from tomocorioc.service.local import slots_for
            slots_for(args.gpus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.acf is not None:
        from tomocorioc.core.acf import AcfError
        from tomocorioc.ioc.access import load_acf
        try:
            load_acf(args.acf)
        except AcfError as exc:
            raise UsageError(str(exc)) from None
    for prefix in args.tomolog_allow:
        if not prefix.startswith("https://"):
            raise UsageError(f"--tomolog-allow: not an https:// URL prefix: {prefix!r}")


def check_interface(addr: str) -> None:
    """UsageError unless ``addr`` is an IPv4 address CA and PVA can bind here (all, loopback or this host's)."""
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        raise UsageError(f"--interface {addr!r}: not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)") from None
    if ip.is_unspecified or ip.is_loopback:
        return
    here = ipv4_addresses()
    if here and addr not in here:
        raise UsageError(f"--interface {addr}: not an address of this host (it has {', '.join(here)})")


def run_serve(args: argparse.Namespace) -> int:
    """Run the IOC until SIGTERM/SIGINT (UsageError for bad options, OSError when it cannot serve)."""
    check_arguments(args)
    from tomocorioc.service.preflight import preflight
    reason = None if args.cluster else preflight(args.backend, args.tomocupy)
    if reason:   # the workers would fail to start on every slot: say so now, in one line
        raise UsageError(f"--backend {args.backend}: {reason}")
    if not args.data_root:
        log.warning("no --data-root: every Enqueue will be refused")
    interfaces = configure_network(list(args.interface))
    log.warning("%s", Priority(args.nice, args.rt_priority).apply_to_process())
    # A put's executor thread hands the GIL back and forth (validation, SQLite commit); with the event
    # loop busy serving reads it waited up to the 5 ms default for each hand-back.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    return asyncio.run(_serve(args, interfaces))


__all__ = ["add_serve_arguments", "run_serve", "check_arguments", "configure_network", "UsageError"]
