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

FILTERS: Tuple[str, ...] = ("parzen", "shepp", "ramp", "butterworth")
# 'sort' is the torch backend's own sorting-based ring filter (Vo et al. 2018,
# sorting step only); the others are tomocupy's names and run only there.
STRIPE_METHODS: Tuple[str, ...] = ("none", "sort", "fw", "ti", "vo-all")
TORCH_STRIPE_METHODS: Tuple[str, ...] = ("none", "sort")
DTYPES: Tuple[str, ...] = ("float32", "float16")
ALGORITHMS: Tuple[str, ...] = ("fourierrec", "lprec", "linerec")
FULL_FORMATS: Tuple[str, ...] = ("tiff", "h5")
COR_METHODS: Tuple[str, ...] = ("auto", "ai", "classical")   # phase B: auto = ai when a model is set
RUN_PHASES: Tuple[str, ...] = ("try", "infer", "full")        # what ``tomocorioc run`` does by default


class ParamError(ValueError):
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

    search_width: float = 50.0
    search_step: float = 0.5
    nsino: float = 0.5
    rotation_axis: Optional[float] = None  # None: auto (width/2, or the sinogram estimate)
    binning: int = 0
    fbp_filter: str = "parzen"
    remove_stripe_method: str = "none"
    dezinger: int = 0
    dezinger_threshold: float = 5000.0
    reconstruction_algorithm: str = "fourierrec"
    dtype: str = "float32"
    nsino_per_chunk: int = 8
    full_format: str = "tiff"
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sw = _finite("search_width", self.search_width)
        st = _finite("search_step", self.search_step)
        if not (0 < sw <= 10000):
            raise ParamError(f"search_width must be in (0, 10000] px, got {sw}")
        if not (0 < st <= sw):
            raise ParamError(f"search_step must be in (0, search_width], got {st}")
        if sw / st > 4000:
            raise ParamError(f"search_width/search_step gives {int(2 * sw / st)} candidates; at most 8000")
        ns = _finite("nsino", self.nsino)
        if not (0.0 <= ns <= 1.0):
            raise ParamError(f"nsino must be in [0, 1] (0 top row, 1 bottom row), got {ns}")
        if self.rotation_axis is not None:
            _finite("rotation_axis", self.rotation_axis)
        if not isinstance(self.binning, int) or not (0 <= self.binning <= 3):
            raise ParamError(f"binning must be 0..3 (2**binning), got {self.binning!r}")
        if self.fbp_filter not in FILTERS:
            raise ParamError(f"fbp_filter must be one of {', '.join(FILTERS)}, got {self.fbp_filter!r}")
        if self.remove_stripe_method not in STRIPE_METHODS:
            raise ParamError(
                f"remove_stripe_method must be one of {', '.join(STRIPE_METHODS)}, got {self.remove_stripe_method!r}")
        if not isinstance(self.dezinger, int) or self.dezinger < 0 or (self.dezinger and self.dezinger % 2 == 0):
            raise ParamError(f"dezinger must be 0 (off) or an odd window width, got {self.dezinger!r}")
        if _finite("dezinger_threshold", self.dezinger_threshold) <= 0:
            raise ParamError("dezinger_threshold must be > 0")
        if self.reconstruction_algorithm not in ALGORITHMS:
            raise ParamError(f"reconstruction_algorithm must be one of {', '.join(ALGORITHMS)}")
        if self.dtype not in DTYPES:
            raise ParamError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.nsino_per_chunk, int) or not (1 <= self.nsino_per_chunk <= 4096):
            raise ParamError(f"nsino_per_chunk must be 1..4096, got {self.nsino_per_chunk!r}")
        if self.full_format not in FULL_FORMATS:
            raise ParamError(f"full_format must be one of {', '.join(FULL_FORMATS)}, got {self.full_format!r}")

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
        payload["phase"] = phase
        if cor is not None:
            payload["cor"] = round(float(cor), 3)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
