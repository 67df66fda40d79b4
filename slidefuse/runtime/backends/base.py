"""The runner contract (after Polygraphy's runners): a context manager with one `run` method.

`Runner` is the contract as a Protocol, what the pipeline and the parity comparison take: `run(tiles)` takes uint8
RGB tiles `[B, T, T, 3]` (HWC, 0..255, C-contiguous) and returns float32 class probabilities `[B, C, T, T]` that
sum to 1 over C. `Backend` is the base class of the registered runners; its input checks happen once, here.

What a backend is, as data: its options (`options_type`, a frozen `BackendOptions` dataclass), where it runs
(`device`, `device_kind()`), whether and how eagerly `auto` picks it (`placements`), whether it can run a given
bundle here (`availability()`, `can_run(bundle, options)`), whether it is built for one batch size
(`needs_per_batch_setup`), and, once loaded, what actually runs (`info() -> BackendInfo`). Nothing outside a
backend's own module needs its name to know any of these.

`unavailable(name, reason)` is the one wording of "backend X cannot run here" (it lists the backends that can).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from slidefuse.errors import BackendUnavailable, UsageError
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle

DeviceKind = Literal["cpu", "cuda"]  # where a backend's arithmetic runs
ComputePrecision = Literal["fp32", "fp16", "bf16"]
COMPUTE_PRECISIONS: tuple[ComputePrecision, ...] = ("fp32", "fp16", "bf16")  # what a backend may compute in
JsonScalar = bool | int | float | str | None


class Runner(Protocol):
    """The runner contract: `with runner: runner.run(uint8 [B, T, T, 3]) -> float32 [B, C, T, T]`.

    Every `Backend` is one; so is any object with these three methods (e.g. `export.parity.TorchModelRunner`)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 RGB tiles [B, T, T, 3] (0..255) -> float32 class probabilities [B, C, T, T] (sum 1 over C)."""
        ...


# The names of the backends that can run here, in registration order. The registry installs its own when it is
# imported (`set_available_names`; importing any backend module imports the package, which imports the registry),
# so that backend modules word `unavailable` without importing the registry that lists them.
_available_names: Callable[[], list[str]] = list


def set_available_names(names: Callable[[], list[str]]) -> None:
    """Install the function `unavailable` asks for the names of the backends that can run here (the registry's)."""
    global _available_names
    _available_names = names


def unavailable(name: str, reason: str) -> BackendUnavailable:
    """The error for backend `name` that cannot run here: the reason, then the backends that can."""
    return BackendUnavailable(f"backend '{name}' is not available here: {reason}; available backends: "
                              f"{', '.join(_available_names()) or 'none'}")


@dataclass(frozen=True)
class BackendInfo:
    """What actually runs, as a backend reports it once loaded: for reports and benchmarks.

    `to_dict()` is the JSON form (report.json's "backend", the benchmarks' "info"): the fields below, then
    `versions` and `settings` merged in at the same level.
    """

    backend: str  # registry name, e.g. "ort-cpu"
    device: DeviceKind  # where the arithmetic runs
    precision: str | None  # what it computes in: fp32, fp16, bf16 (TensorRT engines also fp8, int8); None = unknown
    device_id: int | None = None  # CUDA device index; None on the CPU
    device_name: str | None = None  # GPU model as the runtime names it; None on the CPU or when not known
    providers: tuple[str, ...] = ()  # onnxruntime execution providers of the session, first = preferred
    graph: str | None = None  # ONNX file run, relative to the bundle
    engine: str | None = None  # TensorRT engine file run, relative to the bundle
    threads: int | None = None  # host compute threads, where the backend sets them
    versions: Mapping[str, str | None] = field(default_factory=dict)  # runtime versions, e.g. {"onnxruntime": ...}
    settings: Mapping[str, JsonScalar | Mapping[str, int]] = field(default_factory=dict)  # backend-specific
    # the accuracy gate this run relies on (CPU paths: `cpu_paths.relied_on`: path, state, ISA class, metric,
    # threshold, value, where measured); None where the backend records none
    gate: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        clash = (names & set(self.versions)) | (names & set(self.settings)) | (set(self.versions) & set(self.settings))
        if clash:
            raise ValueError(f"BackendInfo of {self.backend}: keys {sorted(clash)} would collide in to_dict()")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the typed fields, then `versions` and `settings` at the same level."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                               if f.name not in ("versions", "settings")}
        out["providers"] = list(self.providers)
        out["gate"] = dict(self.gate) if self.gate is not None else None
        out.update(self.versions)
        out.update({k: dict(v) if isinstance(v, Mapping) else v for k, v in self.settings.items()})
        return out


@dataclass(frozen=True)
class Placement:
    """One way `auto` may pick a backend: where it then runs and how much it is preferred."""

    device: DeviceKind  # where the backend computes when picked this way
    priority: int  # `auto` tries higher priorities first (equal ones in registration order)
    options: Mapping[str, str] = field(default_factory=dict)  # options set for this way unless the caller set them
    # keys of `options` that define this way of running (e.g. precision): a caller who sets one of them to another
    # value asks for another way, so `auto` skips this placement instead of running it with the caller's value
    fixed: tuple[str, ...] = ()
    label: str = ""  # how auto's logs tell it from the backend's other placements, e.g. "int8, gated"; "" = plain

    def __post_init__(self) -> None:
        missing = [k for k in self.fixed if k not in self.options]
        if missing:
            raise ValueError(f"Placement: fixed keys {missing} are not among its options {sorted(self.options)}")


class Backend(abc.ABC):
    """Subclasses set the class-level hooks below and implement `availability`, `_load`, `_run`, `info`."""

    name: ClassVar[str]  # registry name, e.g. "ort-cpu"
    description: ClassVar[str] = ""  # one line for `--help` and error messages
    options_type: ClassVar[type[BackendOptions]] = BackendOptions  # the options it takes (none by default)
    device: ClassVar[DeviceKind] = "cpu"  # where it computes (see `device_kind` for backends that can do both)
    placements: ClassVar[tuple[Placement, ...]] = ()  # how `auto` may pick it; () = never
    computes_model: ClassVar[bool] = True  # False: returns no model's output (`null`); `bench parity` skips it
    internal: ClassVar[bool] = False  # True: a measuring tool (`null`): runs when named, listed only when asked for
    needs_per_batch_setup: ClassVar[bool] = False  # True: built for one batch size (benchmarks open one per size)

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        """Check `options` (UsageError for an unknown key or a bad value); nothing is loaded before `with`."""
        self.bundle = bundle
        self.options = self.options_type.parse(self.name, options)
        self._loaded = False

    # --- class-level hooks -----------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> str | None:
        """None when this backend can run here; otherwise a one-line reason (missing extra, no GPU)."""

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        """None when this backend, available here, can run `bundle` with `options` (checked options of
        `options_type`); otherwise a one-line reason (no engine for this GPU, no fp16 graph, ...)."""
        return None

    def device_kind(self) -> DeviceKind:
        """Where this instance computes: `device`, unless the backend can run on either (torch)."""
        return self.device

    # --- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Create sessions / engines / buffers. Called once by __enter__."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called by __exit__."""

    @abc.abstractmethod
    def _run(self, tiles: np.ndarray) -> np.ndarray:
        """tiles: uint8 [B, T, T, 3], already checked. Returns float32 [B, C, T, T]."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """What actually runs (device, precision, providers, engine...), for reports; complete once loaded."""

    def __enter__(self) -> Backend:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    # --- the contract ----------------------------------------------------------------------------
    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 [B, T, T, 3] RGB tiles -> float32 [B, C, T, T] class probabilities (an embedding bundle,
        manifest task "embed": float32 [B, D] embeddings)."""
        if not self._loaded:
            raise RuntimeError(f"backend {self.name} used outside its 'with' block")
        t = self.bundle.manifest.tile_size
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
            raise UsageError(f"{self.name}: tiles must be a uint8 numpy array, got {type(tiles).__name__} "
                             f"{getattr(tiles, 'dtype', '')}")
        if tiles.ndim != 4 or tiles.shape[1:] != (t, t, 3):
            raise UsageError(f"{self.name}: tiles must have shape [B, {t}, {t}, 3], got {list(tiles.shape)}")
        out = self._run(np.ascontiguousarray(tiles))
        expected = self.bundle.manifest.output_shape(tiles.shape[0])
        if out.shape != expected:
            raise RuntimeError(f"{self.name}: engine returned shape {list(out.shape)}, expected {list(expected)}")
        return out
