"""PV values <-> setting values, with put validation (pure: no EPICS imports).

A bound setting PV (``PVDef.setting``) has a converter: :meth:`Converter.to_setting`
turns what a client put into the setting's value or raises :class:`PutError`
with a one-line reason naming the PV; :meth:`Converter.to_pv` turns the
setting's value into what the PV shows.  Limits come from the PV definition,
which took them from the setting's spec (:mod:`tomocorioc.core.spec`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Tuple

if TYPE_CHECKING:
    from tomocorioc.ioc.pvdefs import PVDef


class PutError(ValueError):
    """A rejected put; the message is one line for ``Message`` and the client."""


def one_line(msg: object) -> str:
    """``msg`` as one line of at most 300 printable characters (a control character, from a put's bytes
    or a file name, shown as ``?``)."""
    line = " ".join(str(msg).split())[:300]
    return line if line.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in line)


def _g(v: Optional[float]) -> str:
    return "?" if v is None else f"{v:g}"


def shown(value: Any) -> str:
    """A put value as a person writes it: ``nan``, ``1.5``, ``'abc'`` (never ``np.float64(nan)``)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return repr(value.rstrip("\x00"))
    if hasattr(value, "tolist"):       # numpy scalars and one-element arrays
        value = value.tolist()
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def enum_index(p: "PVDef", value: Any) -> int:
    """An enum put as index or state string -> index (PutError otherwise)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        v = value.strip()
        if v in p.enums:
            return p.enums.index(v)
        if not v.lstrip("-").isdigit():
            raise PutError(f"{p.name}: {shown(value)} is not one of {', '.join(p.enums)}")
        value = int(v)
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise PutError(f"{p.name}: {shown(value)} is not one of {', '.join(p.enums)}") from None
    if isinstance(value, float) and (not math.isfinite(value) or value != i):
        raise PutError(f"{p.name}: {shown(value)} is not a state index")
    if not 0 <= i < len(p.enums):
        raise PutError(f"{p.name}: index {i} out of range 0..{len(p.enums) - 1}")
    return i


def number(p: "PVDef", value: Any) -> float:
    """A finite number within the PV's limits (PutError otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PutError(f"{p.name}: {shown(value)} is not a number") from None
    if not math.isfinite(v):
        raise PutError(f"{p.name}: {shown(value)} is not finite")
    if (p.lo is not None and v < p.lo) or (p.hi is not None and v > p.hi):
        raise PutError(f"{p.name}: {v:g} out of range {_g(p.lo)}..{_g(p.hi)}")
    return v


def text(p: "PVDef", value: Any) -> str:
    """A one-line string put (char arrays arrive as bytes or str; trailing NULs dropped)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        raise PutError(f"{p.name}: expected a string, got {shown(value)}")
    value = value.rstrip("\x00").strip()
    if "\n" in value or "\r" in value:
        raise PutError(f"{p.name}: must be one line")
    return value


class Converter:
    """How a bound PV's value maps onto its setting's value."""

    def to_setting(self, p: "PVDef", value: Any) -> Any:
        """The setting's value for a client's put (PutError when it is not acceptable)."""
        raise NotImplementedError

    def to_pv(self, p: "PVDef", value: Any) -> Any:
        """What the PV shows for the setting's value."""
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Converter):
    """An ``ao`` record <-> a float setting (limits from the PV, which took them from the spec)."""

    def to_setting(self, p: "PVDef", value: Any) -> float:
        return number(p, value)

    def to_pv(self, p: "PVDef", value: Any) -> float:
        return float(value or 0.0)


@dataclass(frozen=True)
class Flag(Converter):
    """A ``bo`` record (state 0/1) <-> a bool setting."""

    def to_setting(self, p: "PVDef", value: Any) -> bool:
        return bool(enum_index(p, value))

    def to_pv(self, p: "PVDef", value: Any) -> int:
        return int(bool(value))


@dataclass(frozen=True)
class Choice(Converter):
    """An ``mbbo`` record: state i <-> ``values[i]`` (the PV's labels may differ from the values)."""

    values: Tuple[Any, ...]

    def to_setting(self, p: "PVDef", value: Any) -> Any:
        return self.values[enum_index(p, value)]

    def to_pv(self, p: "PVDef", value: Any) -> int:
        return self.values.index(value) if value in self.values else 0


@dataclass(frozen=True)
class Text(Converter):
    """A string record <-> a string setting; blank may mean None; optionally an existing file."""

    blank_is_none: bool = False
    squeeze: bool = False            # drop every space (comma lists)
    existing_file: bool = False

    def to_setting(self, p: "PVDef", value: Any) -> Optional[str]:
        s = text(p, value)
        if self.squeeze:
            s = s.replace(" ", "")
        if self.existing_file and s and not os.path.isfile(s):
            raise PutError(f"{p.name}: no such file: {s}")
        return None if (self.blank_is_none and not s) else s

    def to_pv(self, p: "PVDef", value: Any) -> str:
        return "" if value is None else str(value)


@dataclass(frozen=True)
class NumberText(Converter):
    """A string record holding a number or blank (None), e.g. a display limit that may be automatic."""

    blank_means: str = "auto"

    def to_setting(self, p: "PVDef", value: Any) -> Optional[float]:
        s = text(p, value)
        if not s:
            return None
        try:
            num = float(s)
        except ValueError:
            raise PutError(f"{p.name}: {s!r} is not a number (blank: {self.blank_means})") from None
        if not math.isfinite(num):
            raise PutError(f"{p.name}: {s!r} is not finite")
        return num

    def to_pv(self, p: "PVDef", value: Any) -> str:
        if value is None or value == "":
            return ""
        return f"{value:g}" if isinstance(value, (int, float)) else str(value)


__all__ = ["PutError", "one_line", "shown", "enum_index", "number", "text", "Converter", "Number", "Flag", "Choice",
           "Text", "NumberText"]
