"""`slidefuse segment` through click's CliRunner: real slides, bad inputs (one line, non-zero exit, no
traceback), partial failures, --quiet, the progress display."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import pyvips
from click.testing import CliRunner, Result
from runtime.onnx_models import make_bundle

from slidefuse.cli import cli
from slidefuse.runtime.progress import BarRenderer, LogRenderer, ProgressEvent, make_progress

FAST = ["--threads", "1", "--workers", "2"]



@pytest.fixture(scope="module")
def small_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600 x 400 pyramidal JPEG TIFF at 0.5 um/px: pink and purple blobs on white glass."""
    h, w = 400, 600
    img = np.full((h, w, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - 200) ** 2 + (yy - 200) ** 2 < 120**2] = (220, 130, 180)
    img[(xx - 430) ** 2 + (yy - 220) ** 2 < 90**2] = (110, 70, 150)
    path = tmp_path_factory.mktemp("slides") / "small.tif"
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=128, tile_height=128, pyramid=True, compression="jpeg",
        xres=1000 / 0.5, yres=1000 / 0.5, resunit="cm")
    return path


def _segment(runner: CliRunner, *args: str | Path, quiet: bool = False) -> Result:
    argv = (["--quiet"] if quiet else []) + ["segment", *FAST, *[str(a) for a in args]]  # later options win
    return runner.invoke(cli, argv)


def _error_lines(result: Result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]


