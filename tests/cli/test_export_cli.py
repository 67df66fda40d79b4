"""`slidefuse export` and `slidefuse info BUNDLE` through click's CliRunner: a tiny export, its model card, and
bundles that must be refused (a changed byte, a missing file, no manifest) with a one-line error."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli

pytest.importorskip("torch")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logging.getLogger("torch.__trace").disabled = True  # its DEBUG records slow pytest's log capture down
    out = tmp_path_factory.mktemp("cli") / "tiny.bundle"
    result = CliRunner().invoke(cli, [
        "-q", "export", "tiny", "--random-weights", "--classes", "background,tumour,stroma",
        "--colors", "#000000,#ff0000,0:0:255", "--mpp", "2", "--tile", "64", "--out", str(out),
        "--parity-tiles", "1:1",
    ])
    assert result.exit_code == 0, result.output
    assert "parity fp32: max |dp|" in result.output and "on 2 tiles (package-data+random)" in result.output
    return out


def test_parity_slides_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "-q", "export", "tiny", "--random-weights", "--classes", "background,tumour", "--mpp", "2",
        "--tile", "64", "--out", str(tmp_path / "b.bundle"), "--parity-slides", str(tmp_path / "nope.svs"),
    ])
    assert result.exit_code != 0 and "nope.svs" in result.output and "does not exist" in result.output
    assert not (tmp_path / "b.bundle").exists()


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("slidefuse: error: "), result.output
    return lines[0]


def test_info_prints_the_model_card(exported: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(exported)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "all 2 files match their sha256" in out and "encoder    tiny (patch 16)" in out
    assert "1: tumour" in out and "#ff0000" in out and "2: stroma" in out and "#0000ff" in out
    assert "64 px at 2 um/px, overlap 8 px" in out and "parity     fp32:" in out and "engines    none" in out


def test_changed_byte_in_model_onnx_is_refused(exported: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(exported, b)
    raw = bytearray((b / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(raw))
    line = _one_line_error(CliRunner().invoke(cli, ["info", str(b)]))
    assert "model.onnx: sha256" in line and "re-export" in line


def test_missing_file_is_refused(exported: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(exported, b)
    (b / "model.safetensors").unlink()
    assert "model.safetensors: missing from the bundle" in _one_line_error(CliRunner().invoke(cli, ["info", str(b)]))


def test_folder_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    line = _one_line_error(CliRunner().invoke(cli, ["export", "tiny", "--random-weights", "--classes", "a",
                                                    "--mpp", "1", "--out", str(tmp_path / "x")]))
    assert "at least two" in line
    from slidefuse.errors import BundleNotFound
    from slidefuse.runtime.bundle import load_bundle

    with pytest.raises(BundleNotFound, match="no manifest.json"):
        load_bundle(tmp_path)


def test_export_refuses_existing_bundle_without_force(exported: Path) -> None:
    line = _one_line_error(CliRunner().invoke(cli, [
        "export", "tiny", "--random-weights", "--classes", "background,tumour", "--mpp", "2", "--tile", "64",
        "--out", str(exported)]))
    assert "already exists" in line and "--force" in line


def test_export_without_weights_is_refused(tmp_path: Path) -> None:
    line = _one_line_error(CliRunner().invoke(cli, [
        "export", "tiny", "--classes", "background,tumour", "--mpp", "2", "--out", str(tmp_path / "b")]))
    assert "--random-weights" in line and not (tmp_path / "b").exists()


def test_color_transform_is_recorded_in_the_manifest(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "icc.bundle"
    res = runner.invoke(cli, ["export", "tiny", "--random-weights", "--classes", "background,tissue", "--mpp", "2",
                              "--tile", "64", "--out", str(out), "--color-transform", "icc-to-srgb",
                              "--parity-tiles", "1:1"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["color_transform"] == "icc-to-srgb"
    res = runner.invoke(cli, ["export", "tiny", "--random-weights", "--classes", "a,b", "--mpp", "2", "--tile", "64",
                              "--out", str(tmp_path / "x"), "--color-transform", "srgb"])
    assert res.exit_code == 2 and "icc-to-srgb" in res.output
