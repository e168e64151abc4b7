"""Pre-processing, the sinogram estimate and the classical scorer on real simulated data."""
import numpy as np
import pytest
import torch

from tomocorioc.sim import make_phantom, project
from tomocorioc.worker.cor import classical
from tomocorioc.worker.cor.vo import find_center_vo
from tomocorioc.worker.recon import preprocess as pp


def test_normalize_and_log_are_safe():
    proj = torch.tensor([[[1100.0, 100.0, 50.0]]])
    flat = torch.tensor([[2100.0, 2100.0, 100.0]])
    dark = torch.tensor([[100.0, 100.0, 100.0]])
    out = pp.preprocess(proj, flat, dark)
    assert out.shape == (1, 1, 3) and torch.isfinite(out).all()
    assert out[0, 0, 0].item() == pytest.approx(np.log(2), rel=1e-5)


def test_dezinger_removes_isolated_spikes_only():
    x = torch.full((2, 1, 20), 1000.0)
    x[0, 0, 7] = 60000
    x[1, 0, 3:10] = 9000  # a real feature wider than the window stays
    y = pp.dezinger(x, 3, 5000)
    assert y[0, 0, 7] == 1000 and y[1, 0, 5] == 9000


def test_sort_stripe_removal_reduces_rings():
    rng = np.random.default_rng(0)
    n = 512
    th = np.linspace(0, np.pi, 360, endpoint=False)[:, None]
    t = np.arange(n) + 0.5
    sino = np.zeros((360, n))
    for x0, y0, r, mu in ((96, 24, 72, 0.006), (-64, -112, 48, 0.01), (40, 120, 32, 0.012), (0, 0, 200, 0.001)):
        d = t[None] - (n / 2 + x0 * np.cos(th) + y0 * np.sin(th))
        sino += mu * 2 * np.sqrt(np.clip(r * r - d * d, 0, None))
    sino += rng.normal(0, 0.005, sino.shape)
    cols = rng.choice(n, 20, replace=False)
    gain = np.zeros(n)
    gain[cols] = 0.05  # per-column gain error: what makes rings
    bad = torch.tensor(sino + gain[None], dtype=torch.float32)[None]
    fixed = pp.remove_stripes_sort(bad)[0].numpy()
    stripe_left = np.abs((fixed - sino).mean(axis=0)[cols]).mean()
    assert stripe_left < 0.05 / 5
    assert np.abs(fixed - sino).mean() < np.abs(bad[0].numpy() - sino).mean()
    with pytest.raises(ValueError, match="only available with the tomocupy backend"):
        pp.preprocess(bad, torch.ones(1, n), torch.zeros(1, n), stripe="fw")


@pytest.mark.parametrize("n,offset", [(128, 0.0), (127, 9.25), (160, -21.5)])
def test_vo_estimate(n, offset):
    ph = make_phantom("beads", radius=n / 2 - abs(offset) - 4, nrows=1, seed=3)
    th = np.linspace(0, np.pi, 181)
    sino = project(ph, th, n, 1, n / 2 + offset)[:, 0, :]
    assert find_center_vo(sino) == pytest.approx(n / 2 + offset, abs=0.5)
    with pytest.raises(ValueError):
        find_center_vo(np.full((90, 64), np.nan))


def test_classical_scores_report_bad_slices():
    rng = np.random.default_rng(1)
    imgs = [rng.normal(0, 1, (32, 32)) for _ in range(4)]
    imgs[2] = np.full((32, 32), np.nan)
    imgs[3] = rng.normal(0, 1, (16, 16))
    s = classical.score_images(imgs, [1, 2, 3, 4], "entropy", all_metrics=True)
    assert np.isnan(s.scores[2]) and np.isnan(s.scores[3]) and np.isfinite(s.scores[0])
    assert [c for c, _ in s.unscored] == [3.0, 4.0] and "NaN" in s.unscored[0][1]
    assert set(s.all_metrics) == set(classical.METRICS)
    with pytest.raises(ValueError, match="no scorable"):
        classical.score_images([np.full((8, 8), np.nan)], [1.0])
    with pytest.raises(ValueError, match="unknown metric"):
        classical.score_images(imgs, [1, 2, 3, 4], "magic")


def test_vo_refuses_a_border_minimum_instead_of_guessing(tmp_path):
    """A dense sample filling the field of view put Vo's minimum on the search border
    (127 for a true 246.3, benchmark scan s21); it must say 'no estimate' so the try
    grid stays centred and the image metric finds the COR."""
    from tomocorioc.core.params import ReconParams
    from tomocorioc.data.dxfile import DXFile
    from tomocorioc.sim import SimConfig, simulate_scan
    from tomocorioc.worker.pipeline import sinogram_estimate
    f = tmp_path / "rock_0001.h5"
    simulate_scan(f, SimConfig(ncols=512, nrows=4, nproj=360, phantom="rock", noise=2000, zingers=0.0005,
                               offset=-9.7, seed=1))
    with DXFile(f) as scan:
        est = sinogram_estimate(scan, ReconParams())
    assert est is None or abs(est - 246.3) < 2
