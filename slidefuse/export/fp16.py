"""Mixed-precision copies of a fused fp32 graph: fp16 (or bf16) weights and compute, fp32 islands where needed.

The pass rewrites an ONNX graph node by node. Every node runs either in the low precision (fp16/bf16) or in
fp32; a Cast is inserted wherever a float tensor crosses from one to the other, and float initializers used by
low-precision nodes are stored converted (so the file is about half the size). Kept in fp32:

- the preprocessing region: everything between the uint8 input and the first Conv/MatMul (the uint8 -> float
  cast and the mean/std normalisation, so pixel values are normalised exactly as in fp32);
- every operator type in `keep_fp32_ops` (LayerNormalization by default: its variance is the classic fp16
  overflow/underflow spot);
- the output tail: the node that produces each graph output (the class softmax) and the shape-only nodes
  between it and the output.

The graph's contract does not change: uint8 tiles in, float32 probabilities out. The pass needs only `onnx`
and numpy (bf16 uses `ml_dtypes`, an onnx dependency), so `slidefuse build` can use it without torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableSequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slidefuse.errors import UsageError

log = logging.getLogger(__name__)

LOW_PRECISIONS = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = ("LayerNormalization",)
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_COMPUTE_OPS = {"Conv", "MatMul", "Gemm", "ConvTranspose"}  # the preprocessing region ends at the first of these
_PASSTHROUGH_OPS = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast", "Flatten"}
_TYPE_ONLY_INPUT_OPS = {"Shape", "Size"}  # read only the shape of their input: never cast it
# (op_type, input index) that must keep their declared type whatever the node's precision.
_FIXED_INPUTS = {("Resize", 1), ("Resize", 2), ("Resize", 3), ("Upsample", 1)}


def _low_array(arr: np.ndarray, low: int) -> np.ndarray:
    if low == TensorProto.FLOAT16:
        return arr.astype(np.float16)
    import ml_dtypes

    return arr.astype(ml_dtypes.bfloat16)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without large initializer data: enough for type inference, and always under 2 GB."""
    sk = onnx.ModelProto()
    sk.CopyFrom(model)
    del sk.graph.initializer[:]
    for init in model.graph.initializer:
        t = TensorProto()
        if init.ByteSize() < 4096 and init.data_location != TensorProto.EXTERNAL:
            t.CopyFrom(init)
        else:
            t.name, t.data_type = init.name, init.data_type
            t.dims.extend(init.dims)
            # an empty float tensor of the right shape is invalid; declare it as a graph input instead
            sk.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            continue
        sk.graph.initializer.append(t)
    return sk


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, node outputs) from ONNX type inference."""
    inferred = onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=False, data_prop=False)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn tensor-valued Constant nodes into initializers so that one rule converts every float constant."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _fp32_nodes(graph: onnx.GraphProto, keep_fp32_ops: Iterable[str]) -> set[int]:
    """Indices of the nodes that stay in fp32: preprocessing region, `keep_fp32_ops`, output tail."""
    keep_ops = set(keep_fp32_ops)
    inits = {i.name for i in graph.initializer}
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    fp32: set[int] = set()
    # preprocessing: nodes fed only by graph inputs / initializers / other preprocessing nodes, before compute ops
    pre_tensors = {i.name for i in graph.input}
    for i, node in enumerate(graph.node):
        if node.op_type in _COMPUTE_OPS:
            continue
        srcs = [x for x in node.input if x and x not in inits]
        if srcs and all(x in pre_tensors for x in srcs):
            fp32.add(i)
            pre_tensors.update(node.output)
    fp32.update(i for i, n in enumerate(graph.node) if n.op_type in keep_ops)
    # output tail: walk back from each output through shape-only nodes to the first computing node
    for out in graph.output:
        name = out.name
        while name in producer:
            idx = producer[name]
            fp32.add(idx)
            node = graph.node[idx]
            if node.op_type not in _PASSTHROUGH_OPS or not node.input:
                break
            name = node.input[0]
    return fp32


class _Rewrite:
    """One pass over a graph's nodes in order: the element type of every tensor produced so far, the casts and
    converted initializer copies made on the way, and the rewritten node list."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], low: int, precision: str) -> None:
        self.low = low
        self.types = types
        self.inits = {i.name: i for i in graph.initializer}
        self.dtype_of: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
        self.dtype_of.update({i.name: i.type.tensor_type.elem_type for i in graph.input})
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[TensorProto] = []
        self.used_inits: set[str] = set()
        self.suffix: dict[int, str] = {int(TensorProto.FLOAT): "fp32", int(low): precision}

    def as_type(self, name: str, want: int) -> str:
        """Name of a tensor holding `name` converted to `want` (an initializer copy or a Cast node)."""
        key = (name, want)
        if key in self.casts:
            return self.casts[key]
        new = f"{name}__{self.suffix[want]}"
        if name in self.inits:
            arr = numpy_helper.to_array(self.inits[name])
            conv = _low_array(arr, self.low) if want == self.low else arr.astype(np.float32)
            self.new_inits.append(numpy_helper.from_array(conv, new))
        else:
            self.new_nodes.append(helper.make_node("Cast", [name], [new], to=want, name=f"cast_{new}"))
        self.dtype_of[new] = want
        self.casts[key] = new
        return new

    def node(self, node: onnx.NodeProto, prec: int) -> None:
        """Append `node` run in precision `prec`: inputs cast to it, float attributes and outputs retyped."""
        self._cast_inputs(node, prec)
        self._retype_attributes(node, prec)
        self._record_outputs(node, prec)
        self.new_nodes.append(node)

    def _cast_inputs(self, node: onnx.NodeProto, prec: int) -> None:
        node_inputs = list(node.input)
        for k, name in enumerate(node_inputs):
            if not name:
                continue
            t = self.dtype_of.get(name, self.types.get(name, TensorProto.UNDEFINED))
            fixed = (node.op_type, k) in _FIXED_INPUTS or node.op_type in _TYPE_ONLY_INPUT_OPS
            if node.op_type == "Cast" or fixed or t not in _FLOATS or t == prec:
                if name in self.inits:
                    self.used_inits.add(name)
                continue
            node_inputs[k] = self.as_type(name, prec)
        del node.input[:]
        node.input.extend(node_inputs)

    def _retype_attributes(self, node: onnx.NodeProto, prec: int) -> None:
        """A float Cast target and a float ConstantOfShape value follow a low-precision node's precision."""
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == TensorProto.FLOAT and prec == self.low:
                to.i = self.low
        if node.op_type == "ConstantOfShape" and prec == self.low:
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(_low_array(numpy_helper.to_array(a.t), self.low)))

    def _record_outputs(self, node: onnx.NodeProto, prec: int) -> None:
        for out in node.output:
            t = self.types.get(out, TensorProto.UNDEFINED)
            if node.op_type == "Cast":
                t = next(a.i for a in node.attribute if a.name == "to")
            elif t == TensorProto.FLOAT and prec == self.low:
                t = self.low
            self.dtype_of[out] = t

    def restore_output_types(self, outputs: Iterable[onnx.ValueInfoProto], precision: str) -> None:
        """Graph outputs keep their declared (float32) type: a retyped output is renamed and cast back."""
        for out in outputs:
            want = out.type.tensor_type.elem_type
            if self.dtype_of.get(out.name, want) == want:
                continue
            inner = f"{out.name}__{precision}"
            for n in self.new_nodes:
                _rename(n.output, out.name, inner)
                _rename(n.input, out.name, inner)
            self.new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=want, name=f"cast_{out.name}"))


