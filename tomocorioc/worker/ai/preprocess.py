"""Slice preprocessing and window placement, equal to the tomocor reference where it works.

Reference path (any slice whose ×2-downsampled size is at least one window):

1. downsample by 2 with an antialiased bilinear filter (PIL ``BILINEAR`` on a
   float image, used as is on CPU; on other devices
   ``torch.nn.functional.interpolate(bilinear, antialias=True)``, which
   reproduces it to ~1e-7), output size ``(h // 2, w // 2)``;
2. min-max normalise over the slice, ``(x - min) / (max - min + 1e-8)``;
3. requantise to 8 bits by truncation, ``floor(x * 255) / 255``;
4. cut K windows of S×S (S = the model's image size, 518), the same for every
   slice of a stack, placed by numpy's legacy RNG seeded 10:
   ``RandomState(10).multinomial(1, p, K)`` over the flattened pixels, p uniform
   on the disk inscribed in the image; a sampled pixel (r, c) gives the corner
   ``(r - S//2, c - S//2)`` clipped to ``[0, size - S - 1]`` (``[0, 0]`` when the
   image is exactly S).

What the reference gets wrong and this module fixes (documented rule):

* **Small slices.**  With ``f`` = the fraction of a window that real pixels fill
  after the ×2 downsample (``min(h//2, S) * min(w//2, S) / S**2``):
  ``f == 1`` -> reference path; ``f >= 0.5`` -> keep the ×2 downsample (the
  pixel scale the model was trained at) and pad the short axes up to S;
  ``f < 0.5`` -> skip the downsample (so the window holds at least twice the
  real pixels) and pad only if the full-resolution slice is still below S.
  Padding is centred and uses the median of the normalised slice's border
  ring, i.e. the background a reconstruction shows at its edge.  Slices with
  a side below :data:`MIN_SIDE` pixels are not scored.
* **Tall / odd shapes.**  Sizes are floored, the disk is the one inscribed in
  the (possibly padded) image (radius from the shorter side; the reference
  used the row count, which only differs for tall slices) and corners are
  clipped per axis, so every window lies inside the image.
* **Non-finite pixels** are replaced by the median of the finite pixels before
  the downsample, so they neither poison the min-max nor zero the slice; a
  slice with more than ``max_nonfinite`` (default 50 %) non-finite pixels, or
  one that is constant, is reported as unscorable instead of scored.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

DOWNSAMPLE = 2
N_WINDOWS = 3
SEED = 10
MIN_SIDE = 32  # below this a slice has no structure worth scoring
MIN_REAL_FRACTION = 0.5  # see the small-slice rule in the module docstring
EPS = 1e-8  # the reference's min-max epsilon


class UnscorableSlice(ValueError):
    """A slice that cannot be scored meaningfully; the message is the reason."""


@dataclass(frozen=True)
class ScalePlan:
    """How slices of one input shape are resized, padded and windowed."""

    in_shape: Tuple[int, int]
    factor: int  # 2 = reference downsample, 1 = full resolution
    scaled_shape: Tuple[int, int]
    pad: Tuple[int, int, int, int]  # top, bottom, left, right
    corners: Tuple[Tuple[int, int], ...]  # (row, col) of each window, K of them
    window: int
    rule: str  # "reference" | "downsample+pad" | "full-res" | "full-res+pad"

    @property
    def shape(self) -> Tuple[int, int]:
        """Shape of the image the windows are cut from."""
        top, bottom, left, right = self.pad
        return self.scaled_shape[0] + top + bottom, self.scaled_shape[1] + left + right

    @property
    def unique_corners(self) -> Tuple[Tuple[int, int], ...]:
        """Distinct window corners, in first-seen order (identical windows are computed once)."""
        return tuple(dict.fromkeys(self.corners))

    @property
    def window_index(self) -> Tuple[int, ...]:
        """For each of the K windows, its position in :attr:`unique_corners`."""
        uniq = self.unique_corners
        return tuple(uniq.index(c) for c in self.corners)


def sample_corners(shape: Tuple[int, int], window: int, n: int = N_WINDOWS, seed: int = SEED
                   ) -> Tuple[Tuple[int, int], ...]:
    """Window corners drawn like the reference: multinomial over the inscribed disk."""
    rows, cols = shape
    y = np.arange(rows, dtype=np.float64)[:, None] - (rows - 1) / 2
    x = np.arange(cols, dtype=np.float64)[None, :] - (cols - 1) / 2
    radius = (min(rows, cols) - 1) / 2  # == the reference's (rows-1)/2 unless rows > cols
    disk = (x * x + y * y <= radius * radius).ravel()
    p = disk / disk.sum()
    draws = np.random.RandomState(seed).multinomial(1, p, n)
    flat = draws.argmax(axis=1)
    half = window // 2
    out = []
    for idx in flat:
        r, c = divmod(int(idx), cols)
        out.append((int(np.clip(r - half, 0, max(rows - window - 1, 0))),
                    int(np.clip(c - half, 0, max(cols - window - 1, 0)))))
    return tuple(out)


def plan_for_shape(shape: Tuple[int, int], window: int, n_windows: int = N_WINDOWS,
                   seed: int = SEED) -> ScalePlan:
    """The scale/pad/window plan for slices of ``shape`` (rule in the module docstring)."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_SIDE:
        raise UnscorableSlice(f"slice {h}x{w} is smaller than {MIN_SIDE} px")
    h2, w2 = h // DOWNSAMPLE, w // DOWNSAMPLE
    real = min(h2, window) * min(w2, window) / float(window * window)
    if real >= 1.0:
        factor, rule = DOWNSAMPLE, "reference"
    elif real >= MIN_REAL_FRACTION:
        factor, rule = DOWNSAMPLE, "downsample+pad"
    else:
        factor, rule = 1, "full-res"
    sh, sw = (h2, w2) if factor == DOWNSAMPLE else (h, w)
    ph, pw = max(window - sh, 0), max(window - sw, 0)
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if factor == 1 and (ph or pw):
        rule = "full-res+pad"
    final = (sh + ph, sw + pw)
    return ScalePlan((h, w), factor, (sh, sw), pad, sample_corners(final, window, n_windows, seed),
                     window, rule)


