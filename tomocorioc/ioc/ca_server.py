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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Set

from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty
from caproto.server.autosave import AutosaveHelper, RotatingFileManager, autosaved

from tomocorioc.ioc.ca_robust import RobustContext
from tomocorioc.ioc.controller import Controller, PutError, Watchdog
from tomocorioc.ioc.convert import one_line
from tomocorioc.ioc.pvdefs import (
    LONG_STRING,
    ROW_SEVERITY,
    Kind,
    PVDef,
    Role,
    fit_long,
    optional_number,
    pv_table,
    short,
)

log = logging.getLogger(__name__)

STATUS_PERIOD = 0.5      # s between full status snapshots (elapsed times, trigger status)
CHANGE_POLL = 0.02       # s between looks at the queue's change counter
WATCHDOG_START = 4       # counts 4..0 once a second: Stopped 4-5 s after the last heartbeat
GENERATION_KEY = "_settings_generation"   # in the autosave file: the state store's settings generation it holds


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
        # UTF-8 both ways: a file name like "サンプル_0001.h5" (or Message's U+FFFD for a name that is not
        # UTF-8) made caproto's latin-1 read fail, and CA clients abort on that ("Internal Failure").
        kw.update(dtype=ChannelType.CHAR, max_length=LONG_STRING, report_as_string=False,
                  value=str(p.default or ""), string_encoding="utf-8")
    return pvproperty(**kw)


class SettingsAutosave(AutosaveHelper):
    """caproto's autosave, restoring only the setting PVs.

    The stock helper writes every PV the file names; a hand-edited or old
    file naming a command (``Abort``) or a PV that no longer exists must not
    act at start-up: those entries are logged once and skipped.
    """

    _restored = False

    command_line: Set[str] = frozenset()   # PVs (names without prefix) serve's options set: not restored

    async def restore_from_file(self, filename: Any, command_line: Iterable[str] = ()) -> None:
        """Restore once, unless the file is older than the state store's settings; ``command_line``: the PVs
        serve's options set on top (not restored).

        ``serve`` restores before it starts dispatching, so caproto's start-up
        hook does not restore again over the command line's values.  The file
        follows each settings change a moment after the put is acknowledged;
        an IOC killed in that moment leaves a file of an earlier generation,
        and the store (committed before the ack) then keeps its newer values.
        A file without a generation (hand-made, older versions) is restored.
        """
        if self._restored:
            return
        self._restored = True
        self.command_line = set(command_line)
        path = Path(filename)
        if not path.exists():
            log.warning("autosave file does not exist: %s", path)
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("autosave: %s cannot be read (%s); the state store's settings stay", path, one_line(exc))
            return
        if not isinstance(data, dict):
            log.error("autosave: %s is not a JSON object; the state store's settings stay", path)
            return
        generation = data.pop(GENERATION_KEY, None)
        stored = self.parent.controller.service.loaded_generation
        if isinstance(generation, int) and not isinstance(generation, bool) and generation < stored:
            log.warning("autosave: %s holds settings generation %d, the state store %d (the IOC stopped before "
                        "the file caught up): the store's settings stay", path, generation, stored)
            return
        await self.restore_values(data)

    async def save(self, data: Any = None) -> None:
        """caproto's periodic save: the file (with its generation) is written by the group's autosave thread,
        the old one kept as a dated backup."""
        self.parent.autosave_soon(rotate=True)

    async def restore_values(self, data: Dict[str, Any]) -> None:
        group = self.parent
        keep: Dict[str, Any] = {}
        for pvname, info in data.items():
            p = group.defs.get(pvname[len(group.prefix):]) if pvname.startswith(group.prefix) else None
            if p is None or not p.autosave:
                log.warning("autosave: %s is not a setting of this IOC; not restored", pvname)
                continue
            if p.name in self.command_line:
                # serve's option wins; restoring first only said "refused" on a host without GPUs
                log.info("autosave: %s not restored: the command line sets it", pvname)
                continue
            keep[pvname] = info
        await super().restore_values(keep)


