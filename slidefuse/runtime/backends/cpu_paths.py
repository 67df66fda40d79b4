"""The CPU paths: which (backend, precision) pairs run a bundle on the CPU, how `auto` orders them, and the gates
that decide whether an accelerated one may run a given bundle.

A *path* is a backend at a precision. fp32 paths (`ort-cpu` fp32, the reference; `ov-cpu` fp32, which matches
onnxruntime to about 1e-7) run the fp32 graph in fp32 and need no gate beyond the bundle's own fp32 parity. The
accelerated ones change the arithmetic and each has its own gate, run by `slidefuse quantize` on held-out tissue
tiles against `ort-cpu` fp32 and recorded in the bundle's manifest under `parity[<gate key>]` (figures,
thresholds and a `passed` flag; `passed: null` with a `reason` when it could not be gated):

| path          | graph           | gate key (manifest parity) |
|---------------|-----------------|----------------------------|
| ort-cpu int8  | model.int8.onnx | "int8"                     |
| ov-cpu int8   | model.int8.onnx | "ov-cpu int8"              |
| ov-cpu bf16   | model.onnx      | "ov-cpu bf16"              |

A path's gate state for a bundle (`gate_of`): "passed", "failed", "unverified" (no record, or not gated), or
"none" (a path without a gate). The `ort-cpu` int8 graph is only ever added to a bundle after its gate passed, so
an int8 graph without a record counts as passed for `ort-cpu`; a record with `passed: false` is a failure.

Gates hold per ISA class (`runtime.cpuinfo`): bf16 on an AMX CPU runs on other units than on an AVX-512-BF16 one,
and integer kernels differ between AVX2 and AVX-512-VNNI. A record names the class of the CPU that measured it
(`isa`, `cpu_model`, written by `slidefuse export` and `slidefuse quantize`); it counts only on a CPU of the same
class. On a CPU of another class the path is "unverified" (`Gate.note` says where it was gated), so `auto` falls
back to the next path. A record without `isa` (written before slidefuse recorded it) counts on every CPU.

The backends enforce it (`refusal`, from their `can_run` and constructor): a failed path is always refused, with
the figures; an unverified one runs with a logged WARNING, unless the backend option `unverified` says "refuse"
(what `auto`'s placements for accelerated paths set, so that `auto` only picks gated paths) or "allow" (the
gate itself, which runs the path before any record exists).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slidefuse.runtime.backends.base import Placement
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.cpuinfo import this_cpu

log = logging.getLogger(__name__)

GateState = Literal["passed", "failed", "unverified", "none"]
Unverified = Literal["warn", "refuse", "allow"]  # the `unverified` backend option


@dataclass(frozen=True)
class CpuPath:
    """One backend at one precision on the CPU, as `auto` may pick it."""

    backend: str  # registry name
    precision: str  # the backend's `precision` option
    priority: int  # `auto` tries higher priorities first
    gate: str | None  # key of its gate record in the manifest's `parity`; None = no gate (fp32)

    @property
    def name(self) -> str:
        """How messages and the manifest name the path, e.g. "ov-cpu int8"."""
        return f"{self.backend} {self.precision}"


# The order in which `auto` tries the CPU paths (higher first): the one place to change it. Accelerated paths
# first, each only where its gate passed for the bundle; OpenVINO above onnxruntime at equal precision (faster on
# the project's ViT + conv decoder graphs on AVX-512 CPUs); fp32 last. Every GPU placement (torch 80, ort-cuda 70,
# ort-trt 90, trt 100) stays above all of these; torch on the CPU (10) below. The order is the one measured by the
# interleaved CPU benchmark (benchmarks/run_cpu.py, cpu-compare.json: phikon 512 px, batch 1, 2 AVX-512/VNNI/BF16
# cores: ov-cpu bf16 3.77x torch eager > ov-cpu int8 2.22x > ort-cpu int8 2.02x > ov-cpu fp32 1.95x > ort-cpu 1.85x).
CPU_PATHS: tuple[CpuPath, ...] = (
    CpuPath("ov-cpu", "bf16", 30, "ov-cpu bf16"),
    CpuPath("ov-cpu", "int8", 28, "ov-cpu int8"),
    CpuPath("ort-cpu", "int8", 26, "int8"),
    CpuPath("ov-cpu", "fp32", 22, None),
    CpuPath("ort-cpu", "fp32", 20, None),
)
GATED: tuple[CpuPath, ...] = tuple(p for p in CPU_PATHS if p.gate is not None)


def placements(backend: str) -> tuple[Placement, ...]:
    """`auto`'s placements of `backend`, from `CPU_PATHS`. Every one sets `unverified="refuse"`, so that `auto`
    never runs an accelerated path without a passed gate, even when the caller names a precision. A gated one
    fixes its precision (a caller asking for another one is skipped there) and is labelled "<precision>, gated" in
    auto's logs; the fp32 one keeps the backend's plain name and lets a caller's precision through (e.g. fp16)."""
    out = []
    for p in CPU_PATHS:
        if p.backend != backend:
            continue
        if p.gate is None:
            out.append(Placement("cpu", p.priority, {"unverified": "refuse"}))
        else:
            out.append(Placement("cpu", p.priority, {"precision": p.precision, "unverified": "refuse"},
                                 fixed=("precision",), label=f"{p.precision}, gated"))
    return tuple(out)


