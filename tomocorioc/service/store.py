"""Durable state: queue rows, COR history and settings in SQLite (WAL).

Every queue mutation is written in one transaction before the call returns,
so a SIGKILL at any moment loses nothing that was acknowledged; on restart,
phases that were running go back to queued (see ``JobQueue.load``).
"""
from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tomocorioc.core.jobs import Row

log = logging.getLogger(__name__)

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


class StateStore:
    """SQLite file under the state directory; safe to share between threads."""

    def __init__(self, state_dir: Path | str | None) -> None:
        self._lock = threading.Lock()
        if state_dir is None:
            self.path = None
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            d = Path(state_dir)
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / "tomocorioc.sqlite"
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a transaction acknowledged to the operator survives power loss too.
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

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
    def set_setting(self, key: str, value: Any) -> None:
        """Persist one JSON-able setting (StoreError when the database refuses)."""
        try:
            with self._lock, self._db:
                self._db.execute("INSERT INTO settings(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE "
                                 "SET value=excluded.value", (key, json.dumps(value)))
        except (sqlite3.Error, ValueError, OSError) as exc:
            raise StoreError(f"state store failing: {describe(exc, self.path)}") from exc

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
