"""`auto`: the fastest backend that can run a given bundle here, with the reason, logged.

Candidates, fastest first (the usual order of these runtimes on a ViT encoder + convolutional decoder graph; a
fixed preference, not a per-machine measurement: `slidefuse bench engine` measures):

1. `trt`: the bundle holds a TensorRT engine built for this GPU and TensorRT version (no build at start-up).
2. `ort-trt`: TensorRT through onnxruntime's TensorRT EP (builds its engine once, then caches it in the bundle).
3. `torch` on CUDA: cuDNN / cuBLAS kernels and fused SDPA attention.
4. `ort-cuda`: onnxruntime's CUDA EP.
5. `ort-cpu`: on a machine without a usable GPU. onnxruntime runs this graph faster than eager PyTorch on the
   CPU (fused attention / LayerNorm / GELU kernels, no autograd bookkeeping) and needs no torch.
6. `torch` on the CPU: only when onnxruntime is missing.

A candidate is skipped when its runtime is missing, when it has nothing to run (no compatible engine), or when
it does not take the options given (e.g. `precision="bf16"` skips the onnxruntime backends). Options are passed
unchanged; only `device` is set to "cuda" for the GPU torch candidate and "cpu" for the CPU one, when the caller
did not set it. Nothing is chosen silently: the pick and every skip reason are logged at INFO.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from slidefuse.errors import BackendUnavailable, EngineMismatch, MissingExtra, UsageError
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

AUTO = "auto"
# (registry name, torch device or None): fastest first
ORDER: tuple[tuple[str, str | None], ...] = (
    ("trt", None), ("ort-trt", None), ("torch", "cuda"), ("ort-cuda", None), ("ort-cpu", None), ("torch", "cpu"),
)


@dataclass
class AutoChoice:
    name: str  # registry name of the backend picked
    backend: Backend  # the instance (not loaded yet: use it as a context manager)
    reason: str  # one line: why this one
    skipped: dict[str, str] = field(default_factory=dict)  # candidate label -> why it was not picked


def _label(name: str, device: str | None) -> str:
    return f"{name} ({device})" if device else name


def _extra_check(name: str, device: str | None, bundle: Bundle, backend: Backend) -> str | None:
    """Why an available, constructed candidate still cannot run this bundle here (None when it can)."""
    if name == "trt":
        from slidefuse.runtime import engines

        try:
            identity = engines.current_trt_identity(int(backend.options.get("device_id") or 0))
            engines.find_engine(bundle.manifest.engines, identity, getattr(backend, "precision", None),
                                bundle=str(bundle.path))
        except (EngineMismatch, MissingExtra, BackendUnavailable) as exc:
            return str(exc)
    if name == "torch" and device == "cuda" and not str(getattr(backend, "device", "")).startswith("cuda"):
        return "the caller asked for another device"
    return None


def choose_backend(bundle: Bundle, **options: Any) -> AutoChoice:
    """Pick the fastest candidate of ORDER that can run `bundle` with `options` here; raise BackendUnavailable
    (with every candidate's reason) when none can."""
    from slidefuse.runtime.backends.registry import get_backend

    skipped: dict[str, str] = {}
    for name, device in ORDER:
        label = _label(name, device)
        cls = get_backend(name)
        try:
            reason = cls.availability()
        except ImportError as exc:
            reason = str(exc)
        if reason is not None:
            skipped[label] = reason
            continue
        opts = dict(options)
        if device is not None and "device" not in opts:
            opts["device"] = device
        try:
            backend = cls(bundle, **opts)
        except (UsageError, BackendUnavailable) as exc:
            skipped[label] = str(exc)
            continue
        why_not = _extra_check(name, device, bundle, backend)
        if why_not is not None:
            skipped[label] = why_not
            continue
        reason = f"first that can run here in the order {' > '.join(_label(n, d) for n, d in ORDER)}"
        if skipped:
            reason += f" (not available: {', '.join(skipped)})"
        log.info("backend auto: picked %s: %s", label, reason)
        for lab, why in skipped.items():
            log.info("backend auto: %s not used: %s", lab, why)
        return AutoChoice(name, backend, reason, skipped)
    details = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    raise BackendUnavailable(f"backend auto: no backend can run {bundle.path} here ({details})")
