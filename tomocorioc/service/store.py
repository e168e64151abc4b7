"""Durable state: queue rows, COR history and settings in SQLite (WAL).

Every queue mutation is written in one transaction before the call returns,
so a SIGKILL at any moment loses nothing that was acknowledged; on restart,
phases that were running go back to queued (see ``JobQueue.load``).

A commit reaches the operating system before it returns (that is what a
killed or crashed IOC needs); it reaches the disk (fsync) within SYNC_PERIOD,
from a thread of its own.  An fsync per commit (``synchronous=FULL``) cost a
settings put 3-30 ms under load, most of it waiting for the journal to flush
the reconstructions the workers were writing, and only a power failure or a
kernel crash in that second could tell the difference.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tomocorioc.core.jobs import Row

log = logging.getLogger(__name__)

LOCK_FILE = "tomocorioc.lock"
SYNC_PERIOD = 1.0   # s: a commit is on the disk (fsync) at most this long after it returned
GENERATION = "settings_generation"   # meta key: how many settings writes this store has committed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, position INTEGER NOT NULL, path TEXT UNIQUE NOT NULL,
                                 data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cor_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, row_id INTEGER NOT NULL,
                                        path TEXT, time REAL NOT NULL, old REAL, new REAL, source TEXT,
                                        reason TEXT);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(OSError):
    """The state database refused a write (full disk, read-only, I/O error); nothing of it was written."""


def describe(exc: BaseException, path: Optional[Path]) -> str:
    """One line saying why the store failed, naming the disk-full case as such."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = str(path.parent) if path is not None else "memory"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "disk is full" in text or "No space left" in text:
        return f"no space left on device: {where}"
    if isinstance(exc, UnicodeError):
        return f"a name cannot be stored: {text}"
    return f"{type(exc).__name__}: {text} ({where})"


