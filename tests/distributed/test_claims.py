"""Claim files and concurrent `slidefuse segment` processes on one list and one OUT: every slide done exactly
once, run.json holding every slide, a killed process's claimed slide taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from runtime.onnx_models import make_bundle

from distributed.helpers import make_slides, ok_records, segment_process, wait_for, write_list
from slidefuse.errors import UsageError
from slidefuse.runtime.segment import SegmentOptions, segment_many
from slidefuse.runtime.segment.claims import CLAIM_NAME, ClaimInfo, ClaimPolicy, ClaimSet, exclusive_file, parse_shard
from slidefuse.runtime.segment.runlog import read_run_log
from slidefuse.runtime.tissue import TissueParams

FAST = {"backend_options": {"threads": 1}, "workers": 1, "tissue": TissueParams(thumb_max_side=512)}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Colour classifier with a small convolutional side branch (so a slide takes a moment) at 1 um/px."""
    folder = tmp_path_factory.mktemp("bundle") / "colour"
    make_bundle(folder, tile_size=64, mpp=1.0, overlap=16, depth=2)
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_slides(tmp_path_factory.mktemp("slides"), 6)


def test_a_claim_is_exclusive_fresh_while_held_and_released(tmp_path: Path) -> None:
    with ClaimSet("run-a", ClaimPolicy(timeout=30.0, heartbeat=0.05)) as a, ClaimSet("run-b") as b:
        assert a.try_claim(tmp_path / "s1")
        assert not b.try_claim(tmp_path / "s1")  # held by a live process: not taken
        info = ClaimInfo.read(tmp_path / "s1" / CLAIM_NAME)
        assert info is not None and info.run_id == "run-a" and info.pid == os.getpid()
        old = time.time() - 100
        os.utime(tmp_path / "s1" / CLAIM_NAME, (old, old))
        wait_for(lambda: time.time() - (tmp_path / "s1" / CLAIM_NAME).stat().st_mtime < 5, 5, "a heartbeat")
        assert not b.try_claim(tmp_path / "s1")
        a.release(tmp_path / "s1")
        assert not (tmp_path / "s1" / CLAIM_NAME).exists()
        assert b.try_claim(tmp_path / "s1")
    assert not (tmp_path / "s1" / CLAIM_NAME).exists()  # released on exit


