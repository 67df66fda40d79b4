"""Slide lists, pixel sizes, inputs and outputs: every bad list row fails alone with file:line, `--mpp` fills in
only slides without a pixel size (`--override-mpp` replaces), folder scans skip what slidefuse wrote and stray
`.dcm` files, a symlinked OUT/<slide> and an OUT inside a bundle are refused, a wrong input path creates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyvips
from click.testing import CliRunner

from slidefuse.cli import cli

from .conftest import one_error_line, segment, write_slide


def _no_mpp_slide(path: Path) -> Path:
    """A tiled TIFF that records no pixel size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.black(320, 240, bands=3).tiffsave(str(path), tile=True)
    return path


def _report(out: Path, name: str) -> dict:
    return json.loads((out / name / "report.json").read_text())


# --- pixel sizes -----------------------------------------------------------------------------------------------

def test_mpp_fills_in_only_slides_without_a_pixel_size(tmp_path: Path, bundle_dir: Path) -> None:
    folder = tmp_path / "mixed"
    write_slide(folder / "own.tif", mpp=0.346)
    _no_mpp_slide(folder / "bare.tif")
    out = tmp_path / "out"
    result = segment(folder, "--mpp", "0.5", "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert abs(_report(out, "own")["slide"]["mpp"] - 0.346) < 1e-6  # the file's own value, not --mpp
    assert (_report(out, "bare")["slide"]["mpp"], _report(out, "bare")["slide"]["mpp_source"]) == (0.5, "user")


def test_override_mpp_replaces_the_files_value_and_a_lists_mpp_wins(tmp_path: Path, bundle_dir: Path) -> None:
    folder = tmp_path / "slides"
    write_slide(folder / "a.tif", mpp=0.346)
    write_slide(folder / "b.tif", seed=1, mpp=0.346)
    (tmp_path / "l.csv").write_text("path,mpp\nslides/a.tif,0.25\nslides/b.tif,\n")
    out = tmp_path / "out"
    result = segment("--list", tmp_path / "l.csv", "--override-mpp", "0.5", "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert _report(out, "a")["slide"]["mpp"] == 0.25  # the list's own value wins
    assert _report(out, "b")["slide"]["mpp"] == 0.5
    again = segment("--list", tmp_path / "l.csv", "--model", bundle_dir, "--out", out)  # the skip key tells
    assert again.exit_code == 0 and abs(_report(out, "b")["slide"]["mpp"] - 0.346) < 1e-6, again.output


def test_no_pixel_size_error_suggests_the_list_csv(tmp_path: Path, bundle_dir: Path) -> None:
    bare = _no_mpp_slide(tmp_path / "bare.tif")
    line = one_error_line(segment(bare, "--model", bundle_dir, "--out", tmp_path / "out"), "bare.tif", "--mpp",
                          "--list", "path,mpp", code=1)
    assert "mpp=" not in line


def test_info_shows_a_slide_without_pixel_size_with_a_warning(tmp_path: Path) -> None:
    bare = _no_mpp_slide(tmp_path / "bare.tif")
    result = CliRunner().invoke(cli, ["info", str(bare)])
    assert result.exit_code == 0, result.output
    assert "320 x 240" in result.stdout and "pixel size unknown" in result.stdout
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "bare.tif" in warnings[0] and "--mpp" in warnings[0]
