"""`slidefuse bench parity` through click's CliRunner: the table, --json, --check, --parity-slides and
--random-tiles, and `--backend trt` on a machine without TensorRT (one line listing the available backends,
non-zero exit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from runtime.test_backends import tiny_bundle

from slidefuse.cli import cli
from slidefuse.runtime.backends import available_backends
from slidefuse.runtime.bundle import Bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.getbasetemp())


def test_parity_table_and_json(runner: CliRunner, bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path),
                              "--backends", "ort-cpu,torch",
                              "--tiles", "3", "--batch", "2", "--json", str(out), "--check"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["backend", "status", "precision"]
    assert any(line.startswith("torch ") and "reference" in line for line in lines)
    assert any(line.startswith("ort-cpu ") and " pass " in line for line in lines)
    rows = json.loads(out.read_text())
    assert [r["backend"] for r in rows] == ["torch", "ort-cpu"]
    ort = rows[1]
    assert {"backend", "max_abs_diff", "argmax_agreement", "run_s", "tiles_per_s"} <= set(ort)
    assert ort["max_abs_diff"] <= 1e-3 and ort["argmax_agreement"] >= 0.999 and ort["tiles"] == 3
    assert ort["tile_origin"] == "package-data" and "tiles: 3 (package-data)" in lines


def test_parity_slides_and_random_tiles(runner: CliRunner, bundle: Bundle, tmp_path: Path) -> None:
    from runtime.conftest import synthetic_rgb, write_pyramid_tiff

    slide = write_pyramid_tiff(synthetic_rgb(1024, 768), tmp_path / "synth.tif", 0.5)
    out = tmp_path / "parity.json"
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path), "--backends", "ort-cpu",
                              "--parity-slides", str(slide), "--tiles", "2", "--random-tiles", "1",
                              "--json", str(out), "--check"])
    assert res.exit_code == 0, res.output
    assert "tiles: 3 (slides+random)" in res.stdout
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["status"], r["tiles"], r["tile_origin"]) for r in rows] == [
        ("torch", "reference", 3, "slides+random"), ("ort-cpu", "pass", 3, "slides+random")]
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path), "--parity-slides",
                              str(tmp_path / "nope.svs")])
    assert res.exit_code != 0 and "nope.svs" in res.stderr and "does not exist" in res.stderr
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path), "--tiles", "5"])
    assert res.exit_code != 0 and "the package ships 4" in res.stderr and "Traceback" not in res.output


def test_check_fails_on_an_error_row(runner: CliRunner, bundle: Bundle) -> None:
    """--precision fp16 with --check: torch refuses fp16 on the CPU, so the run ends with status 1."""
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path),
                              "--backends", "ort-cpu,torch",
                              "--tiles", "2", "--precision", "fp16", "--check"])
    assert res.exit_code == 1, res.output
    assert "parity failed for torch" in res.stderr and "fp16 on the CPU" in res.stdout


def test_backend_trt_without_tensorrt(runner: CliRunner, bundle: Bundle) -> None:
    if available_backends()["trt"] is None:
        pytest.skip("TensorRT is installed here")
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path), "--backend", "trt"])
    assert res.exit_code != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.output
    assert err[0].startswith("slidefuse: error: backend 'trt' is not available here")
    assert "slidefuse[trt]" in err[0] and "available backends: ort-cpu" in err[0]


def test_unknown_backend_and_missing_bundle(runner: CliRunner, bundle: Bundle, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(bundle.path), "--backends", "onnx-gpu"])
    assert res.exit_code != 0 and "valid backends: ort-cpu" in res.stderr
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(tmp_path / "nope.bundle")])
    assert res.exit_code != 0 and "no such model bundle" in res.stderr