def _assert_clean_failure(result: Result, *must_contain: str, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def test_segments_a_slide_and_writes_outputs(runner: CliRunner, bundle_dir: Path, small_tiff: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _segment(runner, small_tiff, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    folder = out / "small"
    for name in ("mask.tif", "mask.geojson", "report.json", "preview.png"):
        assert (folder / name).is_file(), name
    mask = pyvips.Image.new_from_file(str(folder / "mask.tif"))
    assert (mask.width, mask.height) == (150, 100)  # 600 x 400 at 0.5 um/px -> 2 um/px
    report = json.loads((folder / "report.json").read_text())
    assert report["tile_counts"]["run"] <= report["tile_counts"]["grid"]
    assert json.loads((out / "run.json").read_text())["counts"]["ok"] == 1
    assert "1 segmented, 0 skipped, 0 failed" in result.stderr

    again = _segment(runner, small_tiff, "--model", bundle_dir, "--out", out)
    assert again.exit_code == 0 and "0 segmented, 1 skipped" in again.stderr


def test_real_slides_with_mpp_override(runner: CliRunner, bundle_dir: Path, tcga_slide: Path, ome_slide: Path,
                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    no_mpp = _segment(runner, tcga_slide, "--model", bundle_dir, "--out", out, "--formats", "tiff")
    _assert_clean_failure(no_mpp, str(tcga_slide), "--mpp", code=1)
    ok = _segment(runner, tcga_slide, "--model", bundle_dir, "--out", out, "--mpp", "0.5", "--formats", "tiff")
    assert ok.exit_code == 0, ok.output
    mask = pyvips.Image.new_from_file(str(out / "TCGA-CR-7395-01A-01-TS1" / "mask.tif"))
    assert (mask.width, mask.height) == (1111, 892)  # 4443 x 3567 at 0.5 -> 2 um/px
    ome = _segment(runner, ome_slide, "--model", bundle_dir, "--out", out, "--formats", "tiff,report")
    assert ome.exit_code == 0, ome.output


def test_a_bad_slide_among_good_ones_fails_alone(runner: CliRunner, bundle_dir: Path, small_tiff: Path,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide\n")
    out = tmp_path / "out"
    result = _segment(runner, bad, small_tiff, "--model", bundle_dir, "--out", out, "--formats", "tiff")
    line = _assert_clean_failure(result, str(bad), code=1)
    assert "OpenSlide" in line
    assert "1 segmented, 0 skipped, 1 failed of 2" in result.stderr
    assert (out / "small" / "mask.tif").is_file()
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}


def test_missing_slide(runner: CliRunner, bundle_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.svs"
    result = _segment(runner, missing, "--model", bundle_dir, "--out", tmp_path / "out")
    _assert_clean_failure(result, str(missing), "check the path", code=1)


def test_not_a_slide(runner: CliRunner, bundle_dir: Path, tmp_path: Path) -> None:
    txt = tmp_path / "readme.tif"
    txt.write_text("hello\n")
    result = _segment(runner, txt, "--model", bundle_dir, "--out", tmp_path / "out")
    _assert_clean_failure(result, str(txt), "pass", code=1)


def test_bundle_folder_without_manifest(runner: CliRunner, small_tiff: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()
    result = _segment(runner, small_tiff, "--model", empty, "--out", tmp_path / "out")
    _assert_clean_failure(result, str(empty), "manifest.json", "slidefuse export")


def test_tampered_bundle_is_refused(runner: CliRunner, small_tiff: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tampered"
    make_bundle(folder)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = _segment(runner, small_tiff, "--model", folder, "--out", tmp_path / "out")
    _assert_clean_failure(result, "model.onnx", "sha256", "re-export")
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--batch", "0"], "--batch"),
        (["--workers", "0"], "--workers"),
        (["--overlap", "40"], "--overlap 40"),
        (["--formats", "tiff,pdf"], "pdf"),
        (["--all-tiles", "--tissue-threshold", "0.1"], "--all-tiles conflicts with --tissue-threshold"),
        (["--mpp", "0"], "--mpp"),
        (["--backend", "nope"], "valid backends: ort-cpu"),
    ],
)
def test_bad_options_are_usage_errors(runner: CliRunner, bundle_dir: Path, small_tiff: Path, tmp_path: Path,
                                      extra: list[str], expected: str) -> None:
    result = _segment(runner, small_tiff, "--model", bundle_dir, "--out", tmp_path / "out", *extra)
    _assert_clean_failure(result, expected)


def test_no_inputs_and_missing_model(runner: CliRunner, bundle_dir: Path, small_tiff: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_clean_failure(_segment(runner, "--model", bundle_dir, "--out", tmp_path / "o"), "no slides given")
    import slidefuse.commands.segment as seg_cmd

    monkeypatch.setattr(seg_cmd, "DEFAULT_BUNDLE", tmp_path / "no-default")
    _assert_clean_failure(_segment(runner, small_tiff, "--out", tmp_path / "o"), "--model is required")


def test_default_bundle_is_used_and_announced(runner: CliRunner, bundle_dir: Path, small_tiff: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slidefuse.commands.segment as seg_cmd

    monkeypatch.setattr(seg_cmd, "DEFAULT_BUNDLE", bundle_dir)
    result = _segment(runner, small_tiff, "--out", tmp_path / "out", "--formats", "tiff")
    assert result.exit_code == 0, result.output
    assert "demonstration model" in result.stderr


def test_list_file(runner: CliRunner, bundle_dir: Path, small_tiff: Path, tmp_path: Path) -> None:
    lst = tmp_path / "slides.txt"
    lst.write_text(f"# batch\n{small_tiff}\n\n")
    result = _segment(runner, "--list", lst, "--model", bundle_dir, "--out", tmp_path / "out", "--formats", "tiff")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "small" / "mask.tif").is_file()
    _assert_clean_failure(_segment(runner, "--list", tmp_path / "none.txt", "--model", bundle_dir, "--out",
                                   tmp_path / "out"), "none.txt", "--list")


def test_quiet_prints_only_errors(runner: CliRunner, bundle_dir: Path, small_tiff: Path, tmp_path: Path) -> None:
    ok = _segment(runner, small_tiff, "--model", bundle_dir, "--out", tmp_path / "out", "--formats", "tiff",
                  quiet=True)
    assert ok.exit_code == 0, ok.output
    assert "INFO" not in ok.stderr and "tiles" not in ok.stderr
    also = _segment(runner, small_tiff, "--model", bundle_dir, "--out", tmp_path / "out2", "--formats", "tiff",
                    "--quiet")
    assert also.exit_code == 0, also.output
    # warnings still show: here only the one that the (unsigned) test bundle gets
    assert [ln for ln in also.stderr.splitlines() if "not signed" not in ln] == [], also.stderr


def test_progress_display_choice_and_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert make_progress(quiet=True, stream=Tty()) is None
    assert isinstance(make_progress(quiet=False, stream=io.StringIO()), LogRenderer)
    tty = Tty()
    bar = make_progress(quiet=False, stream=tty)
    assert isinstance(bar, BarRenderer)
    bar(ProgressEvent("start", 2, 5, "a.svs"))
    bar(ProgressEvent("tiles", 2, 5, "a.svs", done_tiles=0, total_tiles=40))
    bar(ProgressEvent("tiles", 2, 5, "a.svs", done_tiles=40, total_tiles=40))
    bar(ProgressEvent("end", 2, 5, "a.svs", status="ok"))
    text = tty.getvalue()  # tqdm's own rendering
    assert "[2/5] a.svs" in text and "40/40" in text and "tile/s" in text and text.rstrip().endswith("ok]")


def test_max_memory_splits_batches_and_keeps_the_mask(runner: CliRunner, bundle_dir: Path, small_tiff: Path,
                                                      tmp_path: Path) -> None:
    masks = {}
    for budget in ("0", "0.00001"):  # no limit; less than one tile's estimate: one tile per engine call
        out = tmp_path / f"out-{budget}"
        result = _segment(runner, small_tiff, "--model", bundle_dir, "--out", out, "--backend", "ort-cpu",
                          "--batch", "4", "--max-memory", budget, "--formats", "tiff")
        assert result.exit_code == 0, result.output
        backend = json.loads((out / "small" / "report.json").read_text())["backend"]
        assert backend["max_batch"] == (None if budget == "0" else 1), backend
        masks[budget] = pyvips.Image.new_from_file(str(out / "small" / "mask.tif")).numpy()
    np.testing.assert_array_equal(masks["0"], masks["0.00001"])
    bad = _segment(runner, small_tiff, "--model", bundle_dir, "--out", tmp_path / "bad", "--max-memory", "-1")
    assert bad.exit_code != 0 and "--max-memory" in bad.output
