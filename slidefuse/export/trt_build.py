"""TensorRT engines from a bundle's graph (the `trt` extra), written against the TensorRT 10/11 Python API.

Precision is carried by the graph, not by builder flags: TensorRT 11 removed BuilderFlag.FP16/BF16/INT8/FP8 in
favour of strongly typed networks, so the engine is built from a graph that already holds the precision
(`model.fp16.onnx` or `model.bf16.onnx`, made by fp16.py with normalisation, LayerNorm and the softmax in fp32),
with the network strongly typed (the STRONGLY_TYPED flag on TensorRT 10; always on in 11). int8 and fp8 need
explicit quantisation (Q/DQ nodes calibrated on real tiles); slidefuse does not calibrate, so it refuses them
rather than produce an engine of unknown accuracy.

Each build has one optimisation profile (batch MIN:OPT:MAX at the bundle's tile size) and reuses/updates a
timing cache kept in the bundle. The engine goes to `engines/<gpu>_sm<cc>_trt<version>_<precision>.engine`, its
entry to `Manifest.engines`, and the manifest is re-hashed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefuse.atomic import write_bytes_atomic
from slidefuse.errors import BundleError, UsageError, require
from slidefuse.runtime.bundle import Bundle, load_bundle, write_manifest
from slidefuse.runtime.engines import (
    ENGINE_DIR,
    PRECISIONS,
    TrtIdentity,
    current_trt_identity,
    engine_filename,
    timing_cache_filename,
)

log = logging.getLogger(__name__)

QUANTISED = ("fp8", "int8")
GRAPH_FILES = {"fp16": "model.fp16.onnx", "bf16": "model.bf16.onnx"}


@dataclass(frozen=True)
class BatchProfile:
    min: int  # smallest batch the engine accepts
    opt: int  # batch TensorRT tunes kernels for
    max: int  # largest batch the engine accepts

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """'MIN:OPT:MAX' (or one number N for N:N:N) -> BatchProfile; 1 <= MIN <= OPT <= MAX."""
        try:
            parts = [int(p) for p in text.split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
            raise UsageError(f"batch={text!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:8:32",
                             field="batch")
        return cls(*parts)


def check_precision(precision: str) -> None:
    """UsageError for unknown precisions, and for int8/fp8, which need calibration slidefuse does not do."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}", field="precision")
    if precision in QUANTISED:
        raise UsageError(
            f"precision={precision}: needs explicit quantisation (Q/DQ nodes calibrated on real tiles, e.g. with "
            f"NVIDIA ModelOpt); TensorRT 11 dropped implicit {precision} calibration and slidefuse does not calibrate "
            "yet, so it will not build an engine of unknown accuracy: use precision=fp16 or bf16", field="precision"
        )


def ensure_graph(bundle: Bundle, precision: str) -> tuple[str, dict[str, Any] | None]:
    """The bundle-relative graph for `precision`, writing it (and measuring its parity) when absent.

    Returns (graph file, parity report or None when the graph already existed).
    """
    m = bundle.manifest
    if precision == "fp16" and m.fp16_model_file:
        return m.fp16_model_file, None
    name = GRAPH_FILES[precision]
    path = bundle.path / name
    if name in m.files:
        return name, None
    from slidefuse.export.onnx_export import write_fp16_graph

    log.info("writing %s (%s mixed-precision copy of %s)", name, precision, m.model_file)
    write_fp16_graph(bundle.model_path, path, tile_size=m.tile_size, num_classes=m.num_classes, precision=precision)
    if precision == "bf16":
        return name, {"measured": False, "reason": "onnxruntime's CPU provider has no bf16 kernels; "
                      "compare the engine with `slidefuse bench parity` on the GPU"}
    from slidefuse.export.parity import FP16_THRESHOLDS, compare, gate_backend, parity_tiles

    tiles = parity_tiles(m.tile_size, m.mpp, n_real=2, n_random=2)
    staged = dataclasses.replace(bundle, manifest=dataclasses.replace(m, fp16_model_file=name))
    try:
        report = compare({bundle.model_path.name: gate_backend(bundle), name: gate_backend(staged, "fp16")}, tiles,
                         thresholds=FP16_THRESHOLDS).check().pair_record()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return name, report


