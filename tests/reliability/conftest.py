"""Fixtures of the reliability suite: a small valid bundle (pure ONNX, no torch), small slides, and helpers to
run the real command line in-process (CliRunner) or as a subprocess (signals)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyvips
from click.testing import CliRunner, Result

from slidefuse.cli import cli

REPO = Path(__file__).resolve().parents[2]
FAST = ["--threads", "1", "--workers", "2"]



def write_slide(path: Path, seed: int = 0, size: tuple[int, int] = (600, 400), mpp: float = 0.5) -> Path:
    """A small pyramidal JPEG TIFF at `mpp` um/px: pink and purple blobs (placed by `seed`) on white glass."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for colour in ((220, 130, 180), (110, 70, 150)):
        cx, cy, r = rng.integers(100, w - 100), rng.integers(100, h - 100), rng.integers(50, 100)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=128, tile_height=128, pyramid=True, compression="jpeg",
        xres=1000 / mpp, yres=1000 / mpp, resunit="cm")
    return path


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    return write_slide(tmp_path / "slides" / "small.tif")


def segment(*args: str | Path, runner: CliRunner | None = None) -> Result:
    return (runner or CliRunner()).invoke(cli, ["segment", *FAST, *[str(a) for a in args]])


def one_error_line(result: Result, *must_contain: str, code: int | None = None) -> str:
    """Assert a clean failure: non-zero exit (or `code`), no traceback, exactly one error line; returns it."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1, result.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def cli_process(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """`slidefuse ARGS` as a child process (stderr piped, line-buffered) for signal tests."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "slidefuse", *[str(a) for a in args]], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


def segment_until(args: list[str | Path], marker: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`slidefuse segment --threads 1 --workers 2 ARGS` as a child process, returned (with the stderr lines read so
    far) as soon as a stderr line contains `marker`; fails the test when the run ends first."""
    proc = cli_process("segment", "--threads", "1", "--workers", "2", *args)
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return proc, seen
    proc.wait(timeout=60)
    pytest.fail(f"the run ended before {marker!r}: {''.join(seen)[-2000:]}")


@pytest.fixture(scope="module")
def claims_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour classifier with a convolutional side branch (64 px tiles at 1 um/px, overlap 16): the model of
    the multi-process claim tests (survivors, fault-injection rounds)."""
    from runtime.onnx_models import make_bundle

    folder = tmp_path_factory.mktemp("bundle") / "colour"
    make_bundle(folder, tile_size=64, mpp=1.0, overlap=16, depth=2)
    return folder
