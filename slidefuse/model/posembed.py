"""Position embeddings at the tile's token grid, computed exactly as each publisher's code computes them.

A checkpoint holds absolute position embeddings for one token grid (g0 x g0); a tile of T px needs
g = T // P. Each publisher's code bridges the two at run time in its own way, and the ways differ by up to
~3e-2 in the patch tokens, so slidefuse uses the publisher's rule (`EncoderSpec.pos_resample`):

- "bicubic-antialias": `F.interpolate(size=(g, g), mode="bicubic", antialias=True)` in float32. This is timm's
  `resample_abs_pos_embed`, which timm models run with `dynamic_img_size=True`, and transformers'
  `Dinov2WithRegistersModel.interpolate_pos_encoding`.
- "bicubic": the same without antialias: transformers' `ViTModel` (`interpolate_pos_encoding=True`) and
  `Dinov2Model`.
- "bicubic-offset": the DINO / iBOT rule of CONCH v1.5's own ViT. Its trunk holds a fixed grid gn (224 px:
  14 x 14); a checkpoint of another grid is brought to gn once at load (bilinear, no antialias), and each
  forward interpolates with `scale_factor = (g + 0.1) / gn` (bicubic, no antialias), unless g == gn.

The result depends only on the tile size, so it is computed once when weights are loaded and the exported
graph holds it as a constant: the graph computes what the publisher's code computes at that tile size.
Tokens before the grid (class token, and registers when they have position embeddings) keep theirs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from slidefuse.model.registry import EncoderSpec


def _grid(pos: torch.Tensor, side: int) -> torch.Tensor:
    """Grid rows [1, side*side, d] -> float32 image [1, d, side, side]."""
    return pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)


def _rows(img: torch.Tensor) -> torch.Tensor:
    """float image [1, d, g, g] -> rows [1, g*g, d] (row-major grid order)."""
    return img.permute(0, 2, 3, 1).reshape(1, -1, img.shape[1])


def resample_grid(pos: torch.Tensor, rule: str, old: int, new: int, native: int) -> torch.Tensor:
    """Position-embedding rows of a g0 x g0 grid [1, old*old, d] -> rows of the new grid [1, new*new, d]
    (float32) with the publisher's `rule` (one of registry.POS_RESAMPLE); `native` is the trunk's own grid
    side (used by "bicubic-offset" only)."""
    if rule == "bicubic-offset":
        img = _grid(pos, old)
        if old != native:  # the publisher's loader: bilinear to the trunk's grid, no antialias
            img = F.interpolate(img, size=(native, native), mode="bilinear", antialias=False)
        if new != native:  # the publisher's forward: DINO-style scale factor with its +0.1 offset
            scale = (new + 0.1) / math.sqrt(native * native)
            img = F.interpolate(img, scale_factor=(scale, scale), mode="bicubic")
        return _rows(img)
    if old == new:
        return pos.float()
    if rule not in ("bicubic", "bicubic-antialias"):
        raise ValueError(f"position-embedding rule {rule!r}: expected bicubic, bicubic-antialias or bicubic-offset")
    img = F.interpolate(_grid(pos, old), size=(new, new), mode="bicubic", align_corners=False,
                        antialias=rule == "bicubic-antialias")
    return _rows(img)


def publisher_pos_embed(pos: torch.Tensor, spec: EncoderSpec, new_grid: int) -> torch.Tensor:
    """A checkpoint's position embeddings [1, prefix + g0*g0, d] (timm layout) -> [1, prefix + g*g, d] for a
    g x g token grid, in the checkpoint's dtype. `prefix` = 0 when `spec.no_embed_class`, else the class token
    and registers. Raises ValueError when the checkpoint's rows do not form a square grid."""
    prefix = 0 if spec.no_embed_class else spec.num_prefix_tokens
    n_old = pos.shape[1] - prefix
    old = math.isqrt(max(n_old, 0))
    if old * old != n_old:
        raise ValueError(f"{n_old} position embeddings after {prefix} prefix tokens: not a square grid")
    native = spec.grid_size(spec.native_size)
    grid = resample_grid(pos[:, prefix:], spec.pos_resample, old, new_grid, native)
    return torch.cat([pos[:, :prefix].float(), grid], dim=1).to(pos.dtype)
