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

Adding a backend is one module with a `Backend` subclass and one line in `BUILTIN_BACKENDS` below: its name and
"module:Class". This module imports no backend: a backend's module is imported the first time its class is asked
for (`get_backend`), and the backend modules import `base`, never this registry. Tests add their own backends
with `registered_backend(cls)`. The "available backends" part of errors is worded once, by `base.unavailable`,
from the list this registry installs there (`base.set_available_names`).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from slidefuse.errors import UnknownName, UsageError, did_you_mean
from slidefuse.numbers import is_number
from slidefuse.runtime.backends import base
from slidefuse.runtime.backends.base import Backend, unavailable

AUTO = "auto"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

# The built-in backends, in the order `--help`, errors, `auto` (at equal priority) and `bench parity` list them:
# name -> "module:Class", imported on first use.
BUILTIN_BACKENDS: dict[str, str] = {
    "ort-cpu": "slidefuse.runtime.backends.ort:OrtCpuBackend",
    "ort-cuda": "slidefuse.runtime.backends.ort:OrtCudaBackend",
    "ort-trt": "slidefuse.runtime.backends.ort:OrtTrtBackend",
    "ov-cpu": "slidefuse.runtime.backends.openvino:OvCpuBackend",
    "trt": "slidefuse.runtime.backends.trt:TrtBackend",
    "torch": "slidefuse.runtime.backends.torch_backend:TorchBackend",
    "torch-compile": "slidefuse.runtime.backends.torch_backend:TorchCompileBackend",
    "triton": "slidefuse.runtime.backends.triton:TritonBackend",
    "null": "slidefuse.runtime.backends.null:NullBackend",
}

# name -> Backend subclass, or "module:Class" imported on first use; in registration order
_BACKENDS: dict[str, type[Backend] | str] = dict(BUILTIN_BACKENDS)


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


def backend_names(include_internal: bool = False) -> list[str]:
    """Registered backend names (without the `auto` pseudo-name), in registration order; internal ones
    (`Backend.internal`, e.g. `null`) only when `include_internal`."""
    return [n for n in _BACKENDS if include_internal or not _is_internal(n)]


def _is_internal(name: str) -> bool:
    """Whether backend `name` is internal (a backend whose module does not import is not)."""
    try:
        return get_backend(name).internal
    except (ImportError, UsageError):
        return False


def check_backend_name(name: object) -> str:
    """`name` when it is "auto" or a registered backend (internal ones included); UnknownName otherwise, with the
    closest names and the listed ones. Imports no backend module."""
    if isinstance(name, str) and (name == AUTO or name in _BACKENDS):
        return name
    listed = [*backend_names(), AUTO]
    raise UnknownName(f"unknown backend {name!r}{did_you_mean(name, [*_BACKENDS, AUTO])}; valid backends: "
                      f"{', '.join(listed)}")


def check_backend_choice(name: object, options: Mapping[str, Any]) -> None:
    """Refuse, before any model loads, what `open_backend(name, bundle, **options)` would refuse for any bundle: an
    unknown name (UnknownName), and options the named backend does not take or values it refuses (UsageError).
    For "auto" (its options go to the backend it picks) only numbers that are not finite are refused here."""
    check_backend_name(name)
    if name != AUTO:
        try:
            cls = get_backend(str(name))
        except (ImportError, UsageError):  # its module does not import: `require_available` says so later
            return
        cls.options_type.parse(cls.name, options)
        return
    for key, value in options.items():
        if is_number(value) and not math.isfinite(value):
            raise UsageError(f"backend option {key}={value!r}: expected a finite number")


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as `name`; UnknownName listing the valid names otherwise."""
    check_backend_name(name)
    target = _BACKENDS[name]
    return _resolve(name, target) if isinstance(target, str) else target


def _resolve(name: str, target: str) -> type[Backend]:
    """The class that "module:Class" `target`, registered as `name`, names (its module imported now)."""
    mod, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(mod), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend) and getattr(cls, "name", None) == name):
        raise UsageError(f"backend {name!r} is registered as {target!r}, which is not a Backend subclass named "
                         f"{name!r}")
    return cls


def availability(name: str) -> str | None:
    """None when backend `name` can run here, else the one-line reason it cannot."""
    try:
        return get_backend(name).availability()
    except (ImportError, UsageError) as exc:  # its module does not import, or names no backend of that name
        return str(exc)


def available_backends() -> dict[str, str | None]:
    """name -> None if it can run here, else the reason it cannot."""
    return {name: availability(name) for name in _BACKENDS}


def available_names() -> list[str]:
    """Names of the registered backends that can run here, in registration order (internal ones left out)."""
    listed = set(backend_names())
    return [n for n, r in available_backends().items() if r is None and n in listed]


def require_available(name: str) -> type[Backend]:
    """The class of backend `name` when it can run here; UnknownName or BackendUnavailable (see `unavailable`)."""
    cls = get_backend(name)
    reason = availability(name)
    if reason is not None:
        raise unavailable(name, reason)
    return cls


base.set_available_names(available_names)  # what `unavailable` lists
