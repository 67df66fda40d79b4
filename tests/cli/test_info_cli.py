"""`slidefuse info SLIDE` through click's CliRunner: the three real slides, a synthetic TIFF, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pyvips
from click.testing import CliRunner

from slidefuse.cli import cli


# tests/runtime/conftest.py's fixtures are not visible here: small local equivalents.
@pytest.fixture(scope="module")
def tiffs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 600x400 pyramidal JPEG TIFF at 0.5 um/px, the same without a pixel size, and broken files."""
    folder = tmp_path_factory.mktemp("info")
    rgb = np.full((400, 600, 3), 240, np.uint8)
    rgb[100:300, 150:450] = (200, 120, 170)
    image = pyvips.Image.new_from_array(rgb, interpretation="srgb")
    out = {"mpp": folder / "with_mpp.tif", "no_mpp": folder / "no_mpp.tif"}
    image.tiffsave(str(out["mpp"]), tile=True, pyramid=True, compression="jpeg", xres=2000.0, yres=2000.0)
    image.tiffsave(str(out["no_mpp"]), tile=True, pyramid=True, compression="jpeg")
    out["text_svs"] = folder / "notes.svs"
    out["text_svs"].write_text("not a slide\n")
    out["truncated"] = folder / "truncated.tif"
    out["truncated"].write_bytes(out["mpp"].read_bytes()[:2000])
    return out


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, ["info", *args])
    assert result.exit_code == 0, result.output
    return result.stdout  # logs (the colour conversions, at INFO) go to stderr


def _fails(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, ["info", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("slidefuse: error: "), result.output
    return lines[0]


def test_info_cmu(runner: CliRunner, cmu_slide: Path) -> None:
    out = _ok(runner, str(cmu_slide))
    assert "2220 x 2967" in out and "0.4990 um/px (from openslide)" in out
    assert "aperio" in out and "openslideload" in out and "20x" in out


def test_info_tcga_without_pixel_size_is_shown_with_a_warning(runner: CliRunner, tcga_slide: Path) -> None:
    result = runner.invoke(cli, ["info", str(tcga_slide)])
    assert result.exit_code == 0, result.output
    assert "pixel size unknown" in result.stdout and "4443 x 3567" in result.stdout
    warning = [ln for ln in result.stderr.splitlines() if "warning" in ln]
    assert len(warning) == 1 and tcga_slide.name in warning[0] and "--mpp" in warning[0] and "--list" in warning[0]
    out = _ok(runner, str(tcga_slide), "--mpp", "0.5")
    assert "4443 x 3567" in out and "(from user)" in out and "levels     2" in out and "2221 x 1783" in out


def test_info_ome_json(runner: CliRunner, ome_slide: Path) -> None:
    d = json.loads(_ok(runner, str(ome_slide), "--json"))
    assert (d["width"], d["height"], d["loader"], d["vendor"]) == (1445, 1445, "tiffload", "ome-tiff")
    assert d["mpp"] == pytest.approx(0.346, abs=0.005)


def test_info_synthetic_tiff(runner: CliRunner, tiffs: dict[str, Path]) -> None:
    d = json.loads(_ok(runner, str(tiffs["mpp"]), "--json"))
    assert (d["width"], d["height"], d["mpp"], d["mpp_source"]) == (600, 400, 0.5, "tiff")
    assert [lv["downsample"] for lv in d["levels"]][:3] == [1.0, 2.0, 4.0]


def test_info_missing_path(runner: CliRunner, tmp_path: Path) -> None:
    line = _fails(runner, str(tmp_path / "missing.svs"))
    assert "missing.svs" in line


@pytest.mark.parametrize("kind", ["text_svs", "truncated"])
def test_info_corrupt(runner: CliRunner, tiffs: dict[str, Path], kind: str) -> None:
    line = _fails(runner, str(tiffs[kind]))
    assert tiffs[kind].name in line


def test_info_truncated_real_slide(runner: CliRunner, cmu_slide: Path, tmp_path: Path) -> None:
    bad = tmp_path / "CMU-truncated.svs"
    bad.write_bytes(cmu_slide.read_bytes()[:500_000])
    line = _fails(runner, str(bad))
    assert bad.name in line


def test_info_no_mpp_tiff(runner: CliRunner, tiffs: dict[str, Path]) -> None:
    d = json.loads(_ok(runner, str(tiffs["no_mpp"]), "--json"))
    assert (d["mpp"], d["mpp_source"]) == (None, "none")
    assert "(from user)" in _ok(runner, str(tiffs["no_mpp"]), "--mpp", "0.25")
