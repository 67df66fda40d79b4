"""`auto`: the preferred backend that can run a given bundle here, with the reason, logged.

Each backend class lists its `placements`: the device it runs on when picked, a priority (a fixed preference, the
usual order of these runtimes on a ViT encoder + convolutional decoder graph, not a per-machine measurement:
`slidefuse bench engine` measures) and options (e.g. torch's `device`, or a CPU path's `precision`). `auto` tries
every placement of every registered backend, highest priority first, and picks the first that

1. is available here (`availability()`: runtime installed, device present),
2. takes the options given (plus the placement's own, e.g. torch's `device`, unless the caller set that key),
   and is not a placement whose `fixed` option the caller set to another value (a caller asking for
   precision bf16 does not get the fp32 path of a backend with a bf16 one),
3. can run this bundle (`can_run(bundle, options)`: e.g. an engine built for this GPU, an fp16 graph, a CPU
   path that passed its gate), and
4. once constructed, runs on the placement's device.

The CPU order (`cpu_paths.CPU_PATHS`, the one table of it): ov-cpu bf16 (30) > ov-cpu int8 (28) > ort-cpu int8
(26) > ov-cpu fp32 (22) > ort-cpu fp32 (20) > torch on the CPU (10). The accelerated paths come first because they
are faster, but their placements set `unverified="refuse"`: each is taken only for a bundle whose manifest records
a passed gate for it (`slidefuse quantize` measures them against ort-cpu fp32 on held-out tissue tiles), never
for one that failed or was never gated. ov-cpu fp32 ranks above ort-cpu fp32: the same graph and arithmetic
(outputs equal to about 1e-7), and OpenVINO is the faster CPU runtime for these graphs. Every GPU placement ranks
above all CPU paths.

Nothing is chosen silently: the pick (with its priority) and every skip reason are logged at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from slidefuse.errors import BackendUnavailable, SlidefuseError, UsageError
from slidefuse.runtime.backends.base import Backend, Placement
from slidefuse.runtime.backends.registry import AUTO, backend_names, get_backend, require_available
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One placement of one registered backend, as `auto` tries it."""

    name: str  # registry name
    cls: type[Backend]  # the backend class
    placement: Placement  # device and priority
    label: str  # how logs and `AutoChoice.skipped` name it: "torch (cuda)" when a backend has several placements


@dataclass
class AutoChoice:
    name: str  # registry name of the backend picked
    backend: Backend  # the instance (not loaded yet: use it as a context manager)
    reason: str  # one line: why this one
    skipped: dict[str, str] = field(default_factory=dict)  # candidate label -> why it was not picked


def candidates() -> list[Candidate]:
    """Every placement of every registered backend, highest priority first (ties in registration order)."""
    out = []
    for name in backend_names():
        cls = get_backend(name)
        devices = {p.device for p in cls.placements}
        for p in cls.placements:
            parts = ([p.device] if len(devices) > 1 else []) + ([p.label] if p.label else [])
            out.append(Candidate(name, cls, p, f"{name} ({', '.join(parts)})" if parts else name))
    return sorted(out, key=lambda c: -c.placement.priority)


def _other_way(placement: Placement, options: Mapping[str, Any]) -> str | None:
    """Why a caller's options ask for another way than `placement` (a `fixed` key set to another value)."""
    for key in placement.fixed:
        if key in options and options[key] is not None and options[key] != placement.options[key]:
            return f"{key} {options[key]} was asked for; this way runs {key} {placement.options[key]}"
    return None


@dataclass(frozen=True)
class _Skip:
    """Why a candidate was not picked, and at which step."""

    reason: str  # one line
    step: Literal["availability", "options", "other"]  # not available here / refused the options given / the rest


def _try(c: Candidate, bundle: Bundle, options: Mapping[str, Any]) -> Backend | _Skip:
    """The constructed backend of candidate `c`, or why it cannot run `bundle` with `options` here."""
    try:
        reason = c.cls.availability()
    except ImportError as exc:
        reason = str(exc)
    if reason is not None:
        return _Skip(reason, "availability")
    opts = {**c.placement.options, **{k: v for k, v in options.items() if v is not None}}  # None = the default
    try:
        parsed = c.cls.options_type.parse(c.name, opts)
    except UsageError as exc:  # an option it does not take, or a bad value
        return _Skip(str(exc), "options")
    try:
        why_not = _other_way(c.placement, options) or c.cls.can_run(bundle, parsed)
        if why_not is not None:
            return _Skip(why_not, "other")
        backend = c.cls(bundle, **opts)
    except SlidefuseError as exc:  # no device, bundle lacks what it needs, options that do not go together
        return _Skip(str(exc), "other")
    if backend.device_kind() != c.placement.device:
        return _Skip(f"the options given put it on the {backend.device_kind()}", "other")
    return backend


def _nothing_runs(bundle: Bundle, skips: Mapping[str, _Skip]) -> SlidefuseError:
    """The error when no candidate can run: a UsageError when every backend available here refused the options
    given (a mistyped option, a bad value: the caller's to fix), else BackendUnavailable; each lists every reason."""
    tried = {k: s for k, s in skips.items() if s.step != "availability"}
    if tried and all(s.step == "options" for s in tried.values()):
        details = "; ".join(f"{k}: {s.reason}" for k, s in tried.items())
        return UsageError(f"backend auto: no backend that can run here takes the options given ({details})")
    details = "; ".join(f"{k}: {s.reason}" for k, s in skips.items())
    return BackendUnavailable(f"backend auto: no backend can run {bundle.path} here ({details})")


def choose_backend(bundle: Bundle, **options: Any) -> AutoChoice:
    """Pick the first of `candidates()` that can run `bundle` with `options` here. When none can, raise
    BackendUnavailable with every candidate's reason, or UsageError when every backend available here refused
    the options given."""
    skips: dict[str, _Skip] = {}
    order = candidates()
    for c in order:
        got = _try(c, bundle, options)
        if isinstance(got, _Skip):
            skips[c.label] = got
            continue
        skipped = {k: s.reason for k, s in skips.items()}
        reason = (f"priority {c.placement.priority} on the {c.placement.device}, the first that can run here in "
                  f"the order {' > '.join(o.label for o in order)}")
        if skipped:
            reason += f" (not available: {', '.join(skipped)})"
        log.info("backend auto: picked %s: %s", c.label, reason)
        devices = {o.label: o.placement.device for o in order}
        for lab, why in skipped.items():  # the near misses (same device, e.g. an ungated CPU path) at INFO
            log.log(logging.INFO if devices[lab] == c.placement.device else logging.DEBUG,
                    "backend auto: %s not used: %s", lab, why)
        return AutoChoice(c.name, got, reason, skipped)
    raise _nothing_runs(bundle, skips)


def open_backend(name: str, bundle: Bundle, **options: Any) -> Backend:
    """Instantiate a backend (use it as a context manager). Refuses, never falls back, when unavailable.

    `name` "auto" picks the best backend that can run `bundle` here (logged; see `auto.choose_backend`).
    Raises UnknownName for a name not registered, BackendUnavailable (listing the available backends) for a
    backend that cannot run here, UsageError for options the backend does not take.
    """
    if name == AUTO:
        return choose_backend(bundle, **options).backend
    return require_available(name)(bundle, **options)
