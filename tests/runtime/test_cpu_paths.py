"""The accelerated CPU paths and their gates (`slidefuse.runtime.backends.cpu_paths`): what `slidefuse quantize`
records for each path, how the backends treat a passed, failed or missing record, and what `auto` picks.

The model is the pure-ONNX colour classifier (tests/runtime/onnx_models.py), the slide CMU-1-Small-Region.svs.
The OpenVINO figures in the manifest are re-measured here with OpenVINO's and onnxruntime's own APIs on the gate
tiles the manifest records. A failing OpenVINO path is made by wrapping the real ov-cpu runner of the gate so
that it flips the class of one pixel row in every tile (1/64 of the pixels: agreement about 0.984 < 0.995).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")

from runtime.cpu_path_helpers import Skewed, skew
from slidefuse.errors import BackendUnavailable, BundleError, UsageError
from slidefuse.export.parity import ParityThresholds
from slidefuse.export.quantize import INT8_FILE, INT8_THRESHOLDS, QuantizeConfig, quantize_bundle
from slidefuse.export.quantize import gates as quantize_gates
from slidefuse.runtime.backends import cpu_paths, open_backend
from slidefuse.runtime.backends.auto import candidates, choose_backend
from slidefuse.runtime.backends.base import Placement
from slidefuse.runtime.backends.ort import OrtCpuBackend, OrtOptions
from slidefuse.runtime.backends.registry import available_backends
from slidefuse.runtime.bundle import Bundle, load_bundle, model_card, read_manifest, write_manifest
from slidefuse.runtime.cpuinfo import this_cpu

OV = available_backends()["ov-cpu"] is None
needs_ov = pytest.mark.skipif(not OV, reason="needs openvino: pip install 'slidefuse[openvino]'")
GATE_KEYS = ("int8", "ov-cpu int8", "ov-cpu bf16")


def _bf16_here() -> bool:
    from slidefuse.runtime.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()




def _quantized(src: Path, dest: Path, slide: Path, **kw: Any) -> Path:
    shutil.copytree(src, dest)
    kw.setdefault("op_types", ("Conv", "MatMul", "Gemm"))  # the colour test model has convolutions only
    kw.setdefault("thresholds", ParityThresholds(max_abs_diff=0.35, min_argmax_agreement=0.995))  # its paths: ~0.997
    quantize_bundle(QuantizeConfig(bundle=dest, slides=(slide,), calibration_tiles=16, gate_tiles=8, **kw))
    return dest


@pytest.fixture(scope="module")
def gated(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The colour bundle after `slidefuse quantize` (every path it could gate here)."""
    from conftest import CMU

    if not CMU.exists():
        pytest.skip(f"{CMU} is absent")
    return load_bundle(_quantized(bundle_dir, tmp_path_factory.mktemp("gated") / "b", CMU))


def _gate_tiles(slide: Path, sources: list[str], tile: int, mpp: float) -> np.ndarray:
    from slidefuse.runtime.slide import open_slide

    with open_slide(slide) as reader:
        view = reader.scaled(mpp)
        return np.stack([view.read(*(int(v) for v in s.split("=", 1)[1].split(",")), tile, tile) for s in sources])


# ------------------------------------------------------------------------------------------- the table
def test_one_priority_table_orders_auto_on_the_cpu() -> None:
    cpu = [(c.label, c.placement.priority) for c in candidates() if c.placement.device == "cpu"]
    assert cpu == [("ov-cpu (bf16, gated)", 30), ("ov-cpu (int8, gated)", 28), ("ort-cpu (int8, gated)", 26),
                   ("ov-cpu", 22), ("ort-cpu", 20), ("torch (cpu)", 10)]
    gpu = [c.placement.priority for c in candidates() if c.placement.device == "cuda"]
    assert min(gpu) > max(p for _, p in cpu)
    assert all(c.placement.options.get("unverified") == "refuse" for c in candidates() if "cpu" in c.name)
    with pytest.raises(ValueError, match="fixed keys"):
        Placement("cpu", 1, {"unverified": "refuse"}, fixed=("precision",))


