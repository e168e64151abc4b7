"""Strict loading of tomocor checkpoints (``{'state_dict': ...}`` written by the reference).

The file is read with ``torch.load(weights_only=True)`` so pickled code is never
executed.  Key names are normalised exactly as the reference stores them:

* an optional ``module.`` prefix on every key (DataParallel/DDP) is removed;
* the backbone stays under ``model.``; ``model.mask_token`` (training only) is dropped;
* DINOv2 "chunked" blocks ``model.blocks.{c}.{i}.*`` are flattened to ``model.blocks.{j}.*``.

Then every remaining key must match the model built from the tensor shapes:
a missing, unexpected or mis-shaped key raises :class:`CheckpointError`
naming the keys (the reference used ``strict=False`` and silently produced a
random classifier when a prefix was wrong).
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Mapping, Tuple, Union

import torch

from tomocorioc.worker.ai.model import ArchInfo, TomocorClassifier, count_params

log = logging.getLogger(__name__)

_MODULE_PREFIX = "module."
_BACKBONE_PREFIX = "model."
_DROPPED = ("model.mask_token",)  # training-only tensors the reference ignores
_CHUNKED = re.compile(r"^model\.blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^model\.blocks\.(\d+)\.(?!\d+\.)(.+)$")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line and names the cause."""


