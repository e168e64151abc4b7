"""A deliberately plain float64 numpy FBP, one centre and one angle at a time.

It defines what the fast torch path must reproduce (tests and the try-grid
benchmark compare against it): edge-pad, filter with a phase ramp that moves
the axis to n/2 (tomocupy's centring), then backproject each angle with
linear interpolation about n/2.  No batching, no sparse matrices, no tiling.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tomocorioc.worker.recon.fbp import _angle_weights, filter_response, padded_size


def reference_fbp(sino: np.ndarray, theta_rad: Sequence[float], center: float, filt: str = "parzen") -> np.ndarray:
    """Reconstruct one (nproj, n) sinogram at one centre: returns (n, n) float64."""
    sino = np.asarray(sino, dtype=np.float64)
    nproj, n = sino.shape
    theta = np.asarray(theta_rad, dtype=np.float64)
    ne = padded_size(n)
    pad = (ne - n) // 2
    resp = filter_response(filt, ne)
    freqs = np.fft.rfftfreq(ne)
    ramp = resp * np.exp(-2j * math.pi * (n / 2.0 - center) * freqs)
    weights = _angle_weights(theta)
    coords = np.arange(n) + 0.5 - n / 2.0
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    image = np.zeros((n, n))
    for i in range(nproj):
        row = np.pad(sino[i], (pad, ne - n - pad), mode="edge")
        q = np.fft.irfft(np.fft.rfft(row) * ramp, n=ne)
        # Detector sample k (padded) has centre at t = k - pad + 0.5.
        t = n / 2.0 + xs * math.cos(theta[i]) + ys * math.sin(theta[i])
        image += weights[i] * np.interp(t - 0.5 + pad, np.arange(ne), q)
    return image
