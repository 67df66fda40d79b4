"""INT8 copies of a bundle's fp32 graph: static QDQ quantisation calibrated on real tissue tiles, with a gate.

`quantize_bundle` adds `model.int8.onnx` to an existing, sealed bundle (`slidefuse quantize`):

1. tiles: `parity.slide_tiles` cuts tissue tiles from the slides the user names (tissue on a thumbnail, a tile
   grid at the bundle's mpp and tile size); a seeded shuffle splits them into calibration tiles and held-out gate
   tiles, which never share a tile;
2. the graph: onnxruntime's `quantize_static` in QDQ format, int8 weights with one scale per output channel
   (symmetric), uint8 activations (asymmetric), calibrated by a `CalibrationDataReader` over the calibration
   tiles (MinMax, Percentile or Entropy). Only the compute operators (`op_types`: MatMul, Gemm by
   default) are quantised; the preprocessing region (uint8 -> float cast, mean/std normalisation) and the
   output tail (the class softmax) are excluded by name, found by the same rule as the fp16 pass
   (`fp16._fp32_nodes`), and so is the classification head that makes the logits (`_head_nodes`; quantised
   logits flip pixels whose two best classes are nearly tied), so the graph's contract stays uint8 tiles in,
   float32 probabilities out;
3. the gate: `parity.compare` of model.onnx against model.int8.onnx (both on onnxruntime's CPU provider) on
   the gate tiles, with INT8 thresholds (`INT8_THRESHOLDS`);
4. the other accelerated CPU paths (`runtime.backends.cpu_paths`), when OpenVINO is installed: ov-cpu int8 (the
   same graph, run by OpenVINO, whose integer kernels round differently: measured 0.9944 agreement on the demo
   bundle where onnxruntime's had 0.9977) and ov-cpu bf16 (model.onnx with OpenVINO's bf16 hint, where the CPU
   has bf16), each against the same fp32 outputs on the same gate tiles with the same thresholds. A failing one
   does not stop the command: it is recorded as failed (and then refused by the backend, and never picked by
   `auto`); one that cannot be run here is recorded as not gated, with the reason;
5. only then are the new files renamed into the bundle (`slidefuse.atomic`) and the manifest rewritten
   (`write_manifest`): `int8_model_file`, `parity["int8"]` (the gate's figures and thresholds), `parity["ov-cpu
   int8"]` and `parity["ov-cpu bf16"]` (the same, plus the OpenVINO version and CPU capabilities; or
   `passed: null` and a `reason`) and `export["int8"]` (the calibration record). A failed int8 gate (step 3)
   leaves the bundle byte for byte as it was.

The graph runs on `ort-cpu` with `precision=int8` (onnxruntime's CPU kernels fuse each Q/DQ pair into integer
convolutions and matrix products), and on `ov-cpu` with `precision=int8` where its own gate passed. Needs `onnx`
and `onnxruntime`, not torch; `openvino` for the OpenVINO gates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slidefuse.atomic import atomic_folder, atomic_path
from slidefuse.errors import BundleError, ParityError, SlidefuseError, SlideNotFound, UsageError, one_line, require
from slidefuse.export.parity import (
    ParityReport,
    ParityThresholds,
    ParityTiles,
    Runner,
    compare,
    gate_backend,
    slide_tiles,
)
from slidefuse.runtime.backends.cpu_paths import GATED, CpuPath, failed_figures
from slidefuse.runtime.bundle import MANIFEST, Bundle, load_bundle, write_manifest

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
METHODS = ("minmax", "percentile", "entropy")  # calibration methods (onnxruntime's CalibrationMethod)
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")  # op types that may be given in `op_types`
# Defaults chosen by measurement. Calibration: Percentile (demo bundle, held-out tiles over three splits:
# agreement mean 0.9983 vs MinMax 0.9979 and Entropy 0.9950, worst max |dp| 0.076 / 0.079 / 0.37: Entropy clips
# too hard); the head in float (0.9983 vs 0.9975 on the demo, 0.9990 vs 0.9924 on the colour test model, whose
# quantised logits flipped near-tied pixels); no quant_pre_process (the same figures, a slightly larger file).
# Op types: MatMul and Gemm only (the ViT encoder in int8, the convolutional decoder in float). Measured on whole
# stitched slides with a phikon decoder trained by `slidefuse train` (224 px at 1 um/px, calibrated on
# CMU-1-Small-Region + OS-2): argmax agreement with fp32 on tissue 0.9980 / 0.9976 (CMU / OS-2) with MatMul+Gemm,
# but 0.9950 / 0.9935 with the decoder's Conv quantised as well (ov-cpu: 0.9944 / 0.9936), below the 0.995 the
# CPU paths must keep. Quantising Conv too is about 1.7x faster on phikon at 512 px (the decoder's full-resolution
# convolutions are half its FLOPs): choose it with `--op-types Conv,MatMul,Gemm` where the gate accepts it.
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")
DEFAULT_METHOD = "percentile"
# The gate judges mainly by argmax agreement. max |dp| bounds the worst pixel: a pixel whose two best classes are
# nearly tied moves by up to about their gap when 8-bit activations tip it; good calibrations stay under 0.1 on
# the demo model, a broken graph (saturated ranges) reaches ~1. 0.35 leaves room for larger models' rare pixels.
# min agreement 0.998 on the gate's tiles: whole stitched slides' tissue agreement ran up to 0.003 below the
# gate's (all pixels of tissue tiles, glass included) in benchmarks/results/cpu-accuracy.json, and the paths must
# keep 0.995 on tissue.
INT8_THRESHOLDS = ParityThresholds(max_abs_diff=0.35, min_argmax_agreement=0.998)
# element-wise and shape-only ops between the classification head and the softmax (see `_head_nodes`)
_HEAD_PATH_OPS = {"Add", "Sub", "Mul", "Div", "Resize", "Upsample", "Reshape", "Transpose", "Identity", "Squeeze",
                  "Unsqueeze", "Flatten", "Cast", "Slice", "Pad"}
_CALIBRATION_STRIDE = 8  # tiles per calibration pass (ranges / histograms are merged between passes)
REFERENCE = "model.onnx (onnxruntime CPU)"  # the fp32 reference runner's label in every gate
OV_PATHS: tuple[CpuPath, ...] = tuple(p for p in GATED if p.backend == "ov-cpu")  # gated here when OpenVINO is


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything `quantize_bundle` needs."""

    bundle: Path  # the bundle to add model.int8.onnx to (or to copy, with `out`)
    slides: tuple[Path, ...]  # slides to cut calibration and gate tiles from
    calibration_tiles: int = 32  # tiles that calibrate the activation ranges
    gate_tiles: int = 16  # held-out tiles of the parity gate (never calibration tiles)
    method: str = DEFAULT_METHOD  # "minmax", "percentile" or "entropy"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES  # operator types to quantise
    thresholds: ParityThresholds = INT8_THRESHOLDS  # the gate: model.int8.onnx vs model.onnx
    seed: int = 0  # seed of the calibration / gate split
    force: bool = False  # replace an existing int8 graph
    out: Path | None = None  # copy the bundle here first and quantise the copy (a new folder)
    preprocess: bool = False  # run onnxruntime's quant_pre_process (shape inference + optimisation) first
    float_head: bool = True  # keep the compute node that makes the logits (the classification head) in float

    def check(self) -> None:
        """UsageError for bad counts, methods or op types; SlideNotFound for a slide that is not a file."""
        if not self.slides:
            raise UsageError("--slides: name at least one slide to cut calibration tiles from")
        if self.calibration_tiles < 1:
            raise UsageError(f"--calibration-tiles {self.calibration_tiles}: expected at least 1, e.g. 32")
        if self.gate_tiles < 1:
            raise UsageError(f"--gate-tiles {self.gate_tiles}: expected at least 1, e.g. 16")
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        bad = [t for t in self.op_types if t not in QUANTIZABLE_OPS]
        if not self.op_types or bad:
            raise UsageError(f"op types {list(self.op_types)}: expected some of {', '.join(QUANTIZABLE_OPS)}")
        for path in self.slides:
            if not Path(path).is_file():
                raise SlideNotFound(f"{path}: no such slide; check the --slides path")


