"""The CPU gates of `slidefuse export`: every CPU path this machine can run, measured on the export's parity tiles
against the fp32 graph on onnxruntime's CPU provider, recorded (with this CPU's ISA class and model) in the new
bundle's manifest, so that `auto` can take the fastest gated path of a freshly exported bundle.

| manifest parity key | path         | against                   | thresholds                      |
|---------------------|--------------|---------------------------|---------------------------------|
| "fp32"              | ort-cpu fp32 | torch fp32 (the export's gate, unchanged; the ISA class added) | `--parity-*` |
| "ov-cpu fp32"       | ov-cpu fp32  | model.onnx on onnxruntime | the fp32 ones (`--parity-*`)    |
| "ov-cpu bf16"       | ov-cpu bf16  | model.onnx on onnxruntime | `INT8_THRESHOLDS` (as quantize) |

int8 has no graph at export (`slidefuse quantize` calibrates and gates it on the user's slides). bf16 is gated
where the CPU has it and recorded as not gated (`passed: null`, with the reason) elsewhere, or when OpenVINO is
not installed. A failing path does not stop the export: it is recorded as failed, and neither `auto` nor an
explicit `--backend ov-cpu --option precision=bf16` will run it on a CPU of the same ISA class. The records are in
the manifest before it is sealed (and signed), so a signature covers them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from slidefuse.export.parity import ParityThresholds, ParityTiles, Runner
from slidefuse.export.quantize.config import INT8_THRESHOLDS
from slidefuse.export.quantize.gates import PathGate, ov_path_gate
from slidefuse.runtime.backends.cpu_paths import CPU_PATHS
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.cpuinfo import this_cpu

log = logging.getLogger(__name__)

# the OpenVINO paths of the one table (cpu_paths.CPU_PATHS) that need no INT8 graph
OV_FP32, OV_BF16 = (next(p for p in CPU_PATHS if (p.backend, p.precision) == ("ov-cpu", precision))
                    for precision in ("fp32", "bf16"))


def export_cpu_gates(staged: Bundle, reference: Runner, tiles: ParityTiles, fp32: ParityThresholds,
                     outputs: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The records of the OpenVINO paths (manifest parity key -> record) for the export's staged bundle. The
    reference (model.onnx on onnxruntime, `gates.REFERENCE`) has run already: its outputs are in `outputs`."""
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    t0 = time.perf_counter()
    unavailable = OvCpuBackend.availability()
    gates: list[PathGate]
    if unavailable is not None:
        cpu = this_cpu().record()
        gates = [PathGate(p.name, "not gated", {"passed": None, "reason": unavailable, **cpu})
                 for p in (OV_FP32, OV_BF16)]
    else:
        gates = [ov_path_gate(staged, OV_FP32, reference, tiles, fp32, outputs),
                 ov_path_gate(staged, OV_BF16, reference, tiles, INT8_THRESHOLDS, outputs)]
    for g in gates:
        log.info("export gate on this CPU (%s): %s", this_cpu().isa, g.line())
    log.info("CPU gates: %.1f s on %d tiles (skip them with --no-cpu-gates)", time.perf_counter() - t0,
             len(tiles.tiles))
    return {g.path: g.record for g in gates}
