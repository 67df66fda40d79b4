"""Fused ONNX export of the tiny test encoder: graph contract, parity gate (and a tampered graph it must catch),
fp16 graph, external data, atomic bundle writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from slidefuse.errors import IntegrityError, ParityError, UsageError  # noqa: E402
from slidefuse.export import onnx_export  # noqa: E402
from slidefuse.export.onnx_export import ExportConfig, export_bundle  # noqa: E402
from slidefuse.export.parity import (  # noqa: E402
    ParityTiles,
    compare,
    gate_backend,
    parity_tiles,
)
from slidefuse.model.registry import get_spec  # noqa: E402
from slidefuse.runtime.bundle import load_bundle  # noqa: E402

TILE = 64
CLASSES = ("background", "tumour", "stroma")


@pytest.fixture(autouse=True, scope="module")
def _quiet_exporter_logs():  # type: ignore[no-untyped-def]
    """torch's export tracer logs at DEBUG into pytest's capture handler, which doubles export time."""
    import logging

    lg = logging.getLogger("torch.__trace")
    old, lg.disabled = lg.disabled, True
    yield
    lg.disabled = old


def _config(out: Path, **kw: object) -> ExportConfig:
    base: dict[str, object] = dict(encoder="tiny", classes=CLASSES, mpp=2.0, out=out, tile_size=TILE,
                                   random_weights=True, parity_real_tiles=2, parity_random_tiles=1)
    base.update(kw)
    return ExportConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return export_bundle(_config(tmp_path_factory.mktemp("exp") / "tiny.bundle", fp16=True))


def test_bundle_files_and_manifest(bundle) -> None:  # type: ignore[no-untyped-def]
    m = bundle.manifest
    assert {"model.onnx", "model.fp16.onnx", "model.safetensors"} <= set(m.files)
    assert (m.encoder, m.patch_size, m.tile_size, m.mpp) == ("tiny", 16, TILE, 2.0)
    assert m.class_names == list(CLASSES)
    assert m.classes[0].color == (0, 0, 0) and len({c.color for c in m.classes}) == 3
    assert m.overlap == TILE // 8 and m.opset >= 17 and m.random_weights
    assert m.decoder_width == get_spec("tiny").default_decoder_width and m.torch_weights == "model.safetensors"
    assert m.tools["torch"] and m.tools["onnx"] and m.created.endswith("Z")
    for key in ("fp32", "fp16"):
        rep = m.parity[key]
        assert rep["passed"] and rep["tiles"] == 3 and rep["batch_sizes"] == [1, 2]
        assert rep["tile_origin"] == "package-data+random"
        assert rep["tile_sources"] == ["package-data:cmu-1-0.png", "package-data:cmu-1-1.png",
                                       "random(seed=0)#0"]
    assert m.parity["fp32"]["reference"] == "torch fp32 (cpu)"
    assert m.parity["fp16"]["reference"] == "model.onnx (onnxruntime CPU)"
    assert m.parity["fp32"]["max_abs_diff"] <= 1e-3 and m.parity["fp32"]["argmax_agreement"] >= 0.999
    assert m.export["config"]["encoder"] == "tiny" and m.export["config"]["out"] == "tiny.bundle"
    assert m.export["exporter"].startswith("torch.onnx.export(dynamo=True)") and m.export["graph"]["layernorm_ops"] >= 5
    on_disk = json.loads((bundle.path / "manifest.json").read_text())
    assert on_disk["files"] == m.files and not list(bundle.path.parent.glob(".tiny.bundle.*"))


def test_graph_contract(bundle) -> None:  # type: ignore[no-untyped-def]
    g = onnx.load(str(bundle.model_path))
    ops = {n.op_type for n in g.graph.node}
    assert "LayerNormalization" in ops and "Softmax" in ops
    inp, out = g.graph.input[0], g.graph.output[0]
    assert (inp.name, inp.type.tensor_type.elem_type) == ("tiles", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("probabilities", onnx.TensorProto.FLOAT)
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    with gate_backend(bundle) as run:
        for b in (1, 5):
            tiles = np.random.default_rng(b).integers(0, 256, (b, TILE, TILE, 3), dtype=np.uint8)
            p = run.run(tiles)
            assert p.shape == (b, 3, TILE, TILE) and p.dtype == np.float32
            np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_safetensors_rebuilds_the_same_model(bundle) -> None:  # type: ignore[no-untyped-def]
    import torch

    from slidefuse.model.assembly import build_model_from_state

    m = bundle.manifest
    model = build_model_from_state(m.encoder, m.num_classes, m.tile_size, m.decoder_width,
                                   bundle.file(m.torch_weights))
    tiles = np.random.default_rng(3).integers(0, 256, (2, TILE, TILE, 3), dtype=np.uint8)
    with torch.inference_mode():
        p_torch = model(torch.from_numpy(tiles)).numpy()
    with gate_backend(bundle) as run:
        assert np.abs(p_torch - run.run(tiles)).max() < 1e-4


def test_fp16_graph_keeps_io_and_fp32_islands(bundle) -> None:  # type: ignore[no-untyped-def]
    g = onnx.load(str(bundle.file("model.fp16.onnx")))
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert g.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: i.data_type for i in g.graph.initializer}
    big = [i for i in g.graph.initializer if np.prod(i.dims) >= 1024]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    for n in g.graph.node:
        if n.op_type == "LayerNormalization":  # scale and bias stay fp32
            assert inits[n.input[1]] == onnx.TensorProto.FLOAT
    assert bundle.file("model.fp16.onnx").stat().st_size < 0.6 * bundle.model_path.stat().st_size


def _drop_normalisation(src: Path, dst: Path) -> None:
    """Rewire the graph so the patch embedding sees the raw 0..255 pixels (normalisation removed)."""
    g = onnx.load(str(src))
    first_conv = next(n for n in g.graph.node if n.op_type == "Conv")
    producer = {o: n for n in g.graph.node for o in n.output}
    x = first_conv.input[0]
    while producer[x].op_type != "Cast":  # walk back over the normalisation (Mul/Add) to the uint8 -> float cast
        x = producer[x].input[0]
    first_conv.input[0] = x
    onnx.save(g, str(dst))


def test_parity_gate_catches_a_graph_without_normalisation(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    bad_folder = tmp_path / "bad.bundle"
    shutil.copytree(bundle.path, bad_folder)
    _drop_normalisation(bundle.model_path, bad_folder / "model.onnx")
    bad = dataclasses.replace(bundle, path=bad_folder)
    tiles = parity_tiles(TILE, 2.0, n_real=1, n_random=2)
    report = compare({"a": gate_backend(bundle), "b": gate_backend(bundle)}, tiles).check()
    assert report.pairs[0].max_abs_diff == 0.0 and report.tile_origin == "package-data+random"
    with pytest.raises(ParityError, match="bad.onnx: parity with model.onnx failed"):
        compare({"model.onnx": gate_backend(bundle), "bad.onnx": gate_backend(bad)}, tiles).check()


class _ConstantRunner:
    """Class 0 everywhere; with `traced_batch`, class 1 for any other batch size (like a traced batch axis)."""

    def __init__(self, traced_batch: int | None = None) -> None:
        self.traced_batch = traced_batch

    def __enter__(self) -> _ConstantRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, t: np.ndarray) -> np.ndarray:
        out = np.zeros((len(t), 2, 8, 8), np.float32)
        wrong = self.traced_batch is not None and len(t) != self.traced_batch
        out[:, 1 if wrong else 0] = 1.0
        return out


def test_parity_gate_catches_a_wrong_batch_axis() -> None:
    tiles = ParityTiles(np.zeros((4, 8, 8, 3), np.uint8), ("z",) * 4, ("random",))
    with pytest.raises(ParityError, match="argmax agreement 0.50000"):  # batches 1, 2, 1: half the tiles wrong
        compare({"r": _ConstantRunner(), "c": _ConstantRunner(traced_batch=2)}, tiles).check()


def test_failed_parity_leaves_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = onnx_export.export_onnx

    def tampered(model, path, **kw):  # type: ignore[no-untyped-def]
        files = real_export(model, path, **kw)
        _drop_normalisation(path, path)
        return files

    monkeypatch.setattr(onnx_export, "export_onnx", tampered)
    out = tmp_path / "bad.bundle"
    with pytest.raises(ParityError):
        export_bundle(_config(out, simplify=False, parity_real_tiles=0, parity_random_tiles=2))
    assert list(tmp_path.iterdir()) == []


def test_external_data_is_hashed(tmp_path: Path) -> None:
    b = export_bundle(_config(tmp_path / "ext.bundle", external_data=True, parity_real_tiles=0,
                              parity_random_tiles=1))
    data = [f for f in b.manifest.files if f.startswith("model.onnx") and f != "model.onnx"]
    assert data and b.manifest.export["external_data"] == data
    assert b.manifest.parity["fp32"]["passed"]
    p = b.path / data[0]
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="sha256"):
        load_bundle(b.path)


def test_existing_target_needs_force(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from slidefuse.export.bundle_writer import check_target, staging_folder

    copy = tmp_path / "copy.bundle"
    shutil.copytree(bundle.path, copy)
    with pytest.raises(UsageError, match="force=True") as err:
        export_bundle(_config(copy))  # refused before any model is built
    assert err.value.field == "out" and "--" not in str(err.value)
    check_target(copy, force=True)
    other = tmp_path / "notabundle"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(UsageError, match="not a bundle"):
        check_target(other, force=True)
    with staging_folder(copy, force=True) as stage:  # replace: the old bundle goes, the new one appears whole
        (stage / "manifest.json").write_text("{}")
    assert [p.name for p in copy.iterdir()] == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bundle", "notabundle"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(classes=("background",)), "at least two"),
        (dict(classes=("a", "a")), "unique"),
        (dict(colors=((0, 0, 0),)), "1 colours for 3 classes"),
        (dict(mpp=0.0), "mpp=0.0"),
        (dict(opset=16), "opset=16"),
        (dict(overlap=64), "overlap=64"),
        (dict(parity_real_tiles=5), "the package ships 4"),
        (dict(parity_real_tiles=0, parity_random_tiles=0), "no tiles"),
    ],
)
def test_bad_options(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        export_bundle(_config(tmp_path / "b", **kw))
    assert not (tmp_path / "b").exists()


def test_parity_tiles_from_named_slides(tmp_path: Path) -> None:
    """The gate's real tiles come from the slides named in the config (open_slide + tissue + grid at the
    model's mpp); the manifest records them, and a slide that does not exist is refused before any export."""
    from runtime.conftest import synthetic_rgb, write_pyramid_tiff

    from slidefuse.errors import SlideNotFound

    with pytest.raises(SlideNotFound, match="nope.svs: no such parity slide"):
        export_bundle(_config(tmp_path / "none.bundle", parity_slides=(tmp_path / "nope.svs",)))
    assert not (tmp_path / "none.bundle").exists()
    slide = write_pyramid_tiff(synthetic_rgb(1024, 768), tmp_path / "synth.tif", 0.5)
    b = export_bundle(_config(tmp_path / "s.bundle", parity_slides=(slide,), parity_real_tiles=2,
                              parity_random_tiles=0, simplify=False))
    rep = b.manifest.parity["fp32"]
    assert rep["passed"] and rep["tile_origin"] == "slides" and rep["tiles"] == 2
    assert [s.split("@")[0] for s in rep["tile_sources"]] == ["synth.tif", "synth.tif"]
    assert b.manifest.export["config"]["parity_slides"] == ["synth.tif"]
