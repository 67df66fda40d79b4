"""How many CPU cores this process may use: the one answer that thread pools, reader threads and benchmarks read.

Two limits apply on Linux, and the smaller one wins:

- the affinity mask (`os.sched_getaffinity`): `taskset`, Slurm and Docker's `--cpuset-cpus` restrict it;
- the cgroup v2 CPU quota (`/sys/fs/cgroup/cpu.max`, "QUOTA PERIOD" in microseconds, or "max PERIOD" for none):
  Docker's `--cpus` and Kubernetes' CPU limits set it, leaving the affinity mask at every core of the host.
  A quota of 2.5 cores counts as 3 (rounded up: the process may run on three cores part of the time).

Elsewhere (no affinity call) it is `os.cpu_count()`. The answer is at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: the CPU quota of this process's cgroup


def quota_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """Cores allowed by the cgroup v2 CPU quota in `cpu_max` ("QUOTA PERIOD"), rounded up; None when the file is
    absent, unreadable or says "max" (no quota)."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def affinity_cores() -> int:
    """Cores in this process's affinity mask (`os.cpu_count()` where the OS has no affinity call); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity mask, capped by the cgroup CPU quota (see the module)."""
    cores = affinity_cores()
    quota = quota_cores(cpu_max)
    return cores if quota is None else min(cores, quota)
