"""Fenced claims: a holder that lost its claim (paused past the timeout, then taken over) stops at its next
commit step, removes only its own temporaries and records "claim_lost"; the new holder's files stand."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from distributed.helpers import make_slides, write_list
from runtime.onnx_models import make_bundle

from slidefuse.atomic import atomic_path, fenced, scratch_path, write_text_atomic
from slidefuse.errors import ClaimLost
from slidefuse.runtime.segment.claims import CLAIM_NAME, ClaimInfo, ClaimPolicy, ClaimSet
from slidefuse.runtime.segment.runlog import RunLog, read_run_log

from .claims_helpers import assert_invariants, holder_pid, raw_masks, records_of, segment_process, wait_for


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many small tiles (64 px at 0.5 um/px) through a convolutional side branch: a slide takes seconds."""
    folder = tmp_path_factory.mktemp("bundle") / "slow"
    make_bundle(folder, tile_size=64, mpp=0.5, overlap=16, depth=2)
    return folder


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_writer_that_lost_its_claim_stops_before_each_commit_and_leaves_no_trace(tmp_path: Path) -> None:
    slide_dir = tmp_path / "s"
    with ClaimSet("old", ClaimPolicy(timeout=1.0, heartbeat=100.0)) as old, \
            ClaimSet("new", ClaimPolicy(timeout=1.0, heartbeat=100.0)) as new:
        assert old.try_claim(slide_dir)
        fence = old.fence(slide_dir)
        with fenced(fence):
            assert scratch_path(slide_dir, "mask.raw").name == f"mask.raw.{fence.tag}.tmp"
            write_text_atomic(slide_dir / "mask.geojson", "old holder, still holding")
        _age(slide_dir / CLAIM_NAME, 5)  # paused past the timeout
        assert new.try_claim(slide_dir)
        taken = ClaimInfo.read(slide_dir / CLAIM_NAME)
        assert taken is not None and taken.epoch == 2 and taken.owner != old.claim_of(slide_dir).owner  # type: ignore[union-attr]
        with fenced(new.fence(slide_dir)):
            write_text_atomic(slide_dir / "mask.geojson", "new holder")
        with fenced(fence), pytest.raises(ClaimLost, match="taken over"):
            with atomic_path(slide_dir / "mask.geojson") as tmp:
                assert tmp.name == f"mask.geojson.{fence.tag}.partial"  # never the new holder's name
                tmp.write_text("old holder, resumed")
        assert (slide_dir / "mask.geojson").read_text() == "new holder"
        assert sorted(p.name for p in slide_dir.iterdir()) == [CLAIM_NAME, "mask.geojson"]
        old.release(slide_dir)  # not its claim any more: left alone
        assert ClaimInfo.read(slide_dir / CLAIM_NAME) == new.claim_of(slide_dir)


def test_a_lost_claim_record_never_hides_the_new_holders_entry(tmp_path: Path) -> None:
    new, old = RunLog(tmp_path, run_id="new"), RunLog(tmp_path, run_id="old")
    new.record("/s/a.tif", "ok")
    old.record("/s/a.tif", "claim_lost", error="taken over by host:2")  # recorded after, by the paused one
    old.record("/s/b.tif", "claim_lost", error="taken over by host:2")
    new.record("/s/b.tif", "ok")
    assert {Path(e["slide"]).name: e["status"] for e in read_run_log(tmp_path)} == {"a.tif": "ok", "b.tif": "ok"}
    assert json.loads((tmp_path / "run.json").read_text())["counts"]["ok"] == 2


def test_a_paused_holder_taken_over_stops_with_claim_lost(tmp_path: Path, slow_bundle: Path) -> None:
    big = make_slides(tmp_path / "big", 1, size=(3072, 2048), prefix="big")[0]
    small = make_slides(tmp_path / "small", 2, size=(512, 384))
    slides = [big, *small]
    out, list_file = tmp_path / "out", write_list(tmp_path / "slides.txt", slides)
    big_dir, timeout = out / big.stem, ["--claim-timeout", "3"]
    first = segment_process(list_file, slow_bundle, out, "--batch", "1", *timeout)
    wait_for(lambda: raw_masks(big_dir) and holder_pid(big_dir) == first.pid, 120, "the first to infer big",
             first)
    os.kill(first.pid, signal.SIGSTOP)  # paused past --claim-timeout: its heartbeat stops
    try:
        second = segment_process(list_file, slow_bundle, out, *timeout)
        wait_for(lambda: holder_pid(big_dir) == second.pid, 120, "the second process to take big over", second)
    finally:
        os.kill(first.pid, signal.SIGCONT)  # resumed while the second writes the same slide
    assert_invariants(out, slides, [first, second])
    lost = records_of(out, first.pid)
    assert lost.get(big.name) == "claim_lost", lost
    report = json.loads((big_dir / "report.json").read_text())
    assert report["run"]["claim"]["epoch"] >= 2  # written by the holder that took it over
    assert records_of(out, second.pid)[big.name] == "ok"
