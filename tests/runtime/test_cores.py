"""`runtime.cores.usable_cores`: the affinity mask, capped by a cgroup v2 CPU quota (read from a fake cpu.max)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidefuse.runtime import cores


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("200000 100000\n", 2),  # Kubernetes limits.cpu: 2
    ("250000 100000\n", 3),  # 2.5 cores: rounded up
    ("50000 100000\n", 1),  # half a core: still one
    ("max 100000\n", None),  # no quota
    ("garbage\n", None),
    ("abc 100000\n", None),
    ("0 100000\n", None),
])
def test_quota_cores(tmp_path: Path, text: str, expected: int | None) -> None:
    assert cores.quota_cores(_cpu_max(tmp_path, text)) == expected


def test_quota_cores_without_the_file(tmp_path: Path) -> None:
    assert cores.quota_cores(tmp_path / "absent") is None


def test_usable_cores_is_the_smaller_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)
    assert cores.usable_cores(_cpu_max(tmp_path, "300000 100000")) == 3  # quota below the affinity mask
    assert cores.usable_cores(_cpu_max(tmp_path, "1600000 100000")) == 8  # quota above it
    assert cores.usable_cores(_cpu_max(tmp_path, "max 100000")) == 8
    assert cores.usable_cores(tmp_path / "absent") == 8


def test_affinity_cores_without_sched_getaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cores.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cores.os, "cpu_count", lambda: None)
    assert cores.affinity_cores() == 1


def test_usable_cores_here_is_positive() -> None:
    assert cores.usable_cores() >= 1
