"""onnxruntime backends: `ort-cpu`, `ort-cuda` (CUDA execution provider) and `ort-trt` (TensorRT execution
provider), all running the bundle's fused graph (uint8 tiles `[B, T, T, 3]` in, float32 probabilities
`[B, C, T, T]` out).

Session options, tuned for one large graph run over and over on same-sized batches:
- graph optimisation level ORT_ENABLE_ALL (constant folding, layout and operator fusions);
- sequential execution, one inter-op thread, `threads` intra-op threads (default: the CPUs this process may
  use); `spin=False` stops idle intra-op threads from spinning (useful when reader threads share the CPU);
- CPU memory arena and memory pattern on (buffers are planned once per input shape and reused).

Precision: `precision="fp32"` runs `model.onnx`; `precision="fp16"` runs the bundle's `model.fp16.onnx` for
ort-cpu / ort-cuda (an error when the bundle has none: re-export with `--fp16`), and for ort-trt lets TensorRT
pick fp16 kernels for the fp32 graph (`trt_fp16_enable`), which is how the TensorRT EP is meant to be used.

GPU providers use IO binding: the uint8 input is bound from host memory (ORT copies it to the device, a quarter
of the bytes of a float input) and the output is bound to a device buffer that is allocated once per batch size
and reused; `run` then copies it to the host, since the contract returns host numpy arrays. `io_binding=True`
uses the same path on the CPU (tests exercise it there).

Never a silent CPU fall back: after creating a GPU session the backend checks `session.get_providers()` and
raises BackendUnavailable (listing the available backends) when the CUDA or TensorRT provider did not load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from slidefuse.errors import BackendUnavailable, BundleError, UsageError
from slidefuse.runtime.backends.base import Backend, check_options, check_precision

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
ORT_TRT_CACHE = "engines/ort-trt-cache"  # bundle-relative folder of the TensorRT EP's engine and timing caches
_MAX_CACHED_OUTPUTS = 4  # device output buffers kept (one per recent batch size)
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def cpu_threads() -> int:
    """Number of CPUs this process may run on (affinity-aware; containers often restrict it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _available_line() -> str:
    from slidefuse.runtime.backends.registry import available_backends

    return ", ".join(n for n, r in available_backends().items() if r is None) or "none"


class _OrtBackend(Backend):
    """Shared session handling. Subclasses set the providers they need and their provider options.

    Options (all optional): `precision` ("fp32" | "fp16"), `threads` (intra-op threads), `spin` (bool),
    `io_binding` (bool), `device_id` (GPU index; ignored on the CPU), `batch` / `max_batch` (TensorRT EP
    profile; batches above `max_batch` are run in chunks), `tf32` (allow TF32 on the CUDA EP, default False so
    fp32 stays fp32), `workspace_gb` (TensorRT EP workspace), `cache_dir` (TensorRT EP cache folder).
    """

    required_provider: ClassVar[str] = CPU_EP
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    accepted: ClassVar[frozenset[str]] = frozenset({"precision", "threads", "spin", "io_binding", "device_id",
                                                    "batch"})
    device_type: ClassVar[str] = "cpu"  # where IO binding puts the output ("cpu" or "cuda")
    default_io_binding: ClassVar[bool] = False

    def __init__(self, bundle: Any, **options: Any) -> None:
        super().__init__(bundle, **options)
        check_options(self.name, options, self.accepted)
        self.precision = check_precision(self.name, options.get("precision") or "fp32", self.precisions)
        threads = options.get("threads")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise UsageError(f"backend {self.name}: threads {threads!r}: expected a non-negative integer "
                             "(0 = all CPUs)")
        self.threads = int(threads or 0) or cpu_threads()
        self.device_id = int(options.get("device_id") or 0)
        self.io_binding = bool(options.get("io_binding", self.default_io_binding))
        self.max_batch: int | None = None
        self._session: Any = None
        self._outputs: dict[int, Any] = {}

    # --- what to run ----------------------------------------------------------------------------------
    def graph_path(self) -> Path:
        """The ONNX file this backend runs: model.onnx, or model.fp16.onnx for precision fp16 (ort-cpu/cuda)."""
        m = self.bundle.manifest
        if self.precision == "fp16" and self.required_provider != TRT_EP:
            if not m.fp16_model_file:
                raise UsageError(f"backend {self.name}: precision fp16 needs model.fp16.onnx, which bundle "
                                 f"{self.bundle.path} lacks; re-export it with 'slidefuse export ... --fp16' "
                                 "or use precision fp32")
            return Path(self.bundle.path) / m.fp16_model_file
        return Path(self.bundle.model_path)

    def providers(self) -> list[Any]:
        """The provider list passed to onnxruntime (names or (name, options) pairs), highest priority first."""
        return [CPU_EP]

    def session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = True
        so.log_severity_level = 3  # errors only; provider placement is checked explicitly below
        if not self.options.get("spin", True):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    # --- lifecycle -----------------------------------------------------------------------------------------
    def _load(self) -> None:
        import onnxruntime as ort

        path = self.graph_path()
        if not path.is_file():
            raise BundleError(f"{path}: graph missing from the bundle; re-export it with 'slidefuse export'")
        if self.required_provider != CPU_EP:
            preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21: CUDA/cuDNN from pip wheels
            if preload is not None:
                try:
                    preload()
                except Exception as exc:  # best effort; the provider check below decides
                    log.debug("onnxruntime.preload_dlls failed: %s", exc)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=self.session_options(),
                                                 providers=self.providers())
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeError types
            if self.required_provider == CPU_EP:
                raise BundleError(f"{path}: onnxruntime cannot load the graph ({_first_line(exc)}); "
                                  "re-export the bundle") from exc
            raise BackendUnavailable(
                f"backend {self.name}: onnxruntime could not start {self.required_provider} "
                f"({_first_line(exc)}); not falling back to the CPU; available backends: {_available_line()}"
            ) from exc
        got = list(self._session.get_providers())
        if self.required_provider not in got:
            self._session = None
            raise BackendUnavailable(
                f"backend {self.name}: onnxruntime did not load {self.required_provider} (session providers: "
                f"{', '.join(got)}; check the CUDA 12 / cuDNN 9 / TensorRT libraries and the GPU); not falling "
                f"back to the CPU; available backends: {_available_line()}"
            )
        self._check_io()
        log.info("%s: %s on %s (precision %s, %d intra-op threads%s)", self.name, path.name,
                 ", ".join(got), self.precision, self.threads, ", IO binding" if self.io_binding else "")

    def _check_io(self) -> None:
        m = self.bundle.manifest
        ins, outs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in ins] != [m.input_name] or m.output_name not in [o.name for o in outs]:
            raise BundleError(f"{self.graph_path()}: inputs {[i.name for i in ins]} / outputs "
                              f"{[o.name for o in outs]}, expected '{m.input_name}' / '{m.output_name}' as in "
                              "the manifest; re-export the bundle")
        if ins[0].type != "tensor(uint8)":
            raise BundleError(f"{self.graph_path()}: input type {ins[0].type}, expected tensor(uint8) "
                              "(the graph casts and normalises itself); re-export the bundle")
        out_type = next(o.type for o in outs if o.name == m.output_name)
        if out_type not in _NP_TYPES:
            raise BundleError(f"{self.graph_path()}: output type {out_type}, expected tensor(float)")
        self._out_dtype = _NP_TYPES[out_type]

    def _close(self) -> None:
        self._outputs.clear()
        self._session = None

    # --- running -------------------------------------------------------------------------------------------
    def _run(self, tiles: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(tiles)
        if len(tiles) <= step:
            return self._run_one(tiles)
        return np.concatenate([self._run_one(tiles[i:i + step]) for i in range(0, len(tiles), step)])

    def _run_one(self, tiles: np.ndarray) -> np.ndarray:
        m = self.bundle.manifest
        if not self.io_binding:
            (out,) = self._session.run([m.output_name], {m.input_name: tiles})
            return np.asarray(out, dtype=np.float32)
        return self._run_bound(tiles)

    def _run_bound(self, tiles: np.ndarray) -> np.ndarray:
        """IO binding: input bound from host memory, output into a reused buffer on `device_type`."""
        import onnxruntime as ort

        m = self.bundle.manifest
        b = len(tiles)
        out = self._outputs.get(b)
        if out is None:
            if len(self._outputs) >= _MAX_CACHED_OUTPUTS:
                self._outputs.pop(next(iter(self._outputs)))
            shape = [b, m.num_classes, m.tile_size, m.tile_size]
            out = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._out_dtype, self.device_type,
                                                            self.device_id)
            self._outputs[b] = out
        io = self._session.io_binding()
        io.bind_cpu_input(m.input_name, tiles)
        io.bind_ortvalue_output(m.output_name, out)
        self._session.run_with_iobinding(io)
        # a copy: on the CPU numpy() is a view of the reused output buffer, which the next run overwrites
        return np.array(out.numpy(), dtype=np.float32, copy=True)

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        providers = list(self._session.get_providers()) if self._session is not None else self.providers()
        return {"backend": self.name, "providers": [p if isinstance(p, str) else p[0] for p in providers],
                "graph": self.graph_path().name, "precision": self.precision, "threads": self.threads,
                "io_binding": self.io_binding, "onnxruntime": ort.__version__}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _provider_reason(provider: str, extra_hint: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed: pip install onnxruntime (or 'slidefuse[gpu]' for GPUs)"
    if provider not in ort.get_available_providers():
        return (f"this onnxruntime {ort.__version__} has no {provider} (providers: "
                f"{', '.join(ort.get_available_providers())}): {extra_hint}")
    return None


class OrtCpuBackend(_OrtBackend):
    name = "ort-cpu"
    description = "onnxruntime on the CPU"

    @classmethod
    def availability(cls) -> str | None:
        return _provider_reason(CPU_EP, "reinstall onnxruntime")


class OrtCudaBackend(_OrtBackend):
    name = "ort-cuda"
    description = "onnxruntime, CUDA execution provider (IO binding)"
    required_provider = CUDA_EP
    device_type = "cuda"
    default_io_binding = True
    accepted = _OrtBackend.accepted | {"tf32"}

    @classmethod
    def availability(cls) -> str | None:
        return _provider_reason(CUDA_EP, "pip install 'slidefuse[gpu]' (onnxruntime-gpu, CUDA 12) and "
                                "uninstall the CPU-only onnxruntime")

    def cuda_options(self) -> dict[str, str]:
        """CUDA EP options: exhaustive cuDNN conv search with the largest workspace, copies on the compute
        stream, TF32 off unless `tf32=True` (so fp32 stays comparable with the reference)."""
        return {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "cudnn_conv_use_max_workspace": "1",
            "do_copy_in_default_stream": "1",
            "arena_extend_strategy": "kSameAsRequested",
            "use_tf32": "1" if self.options.get("tf32") else "0",
        }

    def providers(self) -> list[Any]:
        return [(CUDA_EP, self.cuda_options()), CPU_EP]


class OrtTrtBackend(OrtCudaBackend):
    name = "ort-trt"
    description = "onnxruntime, TensorRT execution provider (engine cache in the bundle)"
    required_provider = TRT_EP
    accepted = OrtCudaBackend.accepted | {"max_batch", "workspace_gb", "cache_dir"}

    def __init__(self, bundle: Any, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.opt_batch = int(options.get("batch") or 8)
        self.profile_max = int(options.get("max_batch") or max(32, self.opt_batch))
        self.max_batch = self.profile_max  # larger batches run in chunks
        if not 1 <= self.opt_batch <= self.profile_max:
            raise UsageError(f"backend {self.name}: batch {self.opt_batch} / max_batch {self.profile_max}: "
                             "expected 1 <= batch <= max_batch")

    @classmethod
    def availability(cls) -> str | None:
        return _provider_reason(TRT_EP, "pip install 'slidefuse[gpu]' (onnxruntime-gpu) with TensorRT 10 "
                                "libraries on the library path ('slidefuse[trt]')")

    def cache_dir(self) -> Path:
        """Where the TensorRT EP keeps its engines and timing cache: `<bundle>/engines/ort-trt-cache`, or
        `cache_dir`; when the bundle is read-only, a per-bundle folder under the user's cache (logged)."""
        if self.options.get("cache_dir"):
            folder = Path(self.options["cache_dir"])
        else:
            folder = Path(self.bundle.path) / ORT_TRT_CACHE
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if not os.access(folder, os.W_OK):
                    raise PermissionError(str(folder))
            except OSError:
                base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                fallback = base / "slidefuse" / "ort-trt-cache" / self.bundle.digest[:16]
                log.warning("%s is not writable; the TensorRT EP engine cache goes to %s", folder, fallback)
                folder = fallback
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def trt_options(self) -> dict[str, str]:
        """TensorRT EP options: engine + timing cache in `cache_dir()`, fp16 for precision fp16, one explicit
        optimisation profile over the batch axis (1 .. max_batch, tuned for `batch`) so that no batch size
        triggers an engine rebuild."""
        m = self.bundle.manifest
        t = m.tile_size

        def shape(b: int) -> str:
            return f"{m.input_name}:{b}x{t}x{t}x3"

        cache = str(self.cache_dir())
        self._cache = cache
        return {
            "device_id": str(self.device_id),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": "True" if self.precision == "fp16" else "False",
            "trt_max_workspace_size": str(int(float(self.options.get("workspace_gb") or 8) * (1 << 30))),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(self.opt_batch),
            "trt_profile_max_shapes": shape(self.profile_max),
        }

    def providers(self) -> list[Any]:
        # CUDA EP after TensorRT: nodes TensorRT cannot take run on the GPU, not on the CPU.
        return [(TRT_EP, self.trt_options()), (CUDA_EP, self.cuda_options()), CPU_EP]

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["graph"] = Path(self.bundle.model_path).name  # TensorRT EP runs the fp32 graph; fp16 via trt_fp16
        d["trt_cache"] = getattr(self, "_cache", None)
        d["batch"] = {"opt": self.opt_batch, "max": self.profile_max}
        return d

    def graph_path(self) -> Path:
        return Path(self.bundle.model_path)
