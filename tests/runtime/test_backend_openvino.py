"""The `ov-cpu` backend (OpenVINO) against onnxruntime as the independent reference: fp32 parity on real tiles,
throughput mode's split batches in order, bf16 and int8 (a QDQ graph made here with onnxruntime's quantiser),
what OpenVINO actually compiled (read back from the compiled model), refusals and option errors, external data,
and `slidefuse segment --backend ov-cpu` on a real slide against `--backend ort-cpu`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="the ov-cpu backend needs openvino: pip install 'slidefuse[openvino]'")

import onnx  # noqa: E402
import pyvips  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from runtime.onnx_models import colour_classifier, make_bundle  # noqa: E402
from slidefuse.cli import cli  # noqa: E402
from slidefuse.errors import BackendUnavailable, BundleError, UsageError  # noqa: E402
from slidefuse.export.parity import package_tiles, random_tiles  # noqa: E402
from slidefuse.runtime.backends import available_backends, backend_names, open_backend  # noqa: E402
from slidefuse.runtime.backends import openvino as ov_backend  # noqa: E402
from slidefuse.runtime.backends.openvino import OvCpuBackend  # noqa: E402
from slidefuse.runtime.bundle import Bundle, load_bundle, read_manifest, write_manifest  # noqa: E402

TILE = 64  # the bundle_dir fixture's tile size


def tie_free(ref: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """bool [N, T, T]: pixels whose two largest reference probabilities differ by more than `margin`."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    """uint8 [13, 64, 64, 3]: 11 real tissue tiles cut from the package's shipped H&E tiles (at 0.5 um/px) and
    2 random ones; an odd count, so that no request count divides it."""
    real = package_tiles(256, 0.5, 4).tiles  # [4, 256, 256, 3]
    cut = real.reshape(4, 4, TILE, 4, TILE, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, TILE, TILE, 3)
    return np.ascontiguousarray(np.concatenate([cut[::6][:11], random_tiles(TILE, 2, seed=5).tiles]))


@pytest.fixture(scope="module")
def ort_ref(bundle: Bundle, tiles: np.ndarray) -> np.ndarray:
    with open_backend("ort-cpu", bundle, threads=1) as be:
        return be.run(tiles)


def test_registered_available_and_placed_for_auto() -> None:
    assert "ov-cpu" in backend_names()
    assert backend_names().index("ov-cpu") == backend_names().index("ort-trt") + 1
    assert available_backends()["ov-cpu"] is None
    # fp32 plain; bf16 and int8 only where their gates passed (tests/runtime/test_cpu_paths.py)
    assert [(p.priority, dict(p.options)) for p in OvCpuBackend.placements] == [
        (30, {"precision": "bf16", "unverified": "refuse"}), (28, {"precision": "int8", "unverified": "refuse"}),
        (22, {"unverified": "refuse"})]


def test_fp32_matches_onnxruntime(bundle: Bundle, tiles: np.ndarray, ort_ref: np.ndarray) -> None:
    assert len(np.unique(tiles.reshape(len(tiles), -1), axis=0)) == len(tiles)
    with open_backend("ov-cpu", bundle, threads=2) as be:
        out = be.run(tiles)
        settings = be.info().settings
    assert out.dtype == np.float32 and out.shape == ort_ref.shape
    assert float(np.abs(out - ort_ref).max()) <= 1e-4
    keep = tie_free(ort_ref)
    assert keep.mean() > 0.9
    assert np.array_equal(out.argmax(1)[keep], ort_ref.argmax(1)[keep])
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    # the precision OpenVINO compiled, read back from the compiled model: f32 even where OpenVINO's default is bf16
    assert settings["inference_precision"] == "f32"
    assert settings["int8_layers"] == 0


def test_throughput_mode_splits_in_order(bundle: Bundle, tiles: np.ndarray) -> None:
    with open_backend("ov-cpu", bundle, threads=2, mode="latency") as be:
        assert be.info().settings["requests"] == 1
        whole = be.run(tiles)
    with open_backend("ov-cpu", bundle, threads=2, streams=2, mode="throughput") as be:
        requests = be.info().settings["requests"]
        assert isinstance(requests, int)
        if requests < 2:
            pytest.skip(f"OpenVINO made {requests} infer request on this machine; the split needs 2 or more")
        assert len(tiles) % requests != 0
        split = be.run(tiles)
        small = be.run(tiles[:1])  # fewer tiles than requests
        again = be.run(tiles[3:8])  # requests reused, other batch size
    np.testing.assert_allclose(split, whole, atol=1e-6, rtol=0)
    np.testing.assert_allclose(small, whole[:1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(again, whole[3:8], atol=1e-6, rtol=0)


def test_outputs_are_copied_out(bundle: Bundle, tiles: np.ndarray) -> None:
    with open_backend("ov-cpu", bundle, threads=1) as be:
        first = be.run(tiles[:4])
        kept = first.copy()
        be.run(tiles[4:8])  # reuses the request and its output tensor
    np.testing.assert_array_equal(first, kept)


def test_bf16_close_to_fp32(bundle: Bundle, tiles: np.ndarray, ort_ref: np.ndarray) -> None:
    caps = ov_backend.cpu_capabilities()
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no bf16 support in OpenVINO (capabilities: {', '.join(caps)})")
    with open_backend("ov-cpu", bundle, threads=2, precision="bf16") as be:
        out = be.run(tiles)
        info = be.info()
    assert info.precision == "bf16" and info.settings["inference_precision"] == "bf16"
    # bf16 keeps 8 significand bits (fp16: 11), so looser than the project's fp16 bounds (5e-2 max, 99 %)
    diff = np.abs(out - ort_ref)
    assert 0 < float(diff.max()) <= 0.1 and float(diff.mean()) <= 0.02  # > 0: it really computed in bf16
    assert (out.argmax(1) == ort_ref.argmax(1)).mean() >= 0.98


def test_bf16_refused_without_cpu_support(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda: ("FP32", "INT8"))
    reason = OvCpuBackend.can_run(bundle, OvCpuBackend.options_type.parse("ov-cpu", {"precision": "bf16"}))
    assert reason is not None and "bf16" in reason and "FP32, INT8" in reason and "precision fp32" in reason
    with pytest.raises(UsageError, match=r"backend ov-cpu: precision bf16 needs a CPU with bf16 support"):
        with open_backend("ov-cpu", bundle, precision="bf16"):
            pass


def test_int8_refused_without_int8_graph(bundle: Bundle) -> None:
    reason = OvCpuBackend.can_run(bundle, OvCpuBackend.options_type.parse("ov-cpu", {"precision": "int8"}))
    assert reason is not None and "slidefuse quantize" in reason
    with pytest.raises(UsageError) as err:
        with open_backend("ov-cpu", bundle, precision="int8"):
            pass
    msg = str(err.value)
    assert "make it with `slidefuse quantize`" in msg and "\n" not in msg and "--" not in msg


@pytest.mark.parametrize(("options", "pattern"), [
    ({"thread": 2}, r"backend ov-cpu: unknown option 'thread'; valid options: cache, cache_dir, max_memory_gb, "
                   r"mode, pin, precision, streams, threads, unverified"),
    ({"precision": "fp16"}, r"backend ov-cpu: precision 'fp16' is not offered; choose one of fp32, bf16, int8"),
    ({"mode": "fast"}, r"backend ov-cpu: mode 'fast' is not offered; choose one of throughput, latency"),
    ({"streams": 0}, r"backend ov-cpu: option streams=0: expected a value >= 1"),
    ({"threads": -1}, r"backend ov-cpu: option threads=-1: expected a value >= 0"),
    ({"pin": "yes"}, r"backend ov-cpu: option pin='yes': expected true or false"),
])
def test_option_errors_name_backend_and_option(bundle: Bundle, options: dict[str, object], pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        open_backend("ov-cpu", bundle, **options)


def test_unavailable_without_openvino(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    reason = OvCpuBackend.availability()
    assert reason == "openvino is not installed: pip install 'slidefuse[openvino]'"
    with pytest.raises(BackendUnavailable, match=r"backend 'ov-cpu' is not available here: openvino is not "
                                                 r"installed.*available backends: ort-cpu"):
        open_backend("ov-cpu", bundle)


def test_info_reports_what_runs(bundle: Bundle, tiles: np.ndarray) -> None:
    with open_backend("ov-cpu", bundle, threads=2, mode="throughput", streams=2, pin=False) as be:
        be.run(tiles[:3])
        info = be.info()
        compiled = be._compiled  # the compiled model itself, to read its properties back independently
        d = info.to_dict()
        assert int(compiled.get_property("NUM_STREAMS")) == d["streams"]
        assert int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) == d["requests"]
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert compiled.get_property("ENABLE_CPU_PINNING") is False and d["pinned"] is False
    assert (info.backend, info.device, info.precision, info.graph, info.threads) == (
        "ov-cpu", "cpu", "fp32", "model.onnx", 2)
    assert d["openvino"] == ov.__version__
    assert d["mode"] == "throughput" and d["inference_precision"] == "f32"
    assert isinstance(d["cpu_isa"], str) and "FP32" in d["cpu_isa"]
    json.dumps(d)


def _int8_bundle(src: Path, folder: Path) -> Bundle:
    """A copy of bundle `src` plus an INT8 QDQ graph of its model made by onnxruntime's static quantiser
    (uint8 activations, int8 weights, calibrated on random tiles), sealed under `int8_model_file`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    shutil.copytree(src, folder)
    rng = np.random.default_rng(1)
    feeds = iter([{"tiles": rng.integers(0, 256, (2, TILE, TILE, 3), dtype=np.uint8)} for _ in range(4)])

    class Feeds(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    quantize_static(str(folder / "model.onnx"), str(folder / "model.int8.onnx"), Feeds(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    write_manifest(folder, dataclasses.replace(read_manifest(folder), int8_model_file="model.int8.onnx"))
    return load_bundle(folder)


def test_int8_runs_the_qdq_graph_in_int8(bundle_dir: Path, tiles: np.ndarray, tmp_path: Path) -> None:
    import onnxruntime as ort

    bundle = _int8_bundle(bundle_dir, tmp_path / "int8")
    session = ort.InferenceSession(str(bundle.path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    (ref,) = session.run(["probabilities"], {"tiles": tiles})
    with open_backend("ov-cpu", bundle, threads=2, precision="int8") as be:
        out = be.run(tiles)
        info = be.info()
    assert info.graph == "model.int8.onnx" and info.precision == "int8"
    assert info.settings["inference_precision"] == "f32"
    int8_layers = info.settings["int8_layers"]
    assert isinstance(int8_layers, int) and int8_layers >= 1  # the quantised convolutions run in u8/i8
    assert float(np.abs(out - ref).max()) <= 0.1  # OpenVINO's int8 arithmetic vs onnxruntime's QDQ rounding
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_external_data_graph(tmp_path: Path, tiles: np.ndarray) -> None:
    folder = tmp_path / "external"
    bundle = make_bundle(folder, tile_size=TILE)
    onnx.save(colour_classifier(1), str(folder / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    assert (folder / "model.onnx.data").stat().st_size > 0
    write_manifest(folder, bundle.manifest)
    bundle = load_bundle(folder)
    with open_backend("ort-cpu", bundle, threads=1) as be:
        ref = be.run(tiles)
    with open_backend("ov-cpu", bundle, threads=1) as be:
        out = be.run(tiles)
    assert float(np.abs(out - ref).max()) <= 1e-4


def test_unreadable_graph_is_a_bundle_error(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    bundle = make_bundle(folder, tile_size=TILE)
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    write_manifest(folder, bundle.manifest)
    with pytest.raises(BundleError) as err:
        with open_backend("ov-cpu", load_bundle(folder)):
            pass
    msg = str(err.value)
    assert msg.startswith(f"{folder / 'model.onnx'}: OpenVINO cannot read the graph") and "re-export" in msg
    assert "\n" not in msg


def test_io_mismatch_is_a_bundle_error(tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    bundle = make_bundle(folder, tile_size=TILE)
    write_manifest(folder, dataclasses.replace(bundle.manifest, input_name="images"))
    with pytest.raises(BundleError, match=r"model.onnx: inputs \[\['tiles'\]\] / outputs \[\['probabilities'\]\], "
                                          r"expected 'images' / 'probabilities' as in the manifest; re-export"):
        with open_backend("ov-cpu", load_bundle(folder)):
            pass
    folder = tmp_path / "other-tile"
    make_bundle(folder, tile_size=TILE)
    manifest = read_manifest(folder)
    onnx_model = colour_classifier(1)
    onnx_model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 32  # a fixed 32 px tile, not 64
    onnx.save(onnx_model, str(folder / "model.onnx"))
    write_manifest(folder, manifest)
    with pytest.raises(BundleError, match=r"input u8 \[\?,32,\?,3\], expected u8 \[\?,64,64,3\]"):
        with open_backend("ov-cpu", load_bundle(folder)):
            pass


def _mask(folder: Path) -> np.ndarray:
    return np.asarray(pyvips.Image.new_from_file(str(folder / "mask.tif")).numpy())


def test_segment_cli_matches_ort_cpu(bundle_dir: Path, cmu_slide: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    masks = {}
    for backend in ("ort-cpu", "ov-cpu"):
        out = tmp_path / backend
        result = runner.invoke(cli, ["segment", str(cmu_slide), "--model", str(bundle_dir), "--out", str(out),
                                     "--backend", backend, "--threads", "2", "--workers", "2",
                                     "--formats", "tiff"])
        assert result.exit_code == 0, result.output
        report = json.loads((out / cmu_slide.stem / "report.json").read_text())
        assert report["backend"]["backend"] == backend
        masks[backend] = _mask(out / cmu_slide.stem)
    assert report["backend"]["inference_precision"] == "f32"
    assert masks["ov-cpu"].shape == masks["ort-cpu"].shape and masks["ov-cpu"].size > 100_000
    assert len(np.unique(masks["ort-cpu"])) >= 2  # the slide has glass and stained tissue
    assert (masks["ov-cpu"] == masks["ort-cpu"]).mean() >= 0.999