def _rename(names: MutableSequence[str], old: str, new: str) -> None:
    for k, name in enumerate(names):
        if name == old:
            names[k] = new


def _check_request(model: onnx.ModelProto, precision: str) -> None:
    if precision not in LOW_PRECISIONS:
        raise UsageError(f"precision {precision!r} is not a low-precision float type; expected one of "
                         f"{', '.join(LOW_PRECISIONS)}")
    if model.functions:
        raise UsageError(f"graph has {len(model.functions)} local functions; inline them before the {precision} pass")


def _install(graph: onnx.GraphProto, rw: _Rewrite) -> None:
    """Replace the graph's nodes and initializers by the rewritten ones; drop the now stale value_info."""
    kept = [i for i in graph.initializer if i.name in rw.used_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept + rw.new_inits)
    del graph.node[:]
    graph.node.extend(rw.new_nodes)
    del graph.value_info[:]


def convert_to_low_precision(
    model: onnx.ModelProto,
    precision: str = "fp16",
    keep_fp32_ops: Iterable[str] = DEFAULT_KEEP_FP32_OPS,
) -> onnx.ModelProto:
    """Return a mixed-precision copy of an fp32 graph (see the module docstring for what stays fp32).

    `model` must have its initializer data loaded (`onnx.load(..., load_external_data=True)`). The input
    and output names, dtypes and shapes are unchanged: uint8 `[B, T, T, 3]` in, float32 `[B, C, T, T]` out.
    """
    _check_request(model, precision)
    low = LOW_PRECISIONS[precision]
    out_model = onnx.ModelProto()
    out_model.CopyFrom(model)
    g = out_model.graph
    _constants_to_initializers(g)
    types = _elem_types(out_model)
    fp32_idx = _fp32_nodes(g, keep_fp32_ops)

    rw = _Rewrite(g, types, low, precision)
    for idx, node in enumerate(g.node):
        rw.node(node, TensorProto.FLOAT if idx in fp32_idx else low)
    rw.restore_output_types(g.output, precision)
    _install(g, rw)
    log.info("%s pass: %d nodes, %d kept in fp32, %d casts inserted", precision, len(rw.new_nodes),
             len(fp32_idx), sum(1 for n in rw.new_nodes if n.name.startswith("cast_")))
    return out_model
