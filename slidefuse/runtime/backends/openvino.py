"""OpenVINO backend `ov-cpu`: the bundle's fused graph (uint8 tiles `[B, T, T, 3]` in, float32 probabilities
`[B, C, T, T]` out) compiled by OpenVINO for the CPU.

Loading: `Core.read_model` reads the ONNX file itself (weights in external data files beside it are resolved
relative to the graph's folder), the tile axes are fixed to T x T while the batch axis stays dynamic, and the
model is compiled for "CPU" with:
- INFERENCE_PRECISION_HINT always set: f32 for precision fp32 and int8, bf16 for bf16. OpenVINO's own default is
  bf16 on CPUs with bf16 instructions, so leaving it unset would silently downcast an "fp32" run;
- INFERENCE_NUM_THREADS `threads` (default: every CPU this process may use), PERFORMANCE_HINT `mode`, NUM_STREAMS
  `streams` (default: OpenVINO's choice for the mode), ENABLE_CPU_PINNING `pin` (default: OpenVINO's).

Precision: fp32 and bf16 run `model.onnx`; bf16 is refused on a CPU whose OPTIMIZATION_CAPABILITIES lack BF16
(OpenVINO would emulate it); int8 runs the bundle's INT8 QDQ graph (`int8_model_file`, made by `slidefuse
quantize`) with the f32 hint: OpenVINO's low-precision transformations run the quantised parts in int8 and the
rest in f32.

Gates: bf16 and int8 change the arithmetic, so each is gated per bundle by `slidefuse quantize` (manifest
`parity["ov-cpu bf16"]`, `parity["ov-cpu int8"]`; the int8 one is separate from onnxruntime's, since OpenVINO's
integer kernels round differently). A failed gate is refused (`can_run` and the constructor); an ungated one runs
when asked for, with a WARNING, and `auto` only takes a passed one (see `cpu_paths`).

Start-up: OpenVINO's model cache (CACHE_DIR; on by default, option `cache=false` turns it off) keeps
the compiled model in the user cache folder (`runtime.cache`: $SLIDEFUSE_CACHE_DIR, else ~/.cache/slidefuse;
option `cache_dir`), one folder per bundle digest and OpenVINO version; a second process on the same bundle
imports it instead of compiling.

Running: in throughput mode a batch is split into contiguous chunks over the compiled model's
OPTIMAL_NUMBER_OF_INFER_REQUESTS infer requests (one per stream, created once at load), started together and
awaited in order; in latency mode one request runs the whole batch. Results are copied out of OpenVINO's output
tensors, which the next run overwrites.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slidefuse.errors import BundleError, UsageError
from slidefuse.runtime.backends import cpu_paths
from slidefuse.runtime.backends.base import Backend, BackendInfo, JsonScalar
from slidefuse.runtime.backends.memory import in_sub_batches, tiles_per_call
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.cache import model_cache
from slidefuse.runtime.cores import usable_cores

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'slidefuse[openvino]'"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # precision -> INFERENCE_PRECISION_HINT
_MATMUL_LAYERS = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul"})  # runtime layer types


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU (e.g. FP32, BF16, INT8), upper case."""
    import openvino as ov

    return tuple(str(c).upper() for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def int8_layers(compiled: Any) -> int:
    """How many convolution / matrix-multiplication layers of a compiled model run in int8 (u8 or i8), from its
    runtime (execution) graph: 0 unless a QDQ graph's quantised parts were taken up."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        layer, precision = str(rt["layerType"].astype(str)), str(rt["runtimePrecision"].astype(str))
        count += layer in _MATMUL_LAYERS and precision in ("u8", "i8")
    return count


@dataclass(frozen=True)
class OvOptions(BackendOptions):
    """Options of ov-cpu."""

    precision: Literal["fp32", "bf16", "int8"] = "fp32"  # bf16: the CPU's bf16 kernels; int8: the bundle's QDQ graph
    threads: int | None = None  # INFERENCE_NUM_THREADS; None or 0 = every CPU this process may use
    # PERFORMANCE_HINT. latency: one request over all threads; throughput: the batch split over one request per
    # stream. latency by default: on 2 cores at batch 8 it ran `bench slide`'s pipeline about 1.5x faster, since
    # one stream on a core that a reader thread also uses holds up the whole split batch (alone on idle cores,
    # throughput mode was up to 1.25x faster)
    mode: Literal["throughput", "latency"] = "latency"
    streams: int | None = None  # NUM_STREAMS; None = OpenVINO's choice for the mode (capped by the threads)
    pin: bool | None = None  # ENABLE_CPU_PINNING: pin compute threads to cores; None = OpenVINO's default
    # bf16 / int8 without a passed gate in the bundle's manifest: warn (and run), refuse (auto's placements for
    # them), allow (run silently: the gate itself). A failed gate is always refused. See cpu_paths.
    unverified: Literal["warn", "refuse", "allow"] = "warn"
    # budget in GiB for the engine's working memory; larger batches run in sub-batches (see memory.py).
    # None = 40% of the usable memory; 0 = no limit
    max_memory_gb: float | None = None
    # OpenVINO's model cache (CACHE_DIR): the compiled model is stored in the user cache folder, keyed by the
    # bundle's digest and the OpenVINO version, and imported instead of compiled on the next start (cache=false:
    # compile at every start, write nothing)
    cache: bool = True
    cache_dir: str | None = None  # the cache root; None = $SLIDEFUSE_CACHE_DIR, else ~/.cache/slidefuse (XDG)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at_least("max_memory_gb", 0)
        self.at_least("threads", 0)
        self.at_least("streams", 1)


def _ov_options(options: BackendOptions) -> OvOptions:
    if not isinstance(options, OvOptions):
        raise TypeError(f"expected OvOptions, got {type(options).__name__}")
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class OvCpuBackend(Backend):
    name = "ov-cpu"
    description = "OpenVINO on the CPU (fp32, bf16 or the bundle's int8 graph)"
    options: OvOptions
    options_type = OvOptions
    device = "cpu"
    # fp32, and bf16 / int8 where their gates passed for the bundle; priorities in cpu_paths.CPU_PATHS
    placements = cpu_paths.placements("ov-cpu")

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.precision = self.options.precision
        self.threads = self.options.threads or usable_cores()
        self._compiled: Any = None
        self._requests: list[Any] = []
        self._output: Any = None
        self._int8_layers = 0
        self._cache_dir: Path | None = None
        self._compile_s: float | None = None
        self.max_batch, self.memory_reason = tiles_per_call(bundle.manifest, self.options.max_memory_gb)
        cpu_paths.check(bundle, self.name, self.precision, self.options.unverified,
                        runnable=self.can_run(bundle, self.options) is None)

    @classmethod
    def availability(cls) -> str | None:
        try:
            import openvino as ov
        except ImportError:
            return f"openvino is not installed: {INSTALL_HINT}"
        try:
            devices = ov.Core().available_devices
        except Exception as exc:  # OpenVINO raises its own RuntimeError types
            return f"OpenVINO {ov.__version__} cannot list its devices ({_first_line(exc)}); reinstall openvino"
        if "CPU" not in devices:
            return f"OpenVINO {ov.__version__} has no CPU plugin (devices: {', '.join(devices) or 'none'}): " \
                   f"{INSTALL_HINT}"
        return None

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        opts = _ov_options(options)
        return cpu_paths.can_run(bundle, cls.name, opts.precision, opts.unverified, cls.graph_file)

    # --- what to run --------------------------------------------------------------------------------------------
    @classmethod
    def graph_file(cls, bundle: Bundle, precision: str) -> Path:
        """The ONNX file run at `precision`: model.onnx (fp32, bf16) or the INT8 QDQ graph (int8). UsageError when
        the bundle has no INT8 graph, or for bf16 on a CPU without bf16 support."""
        if precision == "int8":
            return cpu_paths.int8_graph(bundle, cls.name)
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            raise UsageError(f"backend {cls.name}: precision bf16 needs a CPU with bf16 support, and OpenVINO reports "
                             f"only {', '.join(cpu_capabilities())} here; use precision fp32")
        return Path(bundle.model_path)

    def graph_path(self) -> Path:
        """The ONNX file this instance runs (see `graph_file`)."""
        return self.graph_file(self.bundle, self.precision)

    def compile_config(self) -> dict[str, Any]:
        """The properties passed to `Core.compile_model` (see the module docstring)."""
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": self.options.mode.upper(),
        }
        if self.options.streams is not None:
            config["NUM_STREAMS"] = self.options.streams
        if self.options.pin is not None:
            config["ENABLE_CPU_PINNING"] = self.options.pin
        if self._cache_dir is not None:
            config["CACHE_DIR"] = str(self._cache_dir)
        return config

    def _model_cache(self) -> Path | None:
        """The folder of OpenVINO's model cache for this bundle and OpenVINO version (None: option cache off, or
        a bundle without a digest, or a folder that cannot be made: see `runtime.cache`)."""
        import openvino as ov

        if not self.options.cache:
            return None
        return model_cache("openvino", self.bundle.digest, ov.__version__, self.options.cache_dir)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def _load(self) -> None:
        import openvino as ov

        path = self.graph_path()
        if not path.is_file():
            raise BundleError(f"{path}: graph missing from the bundle; re-export it with 'slidefuse export'")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises its own RuntimeError types
            raise BundleError(f"{path}: OpenVINO cannot read the graph ({_first_line(exc)}); re-export the "
                              "bundle") from exc
        self._check_io(path, model)
        t = self.bundle.manifest.tile_size
        model.reshape({self.bundle.manifest.input_name: ov.PartialShape([-1, t, t, 3])})  # batch stays dynamic
        self._cache_dir = self._model_cache()
        t0 = time.perf_counter()
        try:
            self._compiled = core.compile_model(model, "CPU", self.compile_config())
        except Exception as exc:
            raise BundleError(f"{path}: OpenVINO cannot compile the graph for the CPU ({_first_line(exc)}); "
                              "re-export the bundle") from exc
        self._compile_s = time.perf_counter() - t0
        self._output = self._compiled.output(self.bundle.manifest.output_name)
        n = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        n = 1 if self.options.mode == "latency" else max(1, n)
        self._requests = [self._compiled.create_infer_request() for _ in range(n)]
        self._int8_layers = int8_layers(self._compiled)
        s = self.settings()
        log.info("%s: %s on the CPU (precision %s, compiled %s, %d threads, %s mode, %s streams, %d requests; %s; "
                 "compiled in %.1f s, model cache %s)", self.name, path.name, self.precision, s["inference_precision"],
                 self.threads, self.options.mode, s["streams"], n, self.memory_reason, self._compile_s,
                 self._cache_dir or "off")

    def _check_io(self, path: Path, model: Any) -> None:
        """The graph's one input must be the manifest's uint8 [?, T, T, 3] (tile axes T or dynamic) and its
        outputs must include the manifest's float output."""
        m = self.bundle.manifest
        ins = [sorted(i.get_names()) for i in model.inputs]
        outs = [sorted(o.get_names()) for o in model.outputs]
        out_port = next((o for o in model.outputs if m.output_name in o.get_names()), None)
        if len(ins) != 1 or m.input_name not in ins[0] or out_port is None:
            raise BundleError(f"{path}: inputs {ins} / outputs {outs}, expected '{m.input_name}' / "
                              f"'{m.output_name}' as in the manifest; re-export the bundle")
        port = model.inputs[0]
        shape = port.get_partial_shape()
        t = m.tile_size
        dims_ok = shape.rank.is_static and len(shape) == 4 and all(
            shape[i].is_dynamic or shape[i].get_length() == want for i, want in ((1, t), (2, t), (3, 3)))
        if port.get_element_type().to_string() != "u8" or not dims_ok:
            raise BundleError(f"{path}: input {port.get_element_type().to_string()} {shape}, expected u8 "
                              f"[?,{t},{t},3] (the graph casts and normalises itself); re-export the bundle")
        out_type = out_port.get_element_type().to_string()
        if out_type not in ("f32", "f16"):
            raise BundleError(f"{path}: output type {out_type}, expected f32; re-export the bundle")

    def _close(self) -> None:
        self._requests = []
        self._output = None
        self._compiled = None

    # --- running ------------------------------------------------------------------------------------------------
    def _run(self, tiles: np.ndarray) -> np.ndarray:
        return in_sub_batches(tiles, self.max_batch, self._run_one)

    def _run_one(self, tiles: np.ndarray) -> np.ndarray:
        name = self.bundle.manifest.input_name
        if len(self._requests) == 1 or len(tiles) == 1:
            request = self._requests[0]
            request.infer({name: tiles}, share_inputs=True)
            return np.array(request.get_tensor(self._output).data, dtype=np.float32, copy=True)
        chunks = np.array_split(tiles, min(len(self._requests), len(tiles)))  # contiguous, in order
        started = list(zip(self._requests, chunks, strict=False))
        for request, chunk in started:
            request.start_async({name: chunk}, share_inputs=True)  # `tiles` outlives the requests
        parts = []
        for request, _ in started:
            request.wait()
            parts.append(np.array(request.get_tensor(self._output).data, dtype=np.float32, copy=True))
        return np.concatenate(parts)

    def info(self) -> BackendInfo:
        import openvino as ov

        return BackendInfo(self.name, "cpu", self.precision, graph=self.graph_path().name, threads=self.threads,
                           versions={"openvino": ov.__version__}, settings=self.settings(),
                           gate=cpu_paths.relied_on(self.bundle, self.name, self.precision))

    def settings(self) -> dict[str, JsonScalar | dict[str, int]]:
        """The backend-specific part of `info()`: what the compiled model actually uses."""
        out: dict[str, JsonScalar | dict[str, int]] = {"mode": self.options.mode, "streams": None,
                                                         "requests": len(self._requests) or None,
                                                         "inference_precision": None, "pinned": None,
                                                         "cpu_isa": None, "int8_layers": None,
                                                         "max_batch": self.max_batch, "memory": self.memory_reason,
                                                         "model_cache": str(self._cache_dir) if self._cache_dir
                                                         else None, "compile_s": None}
        if self._compiled is not None:
            out["streams"] = int(self._compiled.get_property("NUM_STREAMS"))
            out["inference_precision"] = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            out["pinned"] = bool(self._compiled.get_property("ENABLE_CPU_PINNING"))
            out["cpu_isa"] = " ".join(c for c in cpu_capabilities() if c.startswith(("FP", "BF", "INT")))
            out["int8_layers"] = self._int8_layers
            out["compile_s"] = round(self._compile_s, 2) if self._compile_s is not None else None
        return out
