"""Preprocessing equals the reference recipe; the small-slice rule is as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tomocorioc.worker.ai import preprocess as pp

CPU = torch.device("cpu")


def _reference_prepare(img: np.ndarray) -> np.ndarray:
    """The reference recipe written the reference way (PIL + numpy)."""
    h, w = img.shape
    small = np.asarray(Image.fromarray(img.astype(np.float32)).resize((w // 2, h // 2), Image.BILINEAR))
    x = (small - small.min()) / (small.max() - small.min() + 1e-8)
    return (x * 255).astype(np.uint8) / 255.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_preprocessing_matches_reference_recipe(backend):
    rng = np.random.default_rng(1)
    img = (rng.normal(size=(1040, 1040)) * 3 + 10).astype(np.float32)
    plan = pp.plan_for_shape(img.shape, 518)
    assert plan.rule == "reference" and plan.shape == (520, 520)
    ours = pp.prepare(img, plan, CPU, backend=backend).numpy()
    ref = _reference_prepare(img)
    if backend == "numpy":
        np.testing.assert_array_equal(ours, ref.astype(np.float32))
    # identical except where a value sits on an 8-bit boundary (1/255 apart)
    diff = np.abs(ours - ref)
    assert (diff > 1e-6).mean() < 1e-3 and diff.max() <= 1 / 255 + 1e-6


def test_corners_follow_reference_sampling():
    rows = cols = 520
    y, x = np.mgrid[:rows, :cols]
    p = (((x - (cols - 1) / 2) ** 2 + (y - (rows - 1) / 2) ** 2) <= ((rows - 1) / 2) ** 2).ravel()
    p = p / p.sum()
    draws = np.random.RandomState(10).multinomial(1, p, 3)
    expected = []
    for d in draws:
        r, c = divmod(int(np.argmax(d)), cols)
        expected.append((int(np.clip(r - 259, 0, rows - 519)), int(np.clip(c - 259, 0, cols - 519))))
    assert pp.sample_corners((rows, cols), 518) == tuple(expected)


@pytest.mark.parametrize("shape, rule, final", [
    ((1040, 1040), "reference", (520, 520)),
    ((1036, 1036), "reference", (518, 518)),
    ((1000, 1000), "downsample+pad", (518, 518)),
    ((600, 600), "full-res", (600, 600)),
    ((300, 300), "full-res+pad", (518, 518)),
    ((1100, 700), "downsample+pad", (550, 518)),
    ((701, 1101), "downsample+pad", (518, 550)),
])
def test_small_slice_rule(shape, rule, final):
    plan = pp.plan_for_shape(shape, 518)
    assert plan.rule == rule and plan.shape == final
    for r, c in plan.corners:
        assert 0 <= r <= final[0] - 518 and 0 <= c <= final[1] - 518


def test_tiny_slice_is_unscorable():
    with pytest.raises(pp.UnscorableSlice, match="smaller than"):
        pp.plan_for_shape((20, 400), 518)


def test_nonfinite_pixels_are_masked():
    rng = np.random.default_rng(2)
    img = rng.random((1040, 1040)).astype(np.float32)
    plan = pp.plan_for_shape(img.shape, 518)
    clean = pp.prepare(img, plan, CPU)
    dirty = img.copy()
    dirty[100, 200] = np.nan
    dirty[700:705, 10:20] = np.inf
    out = pp.prepare(dirty, plan, CPU)
    assert torch.isfinite(out).all()
    assert float(out.max()) > 0.9 and float(out.std()) > 0.01  # not an all-zero image
    # away from the masked pixels nothing changed beyond one 8-bit level
    assert float((out[300:, 300:] - clean[300:, 300:]).abs().max()) <= 1 / 255 + 1e-6


def test_mostly_nonfinite_and_constant_slices_are_unscorable():
    plan = pp.plan_for_shape((1040, 1040), 518)
    img = np.full((1040, 1040), np.nan, np.float32)
    img[:300] = 1.0
    with pytest.raises(pp.UnscorableSlice, match="non-finite"):
        pp.prepare(img, plan, CPU)
    with pytest.raises(pp.UnscorableSlice, match="constant"):
        pp.prepare(np.ones((1040, 1040), np.float32), plan, CPU)


def test_padding_uses_border_median():
    img = np.zeros((300, 300), np.float32)
    img[100:200, 100:200] = 1.0
    plan = pp.plan_for_shape(img.shape, 518)
    out = pp.prepare(img, plan, CPU)
    assert out.shape == (518, 518)
    assert float(out[0, 0]) == 0.0 and float(out[259, 259]) >= 254 / 255


@pytest.mark.parametrize("shape", [(1040, 1040), (1000, 1000), (600, 600), (300, 300), (1100, 700)])
def test_numpy_and_torch_backends_agree(shape):
    rng = np.random.default_rng(3)
    img = rng.normal(size=shape).astype(np.float32)
    img[5, 7] = np.nan
    plan = pp.plan_for_shape(shape, 518)
    a = pp.prepare(img, plan, CPU, backend="numpy")
    b = pp.prepare(img, plan, CPU, backend="torch")
    assert a.shape == b.shape == plan.shape
    diff = (a - b).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-6 and float((diff > 1e-6).float().mean()) < 1e-3
