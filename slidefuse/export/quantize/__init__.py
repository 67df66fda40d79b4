"""INT8 copies of a bundle's fp32 graph: static QDQ quantisation calibrated on real tissue tiles, with a gate.

`quantize_bundle` adds `model.int8.onnx` to an existing, sealed bundle (`slidefuse quantize`), in five stages,
one module each:

1. `tiles`: `parity.slide_tiles` cuts tissue tiles from the slides the user names (tissue on a thumbnail, a tile
   grid at the bundle's mpp and tile size); a seeded shuffle splits them into calibration tiles and held-out gate
   tiles, which never share a tile;
2. `graph`: onnxruntime's `quantize_static` in QDQ format, int8 weights with one scale per output channel
   (symmetric), uint8 activations (asymmetric), calibrated on the calibration tiles (MinMax, Percentile or
   Entropy). Only the compute operators (`op_types`: MatMul, Gemm by default) are quantised; the preprocessing
   region, the output tail (the class softmax) and the classification head stay in float, so the graph's
   contract stays uint8 tiles in, float32 probabilities out;
3. `gates`: `parity.compare` of model.onnx against model.int8.onnx (both on onnxruntime's CPU provider) on
   the gate tiles, with INT8 thresholds (`INT8_THRESHOLDS`);
4. `gates` again: the other accelerated CPU paths (`runtime.backends.cpu_paths`), when OpenVINO is installed:
   ov-cpu int8 (the same graph, run by OpenVINO) and ov-cpu bf16 (model.onnx with OpenVINO's bf16 hint, where the
   CPU has bf16), each against the same fp32 outputs on the same gate tiles with the same thresholds. A failing
   one does not stop the command: it is recorded as failed (and then refused by the backend, and never picked by
   `auto`); one that cannot be run here is recorded as not gated, with the reason;
5. `install`: only then are the new files renamed into the bundle (`slidefuse.atomic`) and the manifest rewritten
   (`write_manifest`): `int8_model_file`, `parity["int8"]` (the gate's figures and thresholds), `parity["ov-cpu
   int8"]` and `parity["ov-cpu bf16"]` (the same, plus the OpenVINO version and CPU capabilities; or
   `passed: null` and a `reason`) and `export["int8"]` (the calibration record). A failed int8 gate (step 3)
   leaves the bundle byte for byte as it was.

`config` holds the options (`QuantizeConfig`), the defaults and the thresholds. The graph runs on `ort-cpu` with
`precision=int8` (onnxruntime's CPU kernels fuse each Q/DQ pair into integer convolutions and matrix products),
and on `ov-cpu` with `precision=int8` where its own gate passed. Needs `onnx` and `onnxruntime`, not torch;
`openvino` for the OpenVINO gates.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.atomic import atomic_folder
from slidefuse.errors import UsageError, require
from slidefuse.export.parity import gate_backend
from slidefuse.export.quantize.config import (
    DEFAULT_METHOD,
    DEFAULT_OP_TYPES,
    INT8_FILE,
    INT8_THRESHOLDS,
    METHODS,
    QUANTIZABLE_OPS,
    QuantizeConfig,
)
from slidefuse.export.quantize.gates import PathGate, int8_gate, ov_gates, staged_bundles
from slidefuse.export.quantize.graph import write_int8_graph
from slidefuse.export.quantize.install import (
    calibration_record,
    check_source,
    check_writable,
    copy_bundle,
    graph_bytes,
    install_files,
    record_in_manifest,
)
from slidefuse.export.quantize.tiles import calibration_and_gate_tiles, split_tiles
from slidefuse.paths import check_out_path
from slidefuse.runtime.bundle import Bundle, load_bundle
from slidefuse.runtime.cpuinfo import this_cpu

__all__ = [
    "DEFAULT_METHOD", "DEFAULT_OP_TYPES", "INT8_FILE", "INT8_THRESHOLDS", "METHODS", "QUANTIZABLE_OPS", "PathGate",
    "QuantizeConfig", "QuantizeResult", "quantize_bundle", "split_tiles", "write_int8_graph",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    bundle: Bundle  # the bundle with its int8 graph, loaded and verified
    parity: dict[str, Any]  # the gate's record (= manifest parity["int8"])
    paths: tuple[PathGate, ...]  # the OpenVINO paths' gates (= manifest parity["ov-cpu int8"], ["ov-cpu bf16"])
    record: dict[str, Any]  # the calibration record (= manifest export["int8"])
    fp32_bytes: int  # size of the fp32 graph (with its external data)
    int8_bytes: int  # size of the int8 graph (with its external data)
    seconds: float  # wall time of the whole run


def quantize_bundle(config: QuantizeConfig) -> QuantizeResult:
    """Add a gated `model.int8.onnx` to `config.bundle` (or to a copy at `config.out`); see the module docstring.

    Raises UsageError (options, a read-only or shipped bundle, an existing int8 graph without `force`, too few
    tissue tiles), BundleError (torch-only bundle), SlideNotFound / SlideReadError (slides), ParityError (the
    gate failed; nothing was written)."""
    config.check()
    if config.out is not None:
        check_out_path(Path(config.out), replacing_bundle=True)  # never inside a bundle (the source's too) or
        # the package's data; an existing folder, bundle or not, is refused below
    require("onnx", "export", "slidefuse quantize (reading and writing ONNX graphs)")
    src = load_bundle(config.bundle)
    check_source(src, config)
    if config.out is None:
        check_writable(src.path)
        return _quantize_in_place(src, config, src.path)
    out = Path(config.out)
    if out.exists():
        raise UsageError(f"out={out}: already exists; name a new folder for the copy", field="out")
    with atomic_folder(out) as stage:
        copy_bundle(src, stage)
        result = _quantize_in_place(load_bundle(stage), config, out)
    return dataclasses.replace(result, bundle=load_bundle(out))


def _quantize_in_place(bundle: Bundle, config: QuantizeConfig, shown: Path) -> QuantizeResult:
    """Quantise, gate and install into `bundle` (a writable folder); `shown` is the folder named in messages."""
    t0 = time.perf_counter()
    m = bundle.manifest
    if m.embedding is not None and config.thresholds == INT8_THRESHOLDS:  # embeddings: judged by cosine
        from slidefuse.export.parity import EMBED_REDUCED_THRESHOLDS

        config = dataclasses.replace(config, thresholds=EMBED_REDUCED_THRESHOLDS)
    cal, gate = calibration_and_gate_tiles(config, m.tile_size, m.mpp)
    with tempfile.TemporaryDirectory(prefix="slidefuse-int8-") as tmp:
        scratch = Path(tmp)
        summary = write_int8_graph(bundle.model_path, scratch / INT8_FILE, m.input_name, cal.tiles,
                                   method=config.method, op_types=config.op_types, preprocess=config.preprocess,
                                   float_head=config.float_head)
        staged, outputs = staged_bundles(bundle, scratch), dict[str, np.ndarray]()
        reference = gate_backend(bundle, low_memory=summary["external_data"])
        report = int8_gate(staged[0], reference, gate, config, outputs, shown=shown,
                           external=summary["external_data"])
        paths = ov_gates(staged, reference, gate, config, outputs)
        names = sorted(p.name for p in scratch.iterdir() if p.name.startswith(INT8_FILE))
        int8_bytes = graph_bytes(scratch, INT8_FILE)
        install_files(bundle, scratch, names)
    seconds = time.perf_counter() - t0
    record = calibration_record(bundle, config, summary, cal, gate, names, int8_bytes, seconds)
    parity = {**report.pair_record(), **this_cpu().record()}
    record_in_manifest(bundle, staged[0], {"int8": parity, **{g.path: g.record for g in paths}}, record)
    log.info("%s: %s added (%d calibration, %d gate tiles, %.1f s)", shown, INT8_FILE, len(cal.tiles),
             len(gate.tiles), seconds)
    return QuantizeResult(load_bundle(bundle.path), parity, paths, record, record["graph_bytes"]["fp32"], int8_bytes,
                          seconds)
