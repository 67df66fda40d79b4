"""The README's "Python API" example, extracted from README.md and run as written (in a scratch folder laid
out like the repository after `make demo`: the demonstration bundle and CMU-1-Small-Region.svs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python example"
    return blocks[0]


def test_readme_python_api_example_runs(cmu_slide: Path, tmp_path: Path) -> None:
    (tmp_path / ".cache" / "demo").mkdir(parents=True)
    (tmp_path / ".cache" / "demo" / "CMU-1-Small-Region.svs").symlink_to(cmu_slide)
    (tmp_path / "slidefuse" / "data").mkdir(parents=True)
    (tmp_path / "slidefuse" / "data" / "default").symlink_to(REPO / "slidefuse" / "data" / "default")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ok (740, 554) (2.0")  # the CMU region at the demo model's 2 um/px
    assert any(re.fullmatch(r"\S.*: \d+\.\d{3} mm2", ln) for ln in lines[1:])
    assert (tmp_path / "api-out" / "CMU-1-Small-Region" / "mask.tif").is_file()
