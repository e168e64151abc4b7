"""Channel Access server (caproto) over the :class:`~.controller.Controller`.

Thin by design: every PV comes from :mod:`.pvdefs`; a put is validated and
applied by the controller in a single helper thread (so the event loop keeps
serving while SQLite writes), and a status task copies the controller's
snapshot into the PVs that changed.  Workarounds for caproto 1.3.0 live in
:class:`RobustContext` (see its docstring).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional

from caproto import AlarmSeverity, AlarmStatus, ChannelType, HostNameRequest
from caproto.asyncio.server import Context, VirtualCircuit
from caproto.server import PVGroup, SubGroup, pvproperty
from caproto.server.autosave import AutosaveHelper, RotatingFileManager, autosaved

from tomocorioc.ioc.controller import Controller, PutError, Watchdog
from tomocorioc.ioc.convert import one_line
from tomocorioc.ioc.pvdefs import LONG_STRING, ROW_SEVERITY, Kind, PVDef, Role, optional_number, pv_table

log = logging.getLogger(__name__)

STATUS_PERIOD = 0.5      # s between full status snapshots (elapsed times, trigger status)
CHANGE_POLL = 0.02       # s between looks at the queue's change counter
WATCHDOG_START = 4       # counts 4..0 once a second: Stopped 4-5 s after the last heartbeat


class RobustCircuit(VirtualCircuit):
    """caproto's asyncio circuit, disconnecting once.

    When many clients vanish together the disconnect runs from the command
    loop and from the subscription task itself; the stock code then awaited
    the cancellation of the very task it ran in ('await wasn't used with
    future').  The first caller takes the task; a task never awaits itself.

    With ``serve --acf-check-ip`` the client's host name, for access security,
    is its address, not the name it reports (EPICS' asCheckClientIP).
    """

    async def _process_command(self, command: Any) -> Any:
        if getattr(self.context, "host_by_address", False):
            self.client_hostname = self.circuit.address[0]
            if isinstance(command, HostNameRequest):
                return []
        return await super()._process_command(command)

    async def _on_disconnect(self) -> None:
        task, self._sub_task = self._sub_task, None
        await super(VirtualCircuit, self)._on_disconnect()   # the protocol-level clean-up
        self.client.close()
        if task is None:
            return
        if task is asyncio.current_task():
            task.cancel()
        else:
            await self.tasks.cancel(task)


class RobustContext(Context):
    """caproto's asyncio Context with three fixes measured on caproto 1.3.0.

    * Monitor fan-out iterated the live per-PV subscription deque while
      awaiting each send; a client disconnecting meanwhile removed entries and
      the loop died with 'deque mutated during iteration', silencing every
      monitor.  We iterate over a copy and skip subscriptions of closed circuits.
    * Accepted TCP sockets kept Nagle's algorithm: a put-callback response
      queued behind a monitor update waited for the client's delayed ACK
      (~40 ms).  TCP_NODELAY is set on every accepted socket.
    * Beacons follow EPICS_CAS_BEACON_ADDR_LIST (set by ``serve`` to the
      served interfaces), never the auto broadcast list.
    * A client that stops reading (stopped process, full socket) filled its
      circuit's update queue, and the fan-out then waited on that queue:
      every monitor of every client froze, for ever if the client died.  We
      drop that client's oldest queued update instead (caproto already
      prefers new news to old), so one bad client costs only itself.
    * Beacons go to EPICS_CAS_BEACON_PORT, which EPICS base defaults to
      EPICS_CA_REPEATER_PORT; caproto defaulted it to 5065 whatever the
      repeater port.  A beacon that cannot be sent (no repeater listening on
      a unicast address answers 'connection refused') is logged once per
      address as one line, not as a traceback every other beacon.
    """

    CircuitClass = RobustCircuit

    def __init__(self, pvdb: Dict[str, Any], interfaces: Optional[Any] = None) -> None:
        # caproto reads the beacon port from the environment when it opens its sockets
        repeater = os.environ.get("EPICS_CA_REPEATER_PORT")
        if repeater and "EPICS_CAS_BEACON_PORT" not in os.environ:
            os.environ["EPICS_CAS_BEACON_PORT"] = repeater
        super().__init__(pvdb, interfaces)

    async def broadcast_beacon_loop(self) -> None:
        import caproto as ca
        period, max_period = 0.02, float(self.environ["EPICS_CAS_BEACON_PERIOD"])   # CA spec: 20 ms, x2 back-off
        warned = set()
        while True:
            for address, (interface, sock) in self.beacon_socks.items():
                try:
                    await sock.send(self.broadcaster.send(ca.Beacon(13, self.port, self.beacon_count, interface)))
                except OSError as exc:   # CaprotoNetworkError is an OSError
                    # A UDP send learns of an earlier ICMP 'port unreachable' only now, and the next
                    # send succeeds again whether anyone listens or not: one line per address is all
                    # the log can honestly say.
                    (log.debug if address in warned else log.warning)(
                        "CA beacons to %s:%s not delivered (%s): is a caRepeater running?",
                        address[0], address[1], exc.__cause__ or exc)
                    warned.add(address)
            self.beacon_count += 1
            period = min(max_period, period * 2)
            await asyncio.sleep(period)

    async def _subscription_queue_send(self, sub_spec, sub, metadata, values, flags):
        circuit = sub.circuit
        if not getattr(circuit, "connected", True):
            return
        queue = getattr(circuit, "subscription_queue", None)
        if queue is not None and queue.full():
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
        await super()._subscription_queue_send(sub_spec, sub, metadata=metadata, values=values, flags=flags)

    async def _subscription_queue_iteration(self, sub_specs, metadata, values, flags, sub):
        if sub is None:
            for sub_spec in sub_specs:
                for each in list(self.subscriptions.get(sub_spec, ())):
                    circuit = getattr(each, "circuit", None)
                    if circuit is not None and not getattr(circuit, "connected", True):
                        continue
                    await self._subscription_queue_send(sub_spec, each, metadata=metadata, values=values,
                                                        flags=flags)
            return
        await super()._subscription_queue_iteration(sub_specs, metadata, values, flags, sub)

    async def server_accept_loop(self, sock):
        from caproto.asyncio.server import _TransportWrapper

        def _new_client(reader, writer):
            raw = writer.get_extra_info("socket")
            if raw is not None:
                try:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError as exc:  # not TCP (should not happen): keep serving
                    log.debug("TCP_NODELAY not set: %s", exc)
            transport = _TransportWrapper(reader, writer)
            self.server_tasks.create(self.tcp_handler(transport, transport.getpeername()))

        await asyncio.start_server(_new_client, sock=sock)


class _QuietRejections(logging.Filter):
    """caproto logs a traceback for every failed put; a rejected put is routine: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PutError):
            record.msg, record.args, record.exc_info, record.exc_text = f"put rejected: {exc}", (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_log_filter() -> None:
    """Attach the rejection filter to the root handlers (caproto logs from per-circuit loggers)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietRejections())


def _attr(name: str) -> str:
    return "pv_" + name.replace(":", "_")


def _prop(p: PVDef) -> pvproperty:
    """A caproto pvproperty for one PV definition (alarm group per PV)."""
    kw: Dict[str, Any] = dict(name=p.name, read_only=not p.kind.writable, doc=p.desc, alarm_group=p.name)
    k = p.kind
    if k.is_enum:
        kw.update(dtype=ChannelType.ENUM, enum_strings=list(p.enums), value=p.enums[int(p.default or 0)])
    elif k in (Kind.AI, Kind.AO):
        # No limits on the caproto side: it would reject an out-of-range put before
        # our putter could say why in Message (the template carries LOPR/HOPR/DRVL/DRVH).
        start = math.nan if optional_number(p.name) else float(p.default or 0.0)   # no COR until one is found
        kw.update(dtype=float, value=start, precision=p.prec, units=p.units)
    elif k in (Kind.LONGIN, Kind.LONGOUT):
        kw.update(dtype=int, value=int(p.default or 0))
    elif k in (Kind.STRINGIN, Kind.STRINGOUT):
        kw.update(dtype=ChannelType.STRING, value=str(p.default or ""))
    else:  # long strings: char arrays, read/written whole with caget -S / caput -S or PV.$
        kw.update(dtype=ChannelType.CHAR, max_length=LONG_STRING, report_as_string=False,
                  value=str(p.default or ""))
    return pvproperty(**kw)


class SettingsAutosave(AutosaveHelper):
    """caproto's autosave, restoring only the setting PVs.

    The stock helper writes every PV the file names; a hand-edited or old
    file naming a command (``Abort``) or a PV that no longer exists must not
    act at start-up: those entries are logged once and skipped.
    """

    _restored = False

    async def restore_from_file(self, filename: Any) -> None:
        """Restore once: ``serve`` restores before it starts dispatching, so caproto's start-up hook does not
        restore again over the command line's values."""
        if self._restored:
            return
        self._restored = True
        await super().restore_from_file(filename)

    async def restore_values(self, data: Dict[str, Any]) -> None:
        group = self.parent
        keep: Dict[str, Any] = {}
        for pvname, info in data.items():
            p = group.defs.get(pvname[len(group.prefix):]) if pvname.startswith(group.prefix) else None
            if p is None or not p.autosave:
                log.warning("autosave: %s is not a setting of this IOC; not restored", pvname)
                continue
            keep[pvname] = info
        await super().restore_values(keep)


class _Base(PVGroup):
    """Behaviour shared by the generated group (the PVs are added by :func:`build_group`)."""

    autosave_helper = SubGroup(SettingsAutosave)

    def __init__(self, *args: Any, controller: Controller, autosave_file: Optional[Path] = None,
                 **kwargs: Any) -> None:
        self.controller = controller
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-put")
        # Puts whose check takes seconds (a checkpoint loaded in a worker-side process) wait on their own
        # thread, so every other put is still answered at once.
        self.slow_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-slow-put")
        self._autosave_lock = threading.Lock()
        # Status snapshots and the PVA table rebuild run on their own thread: a put never waits behind them.
        self.status_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-status")
        self.defs = {p.name: p for p in pv_table()}
        self._props: Dict[str, Any] = {}
        self._last: Dict[str, Any] = {}
        self._autosave_error = ""
        self._watchdog = Watchdog(WATCHDOG_START)
        super().__init__(*args, **kwargs)
        for p in self.defs.values():
            self._props[p.name] = getattr(self, _attr(p.name))
            if p.kind.writable:
                self._guard_conversion(p, self._props[p.name])
        helper = self.autosave_helper
        if autosave_file is not None:
            autosave_file.parent.mkdir(parents=True, exist_ok=True)
            helper.file_manager = RotatingFileManager(str(autosave_file))
            helper.filename = str(autosave_file)
        helper.period = 3600.0  # we save on change and on exit; the periodic save is only a backstop

    # -- puts --------------------------------------------------------------------
    def _guard_conversion(self, p: PVDef, inst: Any) -> None:
        """Explain puts that caproto's type conversion refuses before any putter runs.

        caproto converts the wire value to the PV's type first; a long-string PV
        written as a plain string, or an empty long string (one NUL), failed
        there with a traceback in the log and nothing on ``Message``.  An empty
        long string now clears the PV through the validated path; any other
        conversion failure becomes a one-line PutError naming the PV.
        """
        original = inst.write_from_dbr

        async def write_from_dbr(data: Any, data_type: Any, metadata: Any, *, flags: int = 0) -> Any:
            if p.kind in (Kind.LSI, Kind.LSO) and data_type == ChannelType.CHAR and not any(data):
                return await inst.write("")   # caput -S PV "": one NUL byte means an empty string
            try:
                return await original(data, data_type, metadata, flags=flags)
            except PutError:
                raise
            except (ValueError, TypeError, OverflowError) as exc:
                if p.kind in (Kind.LSI, Kind.LSO):
                    why = "a long string PV: write it with caput -S (or PV.$)"
                else:
                    why = f"not a valid value for this {p.kind.value} record ({one_line(exc)})"
                msg = f"{p.name}: {why}"
                self.controller.message(msg)
                raise PutError(msg) from None
        inst.write_from_dbr = write_from_dbr

    async def handle_put(self, instance: Any, value: Any) -> Any:
        """The putter of every writable PV: validate + apply (and autosave) off the loop, or fail the put."""
        name = instance.pvname[len(self.prefix):]
        p = self.defs[name]
        loop = asyncio.get_running_loop()
        try:
            pool = self.slow_executor if name in self.controller.slow_puts else self.executor
            result = await loop.run_in_executor(pool, self._apply, name, value)
        except PutError as exc:
            self.controller.message(str(exc))
            await self._publish({"Message": self.controller.last_message})
            raise
        if p.kind.is_enum:
            result = p.enums[int(result)]
        # Selection and page changes alter many readbacks: publish at once, not at the next tick.
        loop.call_soon(lambda: asyncio.ensure_future(self.refresh()))
        return result

    def _apply(self, name: str, value: Any) -> Any:
        """Controller put, then (for a setting) the autosave file, before the put is acknowledged: a SIGKILL
        right after an acknowledged put still finds it at restart."""
        result = self.controller.put(name, value)
        if self.defs[name].role is Role.SETTING:
            self.write_autosave()
        return result

    def write_autosave(self) -> None:
        """Write every setting, as the controller holds it, to the autosave file (atomically: temp + rename)."""
        path = Path(self.autosave_helper.filename)
        data = {self.prefix + name: {"value": self.defs[name].enums[int(v)] if self.defs[name].kind.is_enum else v,
                                     "fields": {}}
                for name, v in self.controller.setting_values().items()}
        tmp = path.with_name(path.name + ".tmp")
        try:
            with self._autosave_lock:    # two put threads may save at once: one temp file at a time
                tmp.write_text(json.dumps(data))
                os.replace(tmp, path)
        except OSError as exc:   # a full or read-only disk: the settings are in the state store all the same
            text = f"autosave failed: {exc.strerror or exc} ({path.parent})"
            if text != self._autosave_error:
                self.controller.message(text)
                self._autosave_error = text
            return
        self._autosave_error = ""

    @property
    def pv_instances(self) -> Dict[str, Any]:
        """PV name (without prefix) -> its caproto instance (for the access checks)."""
        return dict(self._props)

    def publish_soon(self, values: Dict[str, Any]) -> None:
        """Publish ``values`` from the event loop without waiting (the audit's AuditLast)."""
        asyncio.ensure_future(self._publish(values))

    def close(self, wait: bool = False) -> None:
        """Stop the put and status threads (after the server stopped)."""
        self.executor.shutdown(wait=wait)
        self.slow_executor.shutdown(wait=wait)
        self.status_executor.shutdown(wait=wait)

    async def save_now(self) -> None:
        """Write the autosave file (on exit)."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self.write_autosave)

    # -- status ------------------------------------------------------------------
    async def _publish(self, values: Dict[str, Any]) -> None:
        for name, value in values.items():
            if self._last.get(name, object()) == value or (_isnan(value) and _isnan(self._last.get(name))):
                continue
            p = self.defs.get(name)
            if p is None:
                continue
            status, severity = AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM
            if value is None and optional_number(name):
                # No value (no COR yet): NaN with INVALID severity, which MEDM and Phoebus draw as undefined.
                out, status, severity = math.nan, AlarmStatus.UDF, AlarmSeverity.INVALID_ALARM
            else:
                out = p.enums[int(value)] if p.kind.is_enum else value
            if p.kind is Kind.MBBI and name.endswith("Status"):
                severity = AlarmSeverity(ROW_SEVERITY.get(p.enums[int(value)], 0))
                status = AlarmStatus.STATE if severity else AlarmStatus.NO_ALARM
            elif _isnan(out):   # no value (e.g. no tilt measured): a display must not show a made-up number
                status, severity = AlarmStatus.UDF, AlarmSeverity.INVALID_ALARM
            try:
                await self._props[name].write(out, verify_value=False, status=status, severity=severity)
            except (ValueError, TypeError) as exc:   # a bug in the snapshot: log, keep serving
                log.error("cannot publish %s=%r: %s", name, value, exc)
                continue
            self._last[name] = value

    async def refresh(self) -> None:
        """Copy the controller's snapshot into the PVs that changed."""
        loop = asyncio.get_running_loop()
        snap = await loop.run_in_executor(self.status_executor, self.controller.snapshot)
        await self._publish(snap)

    async def status_loop_with(self, pva: Optional[Any] = None) -> None:
        """Status every STATUS_PERIOD (and the PVA channels); the watchdog ticks once a second.

        The watchdog is published from the loop itself, never behind the
        snapshot: a dispatcher stuck holding the queue lock also blocks the
        snapshot, and ServerRunning must still fall to Stopped.
        """
        next_tick = next_full = time.monotonic()
        pending: Optional[asyncio.Future] = None
        seen = None
        last_error = ""
        while True:
            try:
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 1.0
                    value = self._watchdog.tick(self.controller.service.dispatcher.heartbeat)
                    await self._publish({"Watchdog": value, "ServerRunning": int(value > 0)})
                svc = self.controller.service
                # Any queue change is published within CHANGE_POLL; elapsed times and the rest every STATUS_PERIOD.
                mark = (svc.queue.uid, id(svc.last_started), len(svc.messages), svc.messages[-1:] and svc.messages[-1],
                        svc.store_problem)
                if (mark != seen or now >= next_full) and (pending is None or pending.done()):
                    if pending is not None and pending.exception() is not None:
                        raise pending.exception()
                    seen, next_full = mark, now + STATUS_PERIOD
                    pending = asyncio.ensure_future(self._update(pva))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the status loop must outlive any one bad update
                text = f"status update failed: {type(exc).__name__}: {exc}"
                if text != last_error:   # once per distinct error, with its traceback; then one line on Message
                    log.error("%s", text, exc_info=exc)
                    self.controller.message(text)
                    last_error = text
                pending = None
            await asyncio.sleep(CHANGE_POLL)

    async def _update(self, pva: Optional[Any]) -> None:
        await self.refresh()
        if pva is not None:
            await asyncio.get_running_loop().run_in_executor(self.status_executor, pva.poll, self.controller.service)

    async def publish_settings(self) -> None:
        """Make the setting PVs show the service's settings (before autosave restores over them)."""
        await self._publish(self.controller.setting_values())


def build_group(prefix: str, controller: Controller, autosave_file: Optional[Path]) -> _Base:
    """The IOC's PVGroup instance: one pvproperty per PV definition, puts wired to the controller."""
    attrs: Dict[str, Any] = {}
    for p in pv_table():
        prop = _prop(p)
        if p.kind.writable:
            prop = prop.putter(_putter)
        if p.autosave:
            prop = autosaved(prop)
        attrs[_attr(p.name)] = prop
    cls = type("TomoCorGroup", (_Base,), attrs)
    return cls(prefix=prefix, controller=controller, autosave_file=autosave_file)


async def _putter(group: _Base, instance: Any, value: Any) -> Any:
    return await group.handle_put(instance, value)


def _isnan(value: Any) -> bool:
    """A float NaN (a status value that does not exist)."""
    return isinstance(value, float) and math.isnan(value)


__all__ = ["RobustContext", "build_group", "STATUS_PERIOD"]
