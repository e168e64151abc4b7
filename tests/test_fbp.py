"""The torch FBP: equals the plain reference, honours the COR convention, filters behave."""
import math

import numpy as np
import pytest
import torch

from tomocorioc.core import sidecar
from tomocorioc.core.params import FILTERS, ParamError, ReconParams
from tomocorioc.worker.recon import fbp
from tomocorioc.worker.recon.reference import reference_fbp


def disk_sinogram(n, nproj, cor, disks, endpoint=False):
    """Exact, pixel-integrated sinogram of uniform disks (x0, y0, r, mu)."""
    th = np.linspace(0, np.pi, nproj, endpoint=endpoint)
    edges = np.arange(n + 1, dtype=np.float64)
    sino = np.zeros((nproj, n))
    for x0, y0, r, mu in disks:
        p = cor + x0 * np.cos(th) + y0 * np.sin(th)
        # integral of the chord length 2 sqrt(r^2 - d^2) over each pixel [j, j+1)
        d = np.clip(edges[None, :] - p[:, None], -r, r)
        prim = d * np.sqrt(r * r - d * d) + r * r * np.arcsin(d / r)
        sino += mu * np.diff(prim, axis=1)
    return th, sino


@pytest.mark.parametrize("n,filt", [(64, "parzen"), (65, "shepp"), (48, "ramp"), (50, "hann"), (51, "hamming"),
                                    (52, "cosine"), (53, "cosine2"), (54, "none")])
