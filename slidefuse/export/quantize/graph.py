"""The INT8 graph: onnxruntime's `quantize_static` in QDQ format over a copy of the fp32 graph.

int8 weights with one scale per output channel (symmetric), uint8 activations (asymmetric), calibrated by a
`CalibrationDataReader` over the calibration tiles (MinMax, Percentile or Entropy). Only the compute operators
(`op_types`: MatMul, Gemm by default) are quantised; the preprocessing region (uint8 -> float cast, mean/std
normalisation) and the output tail (the class softmax) are excluded by name, found by the same rule as the fp16
pass (`fp16._fp32_nodes`), and so is the classification head that makes the logits (`_head_nodes`; quantised
logits flip pixels whose two best classes are nearly tied), so the graph's contract stays uint8 tiles in,
float32 probabilities out. Needs `onnx` and `onnxruntime`, imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.export.quantize.config import DEFAULT_METHOD, DEFAULT_OP_TYPES, QUANTIZABLE_OPS

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# element-wise and shape-only ops between the classification head and the softmax (see `_head_nodes`)
_HEAD_PATH_OPS = {"Add", "Sub", "Mul", "Div", "Resize", "Upsample", "Reshape", "Transpose", "Identity", "Squeeze",
                  "Unsqueeze", "Flatten", "Cast", "Slice", "Pad"}
_CALIBRATION_STRIDE = 8  # tiles per calibration pass (ranges / histograms are merged between passes)


def _reader(input_name: str, tiles: np.ndarray) -> Any:
    """A CalibrationDataReader feeding `tiles` (uint8 [N, T, T, 3]) one at a time; `set_range` selects a slice
    (onnxruntime's strided calibration, which merges ranges / histograms between slices)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _TileReader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.pos, self.end = 0, len(tiles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {input_name: np.ascontiguousarray(tiles[self.pos - 1:self.pos])}

        def __len__(self) -> int:
            return len(tiles)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, min(end_index, len(tiles))

    return _TileReader()


def _stride(n: int) -> int:
    """The largest divisor of `n` up to _CALIBRATION_STRIDE (onnxruntime needs one that divides the count)."""
    return max(d for d in range(1, min(n, _CALIBRATION_STRIDE) + 1) if n % d == 0)


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantiser prints calibration progress to stdout and advises quant_pre_process on the root
    logger (measured: it changes nothing here); both go to this module's debug log instead."""
    printed = io.StringIO()

    def no_advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(no_advice)
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(no_advice)
        for line in printed.getvalue().splitlines():
            log.debug("onnxruntime: %s", line)


def _has_external_data(model: onnx.ModelProto) -> bool:
    import onnx

    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)


def _head_nodes(graph: onnx.GraphProto, tail: set[int]) -> set[int]:
    """Indices of the compute nodes (Conv, MatMul, Gemm, ...) that make the logits: reached from the inputs of
    the output tail through element-wise and shape-only nodes (a bias Add, a Resize to the tile, a sum of
    branches), stopping at the first compute node of each branch."""
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    heads: set[int] = set()
    todo = [name for i in tail for name in graph.node[i].input]
    seen: set[int] = set(tail)
    while todo:
        j = producer.get(todo.pop())
        if j is None or j in seen:
            continue
        seen.add(j)
        node = graph.node[j]
        if node.op_type in QUANTIZABLE_OPS:
            heads.add(j)
        elif node.op_type in _HEAD_PATH_OPS:
            todo.extend(node.input)
    return heads


def _named_copy(src: Path, dest: Path, preprocess: bool, external: bool, float_head: bool
                ) -> tuple[Path, list[str]]:
    """Write the graph to quantise to `dest` (after quant_pre_process when asked), with a unique name on every
    node; returns (its path, the names of the nodes to exclude: preprocessing region and output tail)."""
    import onnx

    from slidefuse.export.fp16 import _fp32_nodes

    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = dest.with_name("preprocessed.onnx")
        quant_pre_process(str(src), str(pre), save_as_external_data=external, all_tensors_to_one_file=True)
        src = pre
    model = onnx.load(str(src), load_external_data=True)
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    keep = _fp32_nodes(model.graph, ())
    if float_head:
        keep |= _head_nodes(model.graph, keep)
    exclude = sorted(model.graph.node[i].name for i in keep)
    if external:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dest))
    return dest, exclude


def _check_quantisable(named: Path, exclude: set[str], op_types: Sequence[str], shown: Path) -> None:
    """UsageError when no node of `op_types` is left to quantise (onnxruntime would fail obscurely)."""
    import onnx

    graph = onnx.load(str(named), load_external_data=False).graph
    if not any(n.op_type in op_types and n.name not in exclude for n in graph.node):
        present = sorted({n.op_type for n in graph.node if n.op_type in QUANTIZABLE_OPS and n.name not in exclude})
        raise UsageError(f"{shown}: the graph has no {'/'.join(op_types)} node to quantise outside the "
                         f"preprocessing, head and softmax (it has {', '.join(present) or 'none'}); pass "
                         f"op_types={','.join(present) or 'Conv,MatMul,Gemm'}", field="op_types")


def write_int8_graph(fp32_path: Path, out_path: Path, input_name: str, tiles: np.ndarray, *,
                     method: str = DEFAULT_METHOD, op_types: Sequence[str] = DEFAULT_OP_TYPES,
                     preprocess: bool = False, float_head: bool = True) -> dict[str, Any]:
    """Quantise `fp32_path` to `out_path` (QDQ, per-channel int8 weights, uint8 activations), calibrated on
    `tiles` (uint8 [N, T, T, 3], RGB 0..255). External-data graphs give `out_path` + `<name>.data`.
    Returns a summary: excluded node names, quantised node counts, external data."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    external = _has_external_data(onnx.load(str(fp32_path), load_external_data=False))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="slidefuse-int8-prep-") as tmp:
        named, exclude = _named_copy(fp32_path, Path(tmp) / "named.onnx", preprocess, external, float_head)
        _check_quantisable(named, set(exclude), op_types, fp32_path)
        with _quiet_onnxruntime():
            quantize_static(
                str(named), str(out_path), _reader(input_name, tiles), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types), per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                use_external_data_format=external, calibrate_method=methods[method],
                extra_options={"CalibStridedMinMax": _stride(len(tiles))},
            )
    m8 = onnx.load(str(out_path), load_external_data=False)
    ops = [n.op_type for n in m8.graph.node]
    return {"excluded_nodes": exclude, "external_data": external,
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear")}
