"""FLOPs per tile, counted from the model rather than guessed.

A multiply-add counts as 2 FLOPs. Two counters, in order of preference:

1. `count_flops_torch`: torch's `FlopCounterMode` over one forward pass of the `SegmentationModel`, on the
   meta device (no memory, no arithmetic: a 1.1 B-parameter model is counted in seconds). It counts matrix
   products (`mm`, `addmm`, `bmm`), convolutions and fused attention; bias adds, normalisation, softmax and
   resizes are not counted (they are a fraction of a percent of a ViT + decoder and run memory-bound anyway).
2. `count_flops_onnx`: the same arithmetic read from an ONNX graph (`MatMul`, `Gemm`, `Conv`,
   `ConvTranspose` with their inferred shapes), for installs without torch. It needs the `onnx` package.

`model_flops` picks the first that works for a bundle and says which one it used (or why none did).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidefuse.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from slidefuse.runtime.bundle import Manifest

log = logging.getLogger(__name__)

COUNTED_ONNX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one tile through a model (multiply-add = 2 FLOPs)."""

    total: int  # FLOPs per tile, whole model
    method: str  # "torch-flop-counter" or "onnx-graph"
    encoder: int | None = None  # FLOPs per tile in the encoder (None when the counter cannot split)
    decoder: int | None = None  # FLOPs per tile in the decoder
    by_op: dict[str, int] = field(default_factory=dict)  # operator name -> FLOPs per tile
    note: str = ""  # what is and is not counted

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gflop_per_tile"] = self.total / 1e9
        return d


# ------------------------------------------------------------------------------------------- torch


