"""Backends by name. An unknown or unavailable name is an error that lists what is available here; `auto` picks
the best available one for the bundle (see `auto.py`) and logs which.

| name          | runtime                                   | extra            |
|---------------|-------------------------------------------|------------------|
| ort-cpu       | onnxruntime, CPU EP                       | (base install)   |
| ort-cuda      | onnxruntime-gpu, CUDA EP + IO binding     | gpu              |
| ort-trt       | onnxruntime-gpu, TensorRT EP              | gpu (+ trt libs) |
| ov-cpu        | OpenVINO on the CPU (fp32, bf16, int8)    | openvino         |
| trt           | TensorRT engine from the bundle           | trt              |
| torch         | PyTorch eager (the parity reference)      | export           |
| torch-compile | PyTorch torch.compile                     | export           |
| triton        | a Triton Inference Server over gRPC       | triton           |

Adding a backend is one module with a `Backend` subclass and one `register_backend` line at the end of this
file. The backend modules import their runtimes (onnxruntime, TensorRT, torch) only inside their functions, so
importing them here is cheap. Tests add their own backends with `registered_backend(cls)`. This module is also
the one place that words the "available backends" part of errors (`unavailable`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slidefuse.errors import BackendUnavailable, UnknownName, UsageError
from slidefuse.runtime.backends import null, openvino, ort, torch_backend, triton, trt
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle

AUTO = "auto"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

# name -> Backend subclass, or "module:Class" imported on first use; in registration order
_BACKENDS: dict[str, type[Backend] | str] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add backend class `cls` under `cls.name`; returns `cls`. The name must be new, lower case, not "auto"."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == AUTO:
        raise UsageError(f"backend name {name!r} of {cls.__name__} is not allowed: use lower-case letters, digits, "
                         f"'-' or '_', and not '{AUTO}'")
    if name in _BACKENDS:
        raise UsageError(f"backend {name!r} is already registered; unregister_backend({name!r}) first")
    _BACKENDS[name] = cls
    return cls


def unregister_backend(name: str) -> None:
    """Remove a registered backend (e.g. a test's own); UnknownName for a name not registered."""
    get_backend(name)
    del _BACKENDS[name]


@contextmanager
def registered_backend(cls: type[Backend]) -> Iterator[type[Backend]]:
    """`with registered_backend(MyBackend):` registers it for the block and removes it afterwards."""
    register_backend(cls)
    try:
        yield cls
    finally:
        _BACKENDS.pop(cls.name, None)


def backend_names() -> list[str]:
    """Registered backend names (without the `auto` pseudo-name), in registration order."""
    return list(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as `name`; UnknownName listing the valid names otherwise."""
    if name not in _BACKENDS:
        raise UnknownName(f"unknown backend '{name}'; valid backends: {', '.join([*_BACKENDS, AUTO])}")
    target = _BACKENDS[name]
    if isinstance(target, str):
        mod, cls = target.split(":")
        return getattr(importlib.import_module(mod), cls)  # type: ignore[no-any-return]
    return target


def availability(name: str) -> str | None:
    """None when backend `name` can run here, else the one-line reason it cannot."""
    try:
        return get_backend(name).availability()
    except ImportError as exc:
        return str(exc)


def available_backends() -> dict[str, str | None]:
    """name -> None if it can run here, else the reason it cannot."""
    return {name: availability(name) for name in _BACKENDS}


def unavailable(name: str, reason: str) -> BackendUnavailable:
    """The error for backend `name` that cannot run here: the reason, then the backends that can."""
    avail = [n for n, r in available_backends().items() if r is None]
    return BackendUnavailable(f"backend '{name}' is not available here: {reason}; available backends: "
                              f"{', '.join(avail) or 'none'}")


def require_available(name: str) -> type[Backend]:
    """The class of backend `name` when it can run here; UnknownName or BackendUnavailable (see `unavailable`)."""
    cls = get_backend(name)
    reason = availability(name)
    if reason is not None:
        raise unavailable(name, reason)
    return cls


def open_backend(name: str, bundle: Bundle, **options: Any) -> Backend:
    """Instantiate a backend (use it as a context manager). Refuses, never falls back, when unavailable.

    `name` "auto" picks the best backend that can run `bundle` here (logged; see `auto.choose_backend`).
    Raises UnknownName for a name not registered, BackendUnavailable (listing the available backends) for a
    backend that cannot run here, UsageError for options the backend does not take.
    """
    if name == AUTO:
        from slidefuse.runtime.backends.auto import choose_backend

        return choose_backend(bundle, **options).backend
    return require_available(name)(bundle, **options)


# --- the backends, in the order `--help`, errors and `bench parity` list them ---------------------------------
register_backend(ort.OrtCpuBackend)
register_backend(ort.OrtCudaBackend)
register_backend(ort.OrtTrtBackend)
register_backend(openvino.OvCpuBackend)
register_backend(trt.TrtBackend)
register_backend(torch_backend.TorchBackend)
register_backend(torch_backend.TorchCompileBackend)
register_backend(triton.TritonBackend)
register_backend(null.NullBackend)
