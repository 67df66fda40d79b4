"""INT8 quantisation (`slidefuse.export.quantize`): the graph onnxruntime's quantiser writes, its gate on held-out
tiles of a real slide, and what the bundle looks like afterwards (or, after a failed gate, that it did not change).

The model is the pure-ONNX colour classifier of `tests/runtime/onnx_models.py` (64 px tiles at 2 um/px), the
slide CMU-1-Small-Region.svs. Figures are re-measured with onnxruntime's own InferenceSession and tiles read
straight from the slide at the coordinates the manifest records.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from runtime.onnx_models import make_bundle  # noqa: E402

from slidefuse.errors import BundleError, ParityError, UsageError  # noqa: E402
from slidefuse.export.parity import ParityThresholds, ParityTiles  # noqa: E402
from slidefuse.export.quantize import (  # noqa: E402
    INT8_FILE,
    INT8_THRESHOLDS,
    QuantizeConfig,
    quantize_bundle,
    split_tiles,
)
from slidefuse.runtime.backends.ort import OrtCpuBackend, OrtCudaBackend, OrtOptions, OrtTrtBackend  # noqa: E402
from slidefuse.runtime.bundle import MANIFEST, load_bundle, write_manifest  # noqa: E402

WITH_CONV = ("Conv", "MatMul", "Gemm")  # the colour test model has convolutions only
# the mechanism tests use the colour model with the gate's first limit (0.995): its bf16 / int8 paths sit near 0.997
ConvConfig = functools.partial(QuantizeConfig, op_types=WITH_CONV,
                               thresholds=ParityThresholds(max_abs_diff=0.35, min_argmax_agreement=0.995))


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def int8_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the colour bundle with its INT8 graph (default options)."""
    from conftest import CMU

    if not CMU.exists():
        pytest.skip(f"{CMU} is absent")
    folder = _copy(bundle_dir, tmp_path_factory.mktemp("int8") / "colour")
    quantize_bundle(ConvConfig(bundle=folder, slides=(CMU,)))
    return folder


def test_int8_graph_added_and_bundle_verifies(int8_bundle: Path) -> None:
    bundle = load_bundle(int8_bundle, verify=True)
    m = bundle.manifest
    assert m.int8_model_file == INT8_FILE and INT8_FILE in m.files
    rec, cal = m.parity["int8"], m.export["int8"]
    assert rec["passed"] and rec["candidate"] == f"{INT8_FILE} (onnxruntime CPU)"
    assert rec["reference"] == "model.onnx (onnxruntime CPU)"
    assert rec["thresholds"] == {"max_abs_diff": 0.35, "min_argmax_agreement": 0.995}  # the thresholds this test gave
    assert rec["argmax_agreement"] >= INT8_THRESHOLDS.min_argmax_agreement
    assert cal["method"] == "percentile" and cal["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert cal["slides"][0]["file"] == "CMU-1-Small-Region.svs" and cal["slides"][0]["bytes"] > 0
    assert cal["excluded_nodes"] == 5  # Cast, Transpose, Mul (preprocessing), Softmax, the head Conv
    assert cal["onnxruntime"] and cal["seconds"] >= 0


def test_calibration_and_gate_tiles_are_disjoint(int8_bundle: Path) -> None:
    m = load_bundle(int8_bundle).manifest
    calibration = m.export["int8"]["calibration_tile_sources"]
    gate = m.parity["int8"]["tile_sources"]
    assert len(calibration) == m.export["int8"]["calibration_tiles"] == 32
    assert len(gate) == m.export["int8"]["gate_tiles"] == m.parity["int8"]["tiles"] == 16
    assert len(set(calibration)) == 32 and len(set(gate)) == 16
    assert not set(calibration) & set(gate)
    assert all(s.startswith("CMU-1-Small-Region.svs@model_xy=") for s in calibration + gate)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def test_graph_is_qdq_with_per_channel_weights_and_float_ends(int8_bundle: Path) -> None:
    model = onnx.load(str(int8_bundle / INT8_FILE))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in model.graph.initializer}
    prod = _producers(model)
    # the blur Conv's weight: an int8 initializer dequantised with one scale per output channel (axis 0)
    blur = next(n for n in model.graph.node if n.op_type == "Conv" and n.output[0] == "x_blur")
    wdq = prod[blur.input[1]]
    assert wdq.op_type == "DequantizeLinear"
    assert inits[wdq.input[0]].data_type == onnx.TensorProto.INT8
    assert len(onnx.numpy_helper.to_array(inits[wdq.input[1]])) == 3
    assert {a.name: a.i for a in wdq.attribute}.get("axis") == 0
    assert prod[blur.input[0]].op_type == "DequantizeLinear"  # its activation input is quantised (uint8)
    act_q = prod[prod[blur.input[0]].input[0]]
    assert inits[act_q.input[2]].data_type == onnx.TensorProto.UINT8
    # preprocessing: the uint8 input feeds the Cast directly; Cast, Transpose and Mul read no dequantised value
    consumers = [n for n in model.graph.node if "tiles" in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]
    for name in ("x_f", "x_nchw", "x01"):
        node = prod[name]
        assert node.op_type in ("Cast", "Transpose", "Mul")
        assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in node.input)
    # the tail: Softmax reads the head Conv's float logits and writes the graph output itself
    softmax = prod["probabilities"]
    assert softmax.op_type == "Softmax" and prod[softmax.input[0]].op_type == "Conv"
    head = prod[softmax.input[0]]
    assert head.input[1] in inits and inits[head.input[1]].data_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _gate_tiles(slide: Path, sources: list[str], tile: int, mpp: float) -> np.ndarray:
    from slidefuse.runtime.slide import open_slide

    with open_slide(slide) as reader:
        view = reader.scaled(mpp)
        out = []
        for s in sources:
            x, y = (int(v) for v in s.split("=", 1)[1].split(","))
            out.append(view.read(x, y, tile, tile))
    return np.stack(out)


