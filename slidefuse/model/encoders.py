"""Architecture builders: every registered encoder is a timm `VisionTransformer` configured from its spec.

The trunk is built for a fixed input side (`img_size`, normally the tile size), so its position embeddings
already have the tile's grid. A checkpoint made for another grid is resampled once, when loaded, with the
publisher's own run-time rule (`slidefuse.model.posembed`): a constant function of the tile size, so the
exported graph holds exactly what the publisher's code computes at that size. `patch_tokens` turns a
normalised image batch into the patch tokens the decoder uses (class token and registers dropped).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from slidefuse.model.registry import EncoderSpec

log = logging.getLogger(__name__)


def build_vit(spec: EncoderSpec, img_size: int) -> nn.Module:
    """A timm VisionTransformer for `spec` taking float [B, 3, img_size, img_size] inputs (normalised).

    No classifier head (num_classes=0), no pooling; `forward_features` returns [B, prefix + h*w, d] after the
    final LayerNorm, with h = w = img_size // P. Built on the current default device (use
    `with torch.device("meta")` to count parameters without memory). Weights are timm's random init.
    """
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    mlp_kw: dict[str, object] = {}
    mlp_ratio = spec.mlp_ratio
    if spec.mlp in ("swiglu-packed", "swiglu-dinov2"):
        mlp_kw = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
    if spec.mlp == "swiglu-dinov2":  # timm sizes fc1 as int(d * mlp_ratio): aim half-way to hit it exactly
        mlp_ratio = (spec.mlp_hidden() + 0.5) / spec.width
    return VisionTransformer(
        img_size=img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=spec.qkv_bias,
        init_values=spec.init_values,
        reg_tokens=spec.num_registers,
        no_embed_class=spec.no_embed_class,
        class_token=True,
        num_classes=0,
        global_pool="",
        dynamic_img_size=False,
        norm_layer=partial(nn.LayerNorm, eps=spec.norm_eps),
        **mlp_kw,  # type: ignore[arg-type]
    )


def patch_tokens(encoder: nn.Module, spec: EncoderSpec, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens of a normalised float batch [B, 3, H, W]: float [B, h*w, d] (prefix tokens dropped),
    in row-major grid order, after the trunk's final LayerNorm."""
    tokens = encoder.forward_features(images)  # type: ignore[operator]
    return tokens[:, spec.num_prefix_tokens :, :]