def count_flops_torch(model: nn.Module, inputs: Any, *, split: tuple[str, ...] = ()) -> tuple[int, dict[str, int],
                                                                                           dict[str, int]]:
    """FLOPs of `model(inputs)` with torch's FlopCounterMode, without gradients.

    Returns (total, FLOPs per operator name, FLOPs per submodule name in `split`). `split` names are the
    attribute names of direct children (e.g. "encoder", "decoder"). Works on any device, including meta.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(inputs)
    counts = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counts.get("Global", {}).items()}
    parts = {name: _submodule_flops(counts, name) for name in split}
    return total, by_op, parts


def _submodule_flops(counts: dict[str, dict[Any, int]], name: str) -> int:
    """FLOPs under the direct child `name` of the root module. A child whose own forward is bypassed (the
    encoder's `forward_features` is called directly) has no entry of its own, so the shallowest entries below
    it are summed instead; deeper entries are already inside those."""
    keys = [k for k in counts if k != "Global" and k.split(".")[1:2] == [name]]
    if not keys:
        return 0
    depth = min(k.count(".") for k in keys)
    return int(sum(sum(counts[k].values()) for k in keys if k.count(".") == depth))


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence one logger (build_model's 'RANDOM weights' warning means nothing when counting FLOPs)."""
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def segmentation_model_flops(encoder: str, num_classes: int, tile_size: int,
                             decoder_width: int | None = None) -> FlopCount:
    """FLOPs per tile of `build_model(encoder, num_classes, tile_size, decoder_width)`, counted on the meta
    device (nothing is allocated; the weights do not matter to the count). Needs the export extra."""
    from slidefuse.errors import require

    torch = require("torch", "export", "counting FLOPs with torch")
    from slidefuse.model.assembly import build_model

    with torch.device("meta"), _quiet("slidefuse.model.assembly"):
        model = build_model(encoder, num_classes, tile_size=tile_size, decoder_width=decoder_width,
                            random_weights=True)
        tiles = torch.zeros((1, tile_size, tile_size, 3), dtype=torch.uint8)
    total, by_op, parts = count_flops_torch(model, tiles, split=("encoder", "decoder"))
    return FlopCount(total=total, method="torch-flop-counter", encoder=parts["encoder"],
                     decoder=parts["decoder"], by_op=by_op,
                     note="torch.utils.flop_counter on the meta device, batch 1; matmuls, convolutions and "
                          "attention counted (multiply-add = 2); bias, norms, softmax, resizes not counted")


# ------------------------------------------------------------------------------------------- onnx


def _shape_map(model: Any) -> dict[str, list[int]]:
    """Tensor name -> static shape for every tensor whose shape inference resolved fully."""
    out: dict[str, list[int]] = {}
    graph = model.graph
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    for init in graph.initializer:
        out[init.name] = [int(d) for d in init.dims]
    return out


def _node_flops(node: Any, shapes: dict[str, list[int]]) -> int | None:
    """FLOPs of one MatMul/Gemm/Conv/ConvTranspose node, or None when a shape is unknown."""
    if len(node.input) < 2:
        return None
    a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
    if out is None or a is None or b is None:
        return None
    if node.op_type == "MatMul":
        return 2 * math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
        return 2 * math.prod(out) * (a[0] if trans_a else a[-1])
    if node.op_type == "Conv":  # weight [Cout, Cin/groups, k...]
        return 2 * math.prod(out) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":  # weight [Cin, Cout/groups, k...]: each input element fans out
        return 2 * math.prod(a) * math.prod(b[1:])
    return 0


def count_flops_onnx(path: Path | str, *, tile_size: int) -> FlopCount:
    """FLOPs per tile of an ONNX graph with input uint8 [B, T, T, 3], from its MatMul/Gemm/Conv/ConvTranspose
    nodes after shape inference at batch 1. Raises UsageError when a counted node's shape cannot be inferred
    (the count would be silently short). Needs the `onnx` package."""
    from slidefuse.errors import require

    onnx = require("onnx", "export", "counting FLOPs from an ONNX graph")
    model = onnx.load(str(path), load_external_data=False)
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, tile_size, tile_size, 3), strict=False):
        d.ClearField("dim_param")
        d.dim_value = v
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises several types; any failure means no count
        raise UsageError(f"{path}: ONNX shape inference failed ({exc}); count FLOPs with torch instead") from exc
    shapes = _shape_map(model)
    by_op: dict[str, int] = {}
    unknown: list[str] = []
    for node in _all_nodes(model.graph):
        if node.op_type not in COUNTED_ONNX_OPS:
            continue
        n = _node_flops(node, shapes)
        if n is None:
            unknown.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + n
    if unknown:
        raise UsageError(f"{path}: shapes of {len(unknown)} counted nodes are unknown (first: {unknown[0]}); "
                         "count FLOPs with torch instead (pip install 'slidefuse[export]')")
    return FlopCount(total=sum(by_op.values()), method="onnx-graph", by_op=by_op,
                     note="MatMul/Gemm/Conv/ConvTranspose nodes of the ONNX graph at batch 1 (multiply-add = 2); "
                          "encoder/decoder split not available from the graph")


def _all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of `graph`, including those in subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for att in node.attribute:
            if att.g is not None and len(att.g.node):
                yield from _all_nodes(att.g)
            for g in att.graphs:
                yield from _all_nodes(g)


# ------------------------------------------------------------------------------------------- bundles


def model_flops(manifest: Manifest, model_path: Path | None = None) -> tuple[FlopCount | None, str]:
    """FLOPs per tile of a bundle's model: counted with torch on the meta device when torch is installed,
    else from the ONNX graph at `model_path`. Returns (count, "") or (None, why no count was possible)."""
    reasons: list[str] = []
    try:
        return segmentation_model_flops(manifest.encoder, manifest.num_classes, manifest.tile_size,
                                        manifest.decoder_width), ""
    except ImportError as exc:
        reasons.append(f"torch: {exc}")
    if model_path is not None:
        try:
            return count_flops_onnx(model_path, tile_size=manifest.tile_size), ""
        except (ImportError, UsageError) as exc:
            reasons.append(f"onnx: {exc}")
    reason = "; ".join(reasons) or "no model graph given"
    log.warning("FLOPs per tile not counted: %s", reason)
    return None, reason
