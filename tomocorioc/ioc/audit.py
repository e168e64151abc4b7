"""The audit trail: every put, accepted or refused, one JSON line in ``<state>/audit.jsonl`` (no EPICS imports).

The put path only appends a dict to a queue (microseconds); a writer thread
serialises and appends, flushing after each batch (no fsync: an audit line is
not worth a disk sync per put, and the OS writes it out within seconds even if
the IOC is killed).  The file is size-bounded: past ``max_bytes`` it is
renamed ``audit.jsonl.1`` (older ones shift up to ``backups``) and a new file
starts.  :func:`read_entries` reads the rotated files oldest first, for
``tomocorioc audit``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
MAX_BYTES = 10 * 1024 * 1024     # rotate past 10 MiB
BACKUPS = 5                       # audit.jsonl.1 .. .5 kept
MAX_VALUE = 8192                  # characters of a value kept in full (a long-string PV holds 4096)
_STOP = object()


def bounded(value: Any, limit: int = MAX_VALUE) -> Any:
    """A JSON-able form of a PV value, strings cut at ``limit`` characters (marked)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"...[{len(value) - limit} more]"
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [bounded(v, limit) for v in value[:64]]
    item = getattr(value, "item", None)   # numpy scalars
    if callable(item):
        try:
            return bounded(item(), limit)
        except (ValueError, TypeError):
            pass
    return bounded(str(value), limit)


def summary(entry: Dict[str, Any]) -> str:
    """One line for the AuditLast PV and the ``audit`` command."""
    new = entry.get("new")
    new_s = json.dumps(new) if not isinstance(new, str) else repr(new if len(new) <= 200 else new[:200] + "...")
    line = (f"{entry.get('time', '')} {entry.get('user', '?')}@{entry.get('host', '?')} {entry.get('pv', '?')}"
            f" = {new_s}: {entry.get('outcome', '?')}")
    return line + (f" ({entry['reason']})" if entry.get("reason") else "")


class AuditLog:
    """Appends entries to ``path`` from a writer thread; rotation by size."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes, self.backups = int(max_bytes), int(backups)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ioc-audit", daemon=True)
        self._error = ""
        self._thread.start()

    def record(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        """Queue one entry (stamped with the time now); returns it.  Cheap: the put path calls it."""
        now = time.time()
        entry = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"), **entry}
        self._queue.put(entry)
        return entry

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every entry queued so far is in the file (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:   # drain what else is queued: one write + flush per burst of puts
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [e for e in batch if isinstance(e, dict)]
            if entries:
                self._write(entries)
            for e in batch:
                if isinstance(e, threading.Event):
                    e.set()
            if any(e is _STOP for e in batch):
                return

    def _write(self, entries: List[Dict[str, Any]]) -> None:
        lines = [json.dumps(e, separators=(",", ":"), default=str) + "\n" for e in entries]
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            f = open(self.path, "a", encoding="utf-8")
            try:
                for line in lines:
                    n = len(line.encode("utf-8"))
                    if size and size + n > self.max_bytes:   # rotate between lines: no file grows past the bound
                        f.close()
                        self._rotate()
                        f = open(self.path, "a", encoding="utf-8")
                        size = 0
                    f.write(line)
                    size += n
            finally:
                f.close()
        except OSError as exc:   # a full disk must not stop puts: one log line per distinct error
            msg = f"audit trail not written ({self.path}): {exc.strerror or exc}"
            if msg != self._error:
                log.error("%s", msg)
                self._error = msg
            return
        self._error = ""

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()


def audit_files(state: Path) -> List[Path]:
    """The audit files under ``state``, oldest first."""
    base = Path(state) / AUDIT_FILE
    rotated = sorted(base.parent.glob(AUDIT_FILE + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
                     else 0)
    return [p for p in rotated if p.suffix[1:].isdigit()] + ([base] if base.exists() else [])


def parse_since(text: str) -> datetime:
    """``--since``: an ISO time (``2026-12-02T01:00``, UTC unless it says otherwise) or ``<N>[smhd]`` ago."""
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return datetime.fromtimestamp(time.time() - float(t[:-1]) * units[t[-1]], timezone.utc)
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"--since: not a time: {text!r} (an ISO time like 2026-12-02T01:00, or 10m, 2h, 1d)") \
            from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read_entries(state: Path, since: Optional[datetime] = None, pv: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """The entries of the audit trail, oldest first, filtered by time and PV name (with or without prefix)."""
    for path in audit_files(state):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    e = json.loads(line)
                except ValueError:
                    log.warning("%s:%d: not a JSON line; skipped", path, n)
                    continue
                if pv and pv not in (e.get("pv"), e.get("name")):
                    continue
                if since is not None:
                    try:
                        when = datetime.fromisoformat(e.get("time", ""))
                    except ValueError:
                        continue
                    if when < since:
                        continue
                yield e


__all__ = ["AuditLog", "AUDIT_FILE", "bounded", "summary", "read_entries", "audit_files", "parse_since"]
