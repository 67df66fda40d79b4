"""FLOP counting: exact against hand counts (a Conv/Linear net, the tiny ViT + decoder, a hand-built ONNX
graph), the torch and ONNX counters agree on the exported tiny model, and the fallback without torch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from slidefuse.bench import flops as flops_mod
from slidefuse.bench.flops import count_flops_onnx, model_flops
from slidefuse.errors import MissingExtra
from slidefuse.model.registry import get_spec
from slidefuse.runtime.bundle import Bundle


def test_conv_and_linear_are_counted_as_two_flops_per_multiply_add() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 5, kernel_size=3, padding=1), nn.Flatten(), nn.Linear(5 * 8 * 8, 7))
    total, by_op, _ = flops_mod.count_flops_torch(net, torch.zeros(2, 3, 8, 8))
    conv = 2 * (2 * 5 * 8 * 8) * (3 * 3 * 3)  # 2 x outputs x (Cin x k x k)
    linear = 2 * 2 * 7 * (5 * 8 * 8)  # 2 x B x out x in
    assert total == conv + linear
    assert by_op == {"convolution": conv, "addmm": linear}


def hand_count_tiny(tile: int, num_classes: int, decoder_width: int) -> tuple[int, int]:
    """(encoder, decoder) FLOPs per tile of a timm ViT (class token, GELU MLP) + the shared decoder."""
    spec = get_spec("tiny")
    p, d, depth, h = spec.patch_size, spec.width, spec.depth, spec.num_heads
    grid = tile // p
    tokens = grid * grid + spec.num_prefix_tokens
    hidden = int(d * spec.mlp_ratio)
    patch_embed = 2 * (grid * grid) * d * (3 * p * p)
    per_block = (2 * tokens * d * 3 * d  # qkv
                 + 2 * 2 * h * tokens * tokens * (d // h)  # q @ k^T and attn @ v
                 + 2 * tokens * d * d  # attention output projection
                 + 2 * 2 * tokens * d * hidden)  # fc1 + fc2
    encoder = patch_embed + depth * per_block
    dec = 2 * grid * grid * decoder_width * d  # 1x1 projection
    side = grid
    while side < tile:  # x2 upsample then 3x3 conv D -> D
        side *= 2
        dec += 2 * side * side * decoder_width * decoder_width * 9
    dec += 2 * tile * tile * num_classes * decoder_width  # 1x1 head
    return encoder, dec


def test_tiny_model_count_matches_the_hand_count() -> None:
    pytest.importorskip("torch")
    count = flops_mod.segmentation_model_flops("tiny", 3, 64, 32)
    enc, dec = hand_count_tiny(64, 3, 32)
    assert (count.encoder, count.decoder, count.total) == (enc, dec, enc + dec)
    assert count.total == 106_185_216 and count.method == "torch-flop-counter"


def test_onnx_graph_count_of_a_hand_built_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    t = 8
    inits = [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w_conv"),
             numpy_helper.from_array(np.zeros((t, 6), np.float32), "w_mm"),
             numpy_helper.from_array(np.zeros((6, 2), np.float32), "w_gemm")]
    nodes = [
        helper.make_node("Cast", ["tiles"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w_conv"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),  # [B,4,8,8]
        helper.make_node("MatMul", ["c", "w_mm"], ["m"]),  # [B,4,8,6]
        helper.make_node("MatMul", ["c", "w_mm"], ["probabilities"]),  # [B,4,8,6] again
        helper.make_node("Flatten", ["m"], ["r"], axis=3),  # [B*4*8, 6]
        helper.make_node("Gemm", ["r", "w_gemm"], ["g"]),  # [B*32, 2]
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("tiles", TensorProto.UINT8, ["batch", t, t, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    count = count_flops_onnx(path, tile_size=t)
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)
    matmul = 2 * (4 * 8 * 6) * 8
    gemm = 2 * (32 * 2) * 6
    assert count.by_op == {"Conv": conv, "MatMul": 2 * matmul, "Gemm": gemm}
    assert count.total == conv + 2 * matmul + gemm and count.method == "onnx-graph"


def test_torch_and_onnx_counters_agree_on_the_exported_tiny_model(tiny_bundle: Bundle) -> None:
    pytest.importorskip("onnx")
    m = tiny_bundle.manifest
    from_torch = flops_mod.segmentation_model_flops(m.encoder, m.num_classes, m.tile_size, m.decoder_width)
    from_graph = count_flops_onnx(tiny_bundle.model_path, tile_size=m.tile_size)
    assert from_graph.total == from_torch.total == sum(hand_count_tiny(m.tile_size, m.num_classes,
                                                                        m.decoder_width))


def test_model_flops_falls_back_to_the_graph_without_torch(tiny_bundle: Bundle,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")

    def no_torch(*args: object, **kw: object) -> None:
        raise MissingExtra("torch", "export", "counting FLOPs with torch")

    monkeypatch.setattr(flops_mod, "segmentation_model_flops", no_torch)
    count, reason = model_flops(tiny_bundle.manifest, tiny_bundle.model_path)
    assert count is not None and count.method == "onnx-graph" and reason == ""
    assert math.isclose(count.total, 106_185_216)
    count, reason = model_flops(tiny_bundle.manifest, None)
    assert count is None and "pip install 'slidefuse[export]'" in reason
