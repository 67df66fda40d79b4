"""TensorRT engine identity: file names, the identity of this machine, and the load-time compatibility check.

A serialized TensorRT engine runs only on the GPU model and TensorRT version it was built with. Every engine a
bundle holds is recorded in `Manifest.engines` as a dict:

    {"file": "engines/nvidia-h100-80gb-hbm3_sm90_trt10.8.0.43_fp16.engine", "precision": "fp16",
     "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "trt_version": "10.8.0.43",
     "batch": {"min": 1, "opt": 8, "max": 32}, "workspace_gb": 8.0, "graph": "model.fp16.onnx",
     "timing_cache": "engines/...timing-cache", "created": "2025-01-01T00:00:00Z"}

`check_engine_compatible(entry, identity)` refuses an engine built elsewhere with a message that says how to
rebuild it here. This module imports neither torch nor TensorRT at module level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from slidefuse.errors import BackendUnavailable, EngineMismatch, MissingExtra

ENGINE_DIR = "engines"
PRECISIONS = ("fp16", "bf16", "fp8", "int8")


@dataclass(frozen=True)
class TrtIdentity:
    gpu: str  # device name as CUDA reports it, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "9.0"
    trt_version: str  # tensorrt.__version__, e.g. "10.8.0.43"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def engine_stem(identity: TrtIdentity) -> str:
    """'<gpu-slug>_sm<cc>_trt<version>': the part of engine and timing-cache names that ties them to a machine."""
    cc = identity.compute_capability.replace(".", "")
    return f"{_slug(identity.gpu)}_sm{cc}_trt{identity.trt_version}"


def engine_filename(identity: TrtIdentity, precision: str) -> str:
    """Bundle-relative engine path: 'engines/<gpu>_sm<cc>_trt<version>_<precision>.engine'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return f"{ENGINE_DIR}/{engine_stem(identity)}_{precision}.engine"


def timing_cache_filename(identity: TrtIdentity) -> str:
    """Bundle-relative timing-cache path (one per GPU model and TensorRT version, shared by precisions)."""
    return f"{ENGINE_DIR}/{engine_stem(identity)}.timing-cache"


def _cuda_device(device: int) -> tuple[str, str]:
    """(name, 'major.minor') of CUDA device `device`, via cuda-python, else torch; raises when neither works."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        err, prop = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    raise BackendUnavailable(f"no CUDA device {device} found (cuda-python and torch see none); "
                             "TensorRT engines need an NVIDIA GPU")


def current_trt_identity(device: int = 0) -> TrtIdentity:
    """GPU name, compute capability and TensorRT version of this machine.

    Raises MissingExtra (naming the `trt` extra) without TensorRT, BackendUnavailable without a CUDA device.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingExtra("tensorrt", "trt", "TensorRT engines") from exc
    name, cc = _cuda_device(device)
    return TrtIdentity(gpu=name, compute_capability=cc, trt_version=str(trt.__version__))


def identity_of(entry: dict[str, Any]) -> TrtIdentity:
    """The identity an engine entry of the manifest was built for."""
    return TrtIdentity(str(entry.get("gpu", "?")), str(entry.get("compute_capability", "?")),
                       str(entry.get("trt_version", "?")))


def rebuild_hint(entry: dict[str, Any], bundle: str = "BUNDLE") -> str:
    b = entry.get("batch") or {}
    batch = f" --batch {b['min']}:{b['opt']}:{b['max']}" if {"min", "opt", "max"} <= set(b) else ""
    return f"slidefuse build {bundle} --precision {entry.get('precision', 'fp16')}{batch}"


def check_engine_compatible(entry: dict[str, Any], identity: TrtIdentity, bundle: str = "BUNDLE") -> None:
    """Raise EngineMismatch unless the engine in `entry` was built for this GPU model and TensorRT version.

    Compared: TensorRT version (exact), compute capability, and GPU name (engines are tuned for one device
    model; two GPUs of the same architecture still differ in SM count and memory).
    """
    built = identity_of(entry)
    diffs = []
    if built.trt_version != identity.trt_version:
        diffs.append(f"TensorRT {built.trt_version} != {identity.trt_version}")
    if built.compute_capability != identity.compute_capability:
        diffs.append(f"compute capability {built.compute_capability} != {identity.compute_capability}")
    if built.gpu != identity.gpu:
        diffs.append(f"GPU '{built.gpu}' != '{identity.gpu}'")
    if diffs:
        raise EngineMismatch(
            f"engine {entry.get('file', '?')} was built for {built.gpu} (sm {built.compute_capability}, TensorRT "
            f"{built.trt_version}) but this machine has {identity.gpu} (sm {identity.compute_capability}, "
            f"TensorRT {identity.trt_version}) [{'; '.join(diffs)}]; rebuild it here: {rebuild_hint(entry, bundle)}"
        )


def find_engine(
    engines: Iterable[dict[str, Any]], identity: TrtIdentity, precision: str | None = None, bundle: str = "BUNDLE"
) -> dict[str, Any]:
    """The manifest entry of an engine usable here (optionally of `precision`), else EngineMismatch.

    The error lists the engines the bundle has and the build command for this machine.
    """
    entries = [e for e in engines if precision is None or e.get("precision") == precision]
    for e in entries:
        try:
            check_engine_compatible(e, identity, bundle)
            return e
        except EngineMismatch:
            continue
    have = ", ".join(f"{e.get('file')} ({e.get('precision')})" for e in engines) or "none"
    want = precision or "fp16"
    raise EngineMismatch(
        f"{bundle}: no {precision + ' ' if precision else ''}TensorRT engine for {identity.gpu} "
        f"(sm {identity.compute_capability}, TensorRT {identity.trt_version}); the bundle has: {have}; "
        f"build one here: slidefuse build {bundle} --precision {want}"
    )
