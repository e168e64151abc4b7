"""Image-quality metrics on try slices: the classical (model-free) COR scorer.

Each metric maps a slice to a number, oriented so that *higher is better*.
All are computed inside the inscribed disk (the corners of a parallel-beam
slice are outside the field of view) and with a value range shared by the
whole stack, so slices are compared on the same footing.  Which metric is the
default was chosen by measurement (``benchmarks/bench_cor_accuracy.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tifffile

from tomocorioc.core import layout
from tomocorioc.core.params import DEFAULT_METRIC, METRICS
from tomocorioc.data.errors import ReconError

log = logging.getLogger(__name__)



def _disk(shape: Tuple[int, int], shrink: float = 0.95, radius: Optional[float] = None) -> np.ndarray:
    r, c = shape
    y = np.arange(r) - (r - 1) / 2.0
    x = np.arange(c) - (c - 1) / 2.0
    rad = shrink * min(r, c) / 2.0
    if radius is not None:
        rad = min(rad, float(radius))
    return (y[:, None] ** 2 + x[None, :] ** 2) <= rad * rad


def _entropy(v: np.ndarray, lo: float, hi: float) -> float:
    hist, _ = np.histogram(v, bins=256, range=(lo, hi))
    p = hist[hist > 0].astype(np.float64) / max(1, v.size)
    return float(-(p * np.log2(p)).sum())


def metric_entropy(v: np.ndarray, lo: float, hi: float) -> float:
    """-histogram entropy: a wrong centre smears edges into arcs and widens the histogram."""
    return -_entropy(v, lo, hi)


def metric_negative(v: np.ndarray, lo: float, hi: float) -> float:
    """-mass of negative density: arcs from a wrong centre undershoot below zero."""
    return -float(np.abs(v[v < 0]).sum()) / max(1, v.size)


def metric_tv(img: np.ndarray, mask: np.ndarray) -> float:
    """-total variation (normalised by the L1 norm): doubled edges add variation."""
    gy = np.abs(np.diff(img, axis=0))[:, :-1]
    gx = np.abs(np.diff(img, axis=1))[:-1, :]
    m = mask[:-1, :-1]
    return -float(((gx + gy)[m]).sum() / (np.abs(img[mask]).sum() + 1e-12))


def metric_std(v: np.ndarray, lo: float, hi: float) -> float:
    """Standard deviation: a sharp slice has more contrast than a blurred one."""
    return float(np.std(v))




@dataclass
class ClassicalScores:
    """Scores of one try stack under one metric (higher = better)."""

    centers: List[float]
    scores: List[float]
    metric: str
    unscored: List[Tuple[float, str]] = field(default_factory=list)
    all_metrics: Dict[str, List[float]] = field(default_factory=dict)


def score_images(images: Sequence[np.ndarray], centers: Sequence[float], metric: str = DEFAULT_METRIC,
                 all_metrics: bool = False, radius: Optional[float] = None) -> ClassicalScores:
    """Score in-memory slices; non-finite or blank slices are reported, not scored.

    ``radius`` (px, from the image centre) narrows the scored disk: for a sample
    wider than the field of view pass :func:`truncated_radius`, so the bright
    truncation ring at the field-of-view edge and the extrapolated outside are
    never scored (entropy there keeps rising off-axis and would win).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    if len(images) != len(centers) or not images:
        raise ValueError(f"{len(images)} images for {len(centers)} centres")
    shape = images[0].shape
    mask = _disk(shape, radius=radius)
    vals = []
    unscored: List[Tuple[float, str]] = []
    for img, c in zip(images, centers):
        if img.shape != shape:
            unscored.append((float(c), f"shape {img.shape} differs from {shape}"))
            vals.append(None)
            continue
        v = np.asarray(img, dtype=np.float64)[mask]
        bad = ~np.isfinite(v)
        if bad.mean() > 0.5:
            unscored.append((float(c), f"{bad.mean():.0%} of pixels are NaN/Inf"))
            vals.append(None)
            continue
        vals.append(v[~bad])
    good = [v for v in vals if v is not None]
    if not good:
        raise ValueError("no scorable slice in the stack")
    # Shared range from robust percentiles so one hot pixel doesn't squash the histogram.
    lo = float(np.median([np.percentile(v, 0.5) for v in good]))
    hi = float(np.median([np.percentile(v, 99.5) for v in good]))
    if not hi > lo:
        hi = lo + 1.0
    names = METRICS if all_metrics else (metric,)
    table: Dict[str, List[float]] = {name: [] for name in names}
    simple: Dict[str, Callable] = {"entropy": metric_entropy, "negative": metric_negative, "std": metric_std}
    for img, v in zip(images, vals):
        for name in names:
            if v is None:
                table[name].append(float("nan"))
            elif name == "tv":
                clean = np.where(np.isfinite(img), img, 0.0).astype(np.float64)
                table[name].append(metric_tv(clean, mask))
            else:
                table[name].append(simple[name](v, lo, hi))
    return ClassicalScores([float(c) for c in centers], table[metric], metric, unscored,
                           table if all_metrics else {})


def read_try_stack(folder: Path) -> Tuple[List[float], List[np.ndarray], int]:
    """Read a try folder's slices (sorted by centre): (centres, images, row)."""
    slices = layout.list_try_slices(Path(folder))
    if not slices:
        raise FileNotFoundError(f"no try slices (recon_slice*_center*.tiff) in {folder}")
    images = []
    for s in slices:
        try:
            images.append(np.asarray(tifffile.imread(s.path)))
        except (OSError, ValueError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ReconError(f"cannot read try slice {s.path.name} ({why}); run the try phase again") from None
    return [s.center for s in slices], images, slices[0].row


def score_try_folder(folder: Path, metric: str = DEFAULT_METRIC, all_metrics: bool = False,
                     radius: Optional[float] = None) -> ClassicalScores:
    """Score every try slice in a folder (``radius``: see :func:`score_images`)."""
    centers, images, _ = read_try_stack(folder)
    return score_images(images, centers, metric, all_metrics, radius=radius)


TRUNCATED_SHRINK = 0.85  # share of the field-of-view radius scored on a truncated scan (the ring's flank stays out)


def truncated_radius(axis: float, width: int, binning: int = 0) -> float:
    """Disk radius (try-image px) to score when the sample is wider than the field of view.

    The try image is centred on the axis, so the field of view is a disk of
    ``min(axis, width - axis)`` detector px around the image centre.
    """
    f = 2 ** int(binning)
    return TRUNCATED_SHRINK * max(1.0, min(axis, width - axis)) / f
