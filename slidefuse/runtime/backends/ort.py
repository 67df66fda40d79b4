"""onnxruntime backends: `ort-cpu`, `ort-cuda` (CUDA execution provider) and `ort-trt` (TensorRT execution
provider), all running the bundle's fused graph (uint8 tiles `[B, T, T, 3]` in, float32 probabilities
`[B, C, T, T]` out).

Session options, tuned for one large graph run over and over on same-sized batches:
- graph optimisation level ORT_ENABLE_ALL (constant folding, layout and operator fusions);
- sequential execution, one inter-op thread, `threads` intra-op threads (default: the CPUs this process may
  use); `spin=False` stops idle intra-op threads from spinning (useful when reader threads share the CPU);
- CPU memory arena on, memory pattern off (with both on, the second run of a shape allocated its planned block
  beside the first run's arena chunks: twice the peak; see `OrtOptions.mem_pattern`);
- on the CPU, batches larger than the working-memory budget (`max_memory_gb`, default 40% of the usable memory;
  see `memory.py`) run in sub-batches.

Precision: `precision="fp32"` runs `model.onnx`; `precision="fp16"` runs the bundle's `model.fp16.onnx` for
ort-cpu / ort-cuda (an error when the bundle has none: re-export with `--fp16`), and for ort-trt lets TensorRT
pick fp16 kernels for the fp32 graph (`trt_fp16_enable`), which is how the TensorRT EP is meant to be used.
`precision="int8"` runs the bundle's `model.int8.onnx` (a calibrated QDQ graph made by `slidefuse quantize`; an
error when the bundle has none) on ort-cpu only: it is a CPU path (onnxruntime's CPU provider fuses the Q/DQ
pairs into integer kernels), so ort-cuda and ort-trt refuse it. Its gate is the one `slidefuse quantize` ran
before adding the graph (`parity["int8"]`); a bundle whose manifest records it as failed is refused, and `auto`
takes int8 only where it passed (see `cpu_paths`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from slidefuse.errors import BundleError, UsageError
from slidefuse.runtime.backends import cpu_paths
from slidefuse.runtime.backends.base import Backend, BackendInfo, JsonScalar, Placement, unavailable
from slidefuse.runtime.backends.memory import in_sub_batches, tiles_per_call
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.cores import usable_cores

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
ORT_TRT_CACHE = "engines/ort-trt-cache"  # bundle-relative folder of the TensorRT EP's engine and timing caches
_MAX_CACHED_OUTPUTS = 4  # device output buffers kept (one per recent batch size)
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
_INT8_CPU_ONLY = ("precision int8 is a CPU path (the INT8 QDQ graph runs on onnxruntime's CPU kernels): use "
                  "backend=ort-cpu for int8, or precision fp32 / fp16 on the GPU")


@dataclass(frozen=True)
class OrtOptions(BackendOptions):
    """Options of ort-cpu (and, with the fields of the subclasses below, of ort-cuda and ort-trt)."""

    # fp16: the bundle's model.fp16.onnx (ort-trt: TensorRT fp16); int8: its model.int8.onnx (ort-cpu only)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    threads: int | None = None  # intra-op threads; None or 0 = every CPU this process may use
    spin: bool = True  # False stops idle intra-op threads from spinning (leaves the CPU to reader threads)
    io_binding: bool | None = None  # output bound to a reused buffer; None = the backend's default (GPU: on)
    device_id: int = 0  # CUDA device index (ignored on the CPU)
    batch: int | None = None  # ort-trt: the batch its TensorRT profile is tuned for; taken and ignored elsewhere
    # ort-cpu int8 without a passed gate in the bundle's manifest: warn (and run), refuse (auto's int8 placement),
    # allow (run silently: the gate itself). A failed gate is always refused. See cpu_paths.
    unverified: Literal["warn", "refuse", "allow"] = "warn"
    # CPU: budget in GiB for the engine's working memory; larger batches run in sub-batches (see memory.py).
    # None = 40% of the usable memory; 0 = no limit. Ignored on GPUs.
    max_memory_gb: float | None = None
    arena: bool = True  # onnxruntime's CPU memory arena (keeps freed buffers for reuse)
    # onnxruntime's memory pattern (buffers planned once per input shape). Off by default: with the arena on, the
    # planned block is allocated next to the arena's chunks from the first run, which doubled the peak (phikon
    # 512 px, batch 8, 3 calls: 11925 MiB with it, 6217 MiB without, no slower; engine-memory-b8.json)
    mem_pattern: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at_least("max_memory_gb", 0)
        self.at_least("threads", 0)
        self.at_least("device_id", 0)
        self.at_least("batch", 1)


@dataclass(frozen=True)
class OrtCudaOptions(OrtOptions):
    tf32: bool = False  # allow TF32 on the CUDA EP (off, so that fp32 stays fp32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision == "int8":
            raise UsageError(_INT8_CPU_ONLY, field="precision")


@dataclass(frozen=True)
class OrtTrtOptions(OrtCudaOptions):
    max_batch: int | None = None  # largest batch of the TensorRT profile (default max(32, batch)); more: chunks
    workspace_gb: float = 8.0  # TensorRT workspace in GiB
    cache_dir: str | None = None  # engine + timing cache folder (default: <bundle>/engines/ort-trt-cache)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workspace_gb <= 0:
            raise UsageError(f"option workspace_gb={self.workspace_gb!r}: expected a positive number of GiB")
        if not 1 <= self.opt_batch <= self.profile_max:
            raise UsageError(f"batch {self.opt_batch} / max_batch {self.profile_max}: expected 1 <= batch <= "
                             "max_batch")

    @property
    def opt_batch(self) -> int:
        """The batch the TensorRT profile is tuned for (default 8)."""
        return self.batch or 8

    @property
    def profile_max(self) -> int:
        """The largest batch of the TensorRT profile (default max(32, opt_batch))."""
        return self.max_batch or max(32, self.opt_batch)


def _ort_options(options: BackendOptions) -> OrtOptions:
    if not isinstance(options, OrtOptions):
        raise TypeError(f"expected OrtOptions, got {type(options).__name__}")
    return options


class _OrtBackend(Backend):
    """Shared session handling. Subclasses set the providers they need and their provider options; their
    options are `OrtOptions` and its subclasses."""

    options: OrtOptions
    options_type = OrtOptions
    required_provider: ClassVar[str] = CPU_EP
    provider_chain: ClassVar[tuple[str, ...]] = (CPU_EP,)  # the providers asked for, first = preferred
    default_io_binding: ClassVar[bool] = False

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.precision = self.options.precision
        self.threads = self.options.threads or usable_cores()
        self.device_id = self.options.device_id
        self.io_binding = self.default_io_binding if self.options.io_binding is None else self.options.io_binding
        self.max_batch: int | None = None
        self.memory_reason = "GPU: not limited by the host budget"
        if self.device == "cpu":
            self.max_batch, self.memory_reason = tiles_per_call(bundle.manifest, self.options.max_memory_gb)
        self._session: Any = None
        self._outputs: dict[int, Any] = {}
        cpu_paths.check(bundle, self.name, self.precision, self.options.unverified,
                        runnable=self.can_run(bundle, self.options) is None)

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        opts = _ort_options(options)
        return cpu_paths.can_run(bundle, cls.name, opts.precision, opts.unverified, cls.graph_file)

    # --- what to run ----------------------------------------------------------------------------------
    @classmethod
    def graph_file(cls, bundle: Bundle, precision: str) -> Path:
        """The ONNX file this backend runs: model.onnx, model.fp16.onnx for precision fp16, model.int8.onnx for
        int8 (CPU backends only); UsageError when the bundle lacks that graph."""
        m = bundle.manifest
        if precision == "int8":
            if cls.device != "cpu":
                raise UsageError(f"backend {cls.name}: {_INT8_CPU_ONLY}")
            return cpu_paths.int8_graph(bundle, cls.name)
        if precision == "fp16":
            if not m.fp16_model_file:
                raise UsageError(f"backend {cls.name}: precision fp16 needs model.fp16.onnx, which bundle "
                                 f"{bundle.path} lacks; re-export it with fp16=True (`slidefuse export`) "
                                 "or use precision fp32")
            return Path(bundle.path) / m.fp16_model_file
        return Path(bundle.model_path)

    def graph_path(self) -> Path:
        """The ONNX file this instance runs (see `graph_file`)."""
        return self.graph_file(self.bundle, self.precision)

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
        so.enable_cpu_mem_arena = self.options.arena
        so.enable_mem_pattern = self.options.mem_pattern
        so.log_severity_level = 3  # errors only; provider placement is checked explicitly below
        if not self.options.spin:
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
            raise unavailable(self.name, f"onnxruntime could not start {self.required_provider} "
                              f"({_first_line(exc)}); not falling back to the CPU") from exc
        got = list(self._session.get_providers())
        if self.required_provider not in got:
            self._session = None
            raise unavailable(self.name, f"onnxruntime did not load {self.required_provider} (session providers: "
                              f"{', '.join(got)}; check the CUDA 12 / cuDNN 9 / TensorRT libraries and the GPU); "
                              "not falling back to the CPU")
        self._check_io()
        log.info("%s: %s on %s (precision %s, %d intra-op threads%s; %s)", self.name, path.name,
                 ", ".join(got), self.precision, self.threads, ", IO binding" if self.io_binding else "",
                 self.memory_reason)

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
        return in_sub_batches(tiles, self.max_batch, self._run_one)

    def _run_one(self, tiles: np.ndarray) -> np.ndarray:
        m = self.bundle.manifest
        if not self.io_binding:
            (out,) = self._session.run([m.output_name], {m.input_name: tiles})
            return np.asarray(out, dtype=np.float32)
        return self._run_bound(tiles)

    def _run_bound(self, tiles: np.ndarray) -> np.ndarray:
        """IO binding: input bound from host memory, output into a reused buffer on `device`."""
        import onnxruntime as ort

        m = self.bundle.manifest
        b = len(tiles)
        out = self._outputs.get(b)
        if out is None:
            if len(self._outputs) >= _MAX_CACHED_OUTPUTS:
                self._outputs.pop(next(iter(self._outputs)))
            shape = list(m.output_shape(b))
            out = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._out_dtype, self.device,
                                                            self.device_id)
            self._outputs[b] = out
        io = self._session.io_binding()
        io.bind_cpu_input(m.input_name, tiles)
        io.bind_ortvalue_output(m.output_name, out)
        self._session.run_with_iobinding(io)
        # a copy: on the CPU numpy() is a view of the reused output buffer, which the next run overwrites
        return np.array(out.numpy(), dtype=np.float32, copy=True)

    def info(self) -> BackendInfo:
        import onnxruntime as ort

        providers = self._session.get_providers() if self._session is not None else self.provider_chain
        return BackendInfo(self.name, self.device, self.precision,
                           device_id=self.device_id if self.device == "cuda" else None,
                           providers=tuple(providers), graph=self.graph_path().name, threads=self.threads,
                           versions={"onnxruntime": ort.__version__}, settings=self.settings(),
                           gate=cpu_paths.relied_on(self.bundle, self.name, self.precision)
                           if self.device == "cpu" else None)

    def settings(self) -> dict[str, JsonScalar | dict[str, int]]:
        """The backend-specific part of `info()`."""
        return {"io_binding": self.io_binding, "max_batch": self.max_batch, "memory": self.memory_reason,
                "arena": self.options.arena, "mem_pattern": self.options.mem_pattern}


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
    # fp32 (onnxruntime runs these graphs faster than eager PyTorch on the CPU and needs no torch) and the gated
    # int8 graph; priorities in cpu_paths.CPU_PATHS
    placements = cpu_paths.placements("ort-cpu")

    @classmethod
    def availability(cls) -> str | None:
        return _provider_reason(CPU_EP, "reinstall onnxruntime")


class OrtCudaBackend(_OrtBackend):
    name = "ort-cuda"
    description = "onnxruntime, CUDA execution provider (IO binding)"
    options: OrtCudaOptions
    options_type = OrtCudaOptions
    required_provider = CUDA_EP
    provider_chain: ClassVar[tuple[str, ...]] = (CUDA_EP, CPU_EP)
    device = "cuda"
    placements = (Placement("cuda", 70),)
    default_io_binding = True

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
            "use_tf32": "1" if self.options.tf32 else "0",
        }

    def providers(self) -> list[Any]:
        return [(CUDA_EP, self.cuda_options()), CPU_EP]


class OrtTrtBackend(OrtCudaBackend):
    name = "ort-trt"
    description = "onnxruntime, TensorRT execution provider (engine cache in the bundle)"
    options: OrtTrtOptions
    options_type = OrtTrtOptions
    required_provider = TRT_EP
    provider_chain = (TRT_EP, CUDA_EP, CPU_EP)
    # builds its engine once (then cached in the bundle); TensorRT's kernels beat the CUDA EP's and torch's
    placements = (Placement("cuda", 90),)

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.opt_batch = self.options.opt_batch
        self.profile_max = self.options.profile_max
        self.max_batch = self.profile_max  # larger batches run in chunks

    @classmethod
    def availability(cls) -> str | None:
        return _provider_reason(TRT_EP, "pip install 'slidefuse[gpu]' (onnxruntime-gpu) with TensorRT 10 "
                                "libraries on the library path ('slidefuse[trt]')")

    def cache_dir(self) -> Path:
        """Where the TensorRT EP keeps its engines and timing cache: `<bundle>/engines/ort-trt-cache`, or
        `cache_dir`; when the bundle is read-only, a per-bundle folder under the user's cache (logged)."""
        if self.options.cache_dir:
            folder = Path(self.options.cache_dir)
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
            "trt_max_workspace_size": str(int(self.options.workspace_gb * (1 << 30))),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(self.opt_batch),
            "trt_profile_max_shapes": shape(self.profile_max),
        }

    def providers(self) -> list[Any]:
        # CUDA EP after TensorRT: nodes TensorRT cannot take run on the GPU, not on the CPU.
        return [(TRT_EP, self.trt_options()), (CUDA_EP, self.cuda_options()), CPU_EP]

    def settings(self) -> dict[str, JsonScalar | dict[str, int]]:
        return {**super().settings(), "trt_cache": getattr(self, "_cache", None),
                "batch": {"opt": self.opt_batch, "max": self.profile_max}}

    @classmethod
    def graph_file(cls, bundle: Bundle, precision: str) -> Path:
        """model.onnx in fp32 and fp16: the TensorRT EP makes fp16 kernels from the fp32 graph (trt_fp16);
        UsageError for int8 (a CPU path)."""
        if precision == "int8":
            raise UsageError(f"backend {cls.name}: {_INT8_CPU_ONLY}")
        return Path(bundle.model_path)
