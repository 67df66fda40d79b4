"""`slidefuse bench slide` on the real CMU slide with the tiny model and ort-cpu: stage times, end-to-end
and engine-only rates on the same tiles, and their ratio. No assertion is about how fast anything ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.bench.slide import RecordingBackend, engine_replay, stage_times
from slidefuse.cli import cli
from slidefuse.runtime.bundle import Bundle

STAGES = {"tissue", "read_decode_resample", "inference", "stitch", "write", "pipeline", "total"}


def test_slide_json_carries_stages_rates_and_ratio(tiny_bundle: Bundle, cmu_slide: Path, runner: CliRunner,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "slide.json"
    res = runner.invoke(cli, ["bench", "slide", str(cmu_slide), "--model", str(tiny_bundle.path), "--backend",
                              "ort-cpu", "--batch", "8", "--warmup", "1", "--workers", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "end-to-end / engine" in res.output
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert doc["kind"] == "slide" and doc["model"]["encoder"] == "tiny" and doc["backend"]["name"] == "ort-cpu"
    assert STAGES <= set(s["stages_s"]) and all(v >= 0 for v in s["stages_s"].values())
    assert "merged" in doc["stage_notes"]["read_decode_resample"]
    run = doc["runs"][0]
    assert s["tiles_run"] == run["tiles"]["run"] > 0
    assert run["engine_tiles"] == s["tiles_run"] and not run["engine_subset"]  # the same tiles, all of them
    assert s["tiles_per_s"] == pytest.approx(s["tiles_run"] / s["stages_s"]["total"])
    assert s["megapixels_per_s"] == pytest.approx(s["tiles_per_s"] * 64 * 64 / 1e6)
    assert s["end_to_end_to_engine_ratio"] == pytest.approx(s["end_to_end_tiles_per_s"] / s["engine_tiles_per_s"])
    assert 0 < s["end_to_end_to_engine_ratio"] and 0 < s["pipeline_to_engine_ratio"]
    assert s["engine_fraction_of_peak"] is None or s["engine_fraction_of_peak"] > 0
    assert doc["flops"]["total"] == 106_185_216 and doc["machine"]["load_average"] is not None


def test_a_missing_slide_fails_with_one_line(tiny_bundle: Bundle, runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["bench", "slide", str(tmp_path / "nope.svs"), "--model", str(tiny_bundle.path)])
    assert res.exit_code == 1 and "nope.svs: no such slide" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["bench", "slide", str(tmp_path / "nope.svs"), "--model", str(tiny_bundle.path),
                              "--batch", "0"])
    assert res.exit_code == 2 and "--batch 0" in res.output


class _Doubler:
    def __init__(self) -> None:
        self.calls = 0

    def run(self, tiles: np.ndarray) -> np.ndarray:
        self.calls += 1
        return tiles.astype(np.float32) * 2

    def info(self) -> dict[str, str]:
        return {"backend": "doubler"}


def test_recorder_keeps_copies_up_to_its_limit_and_replays_them() -> None:
    inner = _Doubler()
    rec = RecordingBackend(inner, limit=5)
    batches = [np.full((2, 4, 4, 3), i, np.uint8) for i in range(4)]
    for b in batches:
        assert np.array_equal(rec.run(b), b.astype(np.float32) * 2)
    batches[0][:] = 99  # the recorder holds copies, not views of the pipeline's reused buffers
    assert rec.kept == 4 and rec.seen == 8 and len(rec.batches) == 2
    assert [int(b[0, 0, 0, 0]) for b in rec.batches] == [0, 1] and rec.info() == {"backend": "doubler"}
    total, per_call = engine_replay(inner, rec.batches)
    assert len(per_call) == 2 and total == pytest.approx(sum(per_call)) and inner.calls == 6


def test_stage_times_names_and_remainder() -> None:
    st = stage_times({"tissue": 1.0, "read": 5.0, "inference": 3.0, "stitch": 0.5, "write": 2.0,
                      "pipeline": 4.0, "read_wait": 0.2, "infer_wait": 0.1}, total_s=7.5)
    assert st["read_decode_resample"] == 5.0 and st["other"] == pytest.approx(0.5) and st["total"] == 7.5
    with_qc = stage_times({"tissue": 1.0, "qc": 0.25, "pipeline": 4.0, "write": 2.0}, total_s=7.5)
    assert with_qc["qc"] == 0.25 and with_qc["other"] == pytest.approx(0.25)


def test_several_slides_run_as_one_batch(tiny_bundle: Bundle, cmu_slide: Path, runner: CliRunner,
                                         tmp_path: Path) -> None:
    copy = tmp_path / "copy" / "CMU-2.svs"
    copy.parent.mkdir()
    copy.write_bytes(cmu_slide.read_bytes())
    out = tmp_path / "batch.json"
    res = runner.invoke(cli, ["bench", "slide", str(cmu_slide), str(copy), "--model", str(tiny_bundle.path),
                              "--warmup", "0", "--workers", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "over 2 slides" in res.output
    doc = json.loads(out.read_text())
    run = doc["runs"][0]
    assert doc["slides"] == [str(cmu_slide), str(copy)] and run["slides"] == 2
    assert doc["settings"]["overlap_slides"] is True
    assert run["tiles_run"] == run["engine_tiles"] == 2 * (run["tiles"]["run"] // 2) > 0  # both slides' tiles
    assert run["stages_s"]["total"] > 0 and run["end_to_end_tiles_per_s"] == pytest.approx(
        run["tiles_run"] / run["stages_s"]["total"])


def test_qc_option_times_qc_and_off_skips_it(tiny_bundle: Bundle, cmu_slide: Path, runner: CliRunner,
                                             tmp_path: Path) -> None:
    docs = {}
    for mode in ("default", "off"):
        out = tmp_path / f"{mode}.json"
        kept = tmp_path / f"{mode}-out"
        res = runner.invoke(cli, ["bench", "slide", str(cmu_slide), "--model", str(tiny_bundle.path), "--backend",
                                  "ort-cpu", "--warmup", "0", "--workers", "2", "--qc", mode, "--json", str(out),
                                  "--keep-outputs", str(kept)])
        assert res.exit_code == 0, res.output
        assert f"qc {mode}" in res.output
        docs[mode] = json.loads(out.read_text())
        report = json.loads(next(kept.glob("run0/*/report.json")).read_text())
        assert report["qc"]["mode"] == mode  # the policy asked for is the one that ran
    on, off = (docs[m]["summary"]["stages_s"] for m in ("default", "off"))
    assert docs["default"]["settings"]["qc"] == "default" and docs["off"]["settings"]["qc"] == "off"
    assert on["qc"] > 0 and off["qc"] > 0  # timed in both: off still runs the stain check
    assert "quality control" in docs["default"]["stage_notes"]["qc"]
    res = runner.invoke(cli, ["bench", "slide", str(cmu_slide), "--model", str(tiny_bundle.path), "--qc", "never"])
    assert res.exit_code == 2 and "--qc" in res.output
