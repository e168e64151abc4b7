"""``tomocorioc sim-tomoscan``: a simulated tomoScan IOC that writes real DXfile scans.

A caproto IOC with tomoScan's record names and types.  ``StartScan`` = Acquire
(or ``--auto N``) writes ``<FilePath>/<FileName>_NNNN.h5`` with the simulator,
walking ``ScanStatus`` as tomoScan does ('Beginning scan', 'Collecting dark
fields', 'Collecting flat fields', 'Collecting projections', 'Scan complete');
then ``StartScan`` drops to Done and only after that (:data:`FULLNAME_DELAY`)
``FullFileName`` names the file, as tomoScan copies it from the file plugin.
The HDF5 writing runs in a worker thread whose progress reaches the event loop
through an :class:`asyncio.Queue` fed with ``call_soon_threadsafe`` (ordered
PV updates, the loop keeps serving).  ``SimNextAbort``, ``SimCompleteDelay``
and ``SimFrameDelay`` choose per scan: aborted (fewer projections, no theta),
or complete with theta written S seconds after the busy drop.  ``--state DIR``
saves FilePath/FileName/FullFileName and the counter like tomoScan's autosave.
"""
from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import math
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
from caproto import ChannelType, SkipWrite
from caproto.server import PVGroup, pvproperty

from tomocorioc.sim.phantoms import PHANTOMS, Phantom
from tomocorioc.sim.scan import SimConfig, append_theta, build_phantom, merge_truth, write_scan

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "TomoScanSim:"
LONG_STRING = 4096          # max_length of the char-array PVs (caget -S / caput -S)
FULLNAME_DELAY = 0.1        # s between the busy drop and the FullFileName update
CHUNK_FRAMES = 10           # projections per progress update (and abort latency)
STATE_FILE = "sim_tomoscan.json"
COMPLETE = "Scan complete"
ABORT_USER = "Abort: scan aborted by user"
ABORT_SHUTDOWN = "Abort: IOC shutting down"
ABORT_BAD_PATH = "Abort: Bad File Path"
ABORT_WRITE = "Abort: file write error"
SHUTDOWN_WAIT = 60.0        # s allowed for the running scan / pending theta at exit


class ScanState(enum.Enum):
    """Where the simulated scan is (IDLE -> BEGINNING -> ... -> FINISHING -> IDLE)."""

    IDLE = "idle"
    BEGINNING = "beginning"
    DARK_FIELDS = "dark fields"
    FLAT_FIELDS = "flat fields"
    PROJECTIONS = "projections"
    FINISHING = "finishing"   # file closed (or never opened): status, busy drop, FullFileName


#: ScanStatus shown on entering a state (tomoScan's texts).
STATUS_TEXT = {ScanState.BEGINNING: "Beginning scan", ScanState.DARK_FIELDS: "Collecting dark fields",
               ScanState.FLAT_FIELDS: "Collecting flat fields", ScanState.PROJECTIONS: "Collecting projections"}
_STAGES = {"darks": ScanState.DARK_FIELDS, "flats": ScanState.FLAT_FIELDS, "projections": ScanState.PROJECTIONS}


@dataclass(frozen=True)
class SimOptions:
    """The command-line choices of one simulated tomoScan."""

    outdir: Path
    file_name: str = "sample"
    state_dir: Optional[Path] = None
    abort_every: Optional[int] = None
    abort_status: str = ABORT_USER
    complete_delay: float = 0.0
    frame_delay: float = 0.01
    offset_jitter: float = 0.3
    outlier_index: Optional[int] = None
    outlier_jump: float = 30.0


def _long_string(name: str, doc: str, read_only: bool = False, value: str = "") -> pvproperty:
    """A char-array PV for text longer than 40 characters (tomoScan's waveform records)."""
    return pvproperty(name=name, dtype=ChannelType.CHAR, max_length=LONG_STRING, report_as_string=False,
                      value=value, read_only=read_only, doc=doc)


def _enum(name: str, states: List[str], doc: str, read_only: bool = False) -> pvproperty:
    return pvproperty(name=name, dtype=ChannelType.ENUM, enum_strings=states, value=states[0],
                      read_only=read_only, doc=doc)


