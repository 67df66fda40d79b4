"""`slidefuse segment` flags of this area: --device and --option (backend options), --shard, --claim-timeout,
--ray, through click's CliRunner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from distributed.helpers import make_slides
from slidefuse.cli import cli
from slidefuse.runtime.segment.runlog import read_run_log


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_slides(tmp_path_factory.mktemp("slides"), 3, size=(512, 384))


def _segment(*args: object) -> Result:
    return CliRunner().invoke(cli, ["segment", "--workers", "1", *[str(a) for a in args]])


def _one_error(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_device_and_options_reach_the_backend(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _segment(slides[0], "--model", bundle_dir, "--out", out, "--device", "0", "--option", "threads=1",
                      "--option", "spin=false")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "s0" / "report.json").read_text())["run"]
    assert run["options"]["backend_options"] == {"threads": 1, "spin": False, "device_id": 0}


def test_bad_backend_options_are_one_line_usage_errors(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    line = _one_error(_segment(slides[0], "--model", bundle_dir, "--out", tmp_path, "--option", "bogus=1"))
    assert "unknown option 'bogus'" in line and "threads" in line  # lists the valid keys
    line = _one_error(_segment(slides[0], "--model", bundle_dir, "--out", tmp_path, "--threads", "1",
                               "--option", "threads=2"))
    assert "--threads 1 conflicts with --option threads=2" in line
    line = _one_error(_segment(slides[0], "--model", bundle_dir, "--out", tmp_path, "--option", "threads"))
    assert "KEY=VALUE" in line
    line = _one_error(_segment(slides[0], "--model", bundle_dir, "--out", tmp_path, "--option", "threads=many"))
    assert "threads" in line and "integer" in line


def test_shards_split_a_list_between_runs(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _segment(*slides, "--model", bundle_dir, "--out", out, "--shard", "0/2", "--option", "threads=1")
    assert first.exit_code == 0, first.output
    assert sorted(Path(e["slide"]).name for e in read_run_log(out)) == ["s0.tif", "s2.tif"]
    second = _segment(*slides, "--model", bundle_dir, "--out", out, "--shard", "1/2", "--option", "threads=1")
    assert second.exit_code == 0, second.output
    assert sorted(Path(e["slide"]).name for e in read_run_log(out)) == ["s0.tif", "s1.tif", "s2.tif"]
    assert "2 segmented" in first.stderr and "1 segmented" in second.stderr
    line = _one_error(_segment(*slides, "--model", bundle_dir, "--out", out, "--shard", "2/2"))
    assert line.startswith("slidefuse: error: --shard '2/2': expected I/N")
    line = _one_error(_segment(*slides, "--model", bundle_dir, "--out", out, "--claim-timeout", "0"))
    assert line.startswith("slidefuse: error: --claim-timeout must be a positive, finite number")


def test_ray_refuses_a_path_taken_as_its_address(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    line = _one_error(CliRunner().invoke(cli, ["segment", "--ray", str(slides[0].parent), "--model",
                                               str(bundle_dir), "--out", str(tmp_path)]))
    assert "'--ray auto'" in line


@pytest.mark.slow
def test_segment_on_a_local_ray_cluster(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "out"
    result = _segment(*slides, "--model", bundle_dir, "--out", out, "--ray", "auto", "--ray-workers", "2")
    assert result.exit_code == 0, result.output
    assert "3/3 slides: 3 done, 0 skipped, 0 failed, 0 in flight on 2 worker(s)" in result.stderr
    assert "3 segmented, 0 skipped, 0 failed" in result.stderr
    assert sorted(e["status"] for e in read_run_log(out)) == ["ok"] * 3
    line = _one_error(_segment(*slides, "--model", bundle_dir, "--out", tmp_path / "o2", "--ray", "auto",
                               "--ray-workers", "0"))
    assert line.startswith("slidefuse: error: --ray-workers must be an integer >= 1")


def test_ray_without_the_extra_names_it(bundle_dir: Path, slides: list[Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on a base install
    result = _segment(slides[0], "--model", bundle_dir, "--out", tmp_path / "out", "--ray", "auto")
    line = _one_error(result, code=1)
    assert "pip install 'slidefuse[ray]'" in line
    assert not (tmp_path / "out").exists()  # nothing written
