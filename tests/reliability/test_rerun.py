"""Reruns that cannot lie: a slide is skipped only when its report records the same slide file (path, size,
mtime, content fingerprint), bundle and result-changing options; otherwise it runs again and says why."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from slidefuse.runtime.bundle import load_bundle
from slidefuse.runtime.outputs.report import read_report
from slidefuse.runtime.segment import SegmentOptions
from slidefuse.runtime.segment.skip import decide, result_key, slide_identity

from .conftest import cli_process, segment, write_slide


def _status(result_stderr: str) -> str:
    return next(ln for ln in result_stderr.splitlines() if "segmented," in ln)


def test_same_stem_from_another_folder_is_not_skipped(tmp_path: Path, bundle_dir: Path) -> None:
    a = write_slide(tmp_path / "a" / "same.tif", seed=1)
    b = write_slide(tmp_path / "b" / "same.tif", seed=2)
    out = tmp_path / "out"
    assert segment(a, "--model", bundle_dir, "--out", out).exit_code == 0
    result = segment(b, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0 and "1 segmented" in _status(result.stderr)
    # b got its own folder; a's outputs are untouched and still a's
    assert read_report(out / "same")["slide"]["path"] == str(a)  # type: ignore[index]
    assert read_report(out / "b_same")["slide"]["path"] == str(b)  # type: ignore[index]
    # each reruns into its own folder and is skipped there
    for slide in (a, b):
        assert "1 skipped" in _status(segment(slide, "--model", bundle_dir, "--out", out).stderr)


def test_replaced_slide_under_the_same_name_reruns(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "s" / "slide.tif", seed=1)
    out = tmp_path / "out"
    assert segment(slide, "--model", bundle_dir, "--out", out).exit_code == 0
    before = read_report(out / "slide")
    write_slide(tmp_path / "new" / "slide.tif", seed=7)
    shutil.copy(tmp_path / "new" / "slide.tif", slide)
    # a new process, as in real life (libvips caches an opened file by name within a process)
    proc = cli_process("segment", "--threads", "1", slide, "--model", bundle_dir, "--out", out)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "1 segmented" in _status(stderr) and "the slide file changed since" in stderr
    after = read_report(out / "slide")
    assert after["run"]["skip_key"]["slide"]["fingerprint"] != before["run"]["skip_key"]["slide"]["fingerprint"]


def test_touched_slide_reruns(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    segment(slide, "--model", bundle_dir, "--out", out)
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    result = segment(slide, "--model", bundle_dir, "--out", out)
    assert "1 segmented" in _status(result.stderr) and "mtime_ns" in result.stderr


@pytest.mark.parametrize("flags", [["--overlap", "8"], ["--all-tiles"], ["--tissue-threshold", "0.2"],
                                   ["--mask-mpp", "4"], ["--mpp", "0.6"]])
def test_a_result_changing_option_reruns(tmp_path: Path, bundle_dir: Path, flags: list[str]) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    segment(slide, "--model", bundle_dir, "--out", out)
    result = segment(slide, "--model", bundle_dir, "--out", out, *flags)
    assert "1 segmented" in _status(result.stderr) and "options changed" in result.stderr


def test_speed_only_options_and_fewer_formats_still_skip(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    segment(slide, "--model", bundle_dir, "--out", out)
    result = segment(slide, "--model", bundle_dir, "--out", out, "--batch", "3", "--formats", "tiff")
    assert "1 skipped" in _status(result.stderr)


def test_relative_and_absolute_paths_are_one_run_log_entry(tmp_path: Path, bundle_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    slide = write_slide(tmp_path / "slides" / "slide.tif")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    segment(Path("slides/slide.tif"), "--model", bundle_dir, "--out", out)
    segment(slide, "--model", bundle_dir, "--out", out)
    entries = json.loads((out / "run.json").read_text())["slides"]
    assert len(entries) == 1, entries


def test_skip_key_and_decide_api(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    bundle = load_bundle(bundle_dir)
    ident = slide_identity(slide)
    assert ident.path == str(slide.resolve()) and ident.size == slide.stat().st_size
    key = result_key(bundle, SegmentOptions(), ident)
    assert result_key(bundle, SegmentOptions(batch_size=3, workers=1), ident) == key  # speed is not in the key
    out = tmp_path / "out"
    first = decide(slide, out / "slide", bundle, SegmentOptions())
    assert first.run and first.kind == "run" and first.reason == "no readable report.json (never finished)"
    assert segment(slide, "--model", bundle_dir, "--out", out).exit_code == 0
    done = decide(slide, out / "slide", bundle, SegmentOptions())
    assert (done.kind, done.run, done.status) == ("skip", False, "skipped")
    changed = decide(slide, out / "slide", bundle, SegmentOptions(all_tiles=True))
    assert changed.run and "options changed: all_tiles False -> True" in changed.reason
    assert decide(slide, out / "slide", bundle, SegmentOptions(overwrite=True)).kind == "overwrite"
    # outputs written during this batch (at or after `since`) are another process's: left to it
    assert decide(slide, out / "slide", bundle, SegmentOptions(), since=0.0).status == "claimed"
    assert decide(slide, out / "slide", bundle, SegmentOptions(overwrite=True), since=0.0).status == "claimed"
    report = json.loads((out / "slide" / "report.json").read_text())
    report["bundle"]["digest"] = "e" * 64
    (out / "slide" / "report.json").write_text(json.dumps(report))
    again = decide(slide, out / "slide", bundle, SegmentOptions())
    assert again.run and again.reason == "the outputs were made by another model bundle"
    (out / "slide" / "report.json").write_text("{")
    assert decide(slide, out / "slide", bundle, SegmentOptions()).reason == first.reason
