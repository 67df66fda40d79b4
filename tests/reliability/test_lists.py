"""Slide lists, pixel sizes, inputs and outputs: every bad list row fails alone with file:line, `--mpp` fills in
only slides without a pixel size (`--override-mpp` replaces), folder scans skip what slidefuse wrote and stray
`.dcm` files, a symlinked OUT/<slide> and an OUT inside a bundle are refused, a wrong input path creates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pyvips
from click.testing import CliRunner, Result

from slidefuse.cli import cli
from slidefuse.errors import UsageError
from slidefuse.export.bundle_writer import check_target
from slidefuse.paths import PACKAGE_DATA

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


# --- slide lists -----------------------------------------------------------------------------------------------

def _run_list(tmp_path: Path, bundle_dir: Path, csv: bytes, *extra: str | Path) -> tuple[Result, dict, list[str]]:
    """Run `--list l.csv` (written as `csv`) beside the slides good.tif and other.tif; returns the result, the
    run.json entries by slide name and the error lines."""
    write_slide(tmp_path / "good.tif")
    write_slide(tmp_path / "other.tif", seed=1)
    (tmp_path / "l.csv").write_bytes(csv)
    out = tmp_path / "out"
    result = segment("--list", tmp_path / "l.csv", *extra, "--model", bundle_dir, "--out", out)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    entries = {Path(e["slide"]).name: e for e in json.loads((out / "run.json").read_text())["slides"]}
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    return result, entries, errors


@pytest.mark.parametrize(("bad_row", "says"), [
    (b'other.tif,0.5,"a\x00b"\n', "NUL byte"),
    (b'other.tif,0.5,"two\nlines"\n', "line break"),
    (b"other.tif,0.5,caf\xe9\n", "not UTF-8"),
    (b"other.tif,0.5,run.json\n", "reserved"),
    (b"other.tif,0.5,run.json.lock\n", "reserved"),
    (b"other.tif,0.5,.run\n", "reserved"),
    (b"other.tif,0.5,.hidden\n", "reserved"),
    (b"other.tif,0.5,x.lock\n", "reserved"),
    (b"other.tif,0.5," + b"n" * 300 + b"\n", "300 characters"),
    (b"other.tif,0.0001,\n", "plausible"),
    (b"other.tif,0.5,first\n", "already given to the slide on line 2"),
])
def test_a_bad_row_fails_alone_with_file_and_line(tmp_path: Path, bundle_dir: Path, bad_row: bytes,
                                                  says: str) -> None:
    result, entries, errors = _run_list(tmp_path, bundle_dir, b"path,mpp,out_name\ngood.tif,0.5,first\n" + bad_row)
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and "l.csv, line 3" in errors[0] and says in errors[0], errors
    assert entries["good.tif"]["status"] == "ok"  # never failed by another row's error
    assert (tmp_path / "out" / "first" / "report.json").is_file()
    failed = [e for name, e in entries.items() if name != "good.tif"]
    assert [e["status"] for e in failed] == ["failed"] and "line 3" in failed[0]["error"]
    assert not (tmp_path / "out" / "run.json").is_dir()


def test_a_file_that_is_not_utf8_fails_only_its_bad_rows(tmp_path: Path, bundle_dir: Path) -> None:
    result, entries, errors = _run_list(tmp_path, bundle_dir, b"good.tif\n\xff\xfe.tif\nother.tif\n")
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and "l.csv, line 2" in errors[0] and "not UTF-8" in errors[0]
    assert entries["good.tif"]["status"] == entries["other.tif"]["status"] == "ok"


def test_a_slide_on_the_command_line_and_in_the_list_is_defined_by_the_list(tmp_path: Path,
                                                                             bundle_dir: Path) -> None:
    bare = _no_mpp_slide(tmp_path / "bare.tif")
    result, entries, errors = _run_list(tmp_path, bundle_dir, b"path,mpp,out_name\nbare.tif,0.5,named\n", bare)
    assert result.exit_code == 0 and not errors, result.output
    assert list(entries) == ["bare.tif"] and entries["bare.tif"]["out_dir"] == str(tmp_path / "out" / "named")
    assert _report(tmp_path / "out", "named")["slide"]["mpp"] == 0.5
    assert not (tmp_path / "out" / "bare").exists()


def test_a_wrong_input_path_creates_nothing(tmp_path: Path, bundle_dir: Path) -> None:
    out = tmp_path / "out"
    one_error_line(segment(tmp_path / "typo.svs", "--model", bundle_dir, "--out", out), "typo.svs", code=1)
    assert not out.exists()


# --- inputs and outputs ----------------------------------------------------------------------------------------

def test_a_stray_dcm_file_is_an_ordinary_unrecognised_file(tmp_path: Path, bundle_dir: Path) -> None:
    folder = tmp_path / "slides"
    write_slide(folder / "a.tif")
    write_slide(folder / "b.tif", seed=1)
    (folder / "readme.dcm").write_text("not DICOM, just notes\n")
    out = tmp_path / "out"
    result = segment(folder, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "a" / "report.json").is_file() and (out / "b" / "report.json").is_file()
    assert "readme.dcm" in result.stderr and "not recognised as slides" in result.stderr


def test_folder_scans_skip_what_slidefuse_wrote(tmp_path: Path, bundle_dir: Path) -> None:
    folder = tmp_path / "slides"
    write_slide(folder / "a.tif")
    first = segment(folder, "--model", bundle_dir, "--out", folder / "results")  # OUT inside the input folder
    assert first.exit_code == 0, first.output
    copied = folder / "copied"  # one slide's outputs copied elsewhere, without run.json: its report tells
    copied.mkdir()
    for name in ("mask.tif", "report.json"):
        (copied / name).write_bytes((folder / "results" / "a" / name).read_bytes())
    out = tmp_path / "out"
    result = segment(folder, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "run.json").read_text())["slides"]
    assert [Path(e["slide"]).name for e in entries] == ["a.tif"], entries


def test_a_symlinked_slide_folder_under_out_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slides" / "small.tif")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "small").symlink_to(elsewhere)
    one_error_line(segment(slide, "--model", bundle_dir, "--out", tmp_path / "out"), "symbolic link", code=1)
    assert list(elsewhere.iterdir()) == []


def test_triton_and_quantize_refuse_an_out_inside_a_bundle(tmp_path: Path, bundle_dir: Path) -> None:
    runner = CliRunner()
    slide = write_slide(tmp_path / "s.tif")
    for args in (["triton", bundle_dir, "--out", bundle_dir / "repo"],
                 ["quantize", bundle_dir, "--slides", slide, "--out", bundle_dir / "int8"],
                 ["quantize", bundle_dir, "--slides", slide, "--out", PACKAGE_DATA / "int8"]):
        result = runner.invoke(cli, [str(a) for a in args])
        line = one_error_line(result, "--out", code=2)
        assert "inside the model bundle" in line or "own data folder" in line, line
    assert not (bundle_dir / "repo").exists() and not (bundle_dir / "int8").exists()
    assert not (PACKAGE_DATA / "int8").exists()


def test_export_refuses_an_out_inside_a_bundle(bundle_dir: Path) -> None:
    with pytest.raises(UsageError, match="inside the model bundle"):
        check_target(bundle_dir / "nested", force=True)
    check_target(bundle_dir.parent / "fresh", force=False)  # elsewhere: fine


def test_a_row_the_csv_reader_cannot_read_is_one_bad_row(tmp_path: Path) -> None:
    from slidefuse.runtime.segment.inputs import read_slide_rows

    (tmp_path / "l.csv").write_bytes(b'\xef\xbb\xbfpath,mpp\n"' + b"x" * 200_000 + b'"\nb.svs,0.5\n')
    entries, bad = read_slide_rows(tmp_path / "l.csv")  # a byte-order mark is not part of the header
    assert [e.path.name for e in entries] == ["b.svs"]
    assert len(bad) == 1 and "l.csv, line 2: cannot be read as CSV" in bad[0].error
