"""TomoLog's settings: where a summary is published and how it is displayed (pure, validated).

The choices are TomoLog's own (its ``config.py``); the IOC checks a put
against them and the worker builds the ``tomolog run`` command from them.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

log = logging.getLogger(__name__)

CLOUD_SERVICES = ("imgur", "aps")                  # tomolog config.py 'cloud-service' choices
BEAMLINES = ("None", "2-bm", "7-bm", "32-id")      # tomolog config.py 'beamline' choices
_SLIDES_URL = re.compile(r"/presentation/d/[A-Za-z0-9_-]+/")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def _opt_int(name: str, v: Any) -> Optional[int]:
    if _blank(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number or blank (middle slice), got {v!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be a whole number or blank (middle slice), got {v!r}")
    i = int(f)
    if i == -1:   # TomoLog's own spelling of "middle"
        return None
    if i < 0:
        raise ValueError(f"{name} must be >= 0 (or blank/-1 for the middle slice), got {i}")
    return i


def _opt_float(name: str, v: Any) -> Optional[float]:
    if _blank(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or blank (auto contrast), got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


@dataclass
class TomoLogSettings:
    """What TomoLog needs besides the file: where to publish and how to display.

    ``idx/idy/idz`` None (or -1, or blank) = the middle of the volume; ``vmin``
    and ``vmax`` None, blank or equal (TomoLog's own "auto" convention, and what
    an untouched IOC pair of 0/0 reads as) = per-file 5-95 % auto contrast.
    """

    presentation_url: str
    cloud_service: str = "imgur"
    beamline: str = "None"
    idx: Optional[int] = None
    idy: Optional[int] = None
    idz: Optional[int] = None
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    note: str = ""
    program: str = "tomolog"
    timeout: float = 300.0
    public: bool = False

    def __post_init__(self) -> None:
        url = "" if self.presentation_url is None else str(self.presentation_url).strip()
        if not url:
            raise ValueError("presentation_url is required (the Google Slides URL TomoLog adds slides to)")
        if not _SLIDES_URL.search(url):
            # TomoLog takes the id as url.split('/')[-2]: the URL must have a segment after the id.
            raise ValueError("presentation_url must look like https://docs.google.com/presentation/d/<id>/edit, "
                             f"got {url!r}")
        self.presentation_url = url
        cs = str(self.cloud_service or "").strip().lower()
        if cs not in CLOUD_SERVICES:
            raise ValueError(f"cloud_service must be one of {', '.join(CLOUD_SERVICES)}, got {self.cloud_service!r}")
        self.cloud_service = cs
        bl = "None" if _blank(self.beamline) else str(self.beamline).strip().lower()
        bl = "None" if bl == "none" else bl
        if bl not in BEAMLINES:
            raise ValueError(f"beamline must be one of {', '.join(BEAMLINES)} (None = generic slide), "
                             f"got {self.beamline!r}")
        self.beamline = bl
        self.idx = _opt_int("idx", self.idx)
        self.idy = _opt_int("idy", self.idy)
        self.idz = _opt_int("idz", self.idz)
        self.vmin = _opt_float("vmin", self.vmin)
        self.vmax = _opt_float("vmax", self.vmax)
        if (self.vmin is None) != (self.vmax is None):
            raise ValueError(f"set both vmin and vmax, or leave both blank for auto contrast "
                             f"(got vmin={self.vmin}, vmax={self.vmax})")
        if self.vmin is not None and self.vmax is not None and self.vmin > self.vmax:
            raise ValueError(f"vmin must be below vmax, got vmin={self.vmin:g} > vmax={self.vmax:g}")
        self.note = "" if self.note is None else str(self.note).strip()
        if not str(self.program or "").strip():
            raise ValueError("program must name the tomolog executable")
        self.program = str(self.program).strip()
        try:
            self.timeout = float(self.timeout)
        except (TypeError, ValueError):
            raise ValueError(f"timeout must be a number of seconds, got {self.timeout!r}") from None
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if isinstance(self.public, str):
            self.public = self.public.strip().lower() in ("1", "true", "yes", "on")
        self.public = bool(self.public)

    @property
    def manual_range(self) -> Optional[Tuple[float, float]]:
        """``(vmin, vmax)`` when the operator fixed the display range, else None (auto)."""
        if self.vmin is None or self.vmax is None or self.vmin == self.vmax:
            return None
        return self.vmin, self.vmax

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TomoLogSettings":
        """Build from a settings dict; TomoLog's own names (``min``, ``presentation-url``) are accepted too."""
        aliases = {"min": "vmin", "max": "vmax", "url": "presentation_url"}
        known: Dict[str, Any] = {}
        for key, value in (d or {}).items():
            k = str(key).replace("-", "_")
            k = aliases.get(k, k)
            if k in cls.__dataclass_fields__:
                known[k] = value
            else:
                log.warning("ignoring unknown TomoLog setting %r", key)
        if _blank(known.get("presentation_url")):
            raise ValueError("presentation_url is required (the Google Slides URL TomoLog adds slides to)")
        return cls(**known)


def check_cloud_service(value: Optional[str]) -> Optional[str]:
    """A put to TomoLogCloud: one of :data:`CLOUD_SERVICES` (lower-cased) or blank (TomoLog's default)."""
    if _blank(value):
        return None
    cs = str(value).strip().lower()
    if cs not in CLOUD_SERVICES:
        raise ValueError(f"cloud_service must be one of {', '.join(CLOUD_SERVICES)}, got {value!r}")
    return cs


def check_beamline(value: Optional[str]) -> Optional[str]:
    """A put to TomoLogBeamline: one of :data:`BEAMLINES` (``None`` = generic slide) or blank."""
    if _blank(value):
        return None
    bl = str(value).strip().lower()
    bl = "None" if bl == "none" else bl
    if bl not in BEAMLINES:
        raise ValueError(f"beamline must be one of {', '.join(BEAMLINES)}, got {value!r}")
    return bl


def check_presentation_url(url: Optional[str], allow: Tuple[str, ...]) -> Optional[str]:
    """A put to TomoLogUrl: blank, or a Slides URL starting with one of ``allow`` (any Slides URL when empty)."""
    if _blank(url):
        return None
    u = str(url).strip()
    if not _SLIDES_URL.search(u):
        raise ValueError(f"presentation_url must look like https://docs.google.com/presentation/d/<id>/edit, got {u!r}")
    if allow and not any(u.startswith(prefix) for prefix in allow):
        raise ValueError(f"presentation_url {u!r} is not under an allowed prefix (serve --tomolog-allow): "
                         + ", ".join(allow))
    return u


__all__ = ["TomoLogSettings", "CLOUD_SERVICES", "BEAMLINES", "check_cloud_service", "check_beamline",
           "check_presentation_url"]