# ------------------------------------------------------------------------------------------- quantize records
@needs_ov
def test_quantize_records_every_path_with_figures_the_runtimes_reproduce(gated: Bundle, cmu_slide: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    m = gated.manifest
    for key in GATE_KEYS:
        assert key in m.parity
    ref_rec = m.parity["int8"]
    assert ref_rec["passed"] is True
    assert ref_rec["thresholds"] == {"max_abs_diff": 0.35, "min_argmax_agreement": 0.995}  # as `_quantized` gave
    rec = m.parity["ov-cpu int8"]
    assert rec["passed"] is True and rec["backend"] == "ov-cpu" and rec["precision"] == "int8"
    assert rec["tile_sources"] == ref_rec["tile_sources"]  # the same gate tiles
    assert rec["thresholds"] == ref_rec["thresholds"] and rec["openvino"] == ov.__version__
    tiles = _gate_tiles(cmu_slide, rec["tile_sources"], m.tile_size, m.mpp)
    (ref,) = ort.InferenceSession(str(gated.path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"tiles": tiles})
    compiled = ov.Core().compile_model(str(gated.path / INT8_FILE), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(tiles)[compiled.output("probabilities")])
    assert float((ref.argmax(1) == got.argmax(1)).mean()) == pytest.approx(rec["argmax_agreement"], abs=2e-3)
    assert float(np.abs(ref - got).max()) == pytest.approx(rec["max_abs_diff"], abs=2e-2)
    bf16 = m.parity["ov-cpu bf16"]
    if _bf16_here():
        assert bf16["passed"] is True and bf16["candidate"] == "model.onnx (OpenVINO CPU, bf16)"
        assert 0 < bf16["max_abs_diff"] <= INT8_THRESHOLDS.max_abs_diff  # > 0: it really ran in bf16
    else:
        assert bf16["passed"] is None and "bf16 support" in bf16["reason"]
    card = model_card(gated)
    assert "parity     ov-cpu int8: model.int8.onnx (OpenVINO CPU, int8) vs model.onnx" in card
    assert card.count(": passed") >= 2


def test_without_openvino_the_ov_paths_are_recorded_as_not_gated(bundle_dir: Path, tmp_path: Path,
                                                                 cmu_slide: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    b = load_bundle(_quantized(bundle_dir, tmp_path / "b", cmu_slide))
    assert b.manifest.parity["int8"]["passed"] is True
    for key in ("ov-cpu int8", "ov-cpu bf16"):
        assert b.manifest.parity[key] == {"passed": None, "reason": "openvino is not installed: pip install "
                                                                   "'slidefuse[openvino]'", **this_cpu().record()}
        assert cpu_paths.gate_of(b, *key.split()).state == "unverified"
    assert "parity     ov-cpu int8: not measured (openvino is not installed" in model_card(b)


@needs_ov
def test_an_openvino_path_that_cannot_run_is_recorded_with_the_reason(bundle_dir: Path, tmp_path: Path,
                                                                     cmu_slide: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Skewed):
        def __enter__(self) -> Skewed:
            raise BundleError("model.int8.onnx: OpenVINO cannot compile the graph for the CPU (test)\nmore")

    real = quantize_gates._ov_runner
    monkeypatch.setattr(quantize_gates, "_ov_runner", lambda b, p: Broken(None) if p == "int8" else real(b, p))
    b = load_bundle(_quantized(bundle_dir, tmp_path / "b", cmu_slide))
    assert b.manifest.parity["ov-cpu int8"] == {
        "passed": None, "reason": "OpenVINO could not run it (model.int8.onnx: OpenVINO cannot compile the graph "
                                  "for the CPU (test) more)", **this_cpu().record()}  # one line
    assert cpu_paths.gate_of(b, "ov-cpu", "int8").state == "unverified"


# ------------------------------------------------------------------------------------------- failed paths
@needs_ov
def test_a_failed_openvino_path_is_recorded_refused_and_never_picked(bundle_dir: Path, tmp_path: Path,
                                                                     cmu_slide: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    skew(monkeypatch, "int8", "bf16")
    b = load_bundle(_quantized(bundle_dir, tmp_path / "b", cmu_slide))
    rec = b.manifest.parity["ov-cpu int8"]
    assert rec["passed"] is False and rec["argmax_agreement"] < 0.995
    assert b.manifest.int8_model_file == INT8_FILE and b.manifest.parity["int8"]["passed"] is True  # ort kept
    expected = (f"backend ov-cpu: precision int8 failed its gate for bundle {b.path} (agreement "
                f"{rec['argmax_agreement']:.4f} < 0.995")
    from slidefuse.runtime.backends.openvino import OvCpuBackend, OvOptions

    reason = OvCpuBackend.can_run(b, OvOptions(precision="int8"))
    assert reason is not None and reason.startswith(expected) and reason.endswith("use precision fp32")
    assert "on 8 gate tiles" in reason and "\n" not in reason
    with pytest.raises(UsageError) as err:
        open_backend("ov-cpu", b, precision="int8")
    assert str(err.value) == reason
    with pytest.raises(UsageError, match="failed its gate"):
        open_backend("ov-cpu", b, precision="int8", unverified="allow")  # a failure is refused whatever is asked
    choice = choose_backend(b)
    assert "failed its gate" in choice.skipped["ov-cpu (int8, gated)"]
    bf16 = choice.skipped["ov-cpu (bf16, gated)"]
    assert "failed its gate" in bf16 if _bf16_here() else "not verified" in bf16
    with choice.backend as be:  # the next passed path
        info = be.info()
    assert (info.backend, info.precision, info.graph) == ("ort-cpu", "int8", INT8_FILE)


@needs_ov
def test_auto_picks_the_highest_passed_path(gated: Bundle, bundle_dir: Path, tmp_path: Path, cmu_slide: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="slidefuse.runtime.backends.auto"):
        choice = choose_backend(gated)
    top = "ov-cpu (bf16, gated)" if _bf16_here() else "ov-cpu (int8, gated)"
    assert f"backend auto: picked {top}: priority {30 if _bf16_here() else 28} on the cpu" in caplog.text
    with choice.backend as be:
        info = be.info()
    assert (info.backend, info.precision) == ("ov-cpu", "bf16" if _bf16_here() else "int8")
    if not _bf16_here():
        return
    skew(monkeypatch, "bf16")  # bf16 fails its gate: int8 through OpenVINO is next
    b = load_bundle(_quantized(bundle_dir, tmp_path / "b", cmu_slide))
    choice = choose_backend(b)
    assert "failed its gate" in choice.skipped["ov-cpu (bf16, gated)"]
    with choice.backend as be:
        assert (be.info().backend, be.info().precision, be.info().graph) == ("ov-cpu", "int8", INT8_FILE)


def _with_parity(src: Bundle, folder: Path, **records: dict[str, Any]) -> Bundle:
    """A copy of `src` whose manifest's parity records are replaced (resealed with write_manifest)."""
    shutil.copytree(src.path, folder)
    m = read_manifest(folder)
    write_manifest(folder, dataclasses.replace(m, parity={**m.parity, **records}))
    return load_bundle(folder)


def test_ort_cpu_int8_with_a_failed_record_is_refused(gated: Bundle, tmp_path: Path) -> None:
    failed = {**gated.manifest.parity["int8"], "argmax_agreement": 0.99, "passed": False}
    b = _with_parity(gated, tmp_path / "b", int8=failed)
    reason = OrtCpuBackend.can_run(b, OrtOptions(precision="int8"))
    assert reason == (f"backend ort-cpu: precision int8 failed its gate for bundle {b.path} (agreement 0.9900 < "
                      "0.995 on 8 gate tiles, measured by slidefuse quantize); use precision fp32")
    with pytest.raises(UsageError, match="failed its gate"):
        OrtCpuBackend(b, precision="int8")
    assert OrtCpuBackend.can_run(b, OrtOptions()) is None  # fp32 still runs
    if not OV:
        return
    failed_ov = {**gated.manifest.parity["ov-cpu int8"], "passed": False}
    b = _with_parity(gated, tmp_path / "both", **{"int8": failed, "ov-cpu int8": failed_ov})
    with pytest.raises(BackendUnavailable) as err:  # a caller's leniency does not cover a failed gate either
        choose_backend(b, precision="int8", unverified="warn")
    for label in ("ov-cpu (int8, gated)", "ort-cpu (int8, gated)", "ov-cpu", "ort-cpu"):
        assert f"; {label}: backend {label.split()[0]}: precision int8 failed its gate" in str(err.value)


# ------------------------------------------------------------------------------------------- unverified paths
def test_unverified_paths_run_on_request_with_a_warning_and_auto_skips_them(bundle_dir: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    plain = load_bundle(bundle_dir)  # never quantised: no record of any accelerated path
    logger = "slidefuse.runtime.backends.cpu_paths"
    if OV and _bf16_here():
        with caplog.at_level(logging.WARNING, logger=logger):
            with open_backend("ov-cpu", plain, precision="bf16", threads=1) as be:
                out = be.run(np.full((1, 64, 64, 3), 180, np.uint8))
        assert out.shape == (1, 3, 64, 64) and be.info().precision == "bf16"
        warning = [r.getMessage() for r in caplog.records if r.name == logger]
        assert len(warning) == 1 and "ov-cpu: precision bf16 is not verified for bundle" in warning[0]
        assert f"slidefuse quantize {plain.path} --slides" in warning[0]
        reason = choose_backend(plain).skipped["ov-cpu (bf16, gated)"]
        assert reason == ("backend ov-cpu: precision bf16 is not verified for this bundle: gate it with "
                          "`slidefuse quantize` (or slidefuse.export.quantize.quantize_bundle), or use precision fp32")
    if OV:  # a caller who names an accelerated precision still gets only a gated path from auto, or none
        with pytest.raises(BackendUnavailable) as err:
            choose_backend(plain, precision="bf16")
        assert "ov-cpu (bf16, gated): backend ov-cpu: precision bf16 is not" in str(err.value)
        assert "ov-cpu: backend ov-cpu: precision bf16 is not" in str(err.value)
        assert "ov-cpu (int8, gated): precision bf16 was asked for; this way runs precision int8" in str(err.value)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=logger):
        OrtCpuBackend(plain)  # fp32 needs no gate: no warning
        with pytest.raises(UsageError, match="needs model.int8.onnx"):
            with OrtCpuBackend(plain, precision="int8"):  # no graph: its own error, no gate warning
                pass
    assert not [r for r in caplog.records if r.name == logger]


@needs_ov
def test_ungated_int8_graph_runs_on_request_only(bundle_dir: Path, tmp_path: Path, cmu_slide: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Quantised without OpenVINO, then run where OpenVINO is: ov-cpu int8 is unverified (not gated here)."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "openvino", None)
        b = load_bundle(_quantized(bundle_dir, tmp_path / "b", cmu_slide))
    choice = choose_backend(b)
    assert "not verified for this bundle (openvino is not installed" in choice.skipped["ov-cpu (int8, gated)"]
    assert choice.name == "ort-cpu" and choice.backend.options.precision == "int8"  # its own gate passed
    with caplog.at_level(logging.WARNING, logger="slidefuse.runtime.backends.cpu_paths"):
        open_backend("ov-cpu", b, precision="int8")
    assert "ov-cpu: precision int8 is not verified" in caplog.text
    choice = choose_backend(b, precision="int8")
    assert choice.name == "ort-cpu" and "not verified" in choice.skipped["ov-cpu (int8, gated)"]
    assert choice.skipped["ov-cpu (bf16, gated)"] == "precision int8 was asked for; this way runs precision bf16"
