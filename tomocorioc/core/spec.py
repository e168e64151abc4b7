"""Field specs: each setting's default, limits, units and choices, declared once on its dataclass (pure).

A settings dataclass declares a field with :func:`setting`; :func:`check_fields`
validates every declared field the same way (finite numbers within limits,
choices by membership), and :func:`spec_at` finds the spec of a dotted path
(``"params.search_width"``) so the PV table, the generated database, the
screens and the command line read the same numbers.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple


class SettingError(ValueError):
    """A setting out of range, of the wrong kind, or not one of its choices (one line)."""


@dataclass(frozen=True)
class Spec:
    """What a setting may be: default, inclusive limits, units, choices, a short description."""

    default: Any = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    units: str = ""
    choices: Tuple[Any, ...] = ()
    doc: str = ""
    integer: bool = False


_SPEC = "tomocorioc.spec"


def setting(default: Any = dataclasses.MISSING, *, lo: Optional[float] = None, hi: Optional[float] = None,
            units: str = "", choices: Tuple[Any, ...] = (), doc: str = "", integer: bool = False,
            factory: Optional[Callable[[], Any]] = None) -> Any:
    """A dataclass field carrying its :class:`Spec` (use instead of ``field``)."""
    shown = factory() if factory is not None else default
    md = {_SPEC: Spec(shown, lo, hi, units, tuple(choices), doc, integer)}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def spec_of(cls: Any, name: str) -> Spec:
    """The spec of field ``name`` of dataclass ``cls`` (a plain Spec with the default if undeclared)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if _SPEC in f.metadata:
                return f.metadata[_SPEC]
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            return Spec(default)
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def _fmt(v: float) -> str:
    return f"{v:g}"


def check_value(name: str, spec: Spec, value: Any) -> Any:
    """``value`` checked against ``spec`` (numbers finite and within limits, choices by membership)."""
    if spec.choices:
        if value not in spec.choices:
            raise SettingError(f"{name} must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
        return value
    if spec.lo is None and spec.hi is None and not spec.integer:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise SettingError(f"{name} must be finite, got {value!r}")
    if spec.integer and float(value) != int(value):
        raise SettingError(f"{name} must be a whole number, got {value!r}")
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        lo = "-inf" if spec.lo is None else _fmt(spec.lo)
        hi = "inf" if spec.hi is None else _fmt(spec.hi)
        units = f" {spec.units}" if spec.units else ""
        raise SettingError(f"{name} must be in {lo}..{hi}{units}, got {_fmt(float(value))}")
    return value


def check_fields(obj: Any) -> None:
    """Check every field of dataclass instance ``obj`` that declares a spec (SettingError on the first bad one)."""
    for f in dataclasses.fields(obj):
        spec = f.metadata.get(_SPEC)
        if spec is not None:
            check_value(f.name, spec, getattr(obj, f.name))


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted path through dataclass attributes and dict keys."""
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def spec_at(obj: Any, path: str) -> Spec:
    """The spec of the field a dotted path ends at (dict entries have a plain spec with their current value)."""
    *parents, last = path.split(".")
    parent = get_path(obj, ".".join(parents)) if parents else obj
    if isinstance(parent, Mapping):
        return Spec(parent.get(last))
    return spec_of(type(parent), last)


def with_path(obj: Any, path: str, value: Any) -> Any:
    """A copy of ``obj`` with the value at ``path`` replaced (dataclasses re-validated; ``None`` drops a dict key)."""
    head, _, rest = path.partition(".")
    if isinstance(obj, Mapping):
        new: Dict[str, Any] = dict(obj)
        inner = with_path(obj.get(head), rest, value) if rest else value
        if inner is None:
            new.pop(head, None)
        else:
            new[head] = inner
        return new
    inner = with_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: inner})


__all__ = ["Spec", "SettingError", "setting", "spec_of", "spec_at", "check_value", "check_fields", "get_path",
           "with_path"]