def find_path(backend: str, precision: str) -> CpuPath | None:
    """The gated path of `backend` at `precision`, or None when that pair has no gate."""
    return next((p for p in GATED if (p.backend, p.precision) == (backend, precision)), None)


@dataclass(frozen=True)
class Gate:
    """A path's gate for one bundle on this CPU, read from its manifest."""

    path: str  # e.g. "ov-cpu int8"
    key: str | None  # the manifest parity key; None = no gate for this path
    state: GateState
    record: Mapping[str, Any] = field(default_factory=dict)  # the record that applies here ({} when none does)
    note: str = ""  # why a record in the manifest does not apply here (measured on another ISA class), or ""

    def figures(self) -> str:
        """The failed figures in words, e.g. "agreement 0.9944 < 0.995 on 8 gate tiles"."""
        return failed_figures(self.record)

    def summary(self) -> dict[str, Any]:
        """What report.json records of the gate a backend relied on: the path, its state, where and on which CPU
        it was measured, the metric, its threshold and value."""
        rec, th = self.record, self.record.get("thresholds") or {}
        return {"path": self.path, "key": self.key, "state": self.state, "isa": rec.get("isa"),
                "cpu_model": rec.get("cpu_model"), "this_isa": this_cpu().isa,
                "metric": "argmax_agreement", "threshold": th.get("min_argmax_agreement"),
                "value": rec.get("argmax_agreement"), "max_abs_diff": rec.get("max_abs_diff"),
                "max_abs_diff_limit": th.get("max_abs_diff"), "tiles": rec.get("tiles"),
                "tile_origin": rec.get("tile_origin"), "recorded_in": "manifest",
                **({"note": self.note} if self.note else {})}


def failed_figures(rec: Mapping[str, Any]) -> str:
    """What a parity record missed: "agreement A < MIN[, max |dp| D > LIMIT] on N gate tiles" (the figures that
    failed; both when neither is recorded as failing, e.g. a record written by hand)."""
    th = rec.get("thresholds") or {}
    agree, min_agree = rec.get("argmax_agreement"), th.get("min_argmax_agreement")
    diff, max_diff = rec.get("max_abs_diff"), th.get("max_abs_diff")
    parts = []
    cos, min_cos = rec.get("min_cosine"), th.get("min_cosine")
    if isinstance(cos, float | int) and isinstance(min_cos, float | int) and cos < min_cos:  # embeddings
        parts.append(f"cosine {cos:.5f} < {min_cos:g}")
    if isinstance(agree, float | int) and isinstance(min_agree, float | int) and agree < min_agree:
        parts.append(f"agreement {agree:.4f} < {min_agree:g}")
    if isinstance(diff, float | int) and isinstance(max_diff, float | int) and diff > max_diff:
        parts.append(f"max |dp| {diff:.3g} > {max_diff:g}")
    if not parts:
        parts.append(f"agreement {agree}, max |dp| {diff} (limits {min_agree} / {max_diff})")
    return f"{', '.join(parts)} on {rec.get('tiles', '?')} gate tiles"


def other_class(rec: Mapping[str, Any]) -> str:
    """Why `rec` does not hold on this CPU (it names another ISA class), or "" when it does (same class, or no
    class recorded)."""
    isa = rec.get("isa")
    here = this_cpu()
    if not isinstance(isa, str) or isa == here.isa:
        return ""
    on = f" ({rec['cpu_model']})" if rec.get("cpu_model") else ""
    return f"gated on ISA class {isa}{on}, and this CPU is {here.isa} ({here.model or 'model unknown'})"


