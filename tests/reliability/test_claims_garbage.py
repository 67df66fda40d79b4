"""A `.lock` that is no claim (empty, random bytes, an empty folder) is taken over after a few seconds, not
after --claim-timeout; a non-empty folder in its place fails that slide alone, in one line naming the fix. A claim
or a mutex left by a killed process of this host is taken at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed.helpers import make_slides, write_list
from runtime.onnx_models import make_bundle

from slidefuse.runtime.segment.claims import CLAIM_NAME, GARBAGE_GRACE, ClaimInfo, exclusive_file

from .claims_helpers import assert_invariants, segment_process
from .conftest import one_error_line, segment


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "colour"
    make_bundle(folder, tile_size=64, mpp=1.0, overlap=16)
    return folder


def test_fresh_garbage_locks_are_taken_over_after_a_short_grace(tmp_path: Path, colour_bundle: Path) -> None:
    slides = make_slides(tmp_path / "slides", 4, size=(512, 384))
    out = tmp_path / "out"
    for s in slides[:3]:
        (out / s.stem).mkdir(parents=True)
    (out / slides[0].stem / CLAIM_NAME).write_bytes(b"")
    (out / slides[1].stem / CLAIM_NAME).write_bytes(os.urandom(64))
    (out / slides[2].stem / CLAIM_NAME).mkdir()
    t0 = time.monotonic()
    proc = segment_process(write_list(tmp_path / "slides.txt", slides), colour_bundle, out)  # --claim-timeout 120
    assert_invariants(out, slides, [proc])
    seconds = time.monotonic() - t0
    print(f"three garbage locks taken over; the run took {seconds:.1f} s (grace {GARBAGE_GRACE} s)")
    assert seconds < 100  # well before the 120 s claim timeout


def test_a_folder_with_files_where_the_claim_goes_fails_that_slide_in_one_line(tmp_path: Path,
                                                                               colour_bundle: Path) -> None:
    slides = make_slides(tmp_path / "slides", 2, size=(512, 384))
    out = tmp_path / "out"
    blocked = out / slides[0].stem / CLAIM_NAME
    blocked.mkdir(parents=True)
    (blocked / "someone's.txt").write_text("not ours")
    result = segment(slides[0], slides[1], "--model", colour_bundle, "--out", out)
    line = one_error_line(result, str(blocked), "rm -r", code=1)
    assert "folder" in line
    assert (blocked / "someone's.txt").exists() and (out / slides[1].stem / "report.json").exists()


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_a_claim_left_by_a_writer_killed_after_its_outputs_is_removed(tmp_path: Path, colour_bundle: Path) -> None:
    """Killed after its report.json, before recording the slide and releasing the claim: the next process finds
    the outputs complete, takes the dead holder's claim over and removes it."""
    slide = make_slides(tmp_path / "slides", 1, size=(512, 384))[0]
    out = tmp_path / "out"
    assert segment(slide, "--model", colour_bundle, "--out", out).exit_code == 0
    dead = ClaimInfo("gone:1", socket.gethostname(), _dead_pid(), "gone", time.time())
    (out / slide.stem / CLAIM_NAME).write_text(dead.to_json())
    result = segment(slide, "--model", colour_bundle, "--out", out)
    assert result.exit_code == 0 and "1 skipped" in result.stderr, result.output
    assert not (out / slide.stem / CLAIM_NAME).exists()


def test_a_mutex_left_by_a_dead_process_is_taken_at_once(tmp_path: Path) -> None:
    mutex = tmp_path / "run.json.lock"
    mutex.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "time": time.time()}))
    with exclusive_file(mutex, wait=5.0, stale_after=60.0):  # not after 60 s: its holder is gone
        assert json.loads(mutex.read_text())["pid"] == os.getpid()
    assert not mutex.exists()
