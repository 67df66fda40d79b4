"""`slidefuse bench engine` on the tiny model with ort-cpu: the JSON carries latency percentiles, throughput,
FLOPs and the fraction of the peak; the summaries and peaks are exact on known inputs; bad options fail with
one line. No assertion is about how fast anything ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.bench import machine
from slidefuse.bench.engine import (
    Contender,
    compare_backends,
    latency_summary,
    parse_batches,
    resolve_precision,
)
from slidefuse.cli import cli
from slidefuse.errors import UsageError
from slidefuse.runtime.backends import BackendInfo
from slidefuse.runtime.bundle import Bundle


def test_engine_json_carries_the_named_fields(tiny_bundle: Bundle, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny_bundle.path), "--backend", "ort-cpu",
                              "--batch", "1,3", "--iters", "4", "--warmup", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiles/s" in res.output and "of peak" in res.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "engine" and doc["backend"]["name"] == "ort-cpu" and doc["backend"]["precision"] == "fp32"
    assert doc["backend"]["device"] == "cpu" and doc["backend"]["info"]["providers"] == ["CPUExecutionProvider"]
    assert {"cpu", "cores", "ram_gib", "gpu", "versions", "load_average", "date"} <= set(doc["machine"])
    assert doc["machine"]["versions"]["onnxruntime"] and doc["machine"]["versions"]["slidefuse"]
    assert doc["model"]["encoder"] == "tiny" and doc["model"]["tile_size"] == 64 and doc["model"]["num_classes"] == 3
    assert doc["flops"]["available"] and doc["flops"]["total"] == 106_185_216
    assert doc["peak"]["estimate"] is True and doc["peak"]["precision"] == "fp32"
    assert [r["batch"] for r in doc["results"]] == [1, 3]
    for r in doc["results"]:
        assert r["iters"] == 4
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["tiles_per_s"] == pytest.approx(r["batch"] * 1e3 / r["mean_ms"])
        assert r["megapixels_per_s"] == pytest.approx(r["tiles_per_s"] * 64 * 64 / 1e6)
        assert r["achieved_tflops"] == pytest.approx(106_185_216 * r["tiles_per_s"] / 1e12)
        if doc["peak"]["tflops"]:
            assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops"] / doc["peak"]["tflops"])
        assert r["memory"]["host_rss_mib"] > 0 and "device_memory_source" in r["memory"]


def test_latency_summary_is_exact_on_known_samples() -> None:
    s = latency_summary([0.010, 0.020, 0.030, 0.040, 0.100], batch=4, tile=512)
    assert s["p50_ms"] == pytest.approx(30.0)
    assert s["p95_ms"] == pytest.approx(88.0)  # linear interpolation between 40 and 100
    assert s["p99_ms"] == pytest.approx(97.6)
    assert s["mean_ms"] == pytest.approx(40.0) and s["ms_per_tile"] == pytest.approx(10.0)
    assert s["tiles_per_s"] == pytest.approx(100.0)
    assert s["megapixels_per_s"] == pytest.approx(100.0 * 512 * 512 / 1e6)


def test_bad_batch_and_unknown_backend_fail_with_one_line(tiny_bundle: Bundle, runner: CliRunner) -> None:
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny_bundle.path), "--batch", "0,x"])
    assert res.exit_code == 2 and "--batch '0,x'" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny_bundle.path), "--backend", "nope"])
    assert res.exit_code != 0 and "valid backends" in res.output and "ort-cpu" in res.output
    with pytest.raises(UsageError):
        parse_batches("")


def test_a_precision_the_backend_does_not_report_is_refused() -> None:
    silent = BackendInfo("quiet", "cpu", None)
    assert resolve_precision(silent, None) == "fp32"
    assert resolve_precision(BackendInfo("torch", "cpu", "bf16"), "bf16") == "bf16"
    with pytest.raises(UsageError, match="backend quiet does not report running fp16"):
        resolve_precision(silent, "fp16")
    with pytest.raises(UsageError, match="backend torch runs fp32"):
        resolve_precision(BackendInfo("torch", "cpu", "fp32"), "bf16")


def test_the_peak_follows_the_device_the_backend_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    from slidefuse.bench import engine

    monkeypatch.setattr(engine, "gpu_name", lambda: "NVIDIA A100-SXM4-80GB")
    named = engine.device_peak(BackendInfo("trt", "cuda", "fp16", device_name="NVIDIA H100 80GB HBM3"), "fp16")
    assert named.tflops == 989.0
    assert engine.device_peak(BackendInfo("ort-cuda", "cuda", "fp16"), "fp16").tflops == 312.0  # device 0's
    assert engine.device_peak(BackendInfo("ort-cpu", "cpu", "fp32"), "fp32").estimate


def test_interleaved_comparison_reports_a_ratio(tiny_bundle: Bundle) -> None:
    doc = compare_backends(tiny_bundle, [Contender("ort-cpu", {"threads": 1}, "one-thread"),
                                         Contender("ort-cpu", {}, "all-threads")],
                           batch=2, rounds=3, iters_per_round=2, warmup=1)
    a, b = doc["results"]["one-thread"], doc["results"]["all-threads"]
    assert len(a["samples_ms"]) == len(b["samples_ms"]) == 6 and len(doc["load_average_per_round"]) == 3
    ratio = doc["ratios"]["throughput_ratio_one_thread_to_all_threads"]
    assert ratio == pytest.approx(a["tiles_per_s"] / b["tiles_per_s"]) and ratio > 0
    with pytest.raises(UsageError):
        compare_backends(tiny_bundle, [Contender("ort-cpu")], batch=1)


def test_peaks_gpu_table_and_cpu_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = machine.gpu_peak("NVIDIA H100 80GB HBM3", "bf16")
    assert h100.tflops == 989.0 and not h100.estimate
    assert machine.gpu_peak("NVIDIA H200", "fp16").tflops == 989.0
    fp32 = machine.gpu_peak("NVIDIA H100 80GB HBM3", "fp32")
    assert fp32.tflops == 67.0 and fp32.alt_tflops == {"tf32": 494.0}
    assert machine.gpu_peak("NVIDIA H100 PCIe", "bf16").tflops == 756.0
    assert machine.gpu_peak("Some GPU", "bf16").tflops is None
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx", "avx2", "fma"})
    monkeypatch.setattr(machine, "cpu_mhz", lambda: 2500.0)
    monkeypatch.setattr(machine, "usable_cores", lambda: 4)
    peak = machine.cpu_peak()
    assert peak.tflops == pytest.approx(4 * 32 * 2.5e9 / 1e12) and peak.estimate and "estimate" in peak.source
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx512f", "avx2", "fma"})
    assert machine.cpu_peak().tflops == pytest.approx(4 * 64 * 2.5e9 / 1e12)


def test_backend_options_are_parsed() -> None:
    from slidefuse.commands.bench_engine import parse_options

    assert parse_options(("threads=2", "tf32=false", "spin=True", "scale=0.5", "device=cuda")) == {
        "threads": 2, "tf32": False, "spin": True, "scale": 0.5, "device": "cuda"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_options(("threads",))