@dataclass(frozen=True)
class PathGate:
    """The gate of one more accelerated CPU path (an OpenVINO one), as recorded in the manifest."""

    path: str  # e.g. "ov-cpu int8" (= its manifest parity key)
    state: Literal["passed", "failed", "not gated"]
    record: dict[str, Any]  # manifest parity[path]: pair figures + thresholds + passed, or passed None + reason

    def line(self) -> str:
        """One line for the user, e.g. "ov-cpu int8 refused: agreement 0.9944 < 0.995 on 8 gate tiles; ..."."""
        r = self.record
        if self.state == "passed":
            th = r["thresholds"]
            return (f"{self.path} passed: argmax agreement {r['argmax_agreement']:.5f}, max |dp| "
                    f"{r['max_abs_diff']:.3g} on {r['tiles']} gate tiles (limits {th['min_argmax_agreement']:g} / "
                    f"{th['max_abs_diff']:g}); auto may pick it")
        if self.state == "failed":
            return f"{self.path} refused: {failed_figures(r)}; it will not be used"
        return f"{self.path} not gated: {r['reason']}; auto will not pick it"


@dataclass(frozen=True)
class QuantizeResult:
    bundle: Bundle  # the bundle with its int8 graph, loaded and verified
    parity: dict[str, Any]  # the gate's record (= manifest parity["int8"])
    paths: tuple[PathGate, ...]  # the OpenVINO paths' gates (= manifest parity["ov-cpu int8"], ["ov-cpu bf16"])
    record: dict[str, Any]  # the calibration record (= manifest export["int8"])
    fp32_bytes: int  # size of the fp32 graph (with its external data)
    int8_bytes: int  # size of the int8 graph (with its external data)
    seconds: float  # wall time of the whole run