def test_batched_try_equals_reference(n, filt):
    th, sino = disk_sinogram(n, 90, n / 2 + 1.7, [(5, -3, 12, 0.02), (-10, 8, 4, 0.05)])
    geom = fbp.FBPGeometry.create(n, th)
    centers = [n / 2 + 1.7 + d for d in (-3, -0.5, 0, 0.25, 2)]
    got = np.concatenate([imgs.numpy() for _, imgs in
                          fbp.try_batches(torch.tensor(sino, dtype=torch.float32), geom, filt, centers, 2)])
    for k, c in enumerate(centers):
        ref = reference_fbp(sino, th, c, filt)
        assert np.abs(got[k] - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-7


def test_full_rows_equal_try_at_same_centre():
    n = 40
    th, s1 = disk_sinogram(n, 60, 21.3, [(3, 2, 9, 0.03)])
    _, s2 = disk_sinogram(n, 60, 21.3, [(-4, 1, 6, 0.05)])
    geom = fbp.FBPGeometry.create(n, th)
    vol = fbp.reconstruct(torch.tensor(np.stack([s1, s2]), dtype=torch.float32), geom, "parzen",
                          torch.tensor([21.3, 21.3]))
    np.testing.assert_allclose(vol[1].numpy(), reference_fbp(s2, th, 21.3), atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("n,offset", [(96, 0.0), (97, 4.5), (96, -7.25)])
def test_cor_convention_disk_value_and_position(n, offset):
    """A disk of density mu at (x0, y0) about COR c reconstructs to mu at that pixel when using c."""
    cor = n / 2 + offset
    th, sino = disk_sinogram(n, 180, cor, [(10, -6, 15, 0.01)])
    img = reference_fbp(sino, th, cor, "ramp")
    gimg = fbp.reconstruct(torch.tensor(sino[None], dtype=torch.float32), fbp.FBPGeometry.create(n, th),
                           "ramp", torch.tensor([cor]))[0].numpy()
    # pixel whose centre is (x0, y0) = (10, -6): x = ix + 0.5 - n/2, y = iy + 0.5 - n/2
    ix, iy = int(math.floor(10 + n / 2)), int(math.floor(-6 + n / 2))
    # A half-pixel Fourier shift rings at Nyquist with the bare ramp: compare a 5x5 mean.
    for im in (img, gimg):
        assert im[iy - 2:iy + 3, ix - 2:ix + 3].mean() == pytest.approx(0.01, rel=0.01)
        assert abs(im[iy, ix + 20]) < 1e-3  # outside the disk (x = 30)
    # the disk sits where the convention says: its centroid is at (x0, y0)
    yy, xx = np.mgrid[0:n, 0:n] + 0.5 - n / 2
    m = np.clip(img, 0, None) * (img > 0.005)
    assert (m * xx).sum() / m.sum() == pytest.approx(10, abs=0.05)
    assert (m * yy).sum() / m.sum() == pytest.approx(-6, abs=0.05)


def test_sharpest_at_true_centre():
    """Sharpness (gradient energy) of a reconstruction peaks at the simulated COR."""
    n, cor = 128, 64 + 3.5
    th, sino = disk_sinogram(n, 180, cor, [(20, 5, 18, 0.01), (-25, -10, 6, 0.03), (0, 30, 3, 0.05)])
    geom = fbp.FBPGeometry.create(n, th)
    centers = np.arange(cor - 4, cor + 4.01, 0.5)
    imgs = np.concatenate([i.numpy() for _, i in fbp.try_batches(torch.tensor(sino, dtype=torch.float32),
                                                                  geom, "parzen", centers, 8)])
    sharp = [np.abs(np.diff(im, axis=0)).sum() + np.abs(np.diff(im, axis=1)).sum() for im in imgs]
    neg = [-np.clip(im, None, 0).sum() for im in imgs]
    assert centers[int(np.argmin(neg))] == cor
    assert centers[int(np.argmin(sharp))] == cor  # wrong centres add doubled edges/arcs


def test_filter_responses():
    """Every tomocupy filter, with tomocupy's window at f = 0.25 and 0.5 cycles/px (d = 0.5)."""
    ramp = fbp.filter_response("ramp", 256)
    windows = {"ramp": (1.0, 1.0), "shepp": (np.sinc(0.25), np.sinc(0.5)), "parzen": (0.125, 0.0),
               "hann": (0.5, 0.0), "hamming": (0.54, 0.08), "cosine": (np.cos(np.pi / 4), 0.0),
               "cosine2": (0.5, 0.0)}
    assert set(windows) | {"none"} == set(FILTERS)
    for name, (quarter, nyquist) in windows.items():
        r = fbp.filter_response(name, 256)
        assert r.shape == (129,) and r[0] >= 0 and np.all(np.isfinite(r))
        assert r[64] / ramp[64] == pytest.approx(quarter, abs=1e-9), name
        assert r[128] / ramp[128] == pytest.approx(nyquist, abs=1e-9), name
    assert np.all(fbp.filter_response("none", 256) == fbp.filter_response("none", 256)[0])
    with pytest.raises(ValueError, match="unknown filter 'butterworth'"):
        fbp.filter_response("butterworth", 256)


@pytest.mark.parametrize("filt", [f for f in FILTERS if f != "none"])
def test_every_filter_keeps_the_density(filt):
    n, cor = 96, 48.0
    th, sino = disk_sinogram(n, 180, cor, [(4, -2, 20, 0.01)])
    img = fbp.reconstruct(torch.tensor(sino[None], dtype=torch.float32), fbp.FBPGeometry.create(n, th),
                          filt, torch.tensor([cor]))[0].numpy()
    iy, ix = int(-2 + n / 2), int(4 + n / 2)
    # parzen falls fastest at low frequencies: ~5 % low on a disk this size (tomocupy alike)
    assert img[iy - 3:iy + 4, ix - 3:ix + 4].mean() == pytest.approx(0.01, rel=0.06 if filt == "parzen" else 0.01)


def test_butterworth_is_retired_with_a_clear_message(tmp_path, caplog):
    with pytest.raises(ParamError, match="'butterworth' is no longer offered.*'parzen'"):
        ReconParams(fbp_filter="butterworth")
    # An old sidecar migrates to the nearest tomocupy filter (and says so) instead of being dropped whole.
    scan = tmp_path / "s.h5"
    sidecar.sidecar_path(scan).write_text('{"params": {"fbp_filter": "butterworth", "search_width": 7}}')
    params, warning = sidecar.resolve(scan, ReconParams())
    assert warning is None and params.fbp_filter == "parzen" and params.search_width == 7
    assert any("'butterworth' is no longer offered" in r.getMessage() for r in caplog.records)


def test_uneven_angles_are_weighted():
    w = fbp._angle_weights(np.array([0, 0.1, 0.2, 1.5, 2.0, 3.0]))
    assert w.sum() == pytest.approx(np.pi) and w[3] > w[1]
