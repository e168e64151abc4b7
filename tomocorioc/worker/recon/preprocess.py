"""Beamline pre-processing of raw row blocks, in torch (CPU or CUDA).

Order as at the beamline: dezinger the raw counts, dark/flat normalise,
clip, -log, then optional ring (stripe) removal on each sinogram.
"""
from __future__ import annotations

import torch

from tomocorioc.core.params import TORCH_STRIPE_METHODS

# Transmission floor before -log: a dead pixel or a flat that is darker than
# the projection must not become Inf/NaN and poison the whole slice.
_MIN_TRANSMISSION = 1e-6


def dezinger(proj: torch.Tensor, width: int, threshold: float) -> torch.Tensor:
    """Replace pixels brighter than the running median (along columns) by more than ``threshold`` counts."""
    if width <= 1:
        return proj
    half = width // 2
    padded = torch.nn.functional.pad(proj.reshape(-1, 1, proj.shape[-1]), (half, half), mode="replicate")
    med = padded.unfold(-1, width, 1).median(dim=-1).values.reshape(proj.shape)
    return torch.where(proj - med > threshold, med, proj)


def normalize(proj: torch.Tensor, flat: torch.Tensor, dark: torch.Tensor) -> torch.Tensor:
    """(proj - dark) / (flat - dark), clipped to a small positive floor."""
    denom = (flat - dark).clamp_min(1e-3)
    return ((proj - dark) / denom).clamp_min(_MIN_TRANSMISSION)


def remove_stripes_sort(sino: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Sorting-based ring removal (Vo, Atwood & Drakopoulos 2018, the sorting step).

    Each detector column is sorted along the angle axis, the sorted image is
    smoothed across columns with a median filter, and values are put back in
    their original order.  Works on (..., nproj, ncols).  The window of 5
    columns was measured (tests/test_preprocess_cor.py): wider windows start
    to flatten real structure faster than they remove stripes.
    """
    vals, order = torch.sort(sino, dim=-2)
    half = size // 2
    flat = vals.reshape(-1, 1, vals.shape[-1])
    padded = torch.nn.functional.pad(flat, (half, half), mode="reflect")
    smooth = padded.unfold(-1, size, 1).median(dim=-1).values.reshape(vals.shape)
    out = torch.empty_like(sino)
    out.scatter_(-2, order, smooth)
    return out


def preprocess(proj: torch.Tensor, flat: torch.Tensor, dark: torch.Tensor, *, dezinger_width: int = 0,
               dezinger_threshold: float = 5000.0, stripe: str = "none") -> torch.Tensor:
    """Raw (nproj, rows, ncols) counts -> (rows, nproj, ncols) line integrals."""
    if stripe not in TORCH_STRIPE_METHODS:
        raise ValueError(f"ring removal {stripe!r} is only available with the tomocupy backend "
                         f"(torch backend: {', '.join(TORCH_STRIPE_METHODS)})")
    if dezinger_width:
        proj = dezinger(proj, dezinger_width, dezinger_threshold)
    sino = -torch.log(normalize(proj, flat[None], dark[None]))
    sino = sino.permute(1, 0, 2).contiguous()
    if stripe == "sort":
        sino = remove_stripes_sort(sino)
    return sino
