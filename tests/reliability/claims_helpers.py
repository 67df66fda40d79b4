"""Shared by the claim tests: a slow small bundle, slides, processes, and the invariants every case ends with
(each slide done once by one writer, report.json matching the files, run.json complete, no leftovers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import tifffile
from distributed.helpers import ok_records, segment_process

from slidefuse.runtime.segment.claims import CLAIM_NAME, ClaimInfo
from slidefuse.runtime.segment.runlog import read_records

__all__ = ["assert_invariants", "assert_outputs_whole", "holder_pid", "leftovers", "out_listing", "parse_records",
           "raw_masks", "records_of", "segment_process", "summary_counts", "wait_for"]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> None:
    """Wait until `predicate()`; fail after `timeout` s, or at once when `proc` ended first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: "
                                 f"{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def raw_masks(slide_dir: Path) -> list[Path]:
    """The raw masks being written in `slide_dir` (`mask.raw.<tag>.tmp`, one per writer)."""
    return sorted(slide_dir.glob("mask.raw*.tmp"))


def holder_pid(slide_dir: Path) -> int | None:
    info = ClaimInfo.read(slide_dir / CLAIM_NAME)
    return info.pid if info is not None else None


def records_of(out: Path, pid: int) -> dict[str, str]:
    """slide file name -> status of each record the process `pid` appended."""
    return {Path(e["slide"]).name: e["status"] for e in read_records(out) if e.get("pid") == pid}


def leftovers(out: Path) -> list[str]:
    """Temporaries, claim files and staging folders anywhere under OUT (none must be left)."""
    found = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".partial", ".new")) or ".partial" in p.name
             or ".old-" in p.name or p.name.startswith(CLAIM_NAME) or p.name == "run.json.lock"]
    return sorted(str(p.relative_to(out)) for p in found)


def assert_report_matches_files(slide_dir: Path) -> dict[str, Any]:
    report = json.loads((slide_dir / "report.json").read_text())
    for fmt, info in report["outputs"].items():
        assert (slide_dir / info["file"]).stat().st_size == info["bytes"], (slide_dir, fmt)
    return report


def assert_invariants(out: Path, slides: list[Path], procs: list[subprocess.Popen[str]] | None = None) -> None:
    """Every slide done exactly once by exactly one writer, whose report.json matches the files on disk;
    run.json lists every slide as ok; nothing temporary is left; every process exited 0."""
    for p in procs or []:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert ok_records(out) == {str(s): 1 for s in slides}, ok_records(out)
    data = json.loads((out / "run.json").read_text())
    assert sorted((e["slide"], e["status"]) for e in data["slides"]) == sorted((str(s), "ok") for s in slides)
    assert data["counts"]["ok"] == len(slides)
    for s in slides:
        report = assert_report_matches_files(out / s.stem)
        ok = [e for e in read_records(out) if e["slide"] == str(s) and e["status"] == "ok"]
        assert report["run"]["run_id"] == ok[0]["run_id"]  # the files are the recording writer's
    assert leftovers(out) == []


def assert_outputs_whole(slide_dir: Path, n_classes: int) -> dict[str, Any]:
    """Each output report.json lists has the recorded size (os.stat, not the product's check); mask.tif decodes
    (every page: uint8 class indices below `n_classes`) and mask.geojson parses into valid shapely geometries.
    Returns the report."""
    report = json.loads((slide_dir / "report.json").read_text())
    for fmt, info in report["outputs"].items():
        assert os.stat(slide_dir / info["file"]).st_size == info["bytes"], (slide_dir, fmt, info)
    with tifffile.TiffFile(slide_dir / "mask.tif") as tif:
        for page in tif.pages:
            mask = page.asarray()  # type: ignore[union-attr]
            assert mask.dtype == np.uint8 and mask.size > 0 and int(mask.max()) < n_classes, (slide_dir, mask.shape)
    features = json.loads((slide_dir / "mask.geojson").read_text())["features"]
    for feature in features:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid and not geometry.is_empty, (slide_dir, feature["properties"])
    return report


def parse_records(out: Path) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Every line of every `OUT/.run/*.jsonl` file, parsed here (not by the product's reader): the records that
    are JSON objects with a slide and a status, and per file the numbers of the lines that are not."""
    records: list[dict[str, Any]] = []
    damaged: dict[str, list[int]] = {}
    for f in sorted((out / ".run").glob("*.jsonl")):
        for n, line in enumerate(f.read_bytes().splitlines(), 1):
            try:
                e = json.loads(line)
            except ValueError:
                e = None
            if isinstance(e, dict) and isinstance(e.get("slide"), str) and isinstance(e.get("status"), str):
                records.append(e)
            else:
                damaged.setdefault(f.name, []).append(n)
    return records, damaged


_SUMMARY = re.compile(r"(\d+) segmented, (\d+) skipped, (\d+) failed(?:, (\d+) taken over by other processes)?.* "
                      r"of (\d+) slide\(s\)")


def summary_counts(stderr: str) -> dict[str, int] | None:
    """The counts of the summary line `slidefuse segment` ends with (ok, skipped, failed, claim_lost, slides);
    None when it printed none."""
    lines = [m for m in map(_SUMMARY.search, stderr.splitlines()) if m is not None]
    if not lines:
        return None
    ok, skipped, failed, lost, slides = lines[-1].groups()
    return {"ok": int(ok), "skipped": int(skipped), "failed": int(failed), "claim_lost": int(lost or 0),
            "slides": int(slides)}


def out_listing(out: Path) -> str:
    """Every path under OUT with its size in bytes (folders end in /), for an assertion message."""
    rows = []
    for p in sorted(out.rglob("*")):
        try:
            rows.append(f"{p.relative_to(out)}/" if p.is_dir() else f"{p.relative_to(out)} {p.stat().st_size}")
        except OSError:
            rows.append(f"{p.relative_to(out)} (gone)")
    return "\n".join(rows)