def _fmt_keys(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _read(path: Path) -> object:
    """torch.load with weights_only=True, translating failures into CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle stream opening with PROTO 0x80); anything
    # else would reach the unpickler and be reported as "pickled Python objects", which misleads.
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            m = _UNSUPPORTED_GLOBAL.search(text)
            what = f" ({m.group(1)})" if m else ""
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects{what}; refusing to "
                "execute them (weights_only=True) - re-save it as {'state_dict': tensors}"
            ) from None
        raise CheckpointError(f"{path} is not a torch checkpoint: {text.splitlines()[0]}") from None
    # torch raises a zoo of types for foreign files (KeyError on text, EOFError on
    # empty, RuntimeError on a bad zip); all mean the same thing to the caller.
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile,
            UnicodeDecodeError, AttributeError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def _state_dict(obj: object, path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a tomocor checkpoint (a bare mapping of tensors is accepted too)."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        top = _fmt_keys(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} has no 'state_dict' (top level: {top})")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: 'state_dict' is empty or not a mapping")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {_fmt_keys(bad)}")
    return dict(sd)


def normalize_keys(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], bool, bool]:
    """Strip ``module.``, drop ``mask_token``, flatten chunked blocks -> (sd, had_module, chunked)."""
    keys = list(sd)
    had_module = all(k.startswith(_MODULE_PREFIX) for k in keys)
    if had_module:
        sd = {k[len(_MODULE_PREFIX):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k not in _DROPPED}

    chunked = {k: m for k in sd if (m := _CHUNKED.match(k))}
    if not chunked:
        return dict(sd), had_module, False
    flat_blocks = [k for k in sd if _FLAT_BLOCK.match(k)]
    if flat_blocks:
        raise CheckpointError(f"mix of chunked and flat transformer blocks: {_fmt_keys(flat_blocks)}")
    # DINOv2's BlockChunk pads chunk c with Identity modules, so the inner index is
    # already global; chunks that restart at 0 are flattened in (chunk, index) order.
    pairs = sorted({(int(m.group(1)), int(m.group(2))) for m in chunked.values()})
    inner = [i for _, i in pairs]
    if len(set(inner)) == len(inner):
        index = {p: p[1] for p in pairs}
    else:
        index = {p: j for j, p in enumerate(pairs)}
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = chunked.get(k)
        if m:
            k = f"model.blocks.{index[(int(m.group(1)), int(m.group(2)))]}.{m.group(3)}"
        out[k] = v
    return out, had_module, True


def _prefix_summary(keys: Iterable[str]) -> str:
    counts = Counter(k.split(".", 1)[0] + "." for k in keys)
    return ", ".join(f"{p!r} x{n}" for p, n in counts.most_common(6))


def infer_arch(sd: Mapping[str, torch.Tensor]) -> ArchInfo:
    """Read embed dim, patch, depth, MLP width, image size and head sizes off the shapes."""
    need = ["model.cls_token", "model.pos_embed", "model.patch_embed.proj.weight",
            "model.blocks.0.mlp.fc1.weight", "attention.0.weight", "fc.weight", "head.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(
            f"missing keys {_fmt_keys(missing)}: not a tomocor DINOv2 checkpoint or wrong "
            f"prefix (key prefixes found: {_prefix_summary(sd)})")

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"tensor shapes do not form a DINOv2 ViT + MIL head: {why}")

    cls, pos, proj = sd["model.cls_token"], sd["model.pos_embed"], sd["model.patch_embed.proj.weight"]
    if cls.dim() != 3 or cls.shape[:2] != (1, 1):
        raise bad(f"model.cls_token has shape {tuple(cls.shape)}, expected (1, 1, D)")
    dim = int(cls.shape[2])
    if dim % 64:
        raise bad(f"embed dim {dim} is not a multiple of 64 (heads = dim/64)")
    if proj.dim() != 4 or proj.shape[0] != dim or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise bad(f"model.patch_embed.proj.weight has shape {tuple(proj.shape)}, expected ({dim}, 3, p, p)")
    patch = int(proj.shape[2])
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != dim:
        raise bad(f"model.pos_embed has shape {tuple(pos.shape)}, expected (1, 1+N, {dim})")
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid < 1 or grid * grid != pos.shape[1] - 1:
        raise bad(f"model.pos_embed has {pos.shape[1]} rows; 1 + a square number expected")
    blocks = sorted({int(m.group(1)) for k in sd if (m := _FLAT_BLOCK.match(k))})
    if blocks != list(range(len(blocks))):
        gaps = sorted(set(range(max(blocks) + 1)) - set(blocks))
        raise bad(f"transformer blocks are not numbered 0..{max(blocks)} (missing {gaps[:5]})")
    fc1 = sd["model.blocks.0.mlp.fc1.weight"]
    att, fc, head = sd["attention.0.weight"], sd["fc.weight"], sd["head.weight"]
    if fc1.dim() != 2 or fc1.shape[1] != dim:
        raise bad(f"model.blocks.0.mlp.fc1.weight has shape {tuple(fc1.shape)}, expected (H, {dim})")
    if att.dim() != 2 or att.shape[1] != dim or fc.dim() != 2 or fc.shape[1] != att.shape[0]:
        raise bad(f"MIL head shapes attention.0 {tuple(att.shape)} / fc {tuple(fc.shape)} do not chain")
    if head.dim() != 2 or head.shape[1] != dim or head.shape[0] < 2:
        raise bad(f"head.weight has shape {tuple(head.shape)}, expected (>=2, {dim})")
    return ArchInfo(embed_dim=dim, depth=len(blocks), patch_size=patch, img_size=grid * patch,
                    mlp_hidden=int(fc1.shape[0]), attn_hidden=int(att.shape[0]),
                    n_branches=int(fc.shape[0]), n_classes=int(head.shape[0]))


def _check_keys(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Strict key and shape comparison, with a message that names the offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)}!={tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"missing keys {_fmt_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_fmt_keys(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch {_fmt_keys(shapes, 3)}")
    if parts:
        raise CheckpointError("checkpoint does not match the DINOv2 + MIL model: " + "; ".join(parts))


def load_checkpoint(path: Union[str, Path], device: Union[str, torch.device] = "cpu"
                    ) -> Tuple[TomocorClassifier, ArchInfo]:
    """Load a tomocor checkpoint strictly into a fresh eval-mode model on ``device``."""
    path = Path(path)
    raw = _state_dict(_read(path), path)
    sd, had_module, chunked = normalize_keys(raw)
    arch = infer_arch(sd)
    # Build on the meta device: no memory or time is spent on a random init that
    # the checkpoint overwrites; assign=True then adopts the loaded tensors.
    model = TomocorClassifier(arch, device=torch.device("meta"))
    _check_keys(model, sd)
    sd = {k: v.float().contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    leftovers = [n for n, b in model.named_buffers() if b.is_meta]
    if leftovers:  # would only happen if timm added non-persistent buffers
        raise CheckpointError(f"model buffers not initialised by the checkpoint: {_fmt_keys(leftovers)}")
    model = model.to(device).eval().requires_grad_(False)
    arch = ArchInfo(**{**arch.__dict__, "chunked_blocks": chunked, "module_prefix": had_module,
                       "source": str(path), "n_params": count_params(model)})
    model.arch = arch
    log.info("loaded %s (%s, %.1fM params) from %s", arch.name, "chunked" if chunked else "flat",
             arch.n_params / 1e6, path)
    return model, arch


def save_tomocor_checkpoint(model: TomocorClassifier, path: Union[str, Path], module_prefix: bool = True,
                            chunks: int = 0, mask_token: bool = True) -> Path:
    """Write ``model`` in the tomocor format (for tests and benchmarks; not used in scoring)."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if mask_token:
        sd["model.mask_token"] = torch.zeros(1, model.arch.embed_dim)
    if chunks:
        per = -(-model.arch.depth // chunks)
        out: Dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            m = _FLAT_BLOCK.match(k)
            if m:
                i = int(m.group(1))
                k = f"model.blocks.{i // per}.{i}.{m.group(2)}"
            out[k] = v
        sd = out
    if module_prefix:
        sd = {_MODULE_PREFIX + k: v for k, v in sd.items()}
    torch.save({"state_dict": sd}, Path(path))
    return Path(path)


def random_tomocor_model(embed_dim: int = 384, depth: int = 2, img_size: int = 518, patch_size: int = 14,
                         mlp_ratio: float = 4.0, attn_hidden: int = 0, seed: int = 0) -> TomocorClassifier:
    """A randomly initialised classifier of the given size (tests and benchmarks only)."""
    arch = ArchInfo(embed_dim=embed_dim, depth=depth, patch_size=patch_size, img_size=img_size,
                    mlp_hidden=int(embed_dim * mlp_ratio), attn_hidden=attn_hidden or embed_dim,
                    n_branches=1, n_classes=2)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = TomocorClassifier(arch)
        for name, p in model.named_parameters():
            # timm was asked to skip its init; a small normal init keeps activations sane.
            with torch.no_grad():
                if name.endswith("gamma"):
                    p.fill_(0.1)
                elif p.dim() > 1 or name.endswith(("cls_token", "pos_embed")):
                    p.normal_(0.0, 0.02)
                elif "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
    return model.eval()
