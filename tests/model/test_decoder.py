"""The shared decoder of the reference design: parameter count, number of x2 blocks, final resize."""

from __future__ import annotations

import pytest
import torch

from slidefuse.errors import UsageError
from slidefuse.model.decoder import Decoder, num_up_blocks


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_decoder_has_2_6_million_parameters() -> None:
    # d = 1024 (ViT-L), P = 16 -> grid 32 at 512 px, C = 3, D = 256
    dec = Decoder(in_channels=1024, num_classes=3, width=256, grid=32, out_size=512)
    n = _params(dec)
    assert abs(n - 2_600_000) <= 100_000, n
    # exactly: 1x1 (1024*256+256) + 4 x 3x3 (256*256*9+256) + 1x1 (256*3+3)
    assert n == 1024 * 256 + 256 + 4 * (256 * 256 * 9 + 256) + 256 * 3 + 3


@pytest.mark.parametrize(
    ("grid", "out", "blocks"),
    [(32, 512, 4), (36, 512, 4), (64, 512, 3), (37, 518, 4), (16, 16, 0), (14, 224, 4), (1, 3, 2)],
)
def test_number_of_upsampling_blocks_is_ceil_log2(grid: int, out: int, blocks: int) -> None:
    assert num_up_blocks(grid, out) == blocks
    assert len(Decoder(8, 2, 4, grid, out).blocks) == blocks


def test_blocks_are_upsample_conv3x3_relu() -> None:
    dec = Decoder(16, 2, 8, grid=8, out_size=32)
    up, conv, act = dec.blocks[0]
    assert isinstance(up, torch.nn.Upsample) and up.scale_factor == 2 and up.mode == "bilinear"
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.in_channels == 8
    assert isinstance(act, torch.nn.ReLU)
    assert dec.proj.kernel_size == (1, 1) and dec.head.kernel_size == (1, 1) and dec.head.out_channels == 2


def test_patch14_grid_is_resized_to_the_tile() -> None:
    # P = 14 at 512 px: grid 36, four x2 blocks give 576, then a bilinear resize to 512
    dec = Decoder(in_channels=64, num_classes=3, width=16, grid=36, out_size=512)
    assert dec.needs_resize
    x = torch.randn(2, 64, 36, 36)
    with torch.no_grad():
        y = dec(x)
        pre = dec.head(dec.blocks(dec.proj(x)))
    assert pre.shape == (2, 3, 576, 576)
    assert y.shape == (2, 3, 512, 512)
    expected = torch.nn.functional.interpolate(pre, size=(512, 512), mode="bilinear", align_corners=False)
    assert torch.allclose(y, expected)


def test_exact_grid_is_not_resized() -> None:
    dec = Decoder(in_channels=8, num_classes=2, width=4, grid=4, out_size=64)
    assert not dec.needs_resize
    with torch.no_grad():
        assert dec(torch.randn(1, 8, 4, 4)).shape == (1, 2, 64, 64)


def test_bad_sizes_raise_usage_errors() -> None:
    with pytest.raises(UsageError, match="num_classes 0"):
        Decoder(8, 0, 4, 4, 64)
    with pytest.raises(UsageError, match="grid 0"):
        num_up_blocks(0, 64)