def test_ort_cpu_int8_matches_fp32_within_the_recorded_figures(int8_bundle: Path, cmu_slide: Path) -> None:
    import onnxruntime as ort

    bundle = load_bundle(int8_bundle)
    m = bundle.manifest
    rec = m.parity["int8"]
    tiles = _gate_tiles(cmu_slide, rec["tile_sources"], m.tile_size, m.mpp)
    with OrtCpuBackend(bundle, precision="int8") as int8:
        got = int8.run(tiles)
        assert int8.info().graph == INT8_FILE and int8.info().precision == "int8"
    sess = ort.InferenceSession(str(int8_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(["probabilities"], {"tiles": tiles})
    diff = np.abs(ref - got)
    agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    assert diff.max() <= rec["max_abs_diff"] + 1e-6 and diff.max() <= INT8_THRESHOLDS.max_abs_diff
    assert agreement == pytest.approx(rec["argmax_agreement"], abs=1e-6)
    assert diff.max() > 0  # it really is another graph
    sess8 = ort.InferenceSession(str(int8_bundle / INT8_FILE), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess8.run(["probabilities"], {"tiles": tiles})[0], got, atol=1e-6)


def test_failed_gate_leaves_the_bundle_unchanged(bundle_dir: Path, tmp_path: Path, cmu_slide: Path) -> None:
    folder = _copy(bundle_dir, tmp_path / "colour")
    before = _snapshot(folder)
    impossible = ParityThresholds(max_abs_diff=1e-9, min_argmax_agreement=1.0)
    with pytest.raises(ParityError) as err:
        quantize_bundle(ConvConfig(bundle=folder, slides=(cmu_slide,), calibration_tiles=8, gate_tiles=4,
                                       thresholds=impossible))
    msg = str(err.value)
    assert "\n" not in msg and "INT8 gate failed" in msg and "calibration_tiles=" in msg and "method=" in msg
    assert "--" not in msg
    assert _snapshot(folder) == before
    assert load_bundle(folder).manifest.int8_model_file is None


def test_force_is_needed_to_replace_an_int8_graph(int8_bundle: Path, tmp_path: Path, cmu_slide: Path) -> None:
    folder = _copy(int8_bundle, tmp_path / "again")
    before = _snapshot(folder)
    with pytest.raises(UsageError, match="add force=True"):
        quantize_bundle(ConvConfig(bundle=folder, slides=(cmu_slide,), method="minmax"))
    assert _snapshot(folder) == before
    quantize_bundle(ConvConfig(bundle=folder, slides=(cmu_slide,), method="minmax", calibration_tiles=8,
                                   gate_tiles=4, force=True))
    m = load_bundle(folder, verify=True).manifest
    assert m.export["int8"]["method"] == "minmax" and m.parity["int8"]["tiles"] == 4
    assert (folder / INT8_FILE).read_bytes() != before[INT8_FILE]
    assert sorted(m.files) == sorted(k for k in before if k != MANIFEST)


def test_demo_bundle_needs_out(tmp_path: Path, cmu_slide: Path) -> None:
    from slidefuse.export.parity import PACKAGE_TILES

    demo = PACKAGE_TILES.parent / "default"
    before = _snapshot(demo)
    with pytest.raises(UsageError, match="out=NEW_FOLDER"):
        quantize_bundle(QuantizeConfig(bundle=demo, slides=(cmu_slide,)))
    out = tmp_path / "demo-int8"
    result = quantize_bundle(QuantizeConfig(bundle=demo, slides=(cmu_slide,), calibration_tiles=13, gate_tiles=8,
                                            out=out))
    assert result.bundle.path == out and load_bundle(out).manifest.int8_model_file == INT8_FILE
    assert result.parity["passed"] and result.int8_bytes < result.fp32_bytes
    assert _snapshot(demo) == before
    with pytest.raises(UsageError, match="already exists"):
        quantize_bundle(QuantizeConfig(bundle=demo, slides=(cmu_slide,), out=out))


def test_external_data_graph(tmp_path: Path, cmu_slide: Path) -> None:
    folder = tmp_path / "ext"
    bundle = make_bundle(folder, tile_size=64, mpp=2.0, overlap=16, depth=2)
    onnx.save_model(onnx.load(str(folder / "model.onnx")), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    write_manifest(folder, bundle.manifest)
    result = quantize_bundle(ConvConfig(bundle=folder, slides=(cmu_slide,), calibration_tiles=8, gate_tiles=4))
    assert result.record["files"] == [INT8_FILE, f"{INT8_FILE}.data"]
    assert {INT8_FILE, f"{INT8_FILE}.data"} <= set(load_bundle(folder, verify=True).manifest.files)
    with OrtCpuBackend(load_bundle(folder), precision="int8") as b:
        assert b.run(np.full((1, 64, 64, 3), 200, np.uint8)).shape == (1, 3, 64, 64)


def test_torch_only_bundle_refused(bundle_dir: Path, tmp_path: Path, cmu_slide: Path) -> None:
    folder = _copy(bundle_dir, tmp_path / "torch-only")
    (folder / "model.onnx").unlink()
    (folder / "model.safetensors").write_bytes(b"weights")
    m = load_bundle(bundle_dir).manifest
    write_manifest(folder, dataclasses.replace(m, model_file=None, torch_weights="model.safetensors"))
    with pytest.raises(BundleError, match="torch-only"):
        quantize_bundle(ConvConfig(bundle=folder, slides=(cmu_slide,)))


def test_bad_options() -> None:
    slide = Path("slide.svs")
    with pytest.raises(UsageError, match="method='kl'") as err:
        QuantizeConfig(bundle=Path("b"), slides=(slide,), method="kl").check()
    assert err.value.field == "method"
    with pytest.raises(UsageError, match="gate_tiles=0"):
        QuantizeConfig(bundle=Path("b"), slides=(slide,), gate_tiles=0).check()
    with pytest.raises(UsageError, match="op_types="):
        QuantizeConfig(bundle=Path("b"), slides=(slide,), op_types=("Softmax",)).check()


def test_split_tiles_is_disjoint_and_needs_enough_tiles() -> None:
    pool = ParityTiles(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, 3),
                       tuple(f"s@model_xy={i},0" for i in range(10)), ("slides",))
    cal, gate = split_tiles(pool, 6, 3, seed=1)
    assert len(cal.tiles) == 6 and len(gate.tiles) == 3 and not set(cal.sources) & set(gate.sources)
    assert [int(t[0, 0, 0]) for t in cal.tiles] == [int(s.split("=")[1].split(",")[0]) for s in cal.sources]
    with pytest.raises(UsageError, match="at most 10"):
        split_tiles(pool, 8, 4, seed=0)


def test_int8_precision_needs_the_graph_and_the_cpu(bundle_dir: Path, int8_bundle: Path) -> None:
    plain = load_bundle(bundle_dir)
    with pytest.raises(UsageError, match="slidefuse quantize"):
        with OrtCpuBackend(plain, precision="int8"):
            pass
    assert "slidefuse quantize" in (OrtCpuBackend.can_run(plain, OrtOptions(precision="int8")) or "")
    quantised = load_bundle(int8_bundle)
    assert OrtCpuBackend.can_run(quantised, OrtOptions(precision="int8")) is None
    with pytest.raises(UsageError, match="CPU path"):
        OrtCudaBackend(quantised, precision="int8")
    with pytest.raises(UsageError, match="CPU path"):
        OrtTrtBackend(quantised, precision="int8")
    assert "CPU path" in (OrtTrtBackend.can_run(quantised, OrtOptions(precision="int8")) or "")
    assert "CPU path" in (OrtCudaBackend.can_run(quantised, OrtOptions(precision="int8")) or "")


def test_a_graph_without_the_op_types_is_a_clear_error(bundle_dir: Path, tmp_path: Path, cmu_slide: Path) -> None:
    folder = _copy(bundle_dir, tmp_path / "colour")
    before = _snapshot(folder)
    with pytest.raises(UsageError, match=r"has no MatMul/Gemm node to quantise .*pass op_types=Conv"):
        quantize_bundle(QuantizeConfig(bundle=folder, slides=(cmu_slide,), calibration_tiles=8, gate_tiles=4))
    assert _snapshot(folder) == before
