"""The trigger loop: one thread that turns scan-end and file events into queued files.

Monitor callbacks (pyepics, watchdog) only :meth:`TriggerManager.post` an event
into a queue; this thread does everything else — the tomoScan state machine
(:class:`~tomocorioc.core.scanwatch.ScanEndDetector`) and the completeness
wait (file opens, ``is_complete()``, size stable), bounded by a timeout after
which the file is queued as failed with the reason.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tomocorioc.core.scanwatch import Action, ActionKind, LinkState, ScanEndDetector, Stability
from tomocorioc.core.settings import ServiceSettings
from tomocorioc.core.spec import spec_of
from tomocorioc.service.protocol import ServiceAPI

log = logging.getLogger(__name__)

_DEFAULT_COMPLETE_TIMEOUT: float = spec_of(ServiceSettings, "trigger_timeout").default

CHECK_PERIOD = 0.2   # s between completeness checks of a pending file


@dataclass
class _Pending:
    path: str
    source: str
    seen: float
    deadline: float
    stability: Stability
    reason: str = "not checked yet"
    next_check: float = 0.0
    ended: Optional[float] = None   # monotonic time of the scan end that named this file


@dataclass
class TriggerStats:
    """What the trigger has done (for TriggerStatus and tests)."""

    queued: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    # scan end (monotonic) -> file queued, per file: the trigger's own latency
    latency: Dict[str, float] = field(default_factory=dict)


def check_complete(path: str) -> Optional[str]:
    """None when the scan file opens and is complete, else why not (one line)."""
    return inspect_file(path)[1]


def inspect_file(path: str) -> Tuple[bool, Optional[str]]:
    """``(short, reason)``: reason None when complete; ``short`` True when the file opens with fewer
    projections than tomoScan planned (an aborted scan, once its size is stable)."""
    from tomocorioc.data.dxfile import DXFile
    from tomocorioc.data.errors import DatasetError
    if not os.path.isfile(path):
        return False, "file does not exist yet"
    try:
        with DXFile(Path(path)) as scan:
            if scan.is_complete():
                return False, None
            planned = scan.planned_projections
            if planned is not None and scan.nproj < planned:
                return True, f"{scan.nproj} of {planned} planned projections"
            return False, "incomplete (theta, flats or darks missing)"
    except (DatasetError, OSError, ValueError, KeyError) as exc:
        return False, f"cannot open yet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


class TriggerManager:
    """Owns the trigger thread, the tomoScan link and the folder watchers."""

    def __init__(self, service: ServiceAPI, phases: Callable[[], Dict[str, bool]],
                 accept: Callable[[str], str], complete_timeout: float = _DEFAULT_COMPLETE_TIMEOUT, quiet: float = 1.0,
                 name_wait: float = 10.0) -> None:
        self.service = service
        self.phases = phases          # which phases an auto-queued file gets (read at queue time)
        self.accept = accept          # path -> resolved path, or ValueError (outside the data roots)
        self.complete_timeout = float(complete_timeout)
        self.quiet = float(quiet)
        self.detector = ScanEndDetector(name_wait=name_wait)
        self.stats = TriggerStats()
        self.status = "off"
        self._last_text = ""
        self._ever_connected = False
        self._events: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._pending: Dict[str, _Pending] = {}
        self._link: Any = None
        self._last_error = ""
        self._folders: List[Any] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- called from any thread --------------------------------------------------------
    def post(self, *event: Any) -> None:
        """Hand an event to the trigger thread (the only thing callbacks do)."""
        self._events.put(event)

    def start(self) -> None:
        """Start the trigger thread."""
        self._thread = threading.Thread(target=self._run, name="trigger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and end the thread."""
        self._stop.set()
        self.post("stop")
        if self._thread:
            self._thread.join(10)
        self._close_link()
        for w in self._folders:
            w.stop()
        self._folders.clear()

    def set_tomoscan(self, prefix: Optional[str]) -> None:
        """Watch this tomoScan prefix (None: stop watching)."""
        self.post("link", prefix)

    def watch_folder(self, folder: Path, poll: bool = False) -> None:
        """Queue new scan files appearing in ``folder`` (watchdog events; polling for network file systems)."""
        from tomocorioc.service.trigger.folder import FolderWatch
        w = FolderWatch(Path(folder), self.post, poll=poll)
        w.start()
        self._folders.append(w)
        self._set_status(f"watching {folder}" + (" (polling)" if poll else ""))

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=CHECK_PERIOD)
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                now = time.monotonic()
                self._act(self.detector.poll(now))
                self._check_pending(now)
            except Exception as exc:  # noqa: BLE001 - the trigger must outlive any one bad event
                text = f"trigger: {type(exc).__name__}: {exc}"
                if text != self._last_error:   # once per distinct error with its traceback, then on Message
                    log.exception("trigger event %r failed", event)
                    self.service.notice(text)
                    self._last_error = text

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "pv":
            _, pv, value, connected = event[:4]
            if pv == "StartScan" and connected:
                self._ever_connected = True
            self._act(self.detector.update(pv, value, connected, time.monotonic()))
            self._refresh_status()
        elif kind == "file":
            self._want(str(event[1]), "folder")
        elif kind == "link":
            self._relink(event[1])
        elif kind == "stop":
            self._stop.set()

    def _relink(self, prefix: Optional[str]) -> None:
        self._close_link()
        self.detector = ScanEndDetector(name_wait=self.detector.name_wait)
        if not prefix:
            self._set_status("off")
            return

        from tomocorioc.service.trigger.tomoscan import TomoScanLink
        self._link = TomoScanLink(prefix, self.post)
        self._ever_connected = False
        self._link.connect()
        self._last_text = ""
        self._refresh_status()

    def _close_link(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def _act(self, actions: List[Action]) -> None:
        for a in actions:
            if a.kind is ActionKind.QUEUE and a.file:
                self._want(a.file, "tomoscan")
            elif a.kind is ActionKind.SKIP:
                self.stats.skipped.append(a.file or "")
                self._set_status(f"skipped {Path(a.file).name if a.file else 'scan'}: {a.text}")
                self.service.notice(f"trigger: {a.text}" + (f" ({a.file})" if a.file else ""))
            else:
                self._set_status(a.text)
                self.service.notice(f"trigger: {a.text}")

    def _want(self, path: str, source: str) -> None:
        try:
            real = self.accept(path)
        except ValueError as exc:
            self._set_status(f"not queued: {exc}")
            self.service.notice(f"trigger: {exc}")
            return
        if real in self._pending or self.service.queue.find(real) is not None:
            return
        now = time.monotonic()
        self._pending[real] = _Pending(real, source, now, now + self.complete_timeout, Stability(self.quiet),
                                       ended=self.detector.ended_at if source == "tomoscan" else None)
        self._set_status(f"waiting for {Path(real).name} to be complete")
        self._check_pending(now)

    def _check_pending(self, now: float) -> None:
        for path, p in list(self._pending.items()):
            if now < p.next_check:
                continue
            p.next_check = now + CHECK_PERIOD
            short, why = inspect_file(path)
            if why is None or short:
                st = os.stat(path)
                if p.stability.observe(st.st_size, st.st_mtime, now):
                    del self._pending[path]
                    if short:
                        # Closed, stable and short of tomoScan's planned angles: an aborted scan, even
                        # when ScanStatus said 'Scan complete' (tomoScan's base class can).
                        self._skip_aborted(p, why)
                    else:
                        self._queue(p, now)
                    continue
                why = why or "still changing"
            p.reason = why
            if now > p.deadline:
                del self._pending[path]
                reason = f"file never became complete within {self.complete_timeout:g} s ({why})"
                self.service.enqueue_failed(path, reason, self.phases())
                self.stats.failed.append(path)
                self._set_status(f"failed {Path(path).name}: {reason}")

    def _skip_aborted(self, p: _Pending, why: str) -> None:
        self.stats.skipped.append(p.path)
        text = f"skipped {Path(p.path).name}: aborted scan ({why}); not queued"
        self._set_status(text)
        self.service.notice(f"trigger: {text}")

    def _queue(self, p: _Pending, now: float) -> None:
        ids = self.service.enqueue([p.path], self.phases())
        if ids:
            self.stats.queued.append(p.path)
            if p.ended is not None:
                self.stats.latency[p.path] = now - p.ended
            self._set_status(f"queued {Path(p.path).name}")
            log.info("trigger: queued %s (%s, %.2f s after it was seen)", p.path, p.source, now - p.seen)

    def _set_status(self, text: str) -> None:
        """Record the latest trigger event; TriggerStatus shows it after the link state."""
        self._last_text = " ".join(text.split())
        log.info("trigger: %s", self._last_text)
        self._refresh_status()

    def _refresh_status(self) -> None:
        if self._link is None:
            self.status = self._last_text[:300] or "off"
            return
        words = {LinkState.DISCONNECTED: "disconnected" if self._ever_connected else "connecting",
                 LinkState.IDLE: "connected, waiting for a scan", LinkState.SCANNING: "connected, scan running",
                 LinkState.AWAITING_NAME: "scan ended, waiting for FullFileName"}
        text = f"tomoScan {self._link.prefix}: {words[self.detector.state]}"
        self.status = (text + (f"; {self._last_text}" if self._last_text else ""))[:300]


__all__ = ["TriggerManager", "check_complete", "TriggerStats"]