def _network_flags(trt: Any) -> int:
    """STRONGLY_TYPED on TensorRT 10 (precision from the graph's types); TensorRT 11 is always strongly typed."""
    major = int(str(trt.__version__).split(".")[0])
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if major >= 11 or flag is None:
        return 0
    return 1 << int(flag)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def build_engine(
    bundle_path: Path,
    precision: str = "fp16",
    batch: BatchProfile = BatchProfile(1, 8, 32),
    workspace_gb: float | None = None,
    device: int = 0,
) -> dict[str, Any]:
    """Build a TensorRT engine for this GPU into the bundle at `bundle_path`; return its manifest entry.

    Raises UsageError (bad precision, int8/fp8), MissingExtra (no TensorRT: the `trt` extra),
    BackendUnavailable (no CUDA device), IntegrityError (bundle files changed), BundleError (TensorRT could not
    parse or build the graph).
    """
    check_precision(precision)
    if workspace_gb is not None and not workspace_gb > 0:
        raise UsageError(f"workspace_gb={workspace_gb}: expected a positive number of GiB, e.g. 8",
                         field="workspace_gb")
    trt = require("tensorrt", "trt", "slidefuse build (TensorRT engines)")
    bundle = load_bundle(bundle_path)
    identity = current_trt_identity(device)
    graph_name, graph_parity = ensure_graph(bundle, precision)
    m = bundle.manifest
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.path / graph_name)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{bundle.path / graph_name}: TensorRT's ONNX parser refused the graph ({errors}); "
                          "re-export the bundle with a supported opset (17 or newer)")
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    t = m.tile_size
    profile.set_shape(m.input_name, (batch.min, t, t, 3), (batch.opt, t, t, 3), (batch.max, t, t, 3))
    config.add_optimization_profile(profile)
    cache_rel = timing_cache_filename(identity)
    cache_path = bundle.path / cache_rel
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, False)
    log.info("building %s engine for %s (batch %d:%d:%d) from %s", precision, identity.gpu, batch.min,
             batch.opt, batch.max, graph_name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"{bundle.path}: TensorRT could not build a {precision} engine from {graph_name} "
                          "(see the TensorRT log above); try a larger workspace_gb=<GiB> or a smaller MAX in "
                          "batch=MIN:OPT:MAX")
    rel = engine_filename(identity, precision)
    _write_atomic(bundle.path / rel, bytes(serialized))
    _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    entry = engine_entry(identity, precision, rel, graph_name, batch, workspace_gb, cache_rel,
                         time.perf_counter() - t0)
    parity = dict(m.parity)
    if graph_parity is not None:
        parity[precision] = graph_parity
    fp16_file = m.fp16_model_file or (graph_name if precision == "fp16" else None)
    engines = tuple(e for e in m.engines if e.get("file") != rel) + (entry,)
    write_manifest(bundle.path, dataclasses.replace(m, engines=engines, parity=parity, fp16_model_file=fp16_file))
    log.info("engine %s written (%.0f s)", rel, entry["build_seconds"])
    return entry


def engine_entry(
    identity: TrtIdentity, precision: str, rel: str, graph: str, batch: BatchProfile, workspace_gb: float | None,
    cache_rel: str, seconds: float,
) -> dict[str, Any]:
    """The manifest record of one engine (see runtime/engines.py for the fields)."""
    from slidefuse.export.bundle_writer import utc_now

    return {
        "file": rel, "precision": precision, "gpu": identity.gpu,
        "compute_capability": identity.compute_capability, "trt_version": identity.trt_version,
        "batch": dataclasses.asdict(batch), "workspace_gb": workspace_gb, "graph": graph,
        "timing_cache": cache_rel, "build_seconds": round(seconds, 1), "created": utc_now(),
    }


__all__ = ["ENGINE_DIR", "BatchProfile", "build_engine", "check_precision", "engine_entry", "ensure_graph"]
