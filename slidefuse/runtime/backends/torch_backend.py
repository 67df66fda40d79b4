"""PyTorch backends: `torch` (eager) and `torch-compile` (`torch.compile`). The torch backend is the reference of
the parity checks.

Both rebuild the bundle's SegmentationModel from `model.safetensors` (`build_model_from_state` with the
manifest's encoder, classes, tile size and decoder width), so they compute what the exported graph was made from.
torch (and timm) are imported only inside this module's functions: the runtime's base install has no torch, and
`availability()` then names the `export` extra.

Options:
- `device`: "cuda" (or "cuda:N") / "cpu" / "auto" (default: CUDA when torch sees a GPU, else CPU). Asking for
  CUDA where there is none raises BackendUnavailable; nothing falls back to the CPU.
- `precision`: "fp32" (default), "fp16" or "bf16" via `torch.autocast` (weights stay fp32; the softmax and the
  output are fp32). fp16 on the CPU is refused (slow and badly supported there); bf16 autocast on the CPU is
  allowed.
- `channels_last` (default: on CUDA) puts the decoder's convolutions in NHWC, which tensor-core kernels want.
  Attention runs through `scaled_dot_product_attention` (timm's fused attention, on by default).
- `tf32` (default False): allow TF32 matmuls/convolutions on CUDA for fp32 (faster, ~1e-3 relative error).
  On CUDA the backend sets cuDNN benchmark mode and the TF32 flags process-wide when it loads.
- `threads`: torch intra-op threads on the CPU (process-wide `torch.set_num_threads`).
- `batch`: accepted by the eager backend (so that options meant for `auto` pass) and ignored: it runs any batch.
- `torch-compile` only: `batch` (the batch size compiled for, default 8: smaller batches are zero-padded to it
  and larger ones split, so exactly one graph is compiled), `compile_mode` (default "reduce-overhead" on CUDA,
  i.e. CUDA graphs, and "default" on the CPU; "max-autotune" adds Triton GEMM/conv autotuning and CUDA graphs at
  the price of minutes of compilation), `warmup` (compiled runs at load time, default 3 on CUDA so CUDA graphs
  are recorded before the first real batch, 1 on the CPU).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from slidefuse.errors import BundleError, UsageError
from slidefuse.runtime.backends.base import (
    Backend,
    BackendInfo,
    ComputePrecision,
    DeviceKind,
    JsonScalar,
    Placement,
    unavailable,
)
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """Options of the eager torch backend (see the module docstring)."""

    precision: ComputePrecision = "fp32"  # fp16 / bf16: torch.autocast (weights and output stay fp32)
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto" (CUDA when torch sees a GPU)
    device_id: int = 0  # CUDA index for device "cuda"
    threads: int | None = None  # torch intra-op threads on the CPU (process-wide)
    batch: int | None = None  # taken (so that options meant for `auto` pass) and ignored by the eager backend
    channels_last: bool | None = None  # NHWC decoder convolutions; None = on for CUDA
    tf32: bool = False  # allow TF32 matmuls / convolutions on CUDA

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DEVICE.fullmatch(self.device.lower()):
            raise UsageError(f"device '{self.device}': expected cpu, cuda, cuda:N or auto")
        self.at_least("device_id", 0)
        self.at_least("threads", 0)
        self.at_least("batch", 1)


@dataclass(frozen=True)
class TorchCompileOptions(TorchOptions):
    compile_mode: CompileMode | None = None  # None: "reduce-overhead" (CUDA graphs) on CUDA, "default" on the CPU
    warmup: int | None = None  # compiled runs at load time; None: 3 on CUDA, 1 on the CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at_least("warmup", 0)


def torch_reason() -> str | None:
    """None when torch, timm and safetensors are importable; else a one-line reason naming the extra."""
    missing = [m for m in ("torch", "timm", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed: pip install 'slidefuse[export]'"
    return None


class TorchBackend(Backend):
    name = "torch"
    description = "PyTorch eager (the parity reference); fp16/bf16 autocast on CUDA"
    options: TorchOptions
    options_type = TorchOptions
    # CUDA: cuDNN / cuBLAS kernels and fused attention, ahead of onnxruntime's CUDA EP. CPU: only when
    # onnxruntime is missing (it runs these graphs faster than eager PyTorch there).
    placements: ClassVar[tuple[Placement, ...]] = (Placement("cuda", 80, {"device": "cuda"}),
                                                   Placement("cpu", 10, {"device": "cpu"}))

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.precision = self.options.precision
        self.torch_device = self._resolve_device(self.options.device, self.options.device_id)
        if self.precision == "fp16" and self.torch_device == "cpu":
            raise UsageError(f"backend {self.name}: precision fp16 on the CPU is not supported; use "
                             "precision bf16 or fp32 on the CPU, or device cuda")
        cl = self.options.channels_last
        self.channels_last = self.torch_device.startswith("cuda") if cl is None else cl
        self._model: Any = None
        self._pinned: dict[int, Any] = {}

    @classmethod
    def availability(cls) -> str | None:
        return torch_reason()

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        """None when the bundle holds the torch weights (model.safetensors) the model is rebuilt from."""
        try:
            cls.weights_file(bundle)
        except BundleError as exc:
            return str(exc)
        return None

    def device_kind(self) -> DeviceKind:
        return "cuda" if self.torch_device.startswith("cuda") else "cpu"

    def _resolve_device(self, requested: str, device_id: int) -> str:
        """"cpu" or "cuda:N" for `requested` ("auto", "cpu", "cuda", "cuda:N")."""
        import torch

        req = requested.lower()
        has_cuda = torch.cuda.is_available()
        if req == "auto":
            req = "cuda" if has_cuda else "cpu"
        if req == "cpu":
            return "cpu"
        if not has_cuda:
            raise unavailable(self.name, f"device '{requested}' requested but torch {torch.__version__} sees no "
                              f"CUDA device (built for CUDA {torch.version.cuda}); not falling back to the CPU: "
                              "pass device cpu or run on a GPU machine")
        index = int(req.split(":", 1)[1]) if ":" in req else device_id
        if not 0 <= index < torch.cuda.device_count():
            raise UsageError(f"backend {self.name}: CUDA device {index} does not exist; this machine has "
                             f"{torch.cuda.device_count()} (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return f"cuda:{index}"

    # --- lifecycle -----------------------------------------------------------------------------------------
    @staticmethod
    def weights_file(bundle: Bundle) -> Path:
        """The bundle's model.safetensors; BundleError when the manifest names none or it is missing."""
        m = bundle.manifest
        if not m.torch_weights:
            raise BundleError(f"{bundle.path}: the manifest names no torch weights (torch_weights), which "
                              "the torch backends need; re-export the bundle with 'slidefuse export'")
        path = Path(bundle.path) / m.torch_weights
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle; re-export it with 'slidefuse export'")
        return path

    def weights_path(self) -> Path:
        return self.weights_file(self.bundle)

    def _load(self) -> None:
        import torch

        from slidefuse.model.assembly import build_model_from_state

        m = self.bundle.manifest
        t0 = time.perf_counter()
        if self.torch_device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = self.options.tf32
            torch.backends.cudnn.allow_tf32 = self.options.tf32
        elif self.options.threads:
            torch.set_num_threads(self.options.threads)
        if m.embedding is not None:  # an embedding bundle: the encoder and its pooling alone
            from slidefuse.model.embedding import embedding_model_from_state

            model: Any = embedding_model_from_state(m.encoder, m.tile_size, self.weights_path())
        else:
            model = build_model_from_state(m.encoder, m.num_classes, m.tile_size, m.decoder_width,
                                           self.weights_path())
        model = model.eval().to(self.torch_device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        log.info("%s: %s model rebuilt on %s in %.1f s (precision %s%s)", self.name, m.encoder, self.torch_device,
                 time.perf_counter() - t0, self.precision, ", channels-last" if self.channels_last else "")

    def _close(self) -> None:
        self._model = None
        self._pinned.clear()
        if self.torch_device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # --- running -------------------------------------------------------------------------------------------
    def _to_device(self, tiles: np.ndarray) -> Any:
        """uint8 [B, T, T, 3] numpy -> uint8 tensor on the device (via a reused pinned buffer on CUDA)."""
        import torch

        x = torch.from_numpy(tiles)
        if self.torch_device == "cpu":
            return x
        pinned = self._pinned.get(len(tiles))
        if pinned is None:
            if len(self._pinned) >= 4:
                self._pinned.pop(next(iter(self._pinned)))
            pinned = torch.empty(tiles.shape, dtype=torch.uint8, pin_memory=True)
            self._pinned[len(tiles)] = pinned
        pinned.copy_(x)
        return pinned.to(self.torch_device, non_blocking=True)

    def _forward(self, x: Any) -> Any:
        """uint8 [B, T, T, 3] on the device -> float32 [B, C, T, T] on the device."""
        return self._model(x)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        x = self._to_device(tiles)
        dev_type = self.device_kind()
        dtype = getattr(torch, _AUTOCAST[self.precision]) if self.precision in _AUTOCAST else None
        with torch.inference_mode(), torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            out = self._forward(x)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def info(self) -> BackendInfo:
        import torch

        settings: dict[str, JsonScalar | dict[str, int]] = {"channels_last": self.channels_last}
        versions: dict[str, str | None] = {"torch": torch.__version__}
        try:
            from timm.layers import use_fused_attn

            settings["sdpa"] = bool(use_fused_attn())
        except ImportError:
            pass
        settings.update(self.settings())
        if self.device_kind() == "cpu":
            return BackendInfo(self.name, "cpu", self.precision, threads=torch.get_num_threads(),
                               versions=versions, settings=settings)
        dev = torch.device(self.torch_device)
        versions["cuda"] = torch.version.cuda
        settings["tf32"] = self.options.tf32
        return BackendInfo(self.name, "cuda", self.precision, device_id=dev.index,
                           device_name=torch.cuda.get_device_name(dev), versions=versions, settings=settings)

    def settings(self) -> dict[str, JsonScalar | dict[str, int]]:
        """Settings of subclasses for `info()` (none for eager torch)."""
        return {}


class TorchCompileBackend(TorchBackend):
    name = "torch-compile"
    description = "PyTorch torch.compile (CUDA graphs on CUDA), fixed compiled batch"
    options: TorchCompileOptions
    options_type = TorchCompileOptions
    placements = ()  # minutes of compilation at start-up: only when asked for by name
    needs_per_batch_setup = True  # compiled for one batch size

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.batch = self.options.batch or 8
        on_cuda = self.device_kind() == "cuda"
        self.compile_mode = self.options.compile_mode or ("reduce-overhead" if on_cuda else "default")
        warmup = self.options.warmup
        self.warmup = warmup if warmup is not None else (3 if on_cuda else 1)
        self._cudagraphs = on_cuda and self.compile_mode in ("reduce-overhead", "max-autotune")
        self._compiled: Any = None

    def _load(self) -> None:
        import torch

        super()._load()
        self._compiled = torch.compile(self._model, mode=self.compile_mode, dynamic=False)
        t = self.bundle.manifest.tile_size
        rng = np.random.default_rng(0)
        warm = rng.integers(0, 256, size=(self.batch, t, t, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        for _ in range(self.warmup):
            self._run(warm)
        log.info("%s: compiled (mode %s, batch %d) and warmed up with %d run(s) in %.1f s", self.name,
                 self.compile_mode, self.batch, self.warmup, time.perf_counter() - t0)

    def _close(self) -> None:
        self._compiled = None
        super()._close()

    def _forward(self, x: Any) -> Any:
        """Run the compiled model on exactly `batch` tiles at a time: pad the last chunk, split larger inputs."""
        import torch

        n = x.shape[0]
        outs = []
        for start in range(0, n, self.batch):
            chunk = x[start:start + self.batch]
            k = chunk.shape[0]
            if k < self.batch:
                pad = torch.zeros((self.batch - k, *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device)
                chunk = torch.cat([chunk, pad])
            if self._cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            # clone: CUDA-graph outputs live in memory the next replay overwrites
            outs.append(self._compiled(chunk)[:k].clone())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def settings(self) -> dict[str, JsonScalar | dict[str, int]]:
        return {"compile_mode": self.compile_mode, "compiled_batch": self.batch, "cuda_graphs": self._cudagraphs}
