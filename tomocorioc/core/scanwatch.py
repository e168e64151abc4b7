"""When has a tomoScan scan ended, and which file did it write? (pure: no EPICS, no I/O)

:class:`ScanEndDetector` is fed the monitor updates of tomoScan's records
(``StartScan``, ``ScanStatus``, ``FullFileName``, ``ServerRunning``) in the
order they arrived, with their connection state, and returns what to do.
The rules, from how tomoScan behaves:

* a scan has ended when ``StartScan`` goes Acquire -> Done *while connected*;
  the first value after a (re)connect is only a baseline, so values restored
  by tomoScan's autosave when its IOC restarts never start work;
* the file is ``FullFileName``, which tomoScan copies from the file plugin
  *after* the busy drops: take the value once it differs from the one seen
  when the scan started (waiting up to ``name_wait`` seconds);
* a scan whose ``ScanStatus`` showed an error or abort is skipped.

:class:`Stability` decides when a file has stopped growing.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

WATCHED = ("StartScan", "ScanStatus", "FullFileName", "ServerRunning")
_BAD_STATUS = re.compile(r"abort|error|fail|cancel", re.IGNORECASE)


class ActionKind(str, enum.Enum):
    """What the detector asks its caller to do."""

    QUEUE = "queue"      #: a scan ended: wait for the file to be complete, then queue it
    SKIP = "skip"        #: a scan ended badly: do not queue (reason given)
    NOTICE = "notice"    #: tell the operator (TriggerStatus / Message)


@dataclass
class Action:
    """One thing to do, with the file (QUEUE/SKIP) and a one-line text."""

    kind: ActionKind
    text: str
    file: Optional[str] = None


class LinkState(str, enum.Enum):
    """The detector's view of the scan."""

    DISCONNECTED = "disconnected"
    IDLE = "idle"                  #: connected, no scan running
    SCANNING = "scanning"          #: StartScan is Acquire
    AWAITING_NAME = "awaiting file name"  #: busy dropped, FullFileName not updated yet


def as_text(value: Any) -> str:
    """A char-waveform or string value as text (NULs and surrounding blanks dropped)."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("latin-1", errors="replace")
    elif not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "".join(chr(int(c)) for c in value if int(c) != 0)
    return str(value).split("\x00", 1)[0].strip()


def busy_value(value: Any) -> Optional[int]:
    """StartScan as 0 (Done) / 1 (Acquire), from an index or a state string; None if unknown."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("done", "0"):
            return 0
        if v in ("acquire", "busy", "1"):
            return 1
        return None
    try:
        return 1 if int(value) else 0
    except (TypeError, ValueError):
        return None


@dataclass
class ScanEndDetector:
    """Turns tomoScan monitor updates into 'queue this file' / 'skip' actions."""

    name_wait: float = 10.0
    state: LinkState = LinkState.DISCONNECTED
    values: Dict[str, Any] = field(default_factory=dict)
    connected: Dict[str, bool] = field(default_factory=dict)
    _name_at_start: Optional[str] = None
    _bad_status: Optional[str] = None
    _skip: Optional[str] = None
    ended_at: float = 0.0            #: ``now`` of the last busy drop
    _ended_status: str = ""
    last_file: Optional[str] = None

    def update(self, pv: str, value: Any, connected: bool, now: float) -> List[Action]:
        """Feed one monitor update (or a connection change with ``value`` None)."""
        if pv not in WATCHED:
            return []
        was = self.connected.get(pv, False)
        self.connected[pv] = connected
        if not connected:
            self.values.pop(pv, None)
            out: List[Action] = []
            if self.state is LinkState.AWAITING_NAME and pv in ("StartScan", "FullFileName"):
                out.append(Action(ActionKind.NOTICE, "tomoScan disconnected before the file name of the last scan "
                                  "arrived; that scan was not queued"))
            if pv == "StartScan":
                self.state = LinkState.DISCONNECTED
            return out
        if value is None:
            return []
        first = not was or pv not in self.values
        old = self.values.get(pv)
        self.values[pv] = value
        if first:
            # A baseline, never a transition: autosave-restored values land here after a restart.
            if pv == "StartScan":
                self.state = LinkState.SCANNING if busy_value(value) == 1 else LinkState.IDLE
                if self.state is LinkState.SCANNING:
                    self._begin()
            return []
        if pv == "StartScan":
            return self._busy(busy_value(old), busy_value(value), now)
        if pv == "ScanStatus":
            text = as_text(value)
            if self.state is LinkState.SCANNING and _BAD_STATUS.search(text):
                self._bad_status = text
            return []
        if pv == "FullFileName" and self.state is LinkState.AWAITING_NAME:
            name = as_text(value)
            if name and name != self._name_at_start:
                return self._finish(name)
        return []

    def _begin(self) -> None:
        self._name_at_start = as_text(self.values.get("FullFileName", ""))
        self._bad_status = None

    def _busy(self, old: Optional[int], new: Optional[int], now: float) -> List[Action]:
        if old == 0 and new == 1:
            self.state = LinkState.SCANNING
            self._begin()
            return []
        if not (old == 1 and new == 0):
            return []
        status = as_text(self.values.get("ScanStatus", ""))
        bad = self._bad_status or (status if _BAD_STATUS.search(status) else None)
        self.ended_at, self._ended_status = now, status
        if self.state is not LinkState.SCANNING:
            self.state = LinkState.IDLE
            return []
        # A bad scan also waits for its name: FullFileName still names the previous scan.
        self._skip = f"scan ended with '{bad}': not queued" if bad else None
        current = as_text(self.values.get("FullFileName", ""))
        if current and current != self._name_at_start:
            return self._finish(current)   # the name changed during the scan already
        self.state = LinkState.AWAITING_NAME
        return []

    def _finish(self, name: str) -> List[Action]:
        self.state = LinkState.IDLE
        if self._skip:
            return [Action(ActionKind.SKIP, self._skip, name)]
        self.last_file = name
        return [Action(ActionKind.QUEUE, f"scan ended: {name}", name)]

    def poll(self, now: float) -> List[Action]:
        """Time-outs: a busy drop whose FullFileName never changed is reported, not guessed."""
        if self.state is LinkState.AWAITING_NAME and now - self.ended_at > self.name_wait:
            self.state = LinkState.IDLE
            if self._skip:
                return [Action(ActionKind.SKIP, self._skip)]
            name = as_text(self.values.get("FullFileName", ""))
            return [Action(ActionKind.NOTICE, f"scan ended ('{self._ended_status}') but FullFileName stayed "
                           f"'{name}' for {self.name_wait:g} s; not queued")]
        return []


@dataclass
class Stability:
    """A file is stable once its size and mtime have not changed for ``quiet`` seconds."""

    quiet: float = 1.0
    _sig: Optional[tuple] = None
    _since: float = 0.0

    def observe(self, size: int, mtime: float, now: float) -> bool:
        """Record a sample; True when the file has been unchanged for ``quiet`` seconds."""
        sig = (int(size), float(mtime))
        if sig != self._sig:
            self._sig, self._since = sig, now
            return False
        return now - self._since >= self.quiet


__all__ = ["ScanEndDetector", "Action", "ActionKind", "LinkState", "Stability", "as_text", "busy_value",
           "WATCHED"]
