"""Strict loading of tomocor checkpoints and architecture inference."""
from __future__ import annotations

import pytest
import torch
from _fixtures import fixture_dir

from tomocorioc.worker.ai import CheckpointError, load_checkpoint
from tomocorioc.worker.ai.checkpoint import random_tomocor_model, save_tomocor_checkpoint


@pytest.fixture(scope="module")
def fixture_sd():
    path = fixture_dir("tomocor-small") / "checkpoint.pt"
    return path, torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _save(tmp_path, sd, name="ck.pt"):
    path = tmp_path / name
    torch.save({"state_dict": sd}, path)
    return path


def test_fixture_loads_and_arch_is_read_off_shapes(fixture_sd):
    path, _ = fixture_sd
    model, arch = load_checkpoint(path)
    assert (arch.embed_dim, arch.depth, arch.patch_size, arch.img_size) == (384, 2, 14, 518)
    assert arch.num_heads == 6 and arch.mlp_ratio == 4.0 and arch.module_prefix
    assert not model.training
    assert model.model.blocks[0].attn.num_heads == 6
    assert "model.mask_token" not in model.state_dict()


def test_module_prefix_is_optional(tmp_path, fixture_sd):
    path, sd = fixture_sd
    plain = {k[len("module."):]: v for k, v in sd.items()}
    m1, a1 = load_checkpoint(path)
    m2, a2 = load_checkpoint(_save(tmp_path, plain))
    assert not a2.module_prefix
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_chunked_blocks_are_flattened(tmp_path, fixture_sd):
    path, sd = fixture_sd
    # DINOv2 BlockChunk layout: blocks.{chunk}.{global index}.*
    chunked = {k.replace("model.blocks.0.", "model.blocks.0.0.")
                .replace("model.blocks.1.", "model.blocks.1.1."): v for k, v in sd.items()}
    assert any(".blocks.1.1.attn" in k for k in chunked)
    m1, _ = load_checkpoint(path)
    m2, arch = load_checkpoint(_save(tmp_path, chunked))
    assert arch.chunked_blocks and arch.depth == 2
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_chunked_writer_round_trip(tmp_path):
    model = random_tomocor_model(embed_dim=64, depth=4, img_size=56, patch_size=14)
    path = save_tomocor_checkpoint(model, tmp_path / "c.pt", chunks=2)
    keys = torch.load(path, weights_only=True)["state_dict"]
    assert "module.model.blocks.1.3.mlp.fc1.weight" in keys
    loaded, arch = load_checkpoint(path)
    assert arch.depth == 4 and arch.chunked_blocks
    x = torch.rand(1, 2, 3, 56, 56)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_wrong_prefix_fails_loudly(tmp_path, fixture_sd):
    _, sd = fixture_sd
    wrong = {k.replace("module.model.", "module.backbone."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"model\.cls_token.*'backbone\.'"):
        load_checkpoint(_save(tmp_path, wrong))


def test_missing_tensor_is_named(tmp_path, fixture_sd):
    _, sd = fixture_sd
    partial = {k: v for k, v in sd.items() if k != "module.model.blocks.1.ls2.gamma"}
    with pytest.raises(CheckpointError, match=r"missing keys 'model\.blocks\.1\.ls2\.gamma'"):
        load_checkpoint(_save(tmp_path, partial))


def test_extra_key_is_named(tmp_path, fixture_sd):
    _, sd = fixture_sd
    extra = dict(sd)
    extra["module.model.register_tokens"] = torch.zeros(1, 4, 384)
    with pytest.raises(CheckpointError, match=r"unexpected keys 'model\.register_tokens'"):
        load_checkpoint(_save(tmp_path, extra))


def test_shape_mismatch_is_named(tmp_path, fixture_sd):
    _, sd = fixture_sd
    bad = dict(sd)
    bad["module.model.blocks.0.attn.proj.weight"] = torch.zeros(384, 383)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*blocks\.0\.attn\.proj\.weight"):
        load_checkpoint(_save(tmp_path, bad))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*refusing"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("content, match", [(b"hello\n" * 20, "not a torch checkpoint"),
                                            (b"", "not a torch checkpoint")])
def test_not_a_torch_file(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_not_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    assert issubclass(CheckpointError, ValueError)


def test_no_state_dict(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"epoch": 3, "optimizer": {}}, path)
    with pytest.raises(CheckpointError, match="no 'state_dict'.*'epoch'"):
        load_checkpoint(path)


@pytest.mark.parametrize("dim, depth, img, patch", [(192, 1, 224, 14), (192, 1, 518, 14),
                                                    (128, 3, 224, 16), (64, 2, 98, 7)])
def test_arch_from_shapes(tmp_path, dim, depth, img, patch):
    model = random_tomocor_model(embed_dim=dim, depth=depth, img_size=img, patch_size=patch,
                                 mlp_ratio=2.0, attn_hidden=32)
    path = save_tomocor_checkpoint(model, tmp_path / "m.pt", module_prefix=(depth % 2 == 1))
    loaded, arch = load_checkpoint(path)
    assert (arch.embed_dim, arch.depth, arch.img_size, arch.patch_size) == (dim, depth, img, patch)
    assert arch.num_heads == dim // 64 and arch.mlp_hidden == 2 * dim and arch.attn_hidden == 32
    x = torch.rand(2, 3, 3, img, img)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_shapes_that_are_not_a_vit(tmp_path):
    model = random_tomocor_model(embed_dim=64, depth=1, img_size=56, patch_size=14)
    sd = {k: v for k, v in model.state_dict().items()}
    sd["model.pos_embed"] = torch.zeros(1, 1 + 15, 64)  # 15 is not a square grid
    with pytest.raises(CheckpointError, match="do not form a DINOv2 ViT.*pos_embed"):
        load_checkpoint(_save(tmp_path, sd))
    sd = {k: v for k, v in model.state_dict().items()}
    sd["model.cls_token"] = torch.zeros(1, 1, 100)
    with pytest.raises(CheckpointError, match="multiple of 64"):
        load_checkpoint(_save(tmp_path, sd, "b.pt"))
