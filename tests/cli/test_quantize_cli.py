"""`slidefuse quantize` through click's CliRunner: the summary line, one-line errors and exit codes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from slidefuse.cli import cli
from slidefuse.runtime.backends.registry import available_backends
from slidefuse.runtime.bundle import load_bundle

# the colour test model has convolutions only; its bf16 / int8 paths sit near 0.997: the gate's first limit
CONV = ["--op-types", "Conv,MatMul,Gemm", "--min-agreement", "0.995"]


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_quantize_adds_the_graph_and_prints_one_line_per_path(runner: CliRunner, bundle_dir: Path, tmp_path: Path,
                                                       cmu_slide: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    res = runner.invoke(cli, ["-q", "quantize", str(folder), *CONV, "--slides", str(cmu_slide),
                              "--calibration-tiles", "8", "--gate-tiles", "4", "--method", "minmax", "--seed", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert "argmax agreement" in lines[0] and "MB vs" in lines[0] and "fp32" in lines[0]
    assert [ln.split(" ")[:2] for ln in lines[1:]] == [["ov-cpu", "bf16"], ["ov-cpu", "int8"]]  # one line each
    m = load_bundle(folder).manifest
    assert m.export["int8"]["method"] == "minmax" and m.export["int8"]["seed"] == 3
    assert m.parity["int8"]["tiles"] == 4
    again = runner.invoke(cli, ["quantize", str(folder), *CONV, "--slides", str(cmu_slide)])
    assert again.exit_code == 2 and "--force" in _error_line(again.output)


def test_missing_slide_is_one_line(runner: CliRunner, bundle_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.svs"
    res = runner.invoke(cli, ["quantize", str(bundle_dir), "--slides", str(missing)])
    assert res.exit_code != 0
    assert str(missing) in _error_line(res.output)


def test_failed_gate_exits_non_zero_and_writes_nothing(runner: CliRunner, bundle_dir: Path, tmp_path: Path,
                                                       cmu_slide: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    before = (folder / "manifest.json").read_bytes()
    res = runner.invoke(cli, ["quantize", str(folder), *CONV, "--slides", str(cmu_slide),
                              "--calibration-tiles", "8", "--gate-tiles", "4", "--min-agreement", "1.0",
                              "--max-diff", "1e-9"])
    assert res.exit_code == 1
    assert "INT8 gate failed" in _error_line(res.output)
    assert (folder / "manifest.json").read_bytes() == before and not (folder / "model.int8.onnx").exists()


def test_bad_thresholds_and_demo_bundle(runner: CliRunner, tmp_path: Path, cmu_slide: Path) -> None:
    from slidefuse.export.parity import PACKAGE_TILES

    demo = PACKAGE_TILES.parent / "default"
    res = runner.invoke(cli, ["quantize", str(demo), "--slides", str(cmu_slide), "--max-diff", "0"])
    assert res.exit_code == 2 and "--max-diff 0" in _error_line(res.output)
    res = runner.invoke(cli, ["quantize", str(demo), "--slides", str(cmu_slide)])
    assert res.exit_code == 2 and "--out NEW_FOLDER" in _error_line(res.output)
    res = runner.invoke(cli, ["quantize", str(demo), "--slides", str(cmu_slide), "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--calibration-tiles" in _error_line(res.output)  # 21 tiles on this slide
    assert not list(tmp_path.iterdir())  # neither the copy nor its staging folder


def test_without_openvino_the_ov_paths_are_reported_not_gated(runner: CliRunner, bundle_dir: Path, tmp_path: Path,
                                                             cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    res = runner.invoke(cli, ["-q", "quantize", str(folder), *CONV, "--slides", str(cmu_slide),
                              "--calibration-tiles", "8", "--gate-tiles", "4"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[1:] == [
        f"ov-cpu {p} not gated: openvino is not installed: pip install 'slidefuse[openvino]'; auto will not pick it"
        for p in ("bf16", "int8")]


@pytest.mark.skipif(available_backends()["ov-cpu"] is not None, reason="needs openvino")
def test_a_failing_openvino_path_is_one_line_and_not_an_error(runner: CliRunner, bundle_dir: Path, tmp_path: Path,
                                                              cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate's ov-cpu int8 runner is wrapped so that it moves one pixel row of every tile to another class."""
    from runtime.cpu_path_helpers import skew

    skew(monkeypatch, "int8")
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    res = runner.invoke(cli, ["-q", "quantize", str(folder), *CONV, "--slides", str(cmu_slide),
                              "--calibration-tiles", "8", "--gate-tiles", "4"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("ov-cpu int8"))
    rec = load_bundle(folder).manifest.parity["ov-cpu int8"]
    assert rec["passed"] is False
    assert rec["argmax_agreement"] < 0.995 and rec["max_abs_diff"] > 0.35
    assert line == (f"ov-cpu int8 refused: agreement {rec['argmax_agreement']:.4f} < 0.995, max |dp| "
                    f"{rec['max_abs_diff']:.3g} > 0.35 on 4 gate tiles; it will not be used")
    assert load_bundle(folder).manifest.parity["int8"]["passed"] is True  # the int8 graph itself was kept
