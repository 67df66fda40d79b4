"""Broken inputs and environments: every one gives one line (path and fix) and never stops the other slides:
FIFOs, folders, unreadable and corrupt slides named on the command line, OUT under a file, on a read-only
mount or a full disk, run.json that cannot be written, implausible pixel sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli

from .conftest import one_error_line, segment, write_slide
from .tiffs import write_huge_tiff


def _broken_slides(folder: Path, good: Path) -> dict[str, Path]:
    """Slides of every broken kind, made here (all named .tif / .svs so folder scans would pick them up)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    out = {
        "empty": folder / "empty.tif",
        "text": folder / "text.svs",
        "truncated": folder / "truncated.tif",
        "garbled directory": folder / "garbled.tif",
        "no pixel size": folder / "nompp.tif",
    }
    out["empty"].write_bytes(b"")
    out["text"].write_text("not a slide\n" * 100)
    out["truncated"].write_bytes(raw[: len(raw) // 3])
    garbled = bytearray(raw)
    garbled[8:64] = bytes(range(56))
    out["garbled directory"].write_bytes(bytes(garbled))
    import pyvips

    pyvips.Image.black(64, 64, bands=3).tiffsave(str(out["no pixel size"]), tile=True)
    return out


def test_fifo_is_refused_at_once_and_the_batch_goes_on(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)
    # a subprocess with a timeout: a FIFO that is opened blocks forever
    proc = subprocess.run([sys.executable, "-m", "slidefuse", "-q", "segment", "--threads", "1", str(fifo),
                           str(slide), "--model", str(bundle_dir), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "is a FIFO (named pipe), not a slide file" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "small" / "report.json").is_file()


def test_broken_slides_on_the_command_line_fail_alone(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    broken = _broken_slides(tmp_path / "broken", slide)
    missing = tmp_path / "absent.svs"
    args = [*broken.values(), missing, slide]
    result = segment(*args, "--model", bundle_dir, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(errors) == len(args) - 1, result.stderr  # one line per broken slide
    assert any("no such slide file" in e for e in errors)
    assert (tmp_path / "out" / "small" / "report.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_slide_fails_alone(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    locked = write_slide(tmp_path / "locked.tif", seed=3)
    locked.chmod(0)
    result = segment(locked, slide, "--model", bundle_dir, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "not readable" in result.stderr
    assert (tmp_path / "out" / "small" / "report.json").is_file()


def test_out_under_a_file(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        result = segment(slide, "--model", bundle_dir, "--out", out)
        one_error_line(result, str(tmp_path / "file"))


@pytest.mark.parametrize("out", ["/proc/slidefuse-out", "/sys/slidefuse-out"])
def test_out_in_a_pseudo_file_system(tmp_path: Path, slide: Path, bundle_dir: Path, out: str) -> None:
    if not Path(out).parent.is_dir():
        pytest.skip(f"{Path(out).parent} is absent here")
    one_error_line(segment(slide, "--model", bundle_dir, "--out", out), "slidefuse-out", code=1)


def test_run_log_that_cannot_be_written_does_not_stop_the_batch(tmp_path: Path, slide: Path,
                                                                bundle_dir: Path) -> None:
    out = tmp_path / "out"
    (out / "run.json").mkdir(parents=True)  # a folder where run.json goes
    other = write_slide(tmp_path / "slides2" / "other.tif", seed=5)
    result = segment(slide, other, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "run log not written" in result.stderr
    assert (out / "small" / "report.json").is_file() and (out / "other" / "report.json").is_file()


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def mount_point(tmp_path: Path):  # type: ignore[no-untyped-def]
    point = tmp_path / "mnt"
    point.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)):
        pytest.skip("mounting is not allowed here (needs root in a namespace that may mount)")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_out_on_a_read_only_mount(mount_point: Path, slide: Path, bundle_dir: Path) -> None:
    assert _mount("-o", "remount,ro", str(mount_point))
    line = one_error_line(segment(slide, "--model", bundle_dir, "--out", mount_point / "out"), code=1)
    assert "read-only" in line


def test_out_on_a_full_disk(mount_point: Path, slide: Path, bundle_dir: Path) -> None:
    """A 64 KiB tmpfs: each slide fails alone with one line; the run log warns; no traceback, no partial file."""
    other = write_slide(slide.parent / "other.tif", seed=5)
    result = segment(slide, other, "--model", bundle_dir, "--out", mount_point / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(errors) == 2 and all("No space left" in e or "disk is full" in e for e in errors), result.stderr
    assert not list((mount_point / "out").rglob("*.partial"))


@pytest.mark.parametrize("mpp", ["1e-9", "1e9", "inf", "nan", "0", "-1", "0.01", "25"])
def test_implausible_mpp_is_a_usage_error(tmp_path: Path, slide: Path, bundle_dir: Path, mpp: str) -> None:
    one_error_line(segment(slide, "--model", bundle_dir, "--out", tmp_path / "out", "--mpp", mpp), "--mpp", code=2)


def test_force_mpp_accepts_an_unusual_pixel_size(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    result = segment(slide, "--model", bundle_dir, "--out", tmp_path / "out", "--mpp", "25", "--force-mpp")
    assert result.exit_code == 0, result.output


def test_slide_with_implausible_file_mpp_fails_alone(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    odd = write_slide(tmp_path / "odd" / "odd.tif", mpp=50.0)  # over PLAUSIBLE_MPP: a placeholder, not a pixel size
    result = segment(odd, slide, "--model", bundle_dir, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "odd.tif: the file has no pixel size" in result.stderr and "--mpp" in result.stderr
    assert (tmp_path / "out" / "small" / "report.json").is_file()


def test_mask_mpp_finer_than_the_model_is_refused_before_any_slide(tmp_path: Path, slide: Path,
                                                                   bundle_dir: Path) -> None:
    one_error_line(segment(slide, "--model", bundle_dir, "--out", tmp_path / "out", "--mask-mpp", "0.5"),
                   "--mask-mpp", code=2)
    assert not (tmp_path / "out" / "small").exists()


def test_out_inside_a_bundle_is_refused(tmp_path: Path, slide: Path, bundle_dir: Path) -> None:
    for out in (bundle_dir, bundle_dir / "results"):
        one_error_line(segment(slide, "--model", bundle_dir, "--out", out), "inside the model bundle", code=2)
    assert not (bundle_dir / "results").exists()


def test_huge_single_level_tiff_is_refused_quickly_naming_the_limit(tmp_path: Path, bundle_dir: Path) -> None:
    huge = write_huge_tiff(tmp_path / "huge.tif", 1_000_000, 1_000_000, tile=None, rows_per_strip=16)
    line = one_error_line(segment(huge, "--model", bundle_dir, "--out", tmp_path / "out"), "limit", code=1)
    assert "gigapixels" in line


def test_tile_grid_limit_names_the_flag(tmp_path: Path, bundle_dir: Path) -> None:
    big = write_huge_tiff(tmp_path / "big.tif", 40_000, 40_000, tile=512, mpp=0.5)
    line = one_error_line(segment(big, "--model", bundle_dir, "--out", tmp_path / "out", "--max-tiles", "1000"),
                          "--max-tiles", code=1)
    assert "--override-mpp" in line


def test_info_on_broken_inputs(tmp_path: Path, slide: Path) -> None:
    runner = CliRunner()
    for path in _broken_slides(tmp_path / "broken", slide).values():
        result = runner.invoke(cli, ["info", str(path)])
        if result.exit_code != 0:
            one_error_line(result, str(path.name))
