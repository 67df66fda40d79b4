"""The CPU gates of `slidefuse export` (`export/cpu_gates.py`): every CPU path this machine can run is measured on
the export's parity tiles and recorded, with this CPU's ISA class, in the sealed manifest; `--no-cpu-gates` leaves
them out; without OpenVINO they are recorded as not gated, with the reason. The figures are re-measured here with
OpenVINO's and onnxruntime's own APIs on the same tiles."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.runtime.backends.registry import available_backends
from slidefuse.runtime.bundle import load_bundle
from slidefuse.runtime.cpuinfo import this_cpu

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
OV = available_backends()["ov-cpu"] is None
HINT = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO's INFERENCE_PRECISION_HINT


def _export(out: Path, *extra: str) -> str:
    logging.getLogger("torch.__trace").disabled = True
    result = CliRunner().invoke(cli, [
        "-q", "export", "tiny", "--random-weights", "--classes", "background,tumour,stroma", "--mpp", "2",
        "--tile", "64", "--out", str(out), "--parity-tiles", "2:1", *extra,
    ])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.skipif(not OV, reason="needs openvino: pip install 'slidefuse[openvino]'")
def test_export_gates_every_cpu_path_with_this_cpus_class(tmp_path: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    from slidefuse.export.parity import parity_tiles
    from slidefuse.runtime.backends.openvino import cpu_capabilities

    output = _export(tmp_path / "b")
    b = load_bundle(tmp_path / "b")  # sealed and verified: the records are inside the hashed manifest
    p, here = b.manifest.parity, this_cpu()
    assert set(p) == {"fp32", "ov-cpu fp32", "ov-cpu bf16"}
    for key in p:
        assert (p[key]["isa"], p[key]["cpu_model"]) == (here.isa, here.model)
    assert f"parity ov-cpu fp32: max |dp| {p['ov-cpu fp32']['max_abs_diff']:.3g}" in output
    assert f"passed on ISA class {here.isa}" in output
    fp32 = p["ov-cpu fp32"]
    assert fp32["passed"] is True and fp32["tiles"] == 3 and fp32["reference"] == "model.onnx (onnxruntime CPU)"
    # the same tiles through both runtimes' own APIs
    tiles = parity_tiles(64, 2.0, n_real=2, n_random=1, seed=0)
    assert list(tiles.sources) == fp32["tile_sources"]
    ref = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"]).run(
        None, {"tiles": tiles.tiles})[0]
    core = ov.Core()
    for precision in ("fp32", "bf16") if "BF16" in cpu_capabilities() else ("fp32",):
        compiled = core.compile_model(str(b.model_path), "CPU", {"INFERENCE_PRECISION_HINT": HINT[precision]})
        got = np.concatenate([compiled([t[None]])[compiled.output(0)] for t in tiles.tiles])
        rec = p[f"ov-cpu {precision}"]
        assert float((got.argmax(1) == ref.argmax(1)).mean()) == pytest.approx(rec["argmax_agreement"], abs=2e-3)
        assert float(np.abs(got - ref).max()) == pytest.approx(rec["max_abs_diff"], rel=0.5, abs=1e-6)
    if "BF16" not in cpu_capabilities():
        assert p["ov-cpu bf16"]["passed"] is None and "bf16 support" in p["ov-cpu bf16"]["reason"]


def test_no_cpu_gates_and_no_openvino(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _export(tmp_path / "plain", "--no-cpu-gates")
    p = load_bundle(tmp_path / "plain").manifest.parity
    assert set(p) == {"fp32"} and p["fp32"]["isa"] == this_cpu().isa
    from slidefuse.runtime.backends.openvino import OvCpuBackend

    monkeypatch.setattr(OvCpuBackend, "availability",
                        classmethod(lambda cls: "openvino is not installed: pip install 'slidefuse[openvino]'"))
    output = _export(tmp_path / "noov")
    p = load_bundle(tmp_path / "noov").manifest.parity
    for key in ("ov-cpu fp32", "ov-cpu bf16"):
        assert p[key]["passed"] is None and p[key]["reason"].startswith("openvino is not installed")
        assert p[key]["isa"] == this_cpu().isa
    assert "parity ov-cpu bf16: not gated on ISA class" in output