# ---------------------------------------------------------------------------------------------- target
def _package_data() -> Path:
    import slidefuse

    return Path(slidefuse.__file__).resolve().parent


def _check_writable(folder: Path) -> None:
    """Refuse the bundle shipped inside the package and a bundle folder this process cannot write to."""
    root = folder.resolve()
    if root == _package_data() or _package_data() in root.parents:
        raise UsageError(f"{folder}: the demonstration bundle shipped inside the slidefuse package is not "
                         "changed in place; quantise a copy: add --out NEW_FOLDER")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{folder}: the bundle folder is not writable; quantise a copy with --out NEW_FOLDER")


def _check_source(bundle: Bundle, config: QuantizeConfig) -> None:
    m = bundle.manifest
    if m.model_file is None:
        raise BundleError(f"{bundle.path}: a torch-only bundle (no ONNX graph) cannot be quantised; export it "
                          "with 'slidefuse export' first")
    if m.int8_model_file and not config.force:
        raise UsageError(f"{bundle.path}: already has {m.int8_model_file} (parity in its manifest); add --force "
                         "to replace it")


def _copy_bundle(src: Bundle, dest: Path) -> None:
    """Copy the manifest and every file it lists (contents only, not modes: the copy must be writable)."""
    for rel in [MANIFEST, *src.manifest.files]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.path / rel, target)


