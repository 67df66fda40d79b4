"""Run a command; print one JSON line: its exit code, wall seconds and peak RSS (MiB) of its largest process.

    python benchmarks/anchors/peak_rss.py -- CMD ARGS...

The peak is getrusage(RUSAGE_CHILDREN).ru_maxrss of this fresh process, i.e. the largest resident set any of
the command's processes reached (a command that runs in one process: that process's peak)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> None:
    cmd = sys.argv[sys.argv.index("--") + 1:]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1)}))


if __name__ == "__main__":
    main()
