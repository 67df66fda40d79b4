"""Native TensorRT backend (`trt`): runs a serialized engine from the bundle's `engines/` folder.

- The engine is chosen from `Manifest.engines` by `runtime.engines.find_engine` for this machine's GPU model,
  compute capability and TensorRT version (optionally of one `precision`); an engine built elsewhere is refused
  with EngineMismatch, whose message gives the `slidefuse build` command that rebuilds it here.
- Buffers: device memory (cudaMalloc) and pinned host memory (cudaMallocHost) from cuda-python's runtime API
  (`cuda.bindings.runtime`, the `trt` extra). cuda-python rather than torch, so an inference image needs no torch.
- Double buffering: two execution slots, each with its own execution context, non-blocking CUDA stream, device
  input/output buffers and pinned host buffers. `run` splits its batch into chunks of `batch` tiles (default:
  the engine profile's opt batch, at most its max) and alternates the slots: while slot A's stream computes chunk
  i, the host stages chunk i+1 into slot B's pinned buffer and queues its host->device copy, kernels and
  device->host copy on B's stream, so copies of one chunk overlap the compute of the other. The host waits on a
  slot's stream only when it reuses that slot.
- Dynamic batch: `set_input_shape` per chunk within the engine's optimisation profile (a chunk smaller than the
  profile minimum is zero-padded).

Options: `precision` (engine precision to pick: fp16, bf16, fp8, int8; default: any compatible engine),
`device_id` (GPU index, default 0), `batch` (chunk size). `threads` is accepted (so that options meant for
`auto` pass) and ignored: the host side is one thread.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import BackendUnavailable, BundleError, EngineMismatch, MissingExtra, UsageError
from slidefuse.runtime.backends.base import Backend, BackendInfo, JsonScalar, Placement
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.engines import PRECISIONS as ENGINE_PRECISIONS

log = logging.getLogger(__name__)

TRT_EXTRA_HINT = "pip install 'slidefuse[trt]'"


def _cudart() -> Any:
    """cuda-python's runtime API module (cuda.bindings.runtime in cuda-python >= 12.6, cuda.cudart before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def _call(result: Any, what: str) -> Any:
    """Unpack a cuda-python `(error, *values)` tuple; raise RuntimeError naming the call on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)} ({err}) in {what}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _host_view(ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy array over `nbytes` of pinned host memory at address `ptr` (no copy)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
    return np.frombuffer(raw, dtype=dt).reshape(shape)


@dataclass
class _Slot:
    """One execution slot: context + stream + device buffers + pinned host buffers, and its chunk in flight."""

    context: Any
    stream: Any
    d_in: int
    d_out: int
    h_in_ptr: int
    h_out_ptr: int
    h_in: np.ndarray  # uint8 [chunk, T, T, 3], pinned
    h_out: np.ndarray  # engine output dtype [chunk, C, T, T], pinned
    pending: tuple[int, int] | None = None  # (start, count) of the chunk queued on this slot


@dataclass(frozen=True)
class TrtOptions(BackendOptions):
    precision: str | None = None  # engine precision to pick (fp16, bf16, fp8, int8); None or "auto" = any
    device_id: int = 0  # CUDA device index
    batch: int | None = None  # tiles per engine call (default: the engine profile's opt batch)
    threads: int | None = None  # taken (so that options meant for `auto` pass) and ignored: one host thread

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision in ("", "auto"):
            object.__setattr__(self, "precision", None)
        if self.precision is not None and self.precision not in ENGINE_PRECISIONS:
            raise UsageError(f"precision '{self.precision}': TensorRT engines are built as "
                             f"{', '.join(ENGINE_PRECISIONS)}; pass one of those or leave it out")
        self.at_least("device_id", 0)
        self.at_least("batch", 1)


class TrtBackend(Backend):
    name = "trt"
    description = "native TensorRT engine from the bundle, double-buffered on two CUDA streams"
    options: TrtOptions
    options_type = TrtOptions
    device = "cuda"
    # a prebuilt engine for this GPU: no build at start-up, the fastest kernels TensorRT has for this graph
    placements = (Placement("cuda", 100),)

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.precision = self.options.precision
        self.device_id = self.options.device_id
        self.entry: dict[str, Any] = {}
        self._slots: list[_Slot] = []

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        """None when the bundle holds an engine built for this GPU and TensorRT version (of the precision asked
        for, if any); else why not."""
        if not isinstance(options, TrtOptions):
            raise TypeError(f"expected TrtOptions, got {type(options).__name__}")
        try:
            cls.find_engine(bundle, options.device_id, options.precision)
        except (EngineMismatch, MissingExtra, BackendUnavailable) as exc:
            return str(exc)
        return None

    @staticmethod
    def find_engine(bundle: Bundle, device_id: int, precision: str | None) -> dict[str, Any]:
        """The manifest's engine entry for this machine's GPU and TensorRT (see `engines.find_engine`)."""
        from slidefuse.runtime import engines

        identity = engines.current_trt_identity(device_id)
        return engines.find_engine(bundle.manifest.engines, identity, precision, bundle=str(bundle.path))

    @classmethod
    def availability(cls) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return f"TensorRT is not installed: {TRT_EXTRA_HINT}"
        try:
            cudart = _cudart()
        except ImportError:
            return f"cuda-python is not installed: {TRT_EXTRA_HINT}"
        try:
            count = _call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except RuntimeError as exc:
            return f"no usable CUDA driver/GPU ({exc}); TensorRT needs an NVIDIA GPU"
        if not count:
            return "no CUDA device found; TensorRT needs an NVIDIA GPU"
        return None

    # --- lifecycle -----------------------------------------------------------------------------------------
    def _select_engine(self) -> tuple[dict[str, Any], Path]:
        from slidefuse.runtime import engines

        entry = self.find_engine(self.bundle, self.device_id, self.precision)
        path = Path(self.bundle.path) / str(entry.get("file"))
        if not path.is_file():
            raise BundleError(f"{path}: engine listed in the manifest is missing; rebuild it: "
                              f"{engines.rebuild_hint(entry, str(self.bundle.path))}")
        return entry, path

    def _load(self) -> None:
        import tensorrt as trt

        from slidefuse.runtime.engines import rebuild_hint

        cudart = _cudart()
        _call(cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
        self.entry, path = self._select_engine()
        t0 = time.perf_counter()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineMismatch(f"{path}: TensorRT {trt.__version__} could not deserialise the engine (corrupt, "
                                 f"or built by another version); rebuild it: "
                                 f"{rebuild_hint(self.entry, str(self.bundle.path))}")
        self._bind_names(trt)
        m = self.bundle.manifest
        t = m.tile_size
        pmin, popt, pmax = (tuple(s) for s in self._engine.get_tensor_profile_shape(self._in, 0))
        if tuple(pmin[1:]) != (t, t, 3) or tuple(pmax[1:]) != (t, t, 3):
            raise EngineMismatch(f"{path}: engine input profile {list(pmin)}..{list(pmax)} does not take "
                                 f"[B, {t}, {t}, 3] tiles; rebuild it: "
                                 f"{rebuild_hint(self.entry, str(self.bundle.path))}")
        self.min_batch, self.max_batch = int(pmin[0]), int(pmax[0])
        self.chunk = int(self.options.batch or popt[0])
        if not 1 <= self.chunk <= self.max_batch:
            raise UsageError(f"backend {self.name}: batch={self.chunk}: this engine takes 1..{self.max_batch} "
                             "tiles per run; pass a smaller batch or rebuild the engine for larger batches")
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
        self._slots = [self._make_slot(cudart) for _ in range(2)]
        log.info("%s: %s on %s (%s, batch %d..%d, chunk %d, 2 slots) loaded in %.1f s", self.name, path.name,
                 self.entry.get("gpu"), self.entry.get("precision"), self.min_batch, self.max_batch, self.chunk,
                 time.perf_counter() - t0)

    def _bind_names(self, trt: Any) -> None:
        m = self.bundle.manifest
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [m.input_name] or m.output_name not in outputs:
            raise BundleError(f"engine inputs {inputs} / outputs {outputs}: expected '{m.input_name}' / "
                              f"'{m.output_name}' as in the manifest; rebuild the engine with 'slidefuse build'")
        if trt.nptype(self._engine.get_tensor_dtype(m.input_name)) != np.uint8:
            raise BundleError(f"engine input '{m.input_name}' is not uint8; rebuild it from the bundle's graph")
        self._in, self._out = m.input_name, m.output_name

    def _make_slot(self, cudart: Any) -> _Slot:
        m = self.bundle.manifest
        t, c, k = m.tile_size, m.num_classes, self.chunk
        in_bytes = k * t * t * 3
        out_bytes = k * c * t * t * self._out_dtype.itemsize
        context = self._engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context (GPU memory?) for chunk {k}")
        stream = _call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate")
        d_in = int(_call(cudart.cudaMalloc(in_bytes), "cudaMalloc(input)"))
        d_out = int(_call(cudart.cudaMalloc(out_bytes), "cudaMalloc(output)"))
        h_in_ptr = int(_call(cudart.cudaMallocHost(in_bytes), "cudaMallocHost(input)"))
        h_out_ptr = int(_call(cudart.cudaMallocHost(out_bytes), "cudaMallocHost(output)"))
        context.set_tensor_address(self._in, d_in)
        context.set_tensor_address(self._out, d_out)
        return _Slot(context, stream, d_in, d_out, h_in_ptr, h_out_ptr,
                     _host_view(h_in_ptr, (k, t, t, 3), np.uint8),
                     _host_view(h_out_ptr, (k, c, t, t), self._out_dtype))

    def _close(self) -> None:
        cudart = _cudart()
        for slot in self._slots:
            if slot.pending is not None:
                cudart.cudaStreamSynchronize(slot.stream)
            slot.context = None
            cudart.cudaFree(slot.d_in)
            cudart.cudaFree(slot.d_out)
            cudart.cudaFreeHost(slot.h_in_ptr)
            cudart.cudaFreeHost(slot.h_out_ptr)
            cudart.cudaStreamDestroy(slot.stream)
        self._slots = []
        self._engine = None
        self._runtime = None

    # --- running -------------------------------------------------------------------------------------------
    def _submit(self, cudart: Any, slot: _Slot, tiles: np.ndarray, start: int, count: int) -> None:
        """Stage tiles[start:start+count] in the slot's pinned buffer and queue copy-in, compute, copy-out."""
        m = self.bundle.manifest
        t, c = m.tile_size, m.num_classes
        run_b = max(count, self.min_batch)
        slot.h_in[:count] = tiles[start:start + count]
        if run_b > count:
            slot.h_in[count:run_b] = 0
        if not slot.context.set_input_shape(self._in, (run_b, t, t, 3)):
            raise RuntimeError(f"TensorRT refused input shape [{run_b}, {t}, {t}, 3] "
                               f"(profile batch {self.min_batch}..{self.max_batch})")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _call(cudart.cudaMemcpyAsync(slot.d_in, slot.h_in_ptr, run_b * t * t * 3, h2d, slot.stream),
              "cudaMemcpyAsync(host->device)")
        if not slot.context.execute_async_v3(int(slot.stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on a batch of {run_b} tiles")
        out_bytes = run_b * c * t * t * self._out_dtype.itemsize
        _call(cudart.cudaMemcpyAsync(slot.h_out_ptr, slot.d_out, out_bytes, d2h, slot.stream),
              "cudaMemcpyAsync(device->host)")
        slot.pending = (start, count)

    def _collect(self, cudart: Any, slot: _Slot, out: np.ndarray) -> None:
        """Wait for the slot's stream and copy its chunk's probabilities into `out`."""
        if slot.pending is None:
            return
        _call(cudart.cudaStreamSynchronize(slot.stream), "cudaStreamSynchronize")
        start, count = slot.pending
        out[start:start + count] = slot.h_out[:count]
        slot.pending = None

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        cudart = _cudart()
        m = self.bundle.manifest
        n, t = len(tiles), m.tile_size
        out = np.empty((n, m.num_classes, t, t), dtype=np.float32)
        try:
            for i, start in enumerate(range(0, n, self.chunk)):
                slot = self._slots[i % 2]
                self._collect(cudart, slot, out)  # the slot's previous chunk must be done before reuse
                self._submit(cudart, slot, tiles, start, min(self.chunk, n - start))
            for slot in self._slots:  # drain (each slot knows where its chunk goes)
                self._collect(cudart, slot, out)
        except BaseException:
            for slot in self._slots:  # leave no work in flight on a failure
                cudart.cudaStreamSynchronize(slot.stream)
                slot.pending = None
            raise
        return out

    def info(self) -> BackendInfo:
        """The engine picked (file, precision, GPU, TensorRT version); before loading, what was asked for."""
        settings: dict[str, JsonScalar | dict[str, int]] = {}
        if self._slots:
            settings = {"batch": {"min": self.min_batch, "max": self.max_batch}, "chunk": self.chunk,
                        "slots": len(self._slots)}
        e = self.entry
        return BackendInfo(self.name, "cuda", e.get("precision") or self.precision, device_id=self.device_id,
                           device_name=e.get("gpu"), engine=e.get("file"),
                           versions={"trt_version": e.get("trt_version")}, settings=settings)