def quantize_bundle(config: QuantizeConfig) -> QuantizeResult:
    """Add a gated `model.int8.onnx` to `config.bundle` (or to a copy at `config.out`); see the module docstring.

    Raises UsageError (options, a read-only or shipped bundle, an existing int8 graph without `force`, too few
    tissue tiles), BundleError (torch-only bundle), SlideNotFound / SlideReadError (slides), ParityError (the
    gate failed; nothing was written)."""
    config.check()
    require("onnx", "export", "slidefuse quantize (reading and writing ONNX graphs)")
    src = load_bundle(config.bundle)
    _check_source(src, config)
    if config.out is None:
        _check_writable(src.path)
        return _quantize_in_place(src, config, src.path)
    out = Path(config.out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; name a new folder for the copy")
    with atomic_folder(out) as stage:
        _copy_bundle(src, stage)
        result = _quantize_in_place(load_bundle(stage), config, out)
    return dataclasses.replace(result, bundle=load_bundle(out))


# ---------------------------------------------------------------------------------------------- tiles
def split_tiles(pool: ParityTiles, n_calibration: int, n_gate: int, seed: int, *, what: str = "tissue tiles"
                ) -> tuple[ParityTiles, ParityTiles]:
    """(calibration tiles, gate tiles): a seeded shuffle of `pool` split into two disjoint sets, each kept in
    the pool's order. UsageError (saying `what` the pool holds) when it has fewer than `n_calibration + n_gate`."""
    n = len(pool.tiles)
    if n < n_calibration + n_gate:
        raise UsageError(
            f"the slides give {n} {what}, but --calibration-tiles "
            f"{n_calibration} + --gate-tiles {n_gate} = {n_calibration + n_gate} were asked for; ask for at most "
            f"{n} in all (e.g. --calibration-tiles {max(1, n - max(1, n // 3))} --gate-tiles {max(1, n // 3)}) "
            "or name more --slides")
    order = np.random.default_rng(seed).permutation(n)
    gate_idx = np.sort(order[:n_gate])
    cal_idx = np.sort(order[n_gate:n_gate + n_calibration])

    def part(idx: np.ndarray) -> ParityTiles:
        return ParityTiles(pool.tiles[idx], tuple(pool.sources[i] for i in idx), pool.origins)

    return part(cal_idx), part(gate_idx)


def _slide_record(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    mtime = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return {"file": Path(path).name, "bytes": st.st_size, "mtime": mtime}


# ---------------------------------------------------------------------------------------------- the graph
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
                         f"--op-types {','.join(present) or 'Conv,MatMul,Gemm'}")


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


# ---------------------------------------------------------------------------------------------- gate
def _staged(bundle: Bundle, scratch: Path) -> tuple[Bundle, Bundle]:
    """The bundle as it will be: its manifest names the int8 graph and holds no gate record of an accelerated
    path (those are being measured again); over `scratch` (the new int8 graph) and over the bundle's own folder
    (model.onnx, which the bf16 path runs)."""
    parity = {k: v for k, v in bundle.manifest.parity.items() if k not in {p.gate for p in GATED}}
    manifest = dataclasses.replace(bundle.manifest, int8_model_file=INT8_FILE, parity=parity)
    return Bundle(scratch, manifest, "staged"), Bundle(bundle.path, manifest, "staged")


def _gate(staged: Bundle, reference: Runner, tiles: ParityTiles, config: QuantizeConfig, outputs: dict[str, np.ndarray],
          *, shown: Path, external: bool) -> ParityReport:
    """model.onnx vs the staged model.int8.onnx (`staged`, over the scratch folder) on the gate tiles;
    ParityError (naming the bundle as `shown`) when it fails. The reference's outputs stay in `outputs` for the
    other gates."""
    runners = {REFERENCE: reference,
               f"{INT8_FILE} (onnxruntime CPU)": gate_backend(staged, "int8", low_memory=external)}
    report = compare(runners, tiles, thresholds=config.thresholds, outputs=outputs)
    p = report.pairs[0]
    if not p.passed:
        th = p.thresholds
        raise ParityError(
            f"{shown / INT8_FILE}: INT8 gate failed on {report.tiles} held-out tiles: argmax agreement "
            f"{p.argmax_agreement:.5f} (min {th.min_argmax_agreement:g}), max |dp| {p.max_abs_diff:.3g} (limit "
            f"{th.max_abs_diff:g}); nothing was written: try more --calibration-tiles, another --method "
            f"(minmax, percentile, entropy), or run the fp32 graph")
    return report


def _ov_runner(staged: Bundle, precision: str) -> Runner:
    """The ov-cpu backend over the staged bundle at `precision`, run before any record of its gate exists."""
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    return OvCpuBackend(staged, precision=precision, unverified="allow")


def _ov_gate(staged: Bundle, path: CpuPath, reference: Runner, tiles: ParityTiles, config: QuantizeConfig,
             outputs: dict[str, np.ndarray]) -> PathGate:
    """One OpenVINO path against the fp32 reference outputs (in `outputs`) on the same gate tiles."""
    import openvino

    from slidefuse.runtime.backends.openvino import OvCpuBackend, OvOptions, cpu_capabilities

    why = OvCpuBackend.can_run(staged, OvOptions.parse("ov-cpu", {"precision": path.precision,
                                                                  "unverified": "allow"}))
    if why is not None:
        return PathGate(path.name, "not gated", {"passed": None, "reason": f"cannot run here ({why})"})
    graph = OvCpuBackend.graph_file(staged, path.precision).name
    label = f"{graph} (OpenVINO CPU, {path.precision})"
    try:
        report = compare({REFERENCE: reference, label: _ov_runner(staged, path.precision)}, tiles,
                         thresholds=config.thresholds, outputs=outputs)
    except (SlidefuseError, RuntimeError) as exc:  # OpenVINO could not compile or run it: recorded, not hidden
        return PathGate(path.name, "not gated", {"passed": None,
                                                 "reason": f"OpenVINO could not run it ({one_line(exc)})"})
    record = {**report.pair_record(), "backend": path.backend, "precision": path.precision,
              "openvino": openvino.__version__, "cpu": " ".join(cpu_capabilities())}
    return PathGate(path.name, "passed" if record["passed"] else "failed", record)


def _ov_gates(staged: tuple[Bundle, Bundle], reference: Runner, tiles: ParityTiles, config: QuantizeConfig,
              outputs: dict[str, np.ndarray]) -> tuple[PathGate, ...]:
    """The gates of `OV_PATHS`; each "not gated" (with the reason) when OpenVINO cannot run here. `staged`:
    the staged bundle over the scratch folder (the int8 path runs its new graph) and over the bundle's folder."""
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    unavailable = OvCpuBackend.availability()
    if unavailable is not None:
        return tuple(PathGate(p.name, "not gated", {"passed": None, "reason": unavailable}) for p in OV_PATHS)
    scratch, own = staged
    gates = tuple(_ov_gate(scratch if p.precision == "int8" else own, p, reference, tiles, config, outputs)
                  for p in OV_PATHS)
    for g in gates:
        log.debug("%s", g.line())
    return gates


def _graph_bytes(folder: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (folder / name, folder / f"{name}.data") if p.is_file())


def _install(bundle: Bundle, scratch: Path, names: Sequence[str]) -> None:
    """Move the gated files from `scratch` into the bundle atomically, then drop a replaced graph's stale files."""
    for name in names:
        with atomic_path(bundle.path / name) as tmp:
            shutil.copyfile(scratch / name, tmp)
    old = bundle.manifest.int8_model_file
    for stale in ([old, f"{old}.data"] if old else []):
        if stale not in names and stale in bundle.manifest.files:
            (bundle.path / stale).unlink(missing_ok=True)


def _quantize_in_place(bundle: Bundle, config: QuantizeConfig, shown: Path) -> QuantizeResult:
    """Quantise, gate and install into `bundle` (a writable folder); `shown` is the folder named in messages."""
    import onnxruntime

    t0 = time.perf_counter()
    m = bundle.manifest
    pool = slide_tiles(list(config.slides), m.tile_size, m.mpp, config.calibration_tiles + config.gate_tiles)
    cal, gate = split_tiles(pool, config.calibration_tiles, config.gate_tiles, config.seed,
                            what=f"tissue tiles of {m.tile_size} px at {m.mpp:g} um/px (the bundle's)")
    with tempfile.TemporaryDirectory(prefix="slidefuse-int8-") as tmp:
        scratch = Path(tmp)
        summary = write_int8_graph(bundle.model_path, scratch / INT8_FILE, m.input_name, cal.tiles,
                                   method=config.method, op_types=config.op_types, preprocess=config.preprocess,
                                   float_head=config.float_head)
        staged, outputs = _staged(bundle, scratch), dict[str, np.ndarray]()
        reference = gate_backend(bundle, low_memory=summary["external_data"])
        report = _gate(staged[0], reference, gate, config, outputs, shown=shown, external=summary["external_data"])
        paths = _ov_gates(staged, reference, gate, config, outputs)
        names = sorted(p.name for p in scratch.iterdir() if p.name.startswith(INT8_FILE))
        int8_bytes = _graph_bytes(scratch, INT8_FILE)
        _install(bundle, scratch, names)
    seconds = time.perf_counter() - t0
    record = {
        "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
        "format": "QDQ", "weights": "int8, symmetric, one scale per output channel",
        "activations": "uint8, asymmetric, one scale per tensor", "method": config.method,
        "op_types": list(config.op_types), "preprocessed": config.preprocess,
        "excluded_nodes": len(summary["excluded_nodes"]),
        "excluded": ["preprocessing (uint8 cast + normalisation)", "output tail (softmax)"]
        + (["classification head (the logits)"] if config.float_head else []),
        "quantize_linear_nodes": summary["quantize_linear"], "dequantize_linear_nodes": summary["dequantize_linear"],
        "slides": [_slide_record(p) for p in config.slides], "seed": config.seed,
        "tile_size": m.tile_size, "mpp": m.mpp,
        "calibration_tiles": len(cal.tiles), "calibration_tile_sources": list(cal.sources),
        "gate_tiles": len(gate.tiles), "files": names,
        "graph_bytes": {"fp32": _graph_bytes(bundle.path, bundle.model_path.name), "int8": int8_bytes},
        "seconds": round(seconds, 1),
    }
    parity = report.pair_record()
    gates = {"int8": parity, **{g.path: g.record for g in paths}}
    write_manifest(bundle.path, dataclasses.replace(m, int8_model_file=INT8_FILE, parity={
        **staged[0].manifest.parity, **gates}, export={**m.export, "int8": record}))
    log.info("%s: %s added (%d calibration, %d gate tiles, %.1f s)", shown, INT8_FILE, len(cal.tiles),
             len(gate.tiles), seconds)
    return QuantizeResult(load_bundle(bundle.path), parity, paths, record, record["graph_bytes"]["fp32"], int8_bytes,
                          seconds)
