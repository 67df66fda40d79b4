"""Inference backends behind one contract: uint8 tiles [B, T, T, 3] in, float32 probabilities
[B, C, T, T] out. See `base.Runner` (the contract), `base.Backend` (its registered implementations) and `registry`."""

from slidefuse.runtime.backends.auto import open_backend
from slidefuse.runtime.backends.base import Backend, BackendInfo, Placement, Runner
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.backends.registry import (
    available_backends,
    backend_names,
    get_backend,
    register_backend,
    registered_backend,
    unregister_backend,
)

__all__ = ["Backend", "BackendInfo", "BackendOptions", "Placement", "Runner", "available_backends", "backend_names",
           "get_backend", "open_backend", "register_backend", "registered_backend", "unregister_backend"]
