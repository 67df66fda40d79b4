"""Survivors finish the list: a process at the end of its list goes back to the slides other processes held,
takes over those whose holder died or stopped, and ends only when each is done, failed, or (--no-wait) left to
a live holder, which the summary names."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed.helpers import make_slides, write_list

from slidefuse.cli import cli
from slidefuse.runtime.bundle import load_bundle
from slidefuse.runtime.segment import SegmentOptions, segment_many
from slidefuse.runtime.segment.claims import ClaimPolicy, ClaimSet
from slidefuse.runtime.tissue import TissueParams

from .claims_helpers import assert_invariants, holder_pid, raw_masks, segment_process, wait_for

FAST = {"backend_options": {"threads": 1}, "workers": 1, "tissue": TissueParams(thumb_max_side=512)}


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight small slides; s1 is larger, so that its holder can be caught inside it."""
    folder = tmp_path_factory.mktemp("slides")
    slides = make_slides(folder, 8, size=(768, 512))
    slides[1] = make_slides(folder / "big", 1, size=(4096, 3072), prefix="s1-")[0]
    return slides


def test_survivors_finish_a_killed_holders_slide(tmp_path: Path, claims_bundle: Path, eight: list[Path]) -> None:
    out, list_file = tmp_path / "out", write_list(tmp_path / "slides.txt", eight)
    procs = [segment_process(list_file, claims_bundle, out, "--batch", "1") for _ in range(4)]
    big = out / eight[1].stem
    wait_for(lambda: raw_masks(big) and holder_pid(big) in {p.pid for p in procs}, 180, "a process inside s1")
    victim = next(p for p in procs if p.pid == holder_pid(big))
    os.kill(victim.pid, signal.SIGSTOP)  # frozen inside s1 (and the slide it planned ahead) ...

    def rest_done() -> bool:
        return all((out / s.stem / "report.json").exists() or holder_pid(out / s.stem) == victim.pid for s in eight)

    wait_for(rest_done, 180, "the survivors to reach the end of their lists")
    os.kill(victim.pid, signal.SIGKILL)  # ... and killed there; --claim-timeout (120 s) never passes: a dead pid
    victim.communicate(timeout=60)
    survivors = [p for p in procs if p is not victim]
    assert_invariants(out, eight, survivors)  # all 8 done once, run.json lists 8, no .lock left, exit codes 0


def test_the_end_of_the_list_waits_for_a_live_holder_and_takes_over_when_it_stops(
        tmp_path: Path, claims_bundle: Path, eight: list[Path]) -> None:
    slides, out = [eight[0], eight[2]], tmp_path / "out"
    bundle = load_bundle(claims_bundle)
    with ClaimSet("other", ClaimPolicy(timeout=60.0, heartbeat=0.1)) as other:
        assert other.try_claim(out / slides[0].stem)
        left = segment_many(slides, bundle, out, SegmentOptions(wait=False, **FAST))
        assert [r.status for r in left] == ["claimed", "ok"]
        assert left[0].holder == f"{socket.gethostname()}:{os.getpid()}"
        threading.Timer(1.0, other.release, args=(out / slides[0].stem,)).start()  # it gives the slide up
        waited = segment_many(slides, bundle, out, SegmentOptions(**FAST))
    assert [r.status for r in waited] == ["ok", "skipped"]


def test_no_wait_names_the_holders_in_the_summary(tmp_path: Path, claims_bundle: Path, eight: list[Path]) -> None:
    out = tmp_path / "out"
    with ClaimSet("other", ClaimPolicy(timeout=60.0, heartbeat=0.1)) as other:
        assert other.try_claim(out / eight[0].stem)
        t0 = time.monotonic()
        result = CliRunner().invoke(cli, ["segment", "--threads", "1", "--workers", "1", "--no-wait", str(eight[0]),
                                          str(eight[2]), "--model", str(claims_bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - t0 < 60  # not waiting for the holder's timeout
    line = result.stderr.strip().splitlines()[-1]
    assert "1 segmented" in line and f"1 left to other processes sharing OUT (held by {socket.gethostname()}:" \
        f"{os.getpid()})" in line, line