def gate_of(bundle: Bundle, backend: str, precision: str) -> Gate:
    """The gate state of `backend` at `precision` for `bundle` on this CPU (see the module docstring)."""
    path = find_path(backend, precision)
    if path is None or path.gate is None:
        return Gate(f"{backend} {precision}", None, "none")
    rec = bundle.manifest.parity.get(path.gate)
    rec = rec if isinstance(rec, Mapping) else {}
    note = other_class(rec)
    if note:
        return Gate(path.name, path.gate, "unverified", {}, note)
    passed = rec.get("passed")
    if passed is True:
        return Gate(path.name, path.gate, "passed", rec)
    if passed is False:
        return Gate(path.name, path.gate, "failed", rec)
    if path == find_path("ort-cpu", "int8") and bundle.manifest.int8_model_file and not rec:
        return Gate(path.name, path.gate, "passed", rec)  # the graph is only added after this gate passed
    return Gate(path.name, path.gate, "unverified", rec)


def relied_on(bundle: Bundle, backend: str, precision: str) -> dict[str, Any] | None:
    """The gate a CPU backend relies on to run `bundle` at `precision` here, as report.json records it: the
    path's own gate when it has one, else the bundle's fp32 parity (the path's own "ov-cpu fp32" record where the
    export wrote one); None when the manifest holds neither."""
    gate = gate_of(bundle, backend, precision)
    if gate.state != "none":
        return gate.summary()
    for key in (f"{backend} {precision}", "fp32"):
        rec = bundle.manifest.parity.get(key)
        if isinstance(rec, Mapping) and "argmax_agreement" in rec:
            note = other_class(rec)
            state: GateState = "passed" if rec.get("passed") is True else "failed" if rec.get("passed") is False \
                else "unverified"
            return Gate(f"{backend} {precision}", key, state, rec, note).summary()
    return None


def refusal(bundle: Bundle, backend: str, precision: str, unverified: Unverified) -> str | None:
    """Why `backend` must not run `bundle` at `precision` (one line), or None. A failed gate is always refused;
    an unverified path only with `unverified="refuse"`."""
    gate = gate_of(bundle, backend, precision)
    if gate.state == "failed":
        return (f"backend {backend}: precision {precision} failed its gate for bundle {bundle.path} "
                f"({gate.figures()}, measured by slidefuse quantize); use precision fp32")
    if gate.state == "unverified" and unverified == "refuse":
        why = gate.note or gate.record.get("reason")
        why = f" ({why})" if why else ""
        return (f"backend {backend}: precision {precision} is not verified for this bundle{why}: gate it with "
                "`slidefuse quantize` (or slidefuse.export.quantize.quantize_bundle), or use precision fp32")
    return None


def check(bundle: Bundle, backend: str, precision: str, unverified: Unverified, *, runnable: bool = True) -> None:
    """For a backend's constructor: UsageError with `refusal`'s reason, or a WARNING for an unverified path
    run on request (`unverified="warn"`) when it is `runnable` (a graph the bundle lacks is refused at load,
    with its own message, and needs no warning)."""
    from slidefuse.errors import UsageError

    reason = refusal(bundle, backend, precision, unverified)
    if reason is not None:
        raise UsageError(reason)
    gate = gate_of(bundle, backend, precision)
    if runnable and gate.state == "unverified" and unverified == "warn":
        why = gate.note or f"no passed '{gate.key}' gate in its manifest"
        log.warning("%s: precision %s is not verified for bundle %s (%s; run slidefuse quantize %s --slides ... "
                    "to gate it); running it as asked", backend, precision, bundle.path, why, bundle.path)


def int8_graph(bundle: Bundle, backend: str) -> Path:
    """The bundle's INT8 graph for a CPU backend at precision int8; UsageError when it has none."""
    from slidefuse.errors import UsageError

    if not bundle.manifest.int8_model_file:
        raise UsageError(f"backend {backend}: precision int8 needs model.int8.onnx, which bundle {bundle.path} lacks; "
                         "make it with `slidefuse quantize` (or slidefuse.export.quantize.quantize_bundle), or use "
                         "precision fp32")
    return Path(bundle.path) / bundle.manifest.int8_model_file


def can_run(bundle: Bundle, backend: str, precision: str, unverified: Unverified,
            graph_file: Callable[[Bundle, str], Path]) -> str | None:
    """A CPU backend's `can_run`: why it cannot run `bundle` at `precision` (its graph is missing, see
    `graph_file`, or the path's gate refuses it: `refusal`), or None."""
    from slidefuse.errors import BundleError, UsageError

    try:
        graph_file(bundle, precision)
    except (UsageError, BundleError) as exc:
        return str(exc)
    return refusal(bundle, backend, precision, unverified)
