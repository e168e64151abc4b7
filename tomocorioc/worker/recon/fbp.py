"""Filtered backprojection in torch (same code on CPU and CUDA).

Geometry (shared with the simulator): a point (x, y) relative to the rotation
axis projects at detector coordinate ``t = cor + x cos θ + y sin θ``; detector
column j covers [j, j+1).  The output image is n x n (n = detector width) and
centred on the axis: pixel (iy, ix) sits at x = ix + 0.5 - n/2, y = iy + 0.5 - n/2.

The trick that makes the try grid cheap: moving the axis from ``cor`` to n/2
is a shift of each projection, done as a phase ramp during filtering (as
tomocupy does).  After that, every candidate centre and every slice row uses
the *same* backprojection geometry, so backprojection is one sparse matrix B
(pixels x angle-samples, two linear-interpolation weights per angle) applied
to a dense matrix whose columns are candidates (try) or rows (full).  That is
an SpMM, which MKL (CPU) and cuSPARSE (CUDA) run near memory speed; we tile it
by angle groups so the dense operand stays in cache.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from tomocorioc.core.params import FILTERS

# Budget for the dense (angles x samples x columns) operand of one SpMM tile.
_TILE_BYTES = 24 * 2**20
_PIXEL_BLOCK = 8192


def padded_size(n: int) -> int:
    """FFT length for an n-wide detector: >= 2n (no circular wrap), power of two."""
    return 1 << int(math.ceil(math.log2(2 * n)))


def filter_response(name: str, ne: int) -> np.ndarray:
    """Frequency response (ne//2+1 values) of one of tomocupy's FBP filters.

    The ramp is the DFT of the band-limited spatial ramp kernel (Kak & Slaney
    eq. 61), which gets the DC term right, unlike sampling |f| directly.
    Windows follow tomocupy's ``calc_filter`` (f in cycles/pixel, d = 0.5):
    shepp sinc(f/2d), cosine cos(pi f/2d), cosine2 its square, hamming
    0.54 + 0.46 cos(pi f/d), hann (1 + cos(pi f/d))/2, parzen (1 - f/d)^3;
    ``none`` is no filter at all (a plain backprojection, blurred).
    """
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; one of {', '.join(FILTERS)}")
    f = np.fft.rfftfreq(ne)  # cycles / pixel, 0 .. 0.5
    if name == "none":
        # Scaled so a flat spectrum carries the ramp's mean gain: the image keeps its order of magnitude.
        return np.full(f.shape, 0.25, dtype=np.float64)
    k = np.fft.fftfreq(ne, d=1.0 / ne)  # signed integer lags
    h = np.zeros(ne)
    h[0] = 0.25
    odd = (k.astype(np.int64) % 2) != 0
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    ramp = np.fft.rfft(h).real
    d = 0.5
    windows = {
        "ramp": lambda: np.ones_like(f),
        "shepp": lambda: np.sinc(f / (2 * d)),
        "cosine": lambda: np.cos(np.pi * f / (2 * d)),
        "cosine2": lambda: np.cos(np.pi * f / (2 * d)) ** 2,
        "hamming": lambda: 0.54 + 0.46 * np.cos(np.pi * f / d),
        "hann": lambda: (1 + np.cos(np.pi * f / d)) / 2.0,
        "parzen": lambda: (1 - f / d) ** 3,
    }
    win = windows[name]()
    return (ramp * win).astype(np.float64)


def _margin(n: int) -> int:
    """Samples needed beyond the detector for the image corners (radius n/sqrt2)."""
    return int(math.ceil(n * (math.sqrt(0.5) - 0.5))) + 2


@dataclass
class FBPGeometry:
    """Precomputed pieces for an n-wide detector and a set of angles."""

    n: int
    theta: torch.Tensor      # (nproj,) radians, float64
    weights: torch.Tensor    # (nproj,) angular quadrature weights (sum = pi)
    device: torch.device

    @classmethod
    def create(cls, n: int, theta_rad: Sequence[float], device: torch.device | str = "cpu") -> "FBPGeometry":
        """Geometry for the given detector width and projection angles."""
        th = np.asarray(theta_rad, dtype=np.float64)
        if th.ndim != 1 or th.size < 2:
            raise ValueError("need at least two projection angles")
        w = _angle_weights(th)
        return cls(n=int(n), theta=torch.from_numpy(th).to(device), weights=torch.from_numpy(w).to(device),
                   device=torch.device(device))

    @property
    def ne(self) -> int:
        """Padded FFT length."""
        return padded_size(self.n)

    @property
    def nwin(self) -> int:
        """Samples kept per filtered projection (detector plus corner margins)."""
        return self.n + 2 * _margin(self.n)


def _angle_weights(th: np.ndarray) -> np.ndarray:
    """Quadrature weights for angles over ~180°: each angle gets half its neighbours' gaps.

    For evenly spaced angles this is pi/nproj each; it keeps unevenly spaced
    (e.g. golden-angle or interlaced) scans correctly scaled too.
    """
    order = np.argsort(np.mod(th, np.pi))
    ts = np.mod(th, np.pi)[order]
    gaps = np.diff(np.concatenate([ts, [ts[0] + np.pi]]))
    w_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    w = np.empty_like(th)
    w[order] = w_sorted
    if not np.all(np.isfinite(w)) or w.sum() <= 0:
        return np.full_like(th, np.pi / th.size)
    return w * (np.pi / w.sum())


def filter_and_center(sino: torch.Tensor, geom: FBPGeometry, filt: str,
                      centers: torch.Tensor) -> torch.Tensor:
    """Filter sinograms and move each one's axis to n/2.

    ``sino`` is (B, nproj, n) and ``centers`` (B,) the COR for each batch
    item (B candidates of one row, or B rows at one COR).  Returns
    (nproj, nwin, B): the layout the backprojection SpMM consumes.
    """
    n, ne = geom.n, geom.ne
    b, nproj, width = sino.shape
    if width != n:
        raise ValueError(f"sinogram width {width} != geometry width {n}")
    pad = (ne - n) // 2
    # Edge padding as tomocupy does: no artificial step at the detector ends.
    padded = torch.nn.functional.pad(sino.reshape(b * nproj, 1, n), (pad, ne - n - pad), mode="replicate")
    spec = torch.fft.rfft(padded.reshape(b, nproj, ne), dim=-1)
    resp = torch.from_numpy(filter_response(filt, ne)).to(sino.device)
    freqs = torch.fft.rfftfreq(ne, device=sino.device, dtype=torch.float64)
    shift = (n / 2.0 - centers.to(torch.float64))  # move axis from cor to n/2
    phase = torch.polar(resp[None, :].expand(b, -1).contiguous(), -2 * math.pi * shift[:, None] * freqs[None, :])
    spec = spec * phase.to(spec.dtype)[:, None, :]
    out = torch.fft.irfft(spec, n=ne, dim=-1)
    m = _margin(n)
    out = out[..., pad - m: pad + n + m]
    return out.permute(1, 2, 0).contiguous()


def _angle_group(nwin: int, ncols: int, nproj: int) -> int:
    """Angles per SpMM tile so that the dense slab fits the cache budget."""
    per_angle = nwin * ncols * 4
    return int(max(1, min(nproj, _TILE_BYTES // max(per_angle, 1))))


def backproject(filtered: torch.Tensor, geom: FBPGeometry, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Backproject (nproj, nwin, K) filtered data about n/2: returns (K, n, n)."""
    nproj, nwin, k = filtered.shape
    n, dev = geom.n, filtered.device
    dtype = filtered.dtype
    if out is None:
        acc = torch.zeros(n * n, k, dtype=dtype, device=dev)
    else:
        acc = out.reshape(n * n, k)
        acc.zero_()
    coords = (torch.arange(n, device=dev, dtype=torch.float64) + 0.5 - n / 2.0)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    cos, sin = torch.cos(geom.theta), torch.sin(geom.theta)
    # Sample index in the kept window for t = n/2 + x cos + y sin (pixel centre j+0.5).
    origin = (n - 1) / 2.0 + _margin(n)
    group = _angle_group(nwin, k, nproj)
    pblock = _PIXEL_BLOCK if dev.type == "cpu" else 65536
    for a0 in range(0, nproj, group):
        a1 = min(nproj, a0 + group)
        na = a1 - a0
        slab = filtered[a0:a1].reshape(na * nwin, k)
        base = (torch.arange(na, device=dev, dtype=torch.int64) * nwin)[None, :]
        c, s, wq = cos[None, a0:a1], sin[None, a0:a1], geom.weights[None, a0:a1]
        for p0 in range(0, n * n, pblock):
            p1 = min(n * n, p0 + pblock)
            u = xs[p0:p1, None] * c + ys[p0:p1, None] * s + origin
            # Clamp keeps corner pixels of odd geometries inside the window.
            u = u.clamp_(0.0, nwin - 1.000001)
            fl = torch.floor(u)
            w1 = (u - fl)
            idx = fl.to(torch.int64) + base
            m = p1 - p0
            cols = torch.stack((idx, idx + 1), dim=-1).reshape(-1)
            vals = torch.stack(((1 - w1) * wq, w1 * wq), dim=-1).reshape(-1).to(dtype)
            crow = torch.arange(0, m + 1, device=dev, dtype=torch.int64) * (2 * na)
            with warnings.catch_warnings():
                # torch flags CSR as 'beta' on every construction; it is the stable MKL/cuSPARSE path.
                warnings.simplefilter("ignore", UserWarning)
                mat = torch.sparse_csr_tensor(crow, cols, vals, size=(m, na * nwin), check_invariants=False)
            acc[p0:p1] += mat @ slab
    return acc.reshape(n, n, k).permute(2, 0, 1)


def reconstruct(sino: torch.Tensor, geom: FBPGeometry, filt: str, centers: torch.Tensor) -> torch.Tensor:
    """FBP of B sinograms (B, nproj, n) at B centres: returns (B, n, n)."""
    return backproject(filter_and_center(sino, geom, filt, centers), geom)


def try_batches(sino_row: torch.Tensor, geom: FBPGeometry, filt: str, centers: Sequence[float],
                batch: int) -> Iterator[tuple]:
    """Yield ``(centers_chunk, images)`` for one sinogram row at many centres.

    The row is filtered once; only the phase ramp differs per candidate.  The
    backprojection matrix is built once per batch, so the batch should be as
    large as memory allows (``TorchBackend.try_batch_size``).
    """
    cs = torch.as_tensor(np.asarray(centers, dtype=np.float64), device=sino_row.device)
    spec = _row_spectrum(sino_row, geom, filt)
    for i in range(0, len(cs), batch):
        chunk = cs[i:i + batch]
        filtered = _shift_candidates(spec, geom, chunk)
        yield chunk.cpu().numpy(), backproject(filtered, geom)


# Candidates per FFT call when shifting: bounds the complex temporaries
# (SUB x nproj x ne) so that the batch memory is dominated by its outputs.
_SHIFT_SUB = 16


def _row_spectrum(sino_row: torch.Tensor, geom: FBPGeometry, filt: str) -> torch.Tensor:
    """Filtered spectrum of one (nproj, n) row, edge-padded to ne: (nproj, ne//2+1)."""
    n, ne = geom.n, geom.ne
    pad = (ne - n) // 2
    padded = torch.nn.functional.pad(sino_row[None], (pad, ne - n - pad), mode="replicate")[0]
    resp = torch.from_numpy(filter_response(filt, ne)).to(sino_row.device)
    return torch.fft.rfft(padded, dim=-1) * resp.to(padded.dtype)


def _shift_candidates(spec: torch.Tensor, geom: FBPGeometry, centers: torch.Tensor) -> torch.Tensor:
    """Apply one phase ramp per candidate centre to a row spectrum: (nproj, nwin, K)."""
    n, ne = geom.n, geom.ne
    pad, m = (ne - n) // 2, _margin(n)
    nproj = spec.shape[0]
    out = torch.empty(nproj, geom.nwin, len(centers), dtype=spec.real.dtype, device=spec.device)
    freqs = torch.fft.rfftfreq(ne, device=spec.device, dtype=torch.float64)
    for j in range(0, len(centers), _SHIFT_SUB):
        shift = n / 2.0 - centers[j:j + _SHIFT_SUB].to(torch.float64)
        ramps = torch.polar(torch.ones(len(shift), len(freqs), dtype=torch.float64, device=spec.device),
                            -2 * math.pi * shift[:, None] * freqs[None, :]).to(spec.dtype)
        part = torch.fft.irfft(spec[None] * ramps[:, None, :], n=ne, dim=-1)  # (k, nproj, ne)
        out[:, :, j:j + len(shift)] = part[..., pad - m: pad + n + m].permute(1, 2, 0)
    return out
