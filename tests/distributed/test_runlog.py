"""The run log written by many writers at once: every record kept, run.json valid and complete."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from slidefuse.runtime.segment.runlog import RunLog, read_records, read_run_log


def test_many_writers_lose_no_entry_and_the_latest_record_wins(tmp_path: Path) -> None:
    logs = [RunLog(tmp_path, run_id=f"w{k}") for k in range(4)]
    start = threading.Barrier(len(logs))

    def write(k: int) -> None:
        start.wait()
        for i in range(15):
            logs[k].record(f"/s/{k}-{i}.svs", "ok", seconds=0.1)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(len(logs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = {f"/s/{k}-{i}.svs" for k in range(4) for i in range(15)}
    assert {e["slide"] for e in read_run_log(tmp_path)} == want
    data = json.loads((tmp_path / "run.json").read_text())  # the merged file, rewritten by the last writer
    assert {e["slide"] for e in data["slides"]} == want and data["counts"]["ok"] == 60
    logs[0].record("/s/3-0.svs", "failed", error="later")  # another writer's slide, recorded again later
    entries = {e["slide"]: e for e in read_run_log(tmp_path)}
    assert entries["/s/3-0.svs"]["status"] == "failed" and entries["/s/3-0.svs"]["run_id"] == "w0"
    assert len(read_records(tmp_path)) == 61 and not (tmp_path / "run.json.lock").exists()


def test_a_line_cut_by_a_killed_writer_is_skipped(tmp_path: Path) -> None:
    log = RunLog(tmp_path, run_id="a")
    log.record("/s/a.svs", "ok")
    with open(log.records_path, "a") as f:
        f.write('{"slide": "/s/b.svs", "sta')  # killed mid-line
    assert [e["slide"] for e in read_run_log(tmp_path)] == ["/s/a.svs"]



def test_a_skip_by_a_later_process_keeps_the_entry_of_the_one_that_did_the_slide(tmp_path: Path) -> None:
    RunLog(tmp_path, run_id="did-it").record("/s/a.svs", "ok", seconds=3.0)
    RunLog(tmp_path, run_id="came-later").record("/s/a.svs", "skipped")
    (entry,) = read_run_log(tmp_path)
    assert (entry["status"], entry["run_id"]) == ("ok", "did-it")
    RunLog(tmp_path, run_id="redid-it").record("/s/a.svs", "failed", error="x")
    assert [e["status"] for e in read_run_log(tmp_path)] == ["failed"]
    RunLog(tmp_path, run_id="after-a-failure").record("/s/a.svs", "skipped")
    assert [e["status"] for e in read_run_log(tmp_path)] == ["skipped"]
