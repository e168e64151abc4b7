"""caproto's asyncio CA server, made robust and cheap under load (caproto 1.3.0).

What each fix is for is in the docstrings of :class:`RobustCircuit` and
:class:`RobustContext`; every one was found driving the real IOC from outside
(many clients vanishing together, a stalled client, a read load with a put
waiting behind it).  Nothing here knows about tomocorioc's PVs.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections import deque
from typing import Any, Dict, Optional, Set, Tuple

import caproto as ca
from caproto import AccessRights, CaprotoNetworkError, HostNameRequest, ReadNotifyRequest
from caproto.asyncio.server import AsyncioEvent, Context, VirtualCircuit
from caproto.server import PVGroup
from caproto.server.common import DisconnectedCircuit, LoopExit

log = logging.getLogger(__name__)

COMMAND_BATCH = 512      # most replies coalesced into one send (a burst of gets)
COMMAND_SLICE = 0.001    # s of one circuit's commands per event-loop turn, then the other circuits
READ_CACHE_BYTES = 16384 # larger read replies (waveforms) are built for every read, not kept
READ_CACHE_ENTRIES = 8192

_WRITES = (ca.WriteNotifyRequest, ca.WriteRequest)
_IOID = struct.Struct(">I")   # a reply header's parameter 2 (bytes 12-16 in the 16- and 24-byte headers)
_HEADER = struct.Struct(">HHHHII")   # command, payload size, data type, data count, parameter 1, parameter 2
_READ_NOTIFY = 15                      # ReadNotifyRequest's command number


class _Get:
    """A ReadNotifyRequest as it came off the wire, not yet made into caproto's objects.

    Under a read load caproto's parser was a quarter of the event loop: a
    command object, enums and validation for every get, and a copy of the
    rest of the buffer after each 16 bytes.  A kept reply needs only these
    four numbers; :meth:`request` makes caproto's command when one does not.
    """

    __slots__ = ("sid", "ioid", "data_type", "data_count")

    def __init__(self, sid: int, ioid: int, data_type: int, data_count: int) -> None:
        self.sid, self.ioid, self.data_type, self.data_count = sid, ioid, data_type, data_count

    @property
    def header(self) -> "_Get":
        return self   # the fields a ReadNotifyRequest's header has, by the same names

    def request(self) -> Any:
        """caproto's ReadNotifyRequest for this get (ValueError: not a DBR type)."""
        return ReadNotifyRequest(data_type=self.data_type, data_count=self.data_count, sid=self.sid, ioid=self.ioid)


class _SetFastEvent(AsyncioEvent):
    """caproto's event, whose ``wait`` returns at once when set.

    Every read asks whether a write is in progress; the stock wait built a
    task and a timer through ``asyncio.wait_for`` even when the event was set
    (a tenth of the event loop's time under a read load).
    """

    async def wait(self, timeout: Optional[float] = None) -> bool:
        if self.is_set():
            return True
        return await super().wait(timeout)


def _plain_read(entry: Any) -> bool:
    """Whether reading ``entry`` only converts what it holds (no getter runs on a read)."""
    getter = getattr(entry, "getter", None)
    if getter is None:
        return True
    # a pvproperty without its own getter gets the group's group_read, which does nothing unless overridden
    return (getattr(getter, "__func__", None) is PVGroup.group_read
            and getattr(getattr(entry, "pvspec", None), "get", None) is None)