def as_2d(image: np.ndarray) -> np.ndarray:
    """A 2-D float32 view of a slice (singleton axes squeezed) or UnscorableSlice."""
    arr = np.asarray(image)
    if arr.ndim > 2:
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
    if arr.ndim != 2:
        raise UnscorableSlice(f"expected a 2-D slice, got shape {np.asarray(image).shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise UnscorableSlice(f"unsupported pixel type {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def prepare(image: np.ndarray, plan: ScalePlan, device: torch.device, quantize: bool = True,
            max_nonfinite: float = 0.5, backend: Optional[str] = None) -> torch.Tensor:
    """One slice -> the normalised (and padded) float32 image on ``device`` the windows are cut from.

    ``backend`` 'numpy' (PIL resize, the reference's own code path; default on
    CPU, where torch's thread pool makes these small ops slow on busy cores) or
    'torch' (default elsewhere, runs on the device); both give the same image up
    to one 8-bit level at quantisation boundaries.
    """
    backend = backend or ("numpy" if device.type == "cpu" else "torch")
    if backend == "numpy":
        return torch.from_numpy(_prepare_numpy(as_2d(image), plan, quantize, max_nonfinite)).to(device)
    if backend != "torch":
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    return _prepare_torch(as_2d(image), plan, device, quantize, max_nonfinite)


def _check_nonfinite(n_bad: int, size: int, max_nonfinite: float) -> None:
    if n_bad / size > max_nonfinite:
        raise UnscorableSlice(f"{100 * n_bad / size:.1f}% of the pixels are non-finite")


def _lower_median(a: np.ndarray) -> np.float32:
    """Lower median, like torch.median, so both backends fill and pad alike."""
    k = (a.size - 1) // 2
    return np.float32(np.partition(a.ravel(), k)[k])


def _prepare_numpy(x: np.ndarray, plan: ScalePlan, quantize: bool, max_nonfinite: float) -> np.ndarray:
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    if n_bad:
        _check_nonfinite(n_bad, x.size, max_nonfinite)
        # The median of the finite pixels is a value the slice already holds, so it
        # does not stretch the min-max range the way 0 or an extreme could.
        x = np.where(finite, x, _lower_median(x[finite])).astype(np.float32)
    if plan.factor != 1:
        sh, sw = plan.scaled_shape
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)).resize(
            (sw, sh), Image.BILINEAR), dtype=np.float32)
    lo, hi = x.min(), x.max()
    if not hi > lo:
        raise UnscorableSlice(f"constant image (all pixels {float(lo):g})")
    x = (x - lo) / (hi - lo + np.float32(EPS))
    if quantize:
        x = (x * np.float32(255)).astype(np.uint8) / np.float32(255)
    if any(plan.pad):
        top, bottom, left, right = plan.pad
        border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
        x = np.pad(x, ((top, bottom), (left, right)), mode="constant", constant_values=_lower_median(border))
    return np.ascontiguousarray(x, dtype=np.float32)


