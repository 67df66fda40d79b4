"""`make gpu-check` is prepared here and run on a borrowed GPU machine: its --dry-run must pass on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_the_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--results", str(tmp_path),
                          "--dry-run", "--budget", "400"], capture_output=True, text=True, timeout=600)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert res.returncode == 0, (res.stdout[-3000:], {k: v["status"] for k, v in summary["steps"].items()})
    assert {"gpu-tests", "run_gpu", "export", "slide-torch", "slide-null"} <= set(summary["steps"])
    for name in ("run_gpu", "slide-torch", "slide-null"):
        assert (tmp_path / f"{name}.json").exists(), name
    null = json.loads((tmp_path / "slide-null.json").read_text())
    assert null["summary"]["tiles_run"] > 0
