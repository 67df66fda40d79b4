"""The shared lightweight decoder of the reference benchmark, identical for every encoder.

    Conv1x1(d -> D)
    s = ceil(log2(H / h)) blocks of: x2 bilinear upsample, Conv3x3(D -> D), ReLU
    Conv1x1(D -> C) class logits, then a bilinear resize to H x W when the grid did not land on H exactly

For d = 1024, P = 16 (h = 32 at H = 512), C = 3, D = 256 that is 2,623,491 parameters (about 2.6 M).
The number of blocks is fixed when the decoder is built (from the grid and tile sizes), so the graph has no
data-dependent control flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidefuse.errors import UsageError


def num_up_blocks(grid: int, out_size: int) -> int:
    """s = ceil(log2(out_size / grid)) computed in integers: the fewest x2 steps with grid * 2**s >= out_size."""
    if grid <= 0 or out_size <= 0:
        raise UsageError(f"decoder grid {grid} and output size {out_size} must be positive")
    s = 0
    while grid << s < out_size:
        s += 1
    return s


class UpBlock(nn.Sequential):
    """x2 bilinear upsample, Conv3x3(D -> D) with padding 1, ReLU: float [B, D, h, w] -> [B, D, 2h, 2w]."""

    def __init__(self, width: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )


class Decoder(nn.Module):
    """Feature map float [B, d, h, w] -> class logits float [B, C, out_size, out_size].

    Args:
        in_channels: encoder token width d.
        num_classes: C.
        width: decoder width D (256 in the paper).
        grid: token grid side h (= tile_size // P).
        out_size: output side H (the tile size).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, grid: int, out_size: int) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if value < 1:
                raise UsageError(f"decoder {name} {value} must be >= 1")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.grid = grid
        self.out_size = out_size
        self.proj = nn.Conv2d(in_channels, width, kernel_size=1)
        self.blocks = nn.Sequential(*(UpBlock(width) for _ in range(num_up_blocks(grid, out_size))))
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)
        self.needs_resize = grid << len(self.blocks) != out_size  # fixed at build time

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """float [B, d, h, w] -> float logits [B, C, out_size, out_size]."""
        x = self.head(self.blocks(self.proj(features)))
        if self.needs_resize:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return x