def _prepare_torch(arr: np.ndarray, plan: ScalePlan, device: torch.device, quantize: bool,
                   max_nonfinite: float) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    finite = torch.isfinite(x)
    n_bad = int(x.numel() - finite.sum())
    if n_bad:
        _check_nonfinite(n_bad, x.numel(), max_nonfinite)
        x = torch.where(finite, x, x[finite].median())
    if plan.factor != 1:
        # antialiased bilinear == PIL's BILINEAR resize to ~1e-7
        x = F.interpolate(x[None, None], size=plan.scaled_shape, mode="bilinear",
                          align_corners=False, antialias=True)[0, 0]
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        raise UnscorableSlice(f"constant image (all pixels {float(lo):g})")
    x = (x - lo) / (hi - lo + EPS)
    if quantize:
        x = torch.floor(x * 255.0) / 255.0  # values are >= 0, so floor == uint8 truncation
    if any(plan.pad):
        top, bottom, left, right = plan.pad
        border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
        x = F.pad(x[None], (left, right, top, bottom), mode="constant", value=float(border.median()))[0]
    return x


def crop_windows(images: Sequence[torch.Tensor], corners: Sequence[Tuple[int, int]], window: int
                 ) -> torch.Tensor:
    """(M, S, S) crops; ``images[i]`` is cut at ``corners[i]``."""
    return torch.stack([img[r:r + window, c:c + window] for img, (r, c) in zip(images, corners)])


def describe(plans: Sequence[ScalePlan]) -> List[str]:
    """Short human description of the plans in use (for logs and results)."""
    return [f"{p.in_shape[0]}x{p.in_shape[1]} -> {p.shape[0]}x{p.shape[1]} ({p.rule}, "
            f"{len(p.unique_corners)} distinct windows)" for p in plans]


def stack_plan(shapes: Sequence[Tuple[int, int]], window: int, n_windows: int = N_WINDOWS,
               seed: int = SEED) -> dict:
    """One plan per distinct shape; unplannable shapes map to their UnscorableSlice."""
    plans: dict = {}
    for s in dict.fromkeys(shapes):
        try:
            plans[s] = plan_for_shape(s, window, n_windows, seed)
        except UnscorableSlice as exc:
            plans[s] = exc
    if len([p for p in plans.values() if isinstance(p, ScalePlan)]) > 1:
        log.warning("stack mixes slice shapes %s; each shape gets its own windows", list(plans))
    return plans
