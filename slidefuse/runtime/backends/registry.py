"""Backends by name. An unknown or unavailable name is an error that lists what is available here; `auto` picks
the fastest available one (see `auto.py`) and logs which.

| name          | runtime                                   | extra            |
|---------------|-------------------------------------------|------------------|
| ort-cpu       | onnxruntime, CPU EP                       | (base install)   |
| ort-cuda      | onnxruntime-gpu, CUDA EP + IO binding     | gpu              |
| ort-trt       | onnxruntime-gpu, TensorRT EP              | gpu (+ trt libs) |
| trt           | TensorRT engine from the bundle           | trt              |
| torch         | PyTorch eager (the parity reference)      | export           |
| torch-compile | PyTorch torch.compile                     | export           |
"""

from __future__ import annotations

import importlib
from typing import Any

from slidefuse.errors import BackendUnavailable, UnknownName
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle

AUTO = "auto"

# name -> "module:Class"; modules are imported only when the backend is asked for.
_BACKENDS: dict[str, str] = {
    "ort-cpu": "slidefuse.runtime.backends.ort:OrtCpuBackend",
    "ort-cuda": "slidefuse.runtime.backends.ort:OrtCudaBackend",
    "ort-trt": "slidefuse.runtime.backends.ort:OrtTrtBackend",
    "trt": "slidefuse.runtime.backends.trt:TrtBackend",
    "torch": "slidefuse.runtime.backends.torch_backend:TorchBackend",
    "torch-compile": "slidefuse.runtime.backends.torch_backend:TorchCompileBackend",
}


def register(name: str, target: str) -> None:
    """Add a backend: `target` is "module:Class" of a `Backend` subclass (imported on first use)."""
    _BACKENDS[name] = target


def backend_names() -> list[str]:
    """Registered backend names (without the `auto` pseudo-name)."""
    return list(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as `name`; UnknownName listing the valid names otherwise."""
    if name not in _BACKENDS:
        raise UnknownName(f"unknown backend '{name}'; valid backends: {', '.join([*_BACKENDS, AUTO])}")
    mod, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), cls)  # type: ignore[no-any-return]


def availability(name: str) -> str | None:
    """None when backend `name` can run here, else the one-line reason it cannot."""
    try:
        return get_backend(name).availability()
    except ImportError as exc:
        return str(exc)


def available_backends() -> dict[str, str | None]:
    """name -> None if it can run here, else the reason it cannot."""
    return {name: availability(name) for name in _BACKENDS}


def open_backend(name: str, bundle: Bundle, **options: Any) -> Backend:
    """Instantiate a backend (use it as a context manager). Refuses, never falls back, when unavailable.

    `name` "auto" picks the fastest backend that can run `bundle` here (logged; see `auto.choose_backend`).
    Raises UnknownName for a name not registered, BackendUnavailable (listing the available backends) for a
    backend that cannot run here, UsageError for options the backend does not take.
    """
    if name == AUTO:
        from slidefuse.runtime.backends.auto import choose_backend

        return choose_backend(bundle, **options).backend
    cls = get_backend(name)
    reason = availability(name)
    if reason is not None:
        avail = [n for n, r in available_backends().items() if r is None]
        raise BackendUnavailable(
            f"backend '{name}' is not available here: {reason}; available backends: {', '.join(avail) or 'none'}"
        )
    return cls(bundle, **options)