def test_a_stale_claim_is_taken_over_by_exactly_one_holder(tmp_path: Path) -> None:
    with ClaimSet("old", ClaimPolicy(timeout=1.0, heartbeat=100.0)) as old:
        assert old.try_claim(tmp_path / "s")
        past = time.time() - 5
        os.utime(tmp_path / "s" / CLAIM_NAME, (past, past))  # no heartbeat for 5 s > timeout 1 s
        sets = [ClaimSet(f"new{i}", ClaimPolicy(timeout=1.0)) for i in range(4)]
        start = threading.Barrier(len(sets))
        won = [False] * len(sets)

        def race(k: int) -> None:
            start.wait()
            won[k] = sets[k].try_claim(tmp_path / "s")

        threads = [threading.Thread(target=race, args=(k,)) for k in range(len(sets))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won.count(True) == 1
        info = ClaimInfo.read(tmp_path / "s" / CLAIM_NAME)
        assert info is not None and info.run_id == f"new{won.index(True)}"
        old.release(tmp_path / "s")  # no longer its claim: left in place
        assert (tmp_path / "s" / CLAIM_NAME).exists()


def test_a_claim_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    code = ("import sys, time; from slidefuse.runtime.segment.claims import ClaimSet; "
            "c = ClaimSet('victim').__enter__(); c.try_claim(sys.argv[1]); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    with ClaimSet("me", ClaimPolicy(timeout=3600.0)) as me:
        assert not me.try_claim(tmp_path / "s")  # alive: its claim stands
        proc.kill()
        proc.wait()
        assert me.try_claim(tmp_path / "s")  # dead on this host: no need to wait for the timeout


def test_exclusive_file_serialises_and_clears_a_dead_holder(tmp_path: Path) -> None:
    mutex = tmp_path / "m.lock"
    with exclusive_file(mutex):
        with pytest.raises(TimeoutError, match="held by another process"):
            with exclusive_file(mutex, wait=0.1):
                pass
    assert not mutex.exists()
    mutex.write_text("{}")
    past = time.time() - 120
    os.utime(mutex, (past, past))
    with exclusive_file(mutex, wait=0.5, stale_after=60):
        pass


def test_shards_split_the_list_and_keep_the_whole_list_names(tmp_path: Path) -> None:
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "a/b", "2"):
        with pytest.raises(UsageError, match="I/N"):
            parse_shard(bad)
    with pytest.raises(UsageError, match="shard"):
        SegmentOptions(shard=(2, 2))


def test_a_slide_claimed_by_another_live_process_is_left_to_it(tmp_path: Path, bundle_dir: Path,
                                                               slides: list[Path]) -> None:
    from slidefuse.runtime.bundle import load_bundle

    out = tmp_path / "out"
    with ClaimSet("other-run") as other:
        assert other.try_claim(out / "s1")
        results = segment_many(slides[:3], load_bundle(bundle_dir), out, SegmentOptions(wait=False, **FAST))
    assert [r.status for r in results] == ["ok", "claimed", "ok"]
    assert {Path(e["slide"]).name for e in read_run_log(out)} == {"s0.tif", "s2.tif"}
    assert not (out / "s1" / "report.json").exists()
    sharded = segment_many(slides[:3], load_bundle(bundle_dir), out, SegmentOptions(shard=(1, 2), **FAST))
    assert [(r.slide.name, r.status, r.out_dir) for r in sharded] == [("s1.tif", "ok", out / "s1")]
    report = json.loads((out / "s1" / "report.json").read_text())
    assert report["run"]["run_id"] and report["run"]["options"]["shard"] == [1, 2]


@pytest.mark.parametrize("n_procs", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_concurrent_processes_do_every_slide_exactly_once(tmp_path: Path, bundle_dir: Path, slides: list[Path],
                                                          n_procs: int) -> None:
    out = tmp_path / "out"
    list_file = write_list(tmp_path / "slides.txt", slides)
    procs = [segment_process(list_file, bundle_dir, out) for _ in range(n_procs)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert ok_records(out) == {str(s): 1 for s in slides}  # each slide segmented by exactly one process
    entries = read_run_log(out)
    assert sorted((e["slide"], e["status"]) for e in entries) == sorted((str(s), "ok") for s in slides)
    data = json.loads((out / "run.json").read_text())  # the merged file itself, as other tools read it
    assert data["counts"]["ok"] == len(slides) and len(data["slides"]) == len(slides)
    run_ids = {json.loads((out / s.stem / "report.json").read_text())["run"]["run_id"] for s in slides}
    print(f"{n_procs} processes: slides per run id {sorted(run_ids)}")
    assert not list(out.rglob(CLAIM_NAME)) and not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))


def test_concurrent_overwrites_redo_each_slide_once(tmp_path: Path, bundle_dir: Path, slides: list[Path]) -> None:
    out = tmp_path / "out"
    list_file = write_list(tmp_path / "slides.txt", slides[:4])
    first = segment_process(list_file, bundle_dir, out)
    assert first.wait(timeout=300) == 0
    backwards = write_list(tmp_path / "backwards.txt", slides[:4][::-1])  # the two meet, then pass each other
    procs = [segment_process(f, bundle_dir, out, "--overwrite") for f in (list_file, backwards)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert ok_records(out) == {str(s): 2 for s in slides[:4]}  # the first run and exactly one overwrite


def test_a_killed_process_leaves_its_slide_to_be_taken_over(tmp_path: Path, slides: list[Path]) -> None:
    big = make_slides(tmp_path / "big", 2, size=(3072, 2048), prefix="big")
    bundle = tmp_path / "b"
    make_bundle(bundle, tile_size=64, mpp=0.5, overlap=16, depth=2)  # many tiles: a slide takes seconds
    out = tmp_path / "out"
    list_file = write_list(tmp_path / "slides.txt", [big[0], *slides[:2], big[1]])
    victim = segment_process(list_file, bundle, out, "--batch", "1")
    lock = out / "big0" / CLAIM_NAME

    def raws() -> list[Path]:  # the raw mask is named with its writer's tag: mask.raw.<tag>.tmp
        return list((out / "big0").glob("mask.raw*.tmp"))

    wait_for(lambda: raws() and lock.exists(), 120, "the first process to be inside slide big0")
    info = ClaimInfo.read(lock)
    assert info is not None and info.pid == victim.pid
    os.kill(victim.pid, signal.SIGKILL)  # mid-slide: its raw mask half written, its claim left behind
    victim.wait()
    assert lock.exists() and not (out / "big0" / "report.json").exists()
    survivor = segment_process(list_file, bundle, out)
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    entries = {Path(e["slide"]).name: e for e in read_run_log(out)}
    assert {k: e["status"] for k, e in entries.items()} == {s.name: "ok" for s in (*big, *slides[:2])}
    assert set(ok_records(out).values()) == {1}  # each slide segmented once (the victim finished none)
    report = json.loads((out / "big0" / "report.json").read_text())
    assert report["run"]["run_id"] == entries["big0.tif"]["run_id"] != info.run_id  # written by the survivor
    assert not list(out.rglob(CLAIM_NAME)) and not list(out.rglob("*.partial")) and not raws()