class _Base(PVGroup):
    """Behaviour shared by the generated group (the PVs are added by :func:`build_group`)."""

    autosave_helper = SubGroup(SettingsAutosave)

    def __init__(self, *args: Any, controller: Controller, autosave_file: Optional[Path] = None,
                 thread_init: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        self.controller = controller
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-put", initializer=thread_init)
        # Puts whose check takes seconds (a checkpoint loaded in a worker-side process) wait on their own
        # thread, so every other put is still answered at once.
        self.slow_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-slow-put")
        self._autosave_lock = threading.Lock()     # one writer of the file at a time
        self._autosave_wanted = threading.Condition()
        self._autosave_pending: Optional[bool] = None   # None: nothing to write; else rotate the old file first
        self._autosave_closing = False
        self._autosave_thread: Optional[threading.Thread] = None
        self._thread_init = thread_init
        # Status snapshots and the PVA table rebuild run on their own thread: a put never waits behind them.
        self.status_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ioc-status",
                                                  initializer=thread_init)
        self.defs = {p.name: p for p in pv_table()}
        self._props: Dict[str, Any] = {}
        self._last: Dict[str, Any] = {}
        self._autosave_error = ""
        self._watchdog = Watchdog(WATCHDOG_START)
        self._refresh_wanted = False   # a setting changed: the status loop publishes at its next look
        super().__init__(*args, **kwargs)
        for p in self.defs.values():
            self._props[p.name] = getattr(self, _attr(p.name))
            if p.kind.writable:
                self._guard_conversion(p, self._props[p.name])
        helper = self.autosave_helper
        self._autosaves = autosave_file is not None   # a group built without a file (in-process tests) saves none
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
                bad_text = exc if isinstance(exc, UnicodeDecodeError) else exc.__cause__   # caproto wraps it
                if isinstance(bad_text, UnicodeDecodeError):
                    why = (f"not UTF-8 text (byte {bad_text.object[bad_text.start:bad_text.start + 1]!r} at "
                           f"{bad_text.start})")
                elif p.kind in (Kind.LSI, Kind.LSO):
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
        # What the put said ("queued 3 of 4 file(s) ...") is on Message before the ack: a script that
        # reads Message right after caput -c read the previous put's text.
        await self._publish({"Message": self.controller.last_message})
        if p.role is Role.SETTING:
            # What a setting changes elsewhere (a message, the trigger's link) goes out at the status loop's
            # next look (CHANGE_POLL): a snapshot now took the GIL just as the loop was sending this ack.
            self._refresh_wanted = True
        else:   # selection, page and queue changes alter many readbacks: publish at once
            loop.call_soon(lambda: asyncio.ensure_future(self.refresh()))
        return result

    def _apply(self, name: str, value: Any) -> Any:
        """Controller put; a setting is in the state store when this returns (a SIGKILL right after the
        ack still finds it at restart), and the autosave file follows on its own thread."""
        result = self.controller.put(name, value)
        if self.defs[name].role is Role.SETTING:
            self.autosave_soon()
        return result

    # -- autosave ------------------------------------------------------------------
    def autosave_soon(self, rotate: bool = False) -> None:
        """Have the autosave thread write the file (changes that come meanwhile are written together).

        Not before the ack: the file's metadata steps waited for the ext4
        journal (10-46 ms) while the workers wrote, and the put does not need
        them; the state store, committed before the ack, is the durable copy.
        """
        with self._autosave_wanted:
            if self._autosave_closing or not self._autosaves:
                return
            self._autosave_pending = bool(self._autosave_pending) or rotate
            if self._autosave_thread is None:
                self._autosave_thread = threading.Thread(target=self._autosave_loop, name="ioc-autosave",
                                                         daemon=True)
                self._autosave_thread.start()
            self._autosave_wanted.notify()

    def _autosave_loop(self) -> None:
        if self._thread_init is not None:
            self._thread_init()   # the IOC's priority: a low-priority thread holding the GIL stalls the puts
        while True:
            with self._autosave_wanted:
                while self._autosave_pending is None and not self._autosave_closing:
                    self._autosave_wanted.wait()
                rotate, self._autosave_pending = self._autosave_pending, None
            if rotate is None:
                return   # closing, nothing left to write
            try:
                self.write_autosave(rotate=rotate)
            except Exception as exc:  # noqa: BLE001 - a bug in one save must not stop the later ones
                self._autosave_failed(f"autosave failed: {type(exc).__name__}: {exc}", exc)

    def write_autosave(self, rotate: bool = False) -> None:
        """Write every setting, with its generation, to the autosave file (``rotate``: keep the old one as a
        dated backup, as caproto's hourly save does)."""
        if not self._autosaves:
            return
        path = Path(self.autosave_helper.filename)
        generation, settings = self.controller.service.settings_record()
        data: Dict[str, Any] = {GENERATION_KEY: generation}
        data.update({self.prefix + name: {"value": self.defs[name].enums[int(v)] if self.defs[name].kind.is_enum
                                          else v, "fields": {}}
                     for name, v in self.controller.setting_values(settings).items()})
        tmp = path.with_name(path.name + ".tmp")
        try:
            with self._autosave_lock:    # the autosave thread and the exit save: one temp file at a time
                tmp.write_text(json.dumps(data))
                if rotate:   # the old file becomes a dated backup (caproto's file manager prunes them)
                    self.autosave_helper.file_manager.rotate_in_file(tmp)
                else:
                    # Not os.replace: ext4 flushes a file renamed over another to the disk first
                    # (auto_da_alloc).  A kill between the two steps leaves no file, and start-up then keeps
                    # the state store's settings: the same values, committed before this.
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    os.rename(tmp, path)
        except OSError as exc:   # a full or read-only disk: the settings are in the state store all the same
            self._autosave_failed(f"autosave failed: {exc.strerror or exc} ({path.parent})")
            return
        self._autosave_error = ""

    def _autosave_failed(self, text: str, bug: Optional[BaseException] = None) -> None:
        """Say a failed save on Message once per distinct reason (a bug also to the log, with its traceback)."""
        if text == self._autosave_error:
            return
        if bug is not None:
            log.error("%s", text, exc_info=bug)
        self.controller.message(text)
        self._autosave_error = text

    @property
    def pv_instances(self) -> Dict[str, Any]:
        """PV name (without prefix) -> its caproto instance (for the access checks)."""
        return dict(self._props)

    def publish_soon(self, values: Dict[str, Any]) -> None:
        """Publish ``values`` from the event loop without waiting (the audit's AuditLast)."""
        asyncio.ensure_future(self._publish(values))

    def close(self, wait: bool = False) -> None:
        """Stop the put, status and autosave threads (after the server stopped; a pending save is written)."""
        with self._autosave_wanted:
            self._autosave_closing = True
            self._autosave_wanted.notify()
            thread = self._autosave_thread
        if thread is not None:
            thread.join(timeout=10)
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
            if isinstance(out, str):   # what the PV's type can carry: 39 ASCII characters, or 4095 UTF-8 bytes
                out = short(out) if p.kind in (Kind.STRINGIN, Kind.STRINGOUT) else fit_long(out)
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
                if ((mark != seen or now >= next_full or self._refresh_wanted)
                        and (pending is None or pending.done())):
                    if pending is not None and pending.exception() is not None:
                        raise pending.exception()
                    seen, next_full, self._refresh_wanted = mark, now + STATUS_PERIOD, False
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


def build_group(prefix: str, controller: Controller, autosave_file: Optional[Path],
                thread_init: Optional[Callable[[], None]] = None) -> _Base:
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
    return cls(prefix=prefix, controller=controller, autosave_file=autosave_file, thread_init=thread_init)


async def _putter(group: _Base, instance: Any, value: Any) -> Any:
    return await group.handle_put(instance, value)


def _isnan(value: Any) -> bool:
    """A float NaN (a status value that does not exist)."""
    return isinstance(value, float) and math.isnan(value)


__all__ = ["RobustContext", "build_group", "STATUS_PERIOD"]