def _own(state_dir: Path) -> int:
    """Hold ``state_dir/tomocorioc.lock`` (flock) for this process; StoreError when another holds it.

    Two services on one state directory (a second IOC started by mistake, a
    ``run --state`` beside the IOC) would both dispatch the same rows and
    overwrite each other's state.  The kernel drops the lock with the
    process, SIGKILL included, so a restart never finds a stale one.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"state directory {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"state directory {state_dir}: cannot lock it ({exc.strerror or exc})") from None
        raise StoreError(f"state directory {state_dir} is in use by another tomocorioc (pid {holder}): "
                         "stop it, or give another --state") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class StateStore:
    """SQLite file under the state directory; safe to share between threads."""

    def __init__(self, state_dir: Path | str | None) -> None:
        """Open (or create) the database; StoreError with one line when it cannot (a corrupt file, a
        directory that cannot be made or written), nothing half-opened left behind."""
        self._lock = threading.Lock()
        self.path = None if state_dir is None else Path(state_dir) / "tomocorioc.sqlite"
        self._owner: Optional[int] = None if self.path is None else _own(self.path.parent)
        try:
            self._db = self._open(self.path)
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (GENERATION,)).fetchone()
            self._generation = int(json.loads(row[0])) if row else 0
        except (OSError, sqlite3.Error, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            hint = " (move it away to start with an empty queue)" if isinstance(exc, sqlite3.DatabaseError) else ""
            self._release()
            raise StoreError(f"state database {self.path or 'in memory'}: {why}{hint}") from None
        self._dirty = False
        self._sync_error = ""
        self._stop = threading.Event()
        self._syncer: Optional[threading.Thread] = None
        if self.path is not None:
            self._syncer = threading.Thread(target=self._sync_loop, name="store-sync", daemon=True)
            self._syncer.start()

    @staticmethod
    def _open(path: Optional[Path]) -> sqlite3.Connection:
        if path is None:
            db = sqlite3.connect(":memory:", check_same_thread=False)
        else:   # its directory exists: _own made it
            db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
                # NORMAL: no fsync per commit (the WAL is synced by _sync_loop, and by SQLite at checkpoints).
                db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.commit()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Sync what was committed, then close the database."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(timeout=SYNC_PERIOD + 5)
        self.sync()
        with self._lock:
            self._db.close()
        self._release()

    def _release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)     # the lock goes with the descriptor
            self._owner = None

    def sync(self) -> bool:
        """fsync the write-ahead log if anything was committed since the last sync; False if that failed."""
        if self.path is None or not self._dirty:
            return True
        self._dirty = False    # a commit from now on is synced next time
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return True        # checkpointed and removed: SQLite synced the database file itself
        except OSError as exc:
            return self._sync_failed(exc)
        try:
            os.fsync(fd)
        except OSError as exc:   # EIO/ENOSPC on write-back: tried again next period
            return self._sync_failed(exc)
        finally:
            os.close(fd)
        self._sync_error = ""
        return True

    def _sync_failed(self, exc: OSError) -> bool:
        self._dirty = True
        text = describe(exc, self.path)
        if text != self._sync_error:   # once per distinct reason, not every period
            log.warning("state store not synced to disk: %s", text)
            self._sync_error = text
        return False

    def _sync_loop(self) -> None:
        while not self._stop.wait(SYNC_PERIOD):
            self.sync()

    # -- rows ----------------------------------------------------------------------
    def save(self, rows: Sequence[Row], events: Iterable[dict] = (), removed: Iterable[int] = (),
             fixed_series: Optional[List[str]] = None) -> None:
        """Write changed rows (with their order keys), COR events, removals and the released series in one
        transaction; StoreError (nothing written) when the database refuses."""
        try:
            with self._lock, self._db:
                for rid in removed:
                    self._db.execute("DELETE FROM rows WHERE id=?", (rid,))
                for r in rows:
                    self._db.execute("INSERT INTO rows(id, position, path, data) VALUES(?,?,?,?) "
                                     "ON CONFLICT(id) DO UPDATE SET position=excluded.position, data=excluded.data",
                                     (r.id, r.order, r.path, json.dumps(r.to_dict())))
                for e in events:
                    self._db.execute("INSERT INTO cor_history(row_id, path, time, old, new, source, reason) "
                                     "VALUES(?,?,?,?,?,?,?)",
                                     (e["row_id"], e.get("path"), e.get("time", time.time()), e.get("old"),
                                      e.get("new"), e.get("source"), e.get("reason")))
                if fixed_series is not None:
                    self._set_meta("fixed_series", fixed_series)
        except (sqlite3.Error, ValueError, OSError) as exc:   # ValueError: a str sqlite cannot encode
            raise StoreError(f"state store failing: {describe(exc, self.path)}") from exc
        self._dirty = True

    def load_rows(self) -> List[Row]:
        """All rows in queue order (each with its order key)."""
        with self._lock:
            cur = self._db.execute("SELECT position, data FROM rows ORDER BY position, id")
            out = []
            for pos, data in cur.fetchall():
                row = Row.from_dict(json.loads(data))
                row.order = float(pos)
                out.append(row)
            return out

    def cor_history(self, row_id: Optional[int] = None) -> List[Dict[str, Any]]:
        """COR changes, oldest first (optionally of one row)."""
        q = "SELECT row_id, time, old, new, source, reason FROM cor_history"
        args: Tuple = ()
        if row_id is not None:
            q += " WHERE row_id=?"
            args = (row_id,)
        with self._lock:
            cur = self._db.execute(q + " ORDER BY seq", args)
            keys = ("row_id", "time", "old", "new", "source", "reason")
            return [dict(zip(keys, rec)) for rec in cur.fetchall()]

    # -- settings and small state ------------------------------------------------
    @property
    def settings_generation(self) -> int:
        """How many settings writes this store has committed (0 for a new one); the autosave file carries it."""
        return self._generation

    def set_setting(self, key: str, value: Any) -> int:
        """Persist one JSON-able setting; returns the settings generation it made (StoreError when the
        database refuses: nothing written, the generation unchanged)."""
        try:
            with self._lock:
                with self._db:
                    self._db.execute("INSERT INTO settings(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE "
                                     "SET value=excluded.value", (key, json.dumps(value)))
                    self._set_meta(GENERATION, self._generation + 1)
                self._generation += 1
                generation = self._generation
        except (sqlite3.Error, ValueError, OSError) as exc:
            raise StoreError(f"state store failing: {describe(exc, self.path)}") from exc
        self._dirty = True
        return generation

    def settings(self) -> Dict[str, Any]:
        """All persisted settings."""
        with self._lock:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM settings")}

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE "
                         "SET value=excluded.value", (key, json.dumps(value)))

    def meta(self, key: str, default: Any = None) -> Any:
        """Read a piece of service state."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
