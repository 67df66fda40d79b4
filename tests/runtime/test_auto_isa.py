"""`auto` per ISA class: a gate record counts only on a CPU of the class that measured it (`cpu_paths.other_class`),
`auto` falls back to the next path (and says why) on another class, never runs bf16 where the CPU lacks it, and
report.json's backend record names the gate the run relied on.

The bundle is the pure-ONNX colour classifier (tests/runtime/onnx_models.py); its gate records are real ones,
measured here by the export's own gate step (`export.cpu_gates`) on the shipped parity tiles. Another CPU is
simulated by replacing `cpu_paths.this_cpu` (the one reader of /proc/cpuinfo the gates use).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")

from slidefuse.runtime.backends import cpu_paths, open_backend
from slidefuse.runtime.backends.auto import choose_backend
from slidefuse.runtime.backends.registry import available_backends
from slidefuse.runtime.bundle import Bundle, load_bundle, read_manifest, write_manifest
from slidefuse.runtime.cpuinfo import CpuInfo, this_cpu

OV = available_backends()["ov-cpu"] is None
needs_ov = pytest.mark.skipif(not OV, reason="needs openvino: pip install 'slidefuse[openvino]'")
OTHER = "amx" if this_cpu().isa != "amx" else "avx2"  # a class this CPU is not


def _bf16_here() -> bool:
    from slidefuse.runtime.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()


def _gated_here(src: Path, dest: Path) -> Bundle:
    """A copy of the colour bundle with the export's CPU gates measured on this CPU and sealed into its manifest."""
    from slidefuse.export.cpu_gates import export_cpu_gates
    from slidefuse.export.parity import FP32_THRESHOLDS, compare, gate_backend, parity_tiles
    from slidefuse.export.quantize.gates import REFERENCE

    shutil.copytree(src, dest)
    b = load_bundle(dest)
    tiles = parity_tiles(b.manifest.tile_size, b.manifest.mpp, n_real=4)
    outputs: dict[str, np.ndarray] = {}
    reference = gate_backend(b)
    compare({REFERENCE: reference}, tiles, outputs=outputs)
    records = export_cpu_gates(b, reference, tiles, FP32_THRESHOLDS, outputs)
    m = read_manifest(dest)
    write_manifest(dest, dataclasses.replace(m, parity={**m.parity, **records}))
    return load_bundle(dest)


