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
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from slidefuse.errors import BackendUnavailable, BundleError, UsageError
from slidefuse.runtime.backends.base import PRECISIONS, Backend, check_options, check_precision

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


def _available_line() -> str:
    from slidefuse.runtime.backends.registry import available_backends

    return ", ".join(n for n, r in available_backends().items() if r is None) or "none"


def torch_reason() -> str | None:
    """None when torch, timm and safetensors are importable; else a one-line reason naming the extra."""
    missing = [m for m in ("torch", "timm", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed: pip install 'slidefuse[export]'"
    return None


class TorchBackend(Backend):
    name = "torch"
    description = "PyTorch eager (the parity reference); fp16/bf16 autocast on CUDA"
    accepted: ClassVar[frozenset[str]] = frozenset({"precision", "device", "device_id", "threads", "batch",
                                                    "channels_last", "tf32"})

    def __init__(self, bundle: Any, **options: Any) -> None:
        super().__init__(bundle, **options)
        check_options(self.name, options, self.accepted)
        self.precision = check_precision(self.name, options.get("precision") or "fp32", PRECISIONS)
        self.device = self._resolve_device(options.get("device"), options.get("device_id"))
        if self.precision == "fp16" and self.device == "cpu":
            raise UsageError(f"backend {self.name}: precision fp16 on the CPU is not supported; use "
                             "precision bf16 or fp32 on the CPU, or device cuda")
        cl = options.get("channels_last")
        self.channels_last = bool(self.device.startswith("cuda") if cl is None else cl)
        self._model: Any = None
        self._pinned: dict[int, Any] = {}

    @classmethod
    def availability(cls) -> str | None:
        return torch_reason()

    def _resolve_device(self, requested: Any, device_id: Any) -> str:
        import torch

        req = str(requested or "auto").lower()
        has_cuda = torch.cuda.is_available()
        if req == "auto":
            req = "cuda" if has_cuda else "cpu"
        if req == "cpu":
            return "cpu"
        if req == "cuda" or req.startswith("cuda:"):
            if not has_cuda:
                raise BackendUnavailable(
                    f"backend {self.name}: device '{requested}' requested but torch {torch.__version__} sees no "
                    f"CUDA device (built for CUDA {torch.version.cuda}); not falling back to the CPU: pass "
                    f"device cpu or run on a GPU machine; available backends: {_available_line()}"
                )
            index = int(req.split(":", 1)[1]) if ":" in req else int(device_id or 0)
            if not 0 <= index < torch.cuda.device_count():
                raise UsageError(f"backend {self.name}: CUDA device {index} does not exist; this machine has "
                                 f"{torch.cuda.device_count()} (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
            return f"cuda:{index}"
        raise UsageError(f"backend {self.name}: device '{requested}': expected cpu, cuda, cuda:N or auto")

    # --- lifecycle -----------------------------------------------------------------------------------------
    def weights_path(self) -> Path:
        m = self.bundle.manifest
        if not m.torch_weights:
            raise BundleError(f"{self.bundle.path}: the manifest names no torch weights (torch_weights), which "
                              "the torch backends need; re-export the bundle with 'slidefuse export'")
        path = Path(self.bundle.path) / m.torch_weights
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle; re-export it with 'slidefuse export'")
        return path

    def _load(self) -> None:
        import torch

        from slidefuse.export.model import build_model_from_state

        m = self.bundle.manifest
        t0 = time.perf_counter()
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
            tf32 = bool(self.options.get("tf32", False))
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        elif self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        model = build_model_from_state(m.encoder, m.num_classes, m.tile_size, m.decoder_width,
                                       self.weights_path())
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        log.info("%s: %s model rebuilt on %s in %.1f s (precision %s%s)", self.name, m.encoder, self.device,
                 time.perf_counter() - t0, self.precision, ", channels-last" if self.channels_last else "")

    def _close(self) -> None:
        self._model = None
        self._pinned.clear()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # --- running -------------------------------------------------------------------------------------------
    def _to_device(self, tiles: np.ndarray) -> Any:
        """uint8 [B, T, T, 3] numpy -> uint8 tensor on the device (via a reused pinned buffer on CUDA)."""
        import torch

        x = torch.from_numpy(tiles)
        if self.device == "cpu":
            return x
        pinned = self._pinned.get(len(tiles))
        if pinned is None:
            if len(self._pinned) >= 4:
                self._pinned.pop(next(iter(self._pinned)))
            pinned = torch.empty(tiles.shape, dtype=torch.uint8, pin_memory=True)
            self._pinned[len(tiles)] = pinned
        pinned.copy_(x)
        return pinned.to(self.device, non_blocking=True)

    def _forward(self, x: Any) -> Any:
        """uint8 [B, T, T, 3] on the device -> float32 [B, C, T, T] on the device."""
        return self._model(x)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        x = self._to_device(tiles)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        dtype = getattr(torch, _AUTOCAST[self.precision]) if self.precision in _AUTOCAST else None
        with torch.inference_mode(), torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            out = self._forward(x)
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        import torch

        d: dict[str, Any] = {"backend": self.name, "device": self.device, "precision": self.precision,
                             "channels_last": self.channels_last, "torch": torch.__version__}
        if self.device.startswith("cuda"):
            d["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
            d["cuda"] = torch.version.cuda
            d["tf32"] = bool(self.options.get("tf32", False))
        else:
            d["threads"] = torch.get_num_threads()
        try:
            from timm.layers import use_fused_attn

            d["sdpa"] = bool(use_fused_attn())
        except ImportError:
            pass
        return d


class TorchCompileBackend(TorchBackend):
    name = "torch-compile"
    description = "PyTorch torch.compile (CUDA graphs on CUDA), fixed compiled batch"
    accepted = TorchBackend.accepted | {"compile_mode", "warmup"}

    def __init__(self, bundle: Any, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.batch = int(options.get("batch") or 8)
        if self.batch < 1:
            raise UsageError(f"backend {self.name}: batch {self.batch}: expected a positive compiled batch size")
        on_cuda = self.device.startswith("cuda")
        self.compile_mode = str(options.get("compile_mode") or ("reduce-overhead" if on_cuda else "default"))
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise UsageError(f"backend {self.name}: compile_mode '{self.compile_mode}': expected one of "
                             f"{', '.join(modes)}")
        warmup = options.get("warmup")
        self.warmup = int(warmup) if warmup is not None else (3 if on_cuda else 1)
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

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update(compile_mode=self.compile_mode, compiled_batch=self.batch, cuda_graphs=self._cudagraphs)
        return d
