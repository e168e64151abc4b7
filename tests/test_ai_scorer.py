"""AIScorer: reference logits on the fixture, precision, batching and edge cases."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from _fixtures import fixture_dir

from tomocorioc.core.layout import try_slice_name
from tomocorioc.worker.ai import AIInputError, AIScorer, clear_scorer_cache, get_scorer
from tomocorioc.worker.ai.checkpoint import random_tomocor_model, save_tomocor_checkpoint


@pytest.fixture(scope="module")
def small():
    d = fixture_dir("tomocor-small")
    return d, json.loads((d / "expected.json").read_text())


@pytest.fixture(scope="module")
def fp32_result(small):
    d, _ = small
    scorer = AIScorer(d / "checkpoint.pt", device="cpu", dtype="float32")
    return scorer.score_try_folder(d / "try_center")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A fast random classifier with the real window size (518 px, patch 14)."""
    model = random_tomocor_model(embed_dim=64, depth=1, img_size=518, patch_size=14, seed=3)
    return save_tomocor_checkpoint(model, tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return AIScorer(tiny_ckpt, device="cpu", dtype="float32", batch_size=5)


def _slices(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    base = np.sin(xx / 17.0) * np.cos(yy / 23.0)
    return [(base + rng.normal(0, 0.3 + 0.1 * k, shape)).astype(np.float32) for k in range(n)]


def test_fixture_logits_match_reference(small, fp32_result):
    _, exp = small
    r = fp32_result
    assert r.centers == exp["centers"]
    np.testing.assert_allclose(np.array(r.logits), np.array(exp["logits"]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(r.scores, exp["score"], atol=1e-4, rtol=0)
    assert r.cor == exp["reference_choice"][-1]
    assert r.tied_cors == exp["reference_choice"]
    assert r.cor_source == "ai" and r.device == "cpu" and r.dtype == "float32"
    assert r.unscored == [] and 0.0 <= r.margin_confidence < 1.0
    json.dumps(r.to_dict())


def test_fixture_bf16_keeps_choice(small, fp32_result):
    d, exp = small
    raw = AIScorer(d / "checkpoint.pt", device="cpu", dtype="bfloat16", refine=False)
    r = raw.score_try_folder(d / "try_center")
    assert r.cor == fp32_result.cor and r.dtype == "bfloat16"
    np.testing.assert_allclose(np.array(r.logits), np.array(exp["logits"]), atol=0.05)
    # with refinement every near-best candidate is re-scored in float32
    raw.refine = True
    r2 = raw.score_try_folder(d / "try_center")
    assert r2.cor == fp32_result.cor and r2.refined and "refine" in r2.dtype
    for c in r2.refined:
        i = r2.centers.index(c)
        np.testing.assert_allclose(r2.logits[i], exp["logits"][i], atol=1e-4)


def test_batch_size_does_not_change_logits(tiny_ckpt):
    imgs = _slices(4, (1040, 1040))
    a = AIScorer(tiny_ckpt, device="cpu", dtype="float32", batch_size=1).score_stack(imgs, [1, 2, 3, 4])
    b = AIScorer(tiny_ckpt, device="cpu", dtype="float32", batch_size=16).score_stack(imgs, [1, 2, 3, 4])
    np.testing.assert_allclose(np.array(a.logits), np.array(b.logits), atol=1e-5)


@pytest.mark.parametrize("shape", [(600, 600), (300, 300), (1100, 700), (701, 1101), (1000, 1000)])
def test_small_and_odd_shapes_are_scored(tiny, shape):
    r = tiny.score_stack(_slices(3, shape), [10.0, 11.0, 12.0])
    assert r.unscored == [] and all(lg is not None and np.all(np.isfinite(lg)) for lg in r.logits)
    assert len(r.plans) == 1 and f"{shape[0]}x{shape[1]}" in r.plans[0]


def test_nan_pixels_masked_and_mostly_nan_reported(tiny):
    imgs = _slices(4, (1040, 1040), seed=5)
    clean = tiny.score_stack(imgs, [1, 2, 3, 4])
    dirty = [im.copy() for im in imgs]
    dirty[0][5:9, 500:600] = np.nan
    dirty[2][:800] = np.nan  # 77 % non-finite
    r = tiny.score_stack(dirty, [1, 2, 3, 4])
    assert [c for c, _ in r.unscored] == [3.0] and "non-finite" in r.unscored[0][1]
    assert r.logits[2] is None and r.scores[2] is None and r.margins[2] is None
    np.testing.assert_allclose(r.logits[0], clean.logits[0], atol=0.05)
    np.testing.assert_allclose(r.logits[1], clean.logits[1], atol=1e-6)


def test_ties_pick_middle_and_list_all(tiny):
    img = _slices(1, (1040, 1040), seed=7)[0]
    r = tiny.score_stack([img] * 5, [20.0, 21.0, 22.0, 23.0, 24.0])
    assert r.cor == 22.0
    assert sorted(r.tied_cors) == [20.0, 21.0, 22.0, 23.0, 24.0] and r.tied_cors[-1] == 22.0


def test_input_errors(tiny):
    with pytest.raises(AIInputError, match="empty"):
        tiny.score_stack([], [])
    with pytest.raises(AIInputError, match="2 slices but 3"):
        tiny.score_stack(_slices(2, (600, 600)), [1, 2, 3])
    nan = np.full((600, 600), np.nan, np.float32)
    with pytest.raises(AIInputError, match="none of the 2 slices"):
        tiny.score_stack([nan, np.zeros((8, 8), np.float32)], [1, 2])
    assert issubclass(AIInputError, ValueError)


def test_try_folder_and_unreadable_file(tiny, tmp_path):
    imgs = _slices(3, (700, 700), seed=9)
    for c, im in zip([5.0, 6.5, 6.0], imgs):
        tifffile.imwrite(tmp_path / try_slice_name(100, c), im)
    (tmp_path / try_slice_name(100, 7.0)).write_bytes(b"not a tiff")
    (tmp_path / "notes.txt").write_text("ignored")
    r = tiny.score_try_folder(tmp_path)
    assert r.centers == [5.0, 6.0, 6.5, 7.0]
    assert r.unscored[0][0] == 7.0 and r.unscored[0][1].startswith("unreadable")
    with pytest.raises(AIInputError, match="no try slices"):
        tiny.score_try_folder(tmp_path / "..")


def test_scorer_cache(tiny_ckpt, tmp_path):
    clear_scorer_cache()
    a = get_scorer(tiny_ckpt, device="cpu", dtype="float32")
    assert get_scorer(tiny_ckpt, device="cpu", dtype="float32") is a
    copy = shutil.copy(tiny_ckpt, tmp_path / "other.pt")
    assert get_scorer(copy, device="cpu", dtype="float32") is not a
    clear_scorer_cache()


def test_refine_selection(tiny_ckpt):
    s = AIScorer(tiny_ckpt, device="cpu", dtype="bfloat16", refine_tol=0.1, refine_max=3)
    clear = {0: np.array([0.0, 5.0]), 1: np.array([0.0, 4.0]), 2: np.array([0.0, 1.0])}
    assert s._contenders(clear) == ([], 1)  # clear winner: nothing to re-score
    close = {0: np.array([0.0, 5.0]), 1: np.array([0.0, 4.95]), 2: np.array([0.0, 1.0])}
    assert s._contenders(close) == ([0, 1], 2)
    flat = {i: np.array([0.0, 1.0 + 0.001 * i]) for i in range(6)}
    assert s._contenders(flat) == ([3, 4, 5], 6)  # capped, best first
    overflow = {0: np.array([0.0, 5.0]), 1: np.array([np.nan, 1.0])}
    assert s._contenders(overflow) == ([0, 1], 1)


def test_bf16_stack_end_to_end(tiny_ckpt):
    imgs = _slices(4, (1040, 1040), seed=11)
    r32 = AIScorer(tiny_ckpt, device="cpu", dtype="float32").score_stack(imgs, [1, 2, 3, 4])
    rbf = AIScorer(tiny_ckpt, device="cpu", dtype="bfloat16").score_stack(imgs, [1, 2, 3, 4])
    assert rbf.cor == r32.cor and rbf.dtype.startswith("bfloat16")
    np.testing.assert_allclose(np.array(rbf.logits), np.array(r32.logits), atol=0.05)


def test_device_dtype_and_batch_resolution(tiny_ckpt):
    import torch

    from tomocorioc.worker.ai.model import ArchInfo
    from tomocorioc.worker.ai.scorer import batch_for_memory, resolve_device, resolve_dtype

    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
        assert resolve_device(None).type == "cpu"
    vitb = ArchInfo(768, 12, 14, 518, 3072, 768, 1, 2)
    # ~70 MB per bf16 window: an 80 GB card gets the cap, a 2 GB one a small batch
    assert batch_for_memory(vitb, 80 * 2**30, torch.bfloat16) == 256
    assert 5 <= batch_for_memory(vitb, 2 * 2**30, torch.bfloat16) <= 20
    assert batch_for_memory(vitb, 10 * 2**20, torch.float32) == 1
    with pytest.raises(ValueError, match="batch_size"):
        AIScorer(tiny_ckpt, device="cpu", batch_size=0)


def test_fp32_pass_disables_tf32_on_cuda_and_restores():
    import torch

    from tomocorioc.worker.ai.scorer import ieee_fp32

    if not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision flags")
    before = torch.backends.cudnn.conv.fp32_precision
    with ieee_fp32(torch.device("cuda")):  # flags only; no GPU needed
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == before
