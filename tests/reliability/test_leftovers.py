"""Leftovers that must not lie: whatever a killed writer left (a `*.partial` file, a staged `mask.zarr` folder, the
raw mask) is removed by the next run, and a slide counts as complete only when report.json lists its files and
each one on disk has the recorded size (a folder such as mask.zarr: its total bytes and file count)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slidefuse.atomic import clean_temporaries, is_temporary, stale_temporaries
from slidefuse.runtime.outputs import recorded_size

from .conftest import REPO, cli_process, segment, write_slide

needs_zarr = pytest.mark.skipif(importlib.util.find_spec("zarr") is None, reason="needs the zarr extra")

# `slidefuse ARGS` whose zarr writer stops, for good, once it has written the first level into its staging folder
SLOW_ZARR = textwrap.dedent("""
    import sys, time
    import slidefuse.runtime.outputs.zarr as z
    copy = z._copy_level
    def copy_then_hang(image, array):
        copy(image, array)
        print("zarr level written", file=sys.stderr, flush=True)
        time.sleep(600)
    z._copy_level = copy_then_hang
    from slidefuse.cli import cli
    cli(sys.argv[1:], prog_name="slidefuse")
""")


def _status(stderr: str) -> str:
    return next(ln for ln in stderr.splitlines() if "segmented," in ln)


def _run(*args: str | Path) -> str:
    """`slidefuse segment ARGS` as a new process (libvips caches opened files within one); returns its stderr."""
    proc = cli_process("segment", "--threads", "1", *args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stderr


def test_names_of_temporaries() -> None:
    for name in ("mask.tif.partial", "mask.zarr.partial.tif.partial", ".mask.zarr.partial-123",
                 "mask.tif.partial-host-1-abc", ".mask.zarr.old-123", "mask.raw.tmp"):
        assert is_temporary(name), name
    for name in ("mask.tif", "mask.zarr", "report.json", ".lock", "tissue.png", "preview.png"):
        assert not is_temporary(name), name


def test_clean_temporaries_removes_files_and_folders_but_what_it_keeps(tmp_path: Path) -> None:
    (tmp_path / "mask.tif").write_bytes(b"II*\0")
    (tmp_path / "mask.zarr").mkdir()
    for name in ("mask.tif.partial", "mask.raw.tmp"):
        (tmp_path / name).write_bytes(b"\0")
    for name in (".mask.zarr.partial-4242/0/0", ".mask.zarr.old-4242/0/0"):
        (tmp_path / name).mkdir(parents=True)
    assert [p.name for p in stale_temporaries(tmp_path, keep=[tmp_path / "mask.raw.tmp"])] == [
        ".mask.zarr.old-4242", ".mask.zarr.partial-4242", "mask.tif.partial"]
    clean_temporaries(tmp_path, keep=[tmp_path / "mask.raw.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.raw.tmp", "mask.tif", "mask.zarr"]
    assert [p.name for p in clean_temporaries(tmp_path)] == ["mask.raw.tmp"]


def test_recorded_size_of_a_file_and_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "d" / "0").mkdir(parents=True)
    (tmp_path / "d" / ".zattrs").write_bytes(b"{}")
    (tmp_path / "d" / "0" / "0").write_bytes(b"abc")
    assert recorded_size(tmp_path / "f") == {"bytes": 5}
    assert recorded_size(tmp_path / "d") == {"bytes": 5, "files": 2}


@needs_zarr
def test_sigkill_mid_zarr_write_then_rerun(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ZARR, "segment", "--threads", "1", slide, "--model",
                             bundle_dir, "--out", out, "--formats", "tiff,zarr"], env=env, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "zarr level written" in line:
            break
    else:
        pytest.fail("".join(seen)[-2000:])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    folder = out / "slide"
    assert [p.name for p in folder.glob(".mask.zarr.partial-*")], list(folder.iterdir())  # what users found
    assert not (folder / "mask.zarr").exists() and not (folder / "report.json").exists()

    stderr = _run(slide, "--model", bundle_dir, "--out", out, "--formats", "tiff,zarr")
    assert "1 segmented" in _status(stderr)
    assert stale_temporaries(folder) == [] and (folder / "mask.zarr" / ".zattrs").is_file()
    recorded = json.loads((folder / "report.json").read_text())["outputs"]["zarr"]
    assert {k: recorded[k] for k in ("bytes", "files")} == recorded_size(folder / "mask.zarr")
    assert recorded["files"] > 2
    assert "1 skipped" in _status(_run(slide, "--model", bundle_dir, "--out", out, "--formats", "tiff,zarr"))


@needs_zarr
def test_a_zarr_folder_that_differs_from_its_record_reruns(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out, args = tmp_path / "out", ["--model", bundle_dir, "--out", tmp_path / "out", "--formats", "tiff,zarr"]
    assert segment(slide, *args).exit_code == 0
    folder = out / "slide"
    chunk = next(p for p in sorted((folder / "mask.zarr" / "0").rglob("*")) if p.is_file())
    chunk.unlink()  # a lost chunk
    result = segment(slide, *args)
    assert "1 segmented" in _status(result.stderr) and "output files missing or changed: zarr" in result.stderr
    assert chunk.is_file() and "1 skipped" in _status(segment(slide, *args).stderr)
    report = json.loads((folder / "report.json").read_text())
    del report["outputs"]["zarr"]["files"]  # recorded as a file (as report.json did before folders had sizes)
    (folder / "report.json").write_text(json.dumps(report))
    assert "1 segmented" in _status(segment(slide, *args).stderr)
    assert "1 skipped" in _status(segment(slide, *args).stderr)


@needs_zarr
def test_a_stale_staging_folder_beside_complete_outputs_is_removed_by_the_rerun(tmp_path: Path,
                                                                               bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    args = ["--model", bundle_dir, "--out", tmp_path / "out", "--formats", "tiff,zarr"]
    assert segment(slide, *args).exit_code == 0
    stage = tmp_path / "out" / "slide" / ".mask.zarr.partial-999999" / "0"
    stage.mkdir(parents=True)
    (stage / "0").write_bytes(b"\0" * 10)
    result = segment(slide, *args)
    assert "1 segmented" in _status(result.stderr) and "a partial file is left" in result.stderr
    assert not stage.parent.exists() and "1 skipped" in _status(segment(slide, *args).stderr)


@pytest.mark.parametrize("damage", ["report", "file"])
def test_a_recorded_size_that_disagrees_with_the_file_reruns(tmp_path: Path, bundle_dir: Path, damage: str) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    args = ["--model", bundle_dir, "--out", tmp_path / "out"]
    assert segment(slide, *args).exit_code == 0
    folder = tmp_path / "out" / "slide"
    if damage == "report":
        report = json.loads((folder / "report.json").read_text())
        report["outputs"]["tiff"]["bytes"] += 1
        (folder / "report.json").write_text(json.dumps(report))
    else:
        with open(folder / "mask.geojson", "a", encoding="utf-8") as f:
            f.write("\n")
    result = segment(slide, *args)
    assert "1 segmented" in _status(result.stderr) and "output files missing or changed" in result.stderr
    assert "1 skipped" in _status(segment(slide, *args).stderr)
