"""Backends by name. An unknown or unavailable name is an error that lists what is available here."""

from __future__ import annotations

import importlib
from typing import Any

from slidefuse.errors import BackendUnavailable, UnknownName
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle

# name -> "module:Class"; modules are imported only when the backend is asked for.
_BACKENDS: dict[str, str] = {
    "ort-cpu": "slidefuse.runtime.backends.ort:OrtCpuBackend",
}


def register(name: str, target: str) -> None:
    _BACKENDS[name] = target


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise UnknownName(f"unknown backend '{name}'; valid backends: {', '.join(_BACKENDS)}")
    mod, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), cls)  # type: ignore[no-any-return]


def available_backends() -> dict[str, str | None]:
    """name -> None if it can run here, else the reason it cannot."""
    out: dict[str, str | None] = {}
    for name in _BACKENDS:
        try:
            out[name] = get_backend(name).availability()
        except ImportError as exc:
            out[name] = str(exc)
    return out


def open_backend(name: str, bundle: Bundle, **options: Any) -> Backend:
    """Instantiate a backend (use it as a context manager). Refuses, never falls back, when unavailable."""
    cls = get_backend(name)
    reason = cls.availability()
    if reason is not None:
        avail = [n for n, r in available_backends().items() if r is None]
        raise BackendUnavailable(
            f"backend '{name}' is not available here: {reason}; available backends: {', '.join(avail) or 'none'}"
        )
    return cls(bundle, **options)