class SimTomoScan(PVGroup):
    """The simulated tomoScan: PVs, scan state machine, persistence."""

    StartScan = _enum("StartScan", ["Done", "Acquire"], "busy: Acquire starts a scan, Done when it ends")
    AbortScan = _enum("AbortScan", ["No", "Yes"], "Yes aborts the running scan")
    ScanStatus = _long_string("ScanStatus", "scan progress text", read_only=True)
    FilePath = _long_string("FilePath", "folder of the next scan file")
    FileName = _long_string("FileName", "file-name prefix: FileName_NNNN.h5")
    FullFileName = _long_string("FullFileName", "the last scan's file, set after StartScan drops to Done")
    ServerRunning = _enum("ServerRunning", ["Stopped", "Running"], "Running while the IOC runs", read_only=True)
    Watchdog = pvproperty(name="Watchdog", dtype=int, value=0, read_only=True, doc="counts once a second")
    ImagesCollected = pvproperty(name="ImagesCollected", dtype=int, value=0, read_only=True,
                                 doc="projections collected in the current scan")
    NumAngles = pvproperty(name="NumAngles", dtype=int, value=181, doc="projections per scan")
    NumDarkFields = pvproperty(name="NumDarkFields", dtype=int, value=10, doc="dark frames per scan")
    NumFlatFields = pvproperty(name="NumFlatFields", dtype=int, value=10, doc="flat frames per scan")
    SimNextAbort = _enum("SimNextAbort", ["No", "Yes"], "Yes: the next scan aborts (reset when it starts)")
    SimCompleteDelay = pvproperty(name="SimCompleteDelay", dtype=float, value=0.0, precision=2, units="s",
                                  doc="theta is written this long after the busy drop")
    SimFrameDelay = pvproperty(name="SimFrameDelay", dtype=float, value=0.01, precision=3, units="s",
                               doc="simulated exposure per frame")

    def __init__(self, *args: Any, options: SimOptions, base: SimConfig, phantom: Phantom, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = options
        self.base = base
        self.phantom = phantom
        self.state = ScanState.IDLE
        self.counter = 0                     # number of the last file written
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = asyncio.Event()
        self.scan_task: Optional[asyncio.Task] = None
        self.background: Set[asyncio.Task] = set()
        self._abort = threading.Event()      # read by the writer thread
        self._abort_reason = options.abort_status
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-scan")
        self.state_path = options.state_dir / STATE_FILE if options.state_dir is not None else None

    # -- helpers -----------------------------------------------------------------------
    async def _set(self, prop: Any, value: Any) -> None:
        """Publish ``value`` on a PV (bypassing its putter) when it differs."""
        if prop.value != value:
            await prop.write(value, verify_value=False)

    async def _enter(self, state: ScanState) -> None:
        log.debug("scan state %s -> %s", self.state.name, state.name)
        self.state = state
        if state in STATUS_TEXT:
            await self._set(self.ScanStatus, STATUS_TEXT[state])

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def save_state(self, **override: str) -> None:
        """Write FilePath/FileName/FullFileName (``override``: values being put) and the counter."""
        path = self.state_path
        if path is None:
            return
        data: Dict[str, Any] = {"FilePath": self.FilePath.value, "FileName": self.FileName.value,
                                "FullFileName": self.FullFileName.value}
        data.update(override)
        data["counter"] = self.counter
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot save state to %s: %s", path, exc)

    async def restore(self) -> None:
        """Initial values: the options, then the saved state (like autosave) when there is one."""
        o, b = self.options, self.base
        for prop, value in ((self.FilePath, str(o.outdir)), (self.FileName, o.file_name), (self.NumAngles, b.nproj),
                            (self.NumDarkFields, b.ndark), (self.NumFlatFields, b.nflat),
                            (self.SimCompleteDelay, o.complete_delay), (self.SimFrameDelay, o.frame_delay)):
            await self._set(prop, value)
        path = self.state_path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state %s: %s", path, exc)
            return
        for key in ("FilePath", "FileName", "FullFileName"):
            if isinstance(data.get(key), str):
                await self._set(getattr(self, key), data[key])
        if isinstance(data.get("counter"), int) and data["counter"] >= 0:
            self.counter = data["counter"]
        log.info("restored from %s: FullFileName=%r, counter %d", path, self.FullFileName.value, self.counter)

    # -- puts ------------------------------------------------------------------------
    @StartScan.putter  # type: ignore[no-redef]
    async def StartScan(self, instance: Any, value: str) -> Any:
        if value == "Acquire":
            if self.state is ScanState.IDLE and not self.stopping.is_set():
                # Publish Acquire before the scan can drop it: the put's own store comes later.
                await instance.write("Acquire", verify_value=False)
                self.start_scan()
            return SkipWrite
        if self.state is not ScanState.IDLE:
            log.warning("StartScan=Done ignored while a scan runs (use AbortScan)")
            return SkipWrite
        return "Done"

    @AbortScan.putter  # type: ignore[no-redef]
    async def AbortScan(self, instance: Any, value: str) -> str:
        if value == "Yes":
            if self.state is not ScanState.IDLE:
                log.warning("abort requested")
                self.abort(self.options.abort_status)

            async def reset() -> None:
                await asyncio.sleep(0.2)
                await self._set(self.AbortScan, "No")
            self._spawn(reset())
        return value

    @FilePath.putter  # type: ignore[no-redef]
    async def FilePath(self, instance: Any, value: str) -> str:
        value = value.rstrip("\x00")
        self.save_state(FilePath=value)
        return value

    @FileName.putter  # type: ignore[no-redef]
    async def FileName(self, instance: Any, value: str) -> str:
        value = value.rstrip("\x00").strip()
        if not value or "/" in value or os.sep in value:
            raise ValueError(f"FileName must be a plain file-name prefix, got {value!r}")
        self.save_state(FileName=value)
        return value

    @FullFileName.putter  # type: ignore[no-redef]
    async def FullFileName(self, instance: Any, value: str) -> str:
        value = value.rstrip("\x00")
        self.save_state(FullFileName=value)
        return value

    @NumAngles.putter  # type: ignore[no-redef]
    async def NumAngles(self, instance: Any, value: int) -> int:
        return _check_int(instance, value, 2)

    @NumDarkFields.putter  # type: ignore[no-redef]
    async def NumDarkFields(self, instance: Any, value: int) -> int:
        return _check_int(instance, value, 1)

    @NumFlatFields.putter  # type: ignore[no-redef]
    async def NumFlatFields(self, instance: Any, value: int) -> int:
        return _check_int(instance, value, 1)

    @SimCompleteDelay.putter  # type: ignore[no-redef]
    async def SimCompleteDelay(self, instance: Any, value: float) -> float:
        return _check_delay(instance, value)

    @SimFrameDelay.putter  # type: ignore[no-redef]
    async def SimFrameDelay(self, instance: Any, value: float) -> float:
        return _check_delay(instance, value)

    # -- scans -------------------------------------------------------------------------
    def start_scan(self) -> None:
        """Start a scan now (the caller checked that none is running)."""
        self.state = ScanState.BEGINNING
        self.idle.clear()
        self._abort.clear()
        self._abort_reason = self.options.abort_status
        self.scan_task = self._spawn(self._scan())

    def abort(self, reason: str) -> None:
        """Ask the running scan to stop at the next chunk; it ends with ScanStatus ``reason``."""
        self._abort_reason = reason
        self._abort.set()

    def _next_file(self, folder: Path) -> Tuple[int, Path]:
        """The next free ``FileName_NNNN.h5`` (the counter never reuses a number)."""
        number = self.counter + 1
        while (folder / f"{self.FileName.value}_{number:04d}.h5").exists():
            number += 1
        self.counter = number
        self.save_state()
        return number, folder / f"{self.FileName.value}_{number:04d}.h5"

    def _config(self, number: int) -> Tuple[SimConfig, Dict[str, Any]]:
        """Scan ``number``'s config (jittered COR, outlier, planned abort) and its truth labels."""
        o, index = self.options, number - 1
        rng = np.random.default_rng([self.base.seed, 2, number])
        jitter = float(rng.uniform(-o.offset_jitter, o.offset_jitter)) if o.offset_jitter > 0 else 0.0
        outlier = o.outlier_index is not None and index == o.outlier_index
        offset = self.base.offset + jitter + (o.outlier_jump if outlier else 0.0)
        planned = self.SimNextAbort.value == "Yes" or (o.abort_every is not None and number % o.abort_every == 0)
        noise_seed = int(np.random.SeedSequence([self.base.seed, 3, number]).generate_state(1)[0])
        config = replace(self.base, offset=offset, nproj=int(self.NumAngles.value), aborted=planned,
                         ndark=int(self.NumDarkFields.value), nflat=int(self.NumFlatFields.value),
                         noise_seed=noise_seed)
        labels: Dict[str, Any] = {"series": self.FileName.value, "index": index, "scan_number": number,
                                  "outlier": outlier, "source": "sim-tomoscan"}
        if outlier:
            labels["outlier_jump"] = float(o.outlier_jump)
        return config, labels

    async def _scan(self) -> None:
        """One scan, start to FullFileName; never leaves StartScan at Acquire."""
        status, path, complete_delay, truth = COMPLETE, None, 0.0, None
        try:
            await self._set(self.StartScan, "Acquire")
            await self._enter(ScanState.BEGINNING)
            await self._set(self.ImagesCollected, 0)
            folder = Path(self.FilePath.value)
            if not folder.is_dir():
                log.error("FilePath %s is not a directory", folder)
                status = ABORT_BAD_PATH
                return
            number, path = self._next_file(folder)
            config, labels = self._config(number)
            await self._set(self.SimNextAbort, "No")
            complete_delay = float(self.SimCompleteDelay.value)
            labels["complete_delay"] = complete_delay
            log.info("scan %d -> %s (cor %.3f%s)", number, path, config.cor, ", aborts" if config.aborted else "")
            truth = await self._write(path, config, labels, complete_delay <= 0)
            await asyncio.to_thread(merge_truth, path.parent, {path.name: truth})
            if truth["aborted"]:
                status = self._abort_reason
        except asyncio.CancelledError:
            status = ABORT_SHUTDOWN
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must still end the scan and drop the busy
            log.exception("scan failed: %s", exc)
            status = ABORT_WRITE
        finally:
            await self._finish(status, path if path is not None and path.exists() else None)
            if truth is not None and not truth["aborted"] and complete_delay > 0 and path is not None:
                self._spawn(self._complete_later(path, truth, complete_delay))

    async def _write(self, path: Path, config: SimConfig, labels: Dict[str, Any], theta: bool) -> Dict[str, Any]:
        """Run :func:`write_scan` in the writer thread, publishing its progress in order."""
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
        frame_delay = float(self.SimFrameDelay.value)
        done = [0]

        def post(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def on_stage(stage: str) -> None:
            if self._abort.is_set():
                return
            post("stage", stage)
            frames = {"darks": config.ndark, "flats": config.nflat}.get(stage, 0)
            self._abort.wait(frames * frame_delay)   # exposure; an abort cuts it short

        def on_frames(n: int) -> None:
            post("frames", n)
            self._abort.wait((n - done[0]) * frame_delay)
            done[0] = n

        def work() -> Dict[str, Any]:
            try:
                return write_scan(path, config, self.phantom, noise_seed=config.noise_seed, labels=labels,
                                  on_stage=on_stage, on_frames=on_frames, should_stop=self._abort.is_set,
                                  write_theta=theta, chunk_frames=CHUNK_FRAMES)
            finally:
                post("end", None)

        future = loop.run_in_executor(self.writer, work)
        while True:
            kind, value = await events.get()
            if kind == "end":
                break
            if kind == "stage":
                await self._enter(_STAGES[value])
            elif kind == "frames":
                await self._set(self.ImagesCollected, int(value))
        return await future

    async def _finish(self, status: str, path: Optional[Path]) -> None:
        """tomoScan's end of scan: status, busy drop, then (after a moment) FullFileName."""
        try:
            await self._enter(ScanState.FINISHING)
            await self.ScanStatus.write(status, verify_value=False)
            await self._set(self.StartScan, "Done")
            log.info("scan ended: %s", status)
            if path is not None:
                await asyncio.sleep(FULLNAME_DELAY)
                await self.FullFileName.write(str(path), verify_value=False)
                self.save_state()
        finally:
            self.state = ScanState.IDLE
            self.idle.set()

    async def _complete_later(self, path: Path, truth: Dict[str, Any], delay: float) -> None:
        """Append theta ``delay`` s after the busy drop (sooner when the IOC stops)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass
        theta = replace(self.base, nproj=int(truth["nproj"])).theta_deg()
        try:
            await asyncio.to_thread(append_theta, path, theta)
            await asyncio.to_thread(merge_truth, path.parent, {path.name: dict(truth, has_theta=True)})
            log.info("%s complete: theta written %.2f s after the scan", path, delay)
        except (OSError, ValueError, KeyError) as exc:
            log.error("cannot complete %s: %s", path, exc)

    # -- background loops ------------------------------------------------------------
    async def watchdog_loop(self) -> None:
        """ServerRunning = Running; Watchdog counts once a second."""
        await self._set(self.ServerRunning, "Running")
        while True:
            await asyncio.sleep(1.0)
            await self._set(self.Watchdog, int(self.Watchdog.value) + 1)

    async def auto_loop(self, interval: float, count: Optional[int]) -> None:
        """A scan every ``interval`` s (start to start; never two at once), ``count`` of them at most."""
        loop = asyncio.get_running_loop()
        next_at, started = loop.time() + interval, 0
        while count is None or started < count:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            while self.state is not ScanState.IDLE:   # a put may start one between idle and here
                await self.idle.wait()
            if self.stopping.is_set():
                return
            self.start_scan()
            started += 1
            next_at += interval
        log.info("auto: %d scans started; no more scheduled", started)

    async def shutdown(self) -> None:
        """Abort a running scan, finish pending theta, show Stopped, save the state."""
        self.stopping.set()
        if self.scan_task is not None and not self.scan_task.done():
            self.abort(ABORT_SHUTDOWN)
            await asyncio.wait({self.scan_task}, timeout=SHUTDOWN_WAIT)
        pending = [t for t in self.background if not t.done() and t is not self.scan_task]
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_WAIT)
        await self._set(self.ServerRunning, "Stopped")
        self.save_state()
        await asyncio.sleep(0.2)   # let the last monitors go out


def _check_int(instance: Any, value: Any, low: int) -> int:
    """A put of a count: at least ``low`` (a rejected put fails the client's caput -c)."""
    if int(value) < low:
        raise ValueError(f"{instance.pvname} must be >= {low}, got {value}")
    return int(value)


def _check_delay(instance: Any, value: Any) -> float:
    """A put of a delay in seconds: finite, in [0, 3600]."""
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 3600.0):
        raise ValueError(f"{instance.pvname} must be in [0, 3600] s, got {value}")
    return value


# ---------------------------------------------------------------- command line


def add_sim_tomoscan_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tomocorioc sim-tomoscan``."""
    d = SimConfig(ncols=128, nrows=8)
    parser.add_argument("--outdir", type=Path, required=True,
                        help="default FilePath: where scans and truth.json are written (created)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"PV prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--interface", action="append", default=[], metavar="ADDR",
                        help="serve CA on this address (repeat; default EPICS_CAS_INTF_ADDR_LIST or 127.0.0.1)")
    parser.add_argument("--state", type=Path, metavar="DIR",
                        help="save FilePath/FileName/FullFileName and the file counter here and restore them "
                        "at start (like tomoScan's autosave)")
    parser.add_argument("--file-name", default="sample", help="default FileName (default sample)")
    parser.add_argument("--auto", type=float, metavar="N", help="start a scan every N s (start to start)")
    parser.add_argument("--count", type=int, metavar="K", help="with --auto: K scans, then stop scheduling")
    parser.add_argument("--abort-every", type=int, metavar="K",
                        help="scans whose file number is a multiple of K abort (fewer frames, no theta)")
    parser.add_argument("--abort-status", default=ABORT_USER,
                        help=f"ScanStatus of an aborted scan (default '{ABORT_USER}'; real tomoScan's base "
                        f"class shows '{COMPLETE}')")
    parser.add_argument("--complete-delay", type=float, default=0.0, metavar="S",
                        help="write theta S s after StartScan drops (default 0: before it; PV SimCompleteDelay)")
    parser.add_argument("--frame-delay", type=float, default=0.01, metavar="S",
                        help="simulated exposure per frame in s (default 0.01; PV SimFrameDelay)")
    parser.add_argument("--width", type=int, default=d.ncols, help=f"detector columns (default {d.ncols})")
    parser.add_argument("--rows", type=int, default=d.nrows, help=f"detector rows (default {d.nrows})")
    parser.add_argument("--nproj", type=int, default=d.nproj, help=f"projections (default {d.nproj}; PV NumAngles)")
    parser.add_argument("--flats", type=int, default=d.nflat, help=f"flat fields (default {d.nflat})")
    parser.add_argument("--darks", type=int, default=d.ndark, help=f"dark fields (default {d.ndark})")
    parser.add_argument("--offset", type=float, default=0.0, help="COR offset from the detector centre, px")
    parser.add_argument("--offset-jitter", type=float, default=0.3,
                        help="uniform COR jitter per scan, +-px (default 0.3)")
    parser.add_argument("--outlier-index", type=int, metavar="I",
                        help="0-based scan index with a COR jump (I=2: FileName_0003.h5)")
    parser.add_argument("--outlier-jump", type=float, default=30.0, metavar="PX", help="outlier jump (default 30)")
    parser.add_argument("--noise", type=float, default=d.noise, help=f"flat-field photons, 0 = none ({d.noise:g})")
    parser.add_argument("--phantom", default=d.phantom, choices=sorted(PHANTOMS), help="sample kind")
    parser.add_argument("--seed", type=int, default=d.seed, help="sample/instrument seed (default 0)")


def _build(args: argparse.Namespace) -> Tuple[SimOptions, SimConfig, Phantom]:
    """Validated options, base config and the series' phantom; ValueError when something is off."""
    for name, low in (("auto", 0.05), ("complete_delay", 0.0), ("frame_delay", 0.0), ("offset_jitter", 0.0),
                      ("count", 1), ("abort_every", 1), ("outlier_index", 0), ("outlier_jump", -math.inf)):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= low):
            raise ValueError(f"--{name.replace('_', '-')} must be finite and >= {low}, got {value}")
    if args.count is not None and args.auto is None:
        raise ValueError("--count needs --auto")
    if not args.file_name or "/" in args.file_name:
        raise ValueError(f"--file-name must be a plain file-name prefix, got {args.file_name!r}")
    base = SimConfig(ncols=args.width, nrows=args.rows, nproj=args.nproj, nflat=args.flats, ndark=args.darks,
                     offset=args.offset, noise=args.noise, phantom=args.phantom, seed=args.seed)
    # One sample for the whole series: it must fit the narrowest field of view of every scan.
    offsets = [args.offset - args.offset_jitter, args.offset + args.offset_jitter]
    if args.outlier_index is not None:
        offsets += [o + args.outlier_jump for o in offsets]
    radius = min(replace(base, offset=o).fov_radius for o in offsets)   # each validated
    base = replace(base, radius=radius)
    options = SimOptions(outdir=args.outdir.resolve(), file_name=args.file_name,
                         state_dir=args.state.resolve() if args.state else None,
                         abort_every=args.abort_every, abort_status=args.abort_status,
                         complete_delay=args.complete_delay, frame_delay=args.frame_delay,
                         offset_jitter=args.offset_jitter, outlier_index=args.outlier_index,
                         outlier_jump=args.outlier_jump)
    return options, base, build_phantom(base)


async def _serve(args: argparse.Namespace, options: SimOptions, base: SimConfig, phantom: Phantom,
                 interfaces: List[str]) -> int:
    """Serve until SIGTERM/SIGINT, then shut the simulated tomoScan down cleanly."""
    from tomocorioc.ioc.ca_server import RobustContext

    ioc = SimTomoScan(prefix=args.prefix, options=options, base=base, phantom=phantom)
    await ioc.restore()
    ctx = RobustContext(ioc.pvdb, interfaces)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = asyncio.ensure_future(ctx.run(log_pv_names=False))
    tasks = [asyncio.ensure_future(ioc.watchdog_loop())]
    if args.auto is not None:
        tasks.append(asyncio.ensure_future(ioc.auto_loop(args.auto, args.count)))
    log.warning("sim-tomoscan %s serving on %s, writing to %s", args.prefix, ", ".join(interfaces),
                ioc.FilePath.value)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({stopper, server}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if server in done and server.exception() is not None:
        log.error("CA server failed: %s", server.exception())
        code = 1
    log.warning("sim-tomoscan shutting down")
    await ioc.shutdown()
    for task in tasks + [server, stopper]:
        task.cancel()
    await asyncio.gather(*tasks, server, stopper, return_exceptions=True)
    ioc.writer.shutdown(wait=True)
    return code


def run_sim_tomoscan(args: argparse.Namespace) -> int:
    """Entry point of ``tomocorioc sim-tomoscan``: 0 on a clean stop, 2 on bad options, 1 on I/O errors."""
    from tomocorioc.ioc.serve import configure_network

    try:
        options, base, phantom = _build(args)
    except ValueError as exc:
        log.error("sim-tomoscan: error: %s", exc)
        return 2
    try:
        options.outdir.mkdir(parents=True, exist_ok=True)
        if options.state_dir is not None:
            options.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("sim-tomoscan: cannot create %s", exc)
        return 1
    interfaces = list(args.interface) or os.environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split() or ["127.0.0.1"]
    interfaces = configure_network(interfaces)
    try:
        return asyncio.run(_serve(args, options, base, phantom, interfaces))
    except OSError as exc:   # e.g. the CA port is taken
        log.error("sim-tomoscan: %s", exc)
        return 1


__all__ = ["ScanState", "SimTomoScan", "add_sim_tomoscan_arguments", "run_sim_tomoscan", "DEFAULT_PREFIX"]


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="tomocorioc.sim.tomoscan_ioc", description=__doc__.splitlines()[0])
    _parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v for debug)")
    add_sim_tomoscan_arguments(_parser)
    _args = _parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if _args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    sys.exit(run_sim_tomoscan(_args))