class RobustCircuit(VirtualCircuit):
    """caproto's asyncio circuit, disconnecting once.

    When many clients vanish together the disconnect runs from the command
    loop and from the subscription task itself; the stock code then awaited
    the cancellation of the very task it ran in ('await wasn't used with
    future').  The first caller takes the task; a task never awaits itself.

    With ``serve --acf-check-ip`` the client's host name, for access security,
    is its address, not the name it reports (EPICS' asCheckClientIP).

    Replies to the commands that arrived together leave in one send: a
    client's burst of gets (one TCP segment of up to COMMAND_BATCH requests)
    was answered with one ``send()`` per reply, and on loopback every send
    also runs the receiver's side of TCP: under load a third of the event
    loop's time.  Wire order is the order the circuit's state machine saw.

    Puts first: from the moment a client's write arrives until it is
    answered, every circuit answers one command per event-loop turn instead
    of a 1 ms slice, so the write's few steps (taken from its queue, the
    putter, its thread's result, the ack) are not each queued behind a slice
    of every reading client.
    """

    _held: Optional[list] = None          # replies of the batch being processed (None: not batching)
    _held_task: Optional[asyncio.Task] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_event = _SetFastEvent()
        self._writes_queued = 0   # write requests received, not yet taken by the command loop
        queue_put = self.command_queue.put

        async def put(command: Any) -> None:   # a write is known from the moment it arrives
            if type(command) in _WRITES:
                self._writes_queued += 1
                self.context.writes_queued.add(self)
            await queue_put(command)
        self.command_queue.put = put
        self._parse_with_caproto = self.circuit.recv
        self.circuit.recv = self._parse   # the server's recv() (backlog limit, disconnect) stays caproto's
        if getattr(self.context, "host_by_address", False):
            self.client_hostname = self.circuit.address[0]   # and the HostNameRequest is dropped below

    def _parse(self, *buffers: Any) -> Tuple[deque, int]:
        """Commands from bytes received: plain gets here, anything else (and all after it) by caproto."""
        try:
            data = b"".join(buffers)
        except TypeError:   # caproto passes [] when the socket failed
            data = b""
        if not data:
            return self._parse_with_caproto(*buffers)   # the circuit closed: caproto's DISCONNECTED
        core = self.circuit
        buf = bytes(core._data) + data if core._data else data
        commands: deque = deque()
        i, end = 0, len(buf)
        while end - i >= 16:
            command, size, data_type, count, sid, ioid = _HEADER.unpack_from(buf, i)
            if command != _READ_NOTIFY or size:   # not a plain get (an extended header has size 0xFFFF)
                core._data = bytearray()   # caproto keeps its buffer as a bytearray
                more, needed = self._parse_with_caproto(buf[i:])
                commands.extend(more)
                return commands, needed
            commands.append(_Get(sid, ioid, data_type, count))
            i += 16
        core._data = bytearray(buf[i:])
        return commands, 16 - len(core._data) if core._data else 0

    async def get_from_sub_queue(self, timeout: Optional[float] = None) -> Any:
        """The next monitor update; None at once when none is queued (``timeout`` given).

        caproto waited up to HIGH_LOAD_TIMEOUT for one more update through
        ``asyncio.wait_for`` (a task and a timer per update).  The status task
        queues all of a snapshot's updates in one go, so what is queued when
        the loop looks is the batch; an empty queue means send now.
        """
        queue = self.subscription_queue
        if not queue.empty():
            return queue.get_nowait()
        if timeout is None:
            return await queue.get()
        return None

    async def _process_command(self, command: Any) -> Any:
        if isinstance(command, HostNameRequest) and getattr(self.context, "host_by_address", False):
            return []
        return await super()._process_command(command)

    async def _start_write_task(self, handle_write: Any) -> None:
        """caproto's write task, counted by the context while it runs (the readers then yield per get)."""
        task = self.tasks.create(handle_write())
        writes = self.context.writes_in_flight
        writes.add(task)
        task.add_done_callback(writes.discard)   # also when cancelled before it started

    async def command_queue_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._batched_command_loop()
        except RuntimeError:
            if not loop.is_closed():   # 'Event loop is closed' at shutdown is expected, nothing else
                raise

    async def _batched_command_loop(self) -> None:
        self.write_event.set()
        clock = time.perf_counter
        try:
            while True:
                command = await self.command_queue.get()
                self._held, self._held_task = [], asyncio.current_task()
                # While any client's write is queued or in flight, one command per turn: the write's next
                # step (taken, its putter's result, the ack) waits behind one get per busy circuit, not a
                # slice each.
                ctx = self.context
                until = clock() + (0.0 if ctx.writes_in_flight or ctx.writes_queued else COMMAND_SLICE)
                try:
                    for left in range(COMMAND_BATCH - 1, -1, -1):
                        if type(command) is _Get or type(command) is ReadNotifyRequest:
                            await self._read(command)
                        else:
                            if type(command) in _WRITES:
                                self._write_taken()
                            response = await self._command_queue_iteration(command)
                            if response is not None:
                                await self.send(*response)  # held: state machine now, bytes below
                        if not left or self.command_queue.empty() or clock() > until:
                            break                           # the rest waits for the next turn
                        command = self.command_queue.get_nowait()
                finally:
                    held, self._held = self._held, None
                if held:
                    await self._send_now(held)
                await self._wake_new_command()
                if not self.command_queue.empty():
                    await asyncio.sleep(0)   # other circuits' turn (a put waits behind at most one slice)
        except DisconnectedCircuit:
            await self._on_disconnect()
            self.circuit.disconnect()
            await self.context.circuit_disconnected(self)
        except (asyncio.CancelledError, LoopExit):
            pass
        except Exception:  # noqa: BLE001 - never leave a client waiting on a circuit nobody serves
            log.exception("CA circuit %s:%s failed; closing it (the client reconnects)", *self.circuit.address[:2])
            await self._on_disconnect()
            self.circuit.disconnect()
            await self.context.circuit_disconnected(self)

    # -- reads ------------------------------------------------------------------------
    def _read_source(self, command: Any) -> Optional[Tuple[Any, tuple]]:
        """(PV data, cache key) of a get whose reply may be kept; None: caproto's own path.

        Kept: plain PV names (no field, filter or long-string ``$``), no
        getter, a connected channel that this client may read.  Access is
        asked on every get, so a reloaded ACF holds at once.
        """
        chan = self.circuit.channels_sid.get(command.sid)
        if chan is None or chan.states[ca.SERVER] is not ca.CONNECTED:
            return None
        entry = self.context.pvdb.get(chan.name)
        if entry is None or not _plain_read(entry):
            return None
        try:
            rights = entry.check_access(self.client_hostname, self.client_username)
        except Exception:  # noqa: BLE001 - caproto's own path answers it (an error reply, the circuit lives)
            return None
        if AccessRights.READ not in rights:
            return None
        key = (chan.name, command.header.data_type, command.header.data_count, self.circuit.protocol_version < 13)
        return entry, key

    async def _read(self, command: Any) -> None:
        """Answer a get, from the kept reply while the PV has not changed since it was built.

        caproto builds every reply anew (access, conversion, DBR metadata,
        the circuit's state machine twice): under a read load that was most
        of the event loop.  A kept reply is the bytes caproto built for the
        same PV, type and count; only the request's ioid differs.  "Not
        changed" is identity of every value, metadata and alarm field: the
        kept key holds those objects, so none of their ids can be reused.
        """
        source = self._read_source(command)
        if source is not None:
            entry, key = source
            state = (*entry._data.values(), *entry.alarm._data.values())
            kept = self.context.read_cache.get(key)
            if kept is not None and len(kept[0]) == len(state) and all(a is b for a, b in zip(kept[0], state)):
                raw = kept[1]
                self._held.append(raw[:12] + _IOID.pack(command.ioid) + raw[16:])
                return
        response = await self._command_queue_iteration(command.request() if type(command) is _Get else command)
        if response is None:
            return
        await self.send(*response)
        if (source is not None and len(response) == 1 and type(response[0]) is ca.ReadNotifyResponse
                and response[0].header.parameter1 == 1):   # status 1: a good read
            raw = b"".join([bytes(response[0].header), *map(bytes, response[0].buffers)])
            now = (*entry._data.values(), *entry.alarm._data.values())
            if len(raw) <= READ_CACHE_BYTES and all(a is b for a, b in zip(now, state)):
                cache = self.context.read_cache
                if len(cache) >= READ_CACHE_ENTRIES:   # odd counts asked by some client: start afresh
                    cache.clear()
                cache[key] = (state, raw)

    async def _send_buffers(self, *buffers: Any) -> None:
        if self._held is not None and asyncio.current_task() is self._held_task:
            self._held.extend(buffers)
            return
        if self._held:   # another task sends mid-batch: what the state machine saw first goes first
            buffers, self._held[:] = (*self._held, *buffers), []
        await self.client.send(b"".join(buffers))

    async def _send_now(self, buffers: list) -> None:
        if not self.connected:
            return
        try:
            await self.client.send(b"".join(buffers))
        except (OSError, CaprotoNetworkError) as exc:
            raise DisconnectedCircuit(f"Circuit disconnected: {exc}") from exc

    def _write_taken(self) -> None:
        self._writes_queued -= 1
        if self._writes_queued <= 0:
            self._writes_queued = 0
            self.context.writes_queued.discard(self)

    async def _on_disconnect(self) -> None:
        self._writes_queued = 0
        self.context.writes_queued.discard(self)
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
        # (PV name, DBR type, count, old protocol) -> (the PV's state objects, the reply's bytes)
        self.read_cache: Dict[tuple, Tuple[tuple, bytes]] = {}
        self.writes_in_flight: Set[asyncio.Task] = set()   # clients' puts not yet answered
        self.writes_queued: Set[RobustCircuit] = set()     # circuits holding a put not yet started

    async def broadcast_beacon_loop(self) -> None:
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


__all__ = ["RobustCircuit", "RobustContext", "COMMAND_BATCH", "COMMAND_SLICE"]
