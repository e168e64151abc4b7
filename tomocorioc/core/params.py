"""Reconstruction parameters: one validated, hashable record (pure).

The field names follow tomocupy's command-line flags so a parameter set maps
1:1 onto a ``tomocupy recon`` call and onto a per-dataset JSON sidecar.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from tomocorioc.core.geometry import GEOMETRIES
from tomocorioc.core.spec import SettingError, check_fields, setting

# tomocupy's --fbp-filter choices (parzen first: the default); tests/test_tomocupy_options.py checks them.
FILTERS: Tuple[str, ...] = ("parzen", "shepp", "ramp", "hann", "hamming", "cosine", "cosine2", "none")
# Filters this project once offered that tomocupy never had, with the nearest tomocupy filter.
RETIRED_FILTERS: Dict[str, str] = {"butterworth": "parzen"}
# 'sort' is the torch backend's own sorting-based ring filter (Vo et al. 2018,
# sorting step only); the others are tomocupy's names and run only there.
STRIPE_METHODS: Tuple[str, ...] = ("none", "sort", "fw", "ti", "vo-all")
TORCH_STRIPE_METHODS: Tuple[str, ...] = ("none", "sort")
DTYPES: Tuple[str, ...] = ("float32", "float16")
ALGORITHMS: Tuple[str, ...] = ("fourierrec", "lprec", "linerec")
FULL_FORMATS: Tuple[str, ...] = ("tiff", "h5")
COR_METHODS: Tuple[str, ...] = ("auto", "ai", "classical")   # phase B: auto = ai when a model is set
METRICS: Tuple[str, ...] = ("entropy", "negative", "tv", "std")  # classical image sharpness metrics
DEFAULT_METRIC = "entropy"
RUN_PHASES: Tuple[str, ...] = ("try", "infer", "full")        # what ``tomocorioc run`` does by default


class ParamError(SettingError):
    """A reconstruction parameter is out of range or of the wrong kind."""


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParamError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ParamError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class ReconParams:
    """Everything that changes a try or full reconstruction's output."""

    search_width: float = setting(50.0, lo=0.5, hi=1000, units="px", doc="Try grid half width")
    search_step: float = setting(0.5, lo=0.01, hi=100, units="px", doc="Try grid step")
    nsino: float = setting(0.5, lo=0, hi=1, doc="Try row (0 top .. 1 bottom)")
    rotation_axis: Optional[float] = None  # None: auto (width/2, or the sinogram estimate)
    binning: int = setting(0, choices=(0, 1, 2, 3), doc="Binning (2**N)")
    fbp_filter: str = setting("parzen", choices=FILTERS, doc="FBP filter")
    remove_stripe_method: str = setting("none", choices=STRIPE_METHODS, doc="Ring removal")
    dezinger: int = 0
    dezinger_threshold: float = setting(5000.0, lo=1e-9, doc="Dezinger threshold (counts over median)")
    reconstruction_algorithm: str = setting("fourierrec", choices=ALGORITHMS, doc="tomocupy algorithm")
    dtype: str = setting("float32", choices=DTYPES, doc="Reconstruction data type")
    nsino_per_chunk: int = setting(8, lo=1, hi=4096, integer=True, doc="Rows per chunk (full)")
    full_format: str = setting("tiff", choices=FULL_FORMATS, doc="Full reconstruction format")
    # auto: 180 or 360 from theta, 360-offset when the data show the axis near an edge.
    geometry: str = setting("auto", choices=GEOMETRIES, doc="Scan geometry (180, 360, 360-offset)")
    # Camera tilt correction (CamRot/ApplyTilt, per dataset in the sidecar): tomocupy's --rotate-proj-angle.
    rotate_proj_angle: float = setting(0.0, lo=-45.0, hi=45.0, units="deg",
                                       doc="Projection rotation, counter-clockwise (camera tilt)")
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fbp_filter in RETIRED_FILTERS:
            raise ParamError(f"fbp_filter {self.fbp_filter!r} is no longer offered (tomocupy has no such filter); "
                             f"use {RETIRED_FILTERS[self.fbp_filter]!r} or one of {', '.join(FILTERS)}")
        for name in ("search_width", "search_step", "nsino", "dezinger_threshold", "rotate_proj_angle"):
            _finite(name, getattr(self, name))   # a clear message for text and NaN before the range check
        if not isinstance(self.binning, int) or isinstance(self.binning, bool):
            raise ParamError(f"binning must be 0..3 (2**binning), got {self.binning!r}")
        try:
            check_fields(self)
        except SettingError as exc:
            raise ParamError(str(exc)) from None
        if self.search_step > self.search_width:
            raise ParamError(f"search_step {self.search_step:g} must not exceed search_width {self.search_width:g}")
        if self.search_width / self.search_step > 4000:
            raise ParamError(f"search_width/search_step gives {int(2 * self.search_width / self.search_step)} "
                             "candidates; at most 8000")
        if self.rotation_axis is not None:
            _finite("rotation_axis", self.rotation_axis)
        if not isinstance(self.dezinger, int) or self.dezinger < 0 or (self.dezinger and self.dezinger % 2 == 0):
            raise ParamError(f"dezinger must be 0 (off) or an odd window width, got {self.dezinger!r}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (the sidecar format)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ReconParams":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamError(f"unknown parameter(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ReconParams":
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def digest(self, *, phase: str, cor: Optional[float] = None) -> str:
        """Short hash of what determines a phase's output, recorded beside it."""
        d = self.to_dict()
        if phase == "try":
            keep = ("search_width", "search_step", "nsino", "rotation_axis", "binning", "fbp_filter",
                    "remove_stripe_method", "dezinger", "dezinger_threshold", "reconstruction_algorithm", "dtype")
        else:
            keep = ("binning", "fbp_filter", "remove_stripe_method", "dezinger", "dezinger_threshold",
                    "reconstruction_algorithm", "dtype", "full_format")
        payload = {k: d[k] for k in keep}
        if d.get("geometry", "auto") != "auto":   # only when set: digests of existing outputs stay valid
            payload["geometry"] = d["geometry"]
        if self.rotate_proj_angle:  # only when set: digests of untilted outputs stay as they were
            payload["rotate_proj_angle"] = round(float(self.rotate_proj_angle), 4)
        payload["phase"] = phase
        if cor is not None:
            payload["cor"] = round(float(cor), 3)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
