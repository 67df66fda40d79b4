"""`slidefuse quantize` through click's CliRunner: the summary line, one-line errors and exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from slidefuse.cli import cli
from slidefuse.runtime.bundle import load_bundle


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_quantize_adds_the_graph_and_prints_one_summary(runner: CliRunner, bundle_dir: Path, tmp_path: Path,
                                                       cmu_slide: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    res = runner.invoke(cli, ["-q", "quantize", str(folder), "--slides", str(cmu_slide), "--calibration-tiles", "8",
                              "--gate-tiles", "4", "--method", "minmax", "--seed", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "argmax agreement" in lines[0] and "MB vs" in lines[0] and "fp32" in lines[0]
    m = load_bundle(folder).manifest
    assert m.export["int8"]["method"] == "minmax" and m.export["int8"]["seed"] == 3
    assert m.parity["int8"]["tiles"] == 4
    again = runner.invoke(cli, ["quantize", str(folder), "--slides", str(cmu_slide)])
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
    res = runner.invoke(cli, ["quantize", str(folder), "--slides", str(cmu_slide), "--calibration-tiles", "8",
                              "--gate-tiles", "4", "--min-agreement", "1.0", "--max-diff", "1e-9"])
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
