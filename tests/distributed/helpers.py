"""Slides, bundles and subprocess runs shared by the distributed tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from runtime.conftest import synthetic_rgb, write_pyramid_tiff

REPO = Path(__file__).resolve().parents[2]


def make_slides(folder: Path, n: int, size: tuple[int, int] = (1024, 768), prefix: str = "s") -> list[Path]:
    """`n` different synthetic pyramidal TIFFs at 0.5 um/px (seeds 0..n-1) named <prefix><i>.tif in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_pyramid_tiff(synthetic_rgb(size[0], size[1], seed=i), folder / f"{prefix}{i}.tif", 0.5)
            for i in range(n)]


def write_list(path: Path, slides: list[Path]) -> Path:
    path.write_text("".join(f"{s}\n" for s in slides))
    return path


def segment_process(list_file: Path, bundle: Path, out: Path, *extra: str, quiet: bool = True,
                    stderr: int | IO[str] = subprocess.PIPE) -> subprocess.Popen[str]:
    """`slidefuse segment --list LIST` as a separate process (one engine thread; quiet unless `quiet` is False,
    then with its log lines and summary; stderr piped, or into the file `stderr`)."""
    argv = [sys.executable, "-m", "slidefuse", *(["-q"] if quiet else []), "segment", "--list", str(list_file),
            "--model", str(bundle), "--out", str(out), "--threads", "1", "--workers", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def ok_records(out: Path) -> dict[str, int]:
    """slide -> how many processes recorded it as segmented ("ok"), over every process's records."""
    counts: dict[str, int] = {}
    for f in (out / ".run").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e["status"] == "ok":
                counts[e["slide"]] = counts.get(e["slide"], 0) + 1
    return counts


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
