"""Folder watching for sites without tomoScan: new scan files -> the trigger loop.

Uses the ``watchdog`` package's native observer (inotify on Linux), or its
polling observer for network file systems where inotify sees nothing.
Handlers only post ``("file", path)``; completeness is the trigger loop's job.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
POLL_INTERVAL = 1.0


class FolderWatch:
    """Watches one folder (not recursive) for scan files being created, written or moved in."""

    def __init__(self, folder: Path, post: Callable[..., None], poll: bool = False) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        if not folder.is_dir():
            raise ValueError(f"not a directory: {folder}")
        self.folder, self.post, self.poll = folder, post, poll

        outer = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.is_directory:
                    return
                path = getattr(event, "dest_path", "") or event.src_path
                if event.event_type in ("created", "modified", "moved", "closed") and outer._is_scan(path):
                    outer.post("file", path)

        self._observer = PollingObserver(timeout=POLL_INTERVAL) if poll else Observer()
        self._observer.schedule(_Handler(), str(folder), recursive=False)

    @staticmethod
    def _is_scan(path: str) -> bool:
        name = Path(path).name
        return not name.startswith(".") and Path(name).suffix.lower() in SCAN_SUFFIXES

    def start(self) -> None:
        """Start the observer thread."""
        self._observer.start()
        log.info("watching %s%s", self.folder, " (polling)" if self.poll else "")

    def stop(self) -> None:
        """Stop the observer thread."""
        self._observer.stop()
        self._observer.join(5)


__all__ = ["FolderWatch", "SCAN_SUFFIXES"]
