"""The tomocor classifier: a timm DINOv2 ViT backbone and a gated-attention MIL head.

Parameter names match the tomocor checkpoint once its ``module.`` prefix is
removed: the backbone lives under ``model.`` and the head modules are
``attention.0``, ``gate.0``, ``fc`` and ``head`` (``attention``/``gate`` are
``Sequential(Linear, activation)`` in the reference, hence the ``.0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# DINOv2 trains with LayerScale initialised to 1e-5; the value is irrelevant
# here (weights are always loaded) but it makes timm create ``ls*.gamma``.
_LAYERSCALE_INIT = 1e-5
_HEAD_DIM = 64  # DINOv2 uses 64-dim heads for every size (S/B/L/g)

_SIZE_NAMES = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-g"}


@dataclass(frozen=True)
class ArchInfo:
    """Architecture read off a checkpoint's tensor shapes."""

    embed_dim: int
    depth: int
    patch_size: int
    img_size: int
    mlp_hidden: int
    attn_hidden: int  # width of the head's attention/gate layers
    n_branches: int  # attention branches of the MIL head (logits are averaged)
    n_classes: int
    chunked_blocks: bool = False
    module_prefix: bool = False
    source: str = ""
    n_params: int = 0

    @property
    def num_heads(self) -> int:
        """Attention heads: DINOv2 always uses embed_dim / 64."""
        return self.embed_dim // _HEAD_DIM

    @property
    def mlp_ratio(self) -> float:
        """Hidden width of the transformer MLP over the embedding width."""
        return self.mlp_hidden / self.embed_dim

    @property
    def grid(self) -> int:
        """Patches per side of the (square) input window."""
        return self.img_size // self.patch_size

    @property
    def name(self) -> str:
        """Human label such as ``ViT-B/14@518 depth 12``."""
        base = _SIZE_NAMES.get(self.embed_dim, f"ViT-{self.embed_dim}d")
        return f"{base}/{self.patch_size}@{self.img_size} depth {self.depth}"


class TomocorClassifier(nn.Module):
    """timm DINOv2 backbone (CLS feature) plus the MIL head, named like tomocor."""

    def __init__(self, arch: ArchInfo, device: Optional[torch.device] = None) -> None:
        super().__init__()
        if arch.embed_dim % _HEAD_DIM:
            raise ValueError(f"embed dim {arch.embed_dim} is not a multiple of {_HEAD_DIM}")
        self.model = VisionTransformer(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            in_chans=3,
            num_classes=0,  # no timm head: the CLS feature goes to the MIL head
            global_pool="token",
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
            qkv_bias=True,
            init_values=_LAYERSCALE_INIT,
            class_token=True,
            no_embed_class=False,  # DINOv2's pos_embed has a row for the CLS token
            dynamic_img_size=False,  # windows are always img_size; no resampling
            weight_init="skip",  # weights are loaded next; random init is wasted time
            device=device,
        )
        # The head modules are attributes of this class (not of a submodule) so
        # that their names are exactly ``attention.0``, ``gate.0``, ``fc``, ``head``.
        d, h = arch.embed_dim, arch.attn_hidden
        self.attention = nn.Sequential(nn.Linear(d, h, device=device), nn.Tanh())
        self.gate = nn.Sequential(nn.Linear(d, h, device=device), nn.Sigmoid())
        self.fc = nn.Linear(h, arch.n_branches, device=device)
        self.head = nn.Linear(d, arch.n_classes, device=device)
        self.arch = arch

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) windows in [0, 1] -> (M, D) CLS features after the final norm."""
        return self.model.forward_head(self.model.forward_features(windows), pre_logits=True)

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, K, D) features of N slices -> (N, n_classes) logits."""
        a = self.fc(self.attention(feats) * self.gate(feats))  # (N, K, branches)
        a = torch.softmax(a, dim=1)  # over the K windows, per branch
        pooled = torch.einsum("nkb,nkd->nbd", a, feats)
        return self.head(pooled).mean(dim=1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, K, 3, S, S) windows of N slices -> (N, n_classes) logits."""
        n, k = windows.shape[:2]
        feats = self.features(windows.flatten(0, 1)).reshape(n, k, -1)
        return self.head_logits(feats)


def count_params(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(math.prod(p.shape) for p in module.parameters())
