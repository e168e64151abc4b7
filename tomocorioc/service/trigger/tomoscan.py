"""The Channel Access link to tomoScan (pyepics / libca).

Monitors ``StartScan``, ``ScanStatus``, ``FullFileName`` and ``ServerRunning``
of one tomoScan prefix.  The callbacks run in libca's thread and only post
``("pv", name, value, connected)`` to the trigger loop: no work, no threads.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

from tomocorioc.core.scanwatch import WATCHED

log = logging.getLogger(__name__)

Post = Callable[..., None]


class TomoScanLink:
    """pyepics monitors on one tomoScan IOC, reporting to ``post``."""

    def __init__(self, prefix: str, post: Post) -> None:
        self.prefix = prefix
        self.post = post
        self._pvs: Dict[str, Any] = {}

    def connect(self) -> None:
        """Create the channels (non-blocking: values and connections arrive as events)."""
        import epics
        for name in WATCHED:
            as_string = name in ("ScanStatus", "FullFileName")
            pv = epics.PV(self.prefix + name, auto_monitor=True, form="time",
                          callback=self._value_cb(name, as_string),
                          connection_callback=self._conn_cb(name))
            self._pvs[name] = pv

    def _value_cb(self, name: str, as_string: bool) -> Callable[..., None]:
        def cb(value: Any = None, char_value: Any = None, **_: Any) -> None:
            if as_string:
                # char waveforms: pyepics gives the bytes as an array; char_value is the text
                value = char_value if isinstance(char_value, str) else value
            elif hasattr(value, "item"):
                value = value.item()
            self.post("pv", name, value, True)
        return cb

    def _conn_cb(self, name: str) -> Callable[..., None]:
        def cb(pvname: str = "", conn: bool = False, **_: Any) -> None:
            if not conn:
                self.post("pv", name, None, False)
            # On connection the first monitor update (the baseline) follows by itself.
        return cb

    def close(self) -> None:
        """Drop the channels."""
        pvs: List[Any] = list(self._pvs.values())
        self._pvs.clear()
        for pv in pvs:
            pv.clear_callbacks()
            pv.disconnect()


__all__ = ["TomoScanLink"]
