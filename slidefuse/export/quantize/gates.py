"""The gates of `slidefuse quantize`, each on the same held-out gate tiles against the same fp32 outputs of
model.onnx on onnxruntime's CPU provider (`REFERENCE`):

- `int8_gate`: model.int8.onnx on onnxruntime's CPU provider (`parity.compare`, INT8 thresholds); a failure
  raises ParityError and nothing is written;
- `ov_gates`: the other accelerated CPU paths (`runtime.backends.cpu_paths`), when OpenVINO is installed: ov-cpu
  int8 (the same graph, run by OpenVINO, whose integer kernels round differently: measured 0.9944 agreement on the
  demo bundle where onnxruntime's had 0.9977) and ov-cpu bf16 (model.onnx with OpenVINO's bf16 hint, where the CPU
  has bf16). A failing one does not stop the command: it is recorded as failed (and then refused by the backend,
  and never picked by `auto`); one that cannot be run here is recorded as not gated, with the reason (`PathGate`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slidefuse.errors import ParityError, SlidefuseError, one_line
from slidefuse.export.parity import ParityReport, ParityThresholds, ParityTiles, Runner, compare, gate_backend
from slidefuse.export.quantize.config import INT8_FILE, QuantizeConfig
from slidefuse.runtime.backends.cpu_paths import GATED, CpuPath, failed_figures
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.cpuinfo import this_cpu

log = logging.getLogger(__name__)

REFERENCE = "model.onnx (onnxruntime CPU)"  # the fp32 reference runner's label in every gate
# the OpenVINO paths, gated here when OpenVINO is installed
OV_PATHS: tuple[CpuPath, ...] = tuple(p for p in GATED if p.backend == "ov-cpu")


@dataclass(frozen=True)
class PathGate:
    """The gate of one more accelerated CPU path (an OpenVINO one), as recorded in the manifest."""

    path: str  # e.g. "ov-cpu int8" (= its manifest parity key)
    state: Literal["passed", "failed", "not gated"]
    record: dict[str, Any]  # manifest parity[path]: pair figures + thresholds + passed, or passed None + reason

    def line(self) -> str:
        """One line for the user, e.g. "ov-cpu int8 refused: agreement 0.9944 < 0.995 on 8 gate tiles; ..."."""
        r = self.record
        if self.state == "passed" and "min_cosine" in r:  # an embedding bundle's gate
            return (f"{self.path} passed: smallest cosine {r['min_cosine']:.5f} on {r['tiles']} gate tiles (limit "
                    f"{r['thresholds'].get('min_cosine', 0.999):g}); auto may pick it")
        if self.state == "passed":
            th = r["thresholds"]
            return (f"{self.path} passed: argmax agreement {r['argmax_agreement']:.5f}, max |dp| "
                    f"{r['max_abs_diff']:.3g} on {r['tiles']} gate tiles (limits {th['min_argmax_agreement']:g} / "
                    f"{th['max_abs_diff']:g}); auto may pick it")
        if self.state == "failed":
            return f"{self.path} refused: {failed_figures(r)}; it will not be used"
        return f"{self.path} not gated: {r['reason']}; auto will not pick it"


def staged_bundles(bundle: Bundle, scratch: Path) -> tuple[Bundle, Bundle]:
    """The bundle as it will be: its manifest names the int8 graph and holds no gate record of an accelerated
    path (those are being measured again); over `scratch` (the new int8 graph) and over the bundle's own folder
    (model.onnx, which the bf16 path runs)."""
    parity = {k: v for k, v in bundle.manifest.parity.items() if k not in {p.gate for p in GATED}}
    manifest = dataclasses.replace(bundle.manifest, int8_model_file=INT8_FILE, parity=parity)
    return Bundle(scratch, manifest, "staged"), Bundle(bundle.path, manifest, "staged")


def int8_gate(staged: Bundle, reference: Runner, tiles: ParityTiles, config: QuantizeConfig,
              outputs: dict[str, np.ndarray], *, shown: Path, external: bool) -> ParityReport:
    """model.onnx vs the staged model.int8.onnx (`staged`, over the scratch folder) on the gate tiles;
    ParityError (naming the bundle as `shown`) when it fails. The reference's outputs stay in `outputs` for the
    other gates."""
    runners = {REFERENCE: reference,
               f"{INT8_FILE} (onnxruntime CPU)": gate_backend(staged, "int8", low_memory=external)}
    report = compare(runners, tiles, thresholds=config.thresholds, outputs=outputs)
    p = report.pairs[0]
    if not p.passed:
        th = p.thresholds
        figure = (f"smallest cosine {p.min_cosine:.5f} (min {th.cosine():g})" if p.min_cosine is not None else
                  f"argmax agreement {p.argmax_agreement:.5f} (min {th.min_argmax_agreement:g})")
        raise ParityError(
            f"{shown / INT8_FILE}: INT8 gate failed on {report.tiles} held-out tiles: {figure}, max |d| "
            f"{p.max_abs_diff:.3g} (limit "
            f"{th.max_abs_diff:g}); nothing was written: try more calibration_tiles=<tiles>, another method=<minmax, "
            "percentile or entropy>, or run the fp32 graph")
    return report


def _ov_runner(staged: Bundle, precision: str) -> Runner:
    """The ov-cpu backend over the staged bundle at `precision`, run before any record of its gate exists."""
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    return OvCpuBackend(staged, precision=precision, unverified="allow")


def ov_path_gate(staged: Bundle, path: CpuPath, reference: Runner, tiles: ParityTiles,
                 thresholds: ParityThresholds, outputs: dict[str, np.ndarray]) -> PathGate:
    """One OpenVINO path against the fp32 reference outputs (in `outputs`, under `REFERENCE`) on the same tiles;
    the record names this CPU (`cpuinfo.this_cpu`: ISA class, model) as every gate record does."""
    import openvino

    from slidefuse.runtime.backends.openvino import OvCpuBackend, OvOptions, cpu_capabilities

    cpu = this_cpu().record()
    why = OvCpuBackend.can_run(staged, OvOptions.parse("ov-cpu", {"precision": path.precision,
                                                                  "unverified": "allow"}))
    if why is not None:
        return PathGate(path.name, "not gated", {"passed": None, "reason": f"cannot run here ({why})", **cpu})
    graph = OvCpuBackend.graph_file(staged, path.precision).name
    label = f"{graph} (OpenVINO CPU, {path.precision})"
    try:
        report = compare({REFERENCE: reference, label: _ov_runner(staged, path.precision)}, tiles,
                         thresholds=thresholds, outputs=outputs)
    except (SlidefuseError, RuntimeError) as exc:  # OpenVINO could not compile or run it: recorded, not hidden
        return PathGate(path.name, "not gated", {"passed": None,
                                                 "reason": f"OpenVINO could not run it ({one_line(exc)})", **cpu})
    record = {**report.pair_record(), "backend": path.backend, "precision": path.precision,
              "openvino": openvino.__version__, "cpu": " ".join(cpu_capabilities()), **cpu}
    return PathGate(path.name, "passed" if record["passed"] else "failed", record)


def ov_gates(staged: tuple[Bundle, Bundle], reference: Runner, tiles: ParityTiles, config: QuantizeConfig,
              outputs: dict[str, np.ndarray]) -> tuple[PathGate, ...]:
    """The gates of `OV_PATHS`; each "not gated" (with the reason) when OpenVINO cannot run here. `staged`:
    the staged bundle over the scratch folder (the int8 path runs its new graph) and over the bundle's folder."""
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    unavailable = OvCpuBackend.availability()
    if unavailable is not None:
        return tuple(PathGate(p.name, "not gated", {"passed": None, "reason": unavailable, **this_cpu().record()})
                     for p in OV_PATHS)
    scratch, own = staged
    gates = tuple(ov_path_gate(scratch if p.precision == "int8" else own, p, reference, tiles, config.thresholds,
                               outputs) for p in OV_PATHS)
    for g in gates:
        log.debug("%s", g.line())
    return gates
