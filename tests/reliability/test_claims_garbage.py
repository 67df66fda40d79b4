"""A `.lock` that is no claim (empty, random bytes, an empty folder) is taken over after a few seconds, not
after --claim-timeout; a non-empty folder in its place fails that slide alone, in one line naming the fix."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from distributed.helpers import make_slides, write_list
from runtime.onnx_models import make_bundle

from slidefuse.runtime.segment.claims import CLAIM_NAME, GARBAGE_GRACE

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