@pytest.fixture(scope="module")
def gated_here(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    if not OV:
        pytest.skip("needs openvino")
    return _gated_here(bundle_dir, tmp_path_factory.mktemp("isa") / "b")


def _another_cpu(monkeypatch: pytest.MonkeyPatch, isa: str = OTHER) -> CpuInfo:
    fake = CpuInfo("Imagined CPU 9000", isa, (), "test")  # type: ignore[arg-type]
    monkeypatch.setattr(cpu_paths, "this_cpu", lambda: fake)
    return fake


def _with_parity(src: Bundle, folder: Path, **records: Any) -> Bundle:
    shutil.copytree(src.path, folder)
    m = read_manifest(folder)
    write_manifest(folder, dataclasses.replace(m, parity={**m.parity, **records}))
    return load_bundle(folder)


@needs_ov
def test_export_gates_name_this_cpu_and_auto_takes_the_fastest_one(gated_here: Bundle,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    here = this_cpu()
    p = gated_here.manifest.parity
    for key in ("ov-cpu fp32", "ov-cpu bf16"):
        assert (p[key]["isa"], p[key]["cpu_model"]) == (here.isa, here.model)
    assert p["ov-cpu fp32"]["passed"] is True and p["ov-cpu fp32"]["max_abs_diff"] < 1e-4
    if not _bf16_here():
        assert p["ov-cpu bf16"]["passed"] is None and "bf16" in p["ov-cpu bf16"]["reason"]
    with caplog.at_level(logging.INFO, logger="slidefuse.runtime.backends.auto"):
        choice = choose_backend(gated_here)
    want = ("ov-cpu", "bf16") if _bf16_here() and p["ov-cpu bf16"]["passed"] else ("ov-cpu", "fp32")
    with choice.backend as be:
        out = be.run(np.full((2, 64, 64, 3), 200, np.uint8))
        info = be.info().to_dict()
    assert out.shape == (2, 3, 64, 64)
    assert (info["backend"], info["precision"]) == want
    gate = info["gate"]
    assert gate["isa"] == gate["this_isa"] == here.isa and gate["state"] == "passed"
    key = "ov-cpu bf16" if want[1] == "bf16" else "ov-cpu fp32"
    assert (gate["key"], gate["value"], gate["threshold"]) == (key, p[key]["argmax_agreement"],
                                                               p[key]["thresholds"]["min_argmax_agreement"])


def _bf16_passed(gated: Bundle, folder: Path) -> Bundle:
    """`gated` with its ov-cpu bf16 record marked passed (the colour classifier's bf16 misses the 0.998 gate on
    the shipped tiles, phikon's passes): a bundle whose bf16 path was gated on this CPU's class."""
    rec = gated.manifest.parity["ov-cpu bf16"]
    if rec.get("passed") is None:
        pytest.skip(f"ov-cpu bf16 was not gated here: {rec.get('reason')}")
    return _with_parity(gated, folder, **{"ov-cpu bf16": {**rec, "argmax_agreement": 0.999, "passed": True}})


@needs_ov
def test_on_another_isa_class_auto_falls_back_and_says_why(gated_here: Bundle, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    b = _bf16_passed(gated_here, tmp_path / "b")
    assert choose_backend(b).backend.precision == "bf16"  # on this CPU's class it is taken
    fake = _another_cpu(monkeypatch)
    assert cpu_paths.gate_of(b, "ov-cpu", "bf16").state == "unverified"
    with caplog.at_level(logging.INFO, logger="slidefuse.runtime.backends.auto"):
        choice = choose_backend(b)
    why = choice.skipped["ov-cpu (bf16, gated)"]
    here = this_cpu()
    assert f"gated on ISA class {here.isa} ({here.model}), and this CPU is {fake.isa} (Imagined CPU 9000)" in why
    assert "backend auto: picked ov-cpu: priority 22" in caplog.text
    assert f"backend auto: ov-cpu (bf16, gated) not used: {why}" in caplog.text
    with choice.backend as be:
        info = be.info().to_dict()
    assert (info["backend"], info["precision"]) == ("ov-cpu", "fp32")
    assert info["gate"]["key"] == "ov-cpu fp32" and info["gate"]["this_isa"] == fake.isa
    assert "gated on ISA class" in info["gate"]["note"]  # the fp32 figures too were measured on another class


@needs_ov
def test_explicit_bf16_on_another_class_runs_with_a_warning_naming_both(gated_here: Bundle, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    b = _bf16_passed(gated_here, tmp_path / "b")
    _another_cpu(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="slidefuse.runtime.backends.cpu_paths"):
        be = open_backend("ov-cpu", b, precision="bf16", threads=1)
    assert "precision bf16 is not verified" in caplog.text and f"this CPU is {OTHER}" in caplog.text
    assert be.precision == "bf16"


def test_records_without_a_class_count_everywhere_and_a_failure_elsewhere_is_not_one_here(
        bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = load_bundle(bundle_dir)
    rec = {"argmax_agreement": 0.999, "max_abs_diff": 0.01, "tiles": 4, "passed": True,
           "thresholds": {"max_abs_diff": 0.35, "min_argmax_agreement": 0.998}}
    legacy = _with_parity(plain, tmp_path / "legacy", **{"ov-cpu bf16": rec})
    _another_cpu(monkeypatch)
    assert cpu_paths.gate_of(legacy, "ov-cpu", "bf16").state == "passed"  # no `isa`: measured before it was kept
    failed_elsewhere = _with_parity(plain, tmp_path / "failed",
                                    **{"ov-cpu bf16": {**rec, "passed": False, "isa": this_cpu().isa}})
    gate = cpu_paths.gate_of(failed_elsewhere, "ov-cpu", "bf16")
    assert (gate.state, gate.record) == ("unverified", {}) and "gated on ISA class" in gate.note
    reason = cpu_paths.refusal(failed_elsewhere, "ov-cpu", "bf16", "refuse")
    assert reason is not None and gate.note in reason and "\n" not in reason


@needs_ov
def test_auto_never_runs_bf16_on_a_cpu_without_it(gated_here: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    from slidefuse.runtime.backends import openvino

    # a passed record of this very class, on a CPU whose OpenVINO reports no BF16
    rec = {"argmax_agreement": 1.0, "max_abs_diff": 0.001, "tiles": 4, "passed": True, **this_cpu().record(),
           "thresholds": {"max_abs_diff": 0.35, "min_argmax_agreement": 0.998}}
    b = _with_parity(gated_here, gated_here.path.parent / "nobf16", **{"ov-cpu bf16": rec})
    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: ("FP32", "INT8"))
    choice = choose_backend(b)
    assert "needs a CPU with bf16 support" in choice.skipped["ov-cpu (bf16, gated)"]
    assert choice.name == "ov-cpu" and choice.backend.precision == "fp32"
