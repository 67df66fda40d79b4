"""Parity between backends (slidefuse.bench.parity): ort-cpu against the torch reference on the tiny model
(fast suite) and on phikon, a ViT-B/16 at 512 px with random weights (slow suite); rows for unavailable,
failing and erroring backends; tiles from a named slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from runtime.test_backends import agreement, tiny_bundle
from slidefuse.bench.parity import ParityRow, format_table, parity_inputs, run_parity
from slidefuse.errors import BackendUnavailable, UnknownName
from slidefuse.runtime.backends import open_backend, registry
from slidefuse.runtime.backends.ort import OrtCpuBackend
from slidefuse.runtime.bundle import Bundle, load_bundle


class SwappedClassesBackend(OrtCpuBackend):
    """ort-cpu with classes 1 and 2 swapped: a backend that computes the wrong thing."""

    name = "test-swapped"

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(super()._run(tiles)[:, [0, 2, 1]])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.getbasetemp())


def _row(rows: list[ParityRow], name: str) -> ParityRow:
    return next(r for r in rows if r.backend == name)


def test_parity_inputs_mix_real_and_random() -> None:
    t = parity_inputs(64, 5, seed=1)
    assert t.tiles.shape == (5, 64, 64, 3) and t.tiles.dtype == np.uint8 and len(t.sources) == 5
    assert [s.split(":")[0].split("(")[0] for s in t.sources] == ["package-data"] * 3 + ["random"] * 2
    assert len(set(t.sources)) == 5 and t.origin == "package-data+random"


def test_ort_cpu_agrees_with_torch_tiny(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BACKENDS, "test-swapped", f"{__name__}:SwappedClassesBackend")
    rows = run_parity(bundle, ["ort-cpu", "test-swapped"], n_tiles=4, n_random=2, batch=4, seed=2)
    assert [r.backend for r in rows] == ["torch", "ort-cpu", "test-swapped"]
    ref, ort = rows[0], _row(rows, "ort-cpu")
    assert ref.status == "reference" and ref.info["device"] == "cpu" and ref.precision == "fp32"
    assert ort.status == "pass" and ort.tiles == 6 and ort.info["providers"] == ["CPUExecutionProvider"]
    assert {r.tile_origin for r in rows} == {"package-data+random"}
    assert ort.max_abs_diff is not None and ort.max_abs_diff <= 1e-3
    assert ort.argmax_agreement is not None and ort.argmax_agreement >= 0.999
    assert ort.thresholds == {"max_abs_diff": 1e-3, "min_argmax_agreement": 0.999}
    assert ort.run_s and ort.tiles_per_s and ort.load_s is not None
    bad = _row(rows, "test-swapped")
    assert bad.status == "fail" and bad.argmax_agreement is not None and bad.argmax_agreement < 0.999
    table = format_table(rows)
    assert "ort-cpu" in table and "test-swapped" in table and "fail" in table


def test_reduced_precision_rows(bundle: Bundle) -> None:
    """--precision fp16: ort-cpu runs model.fp16.onnx under the fp16 thresholds; torch refuses fp16 on the CPU
    and gets an error row instead of stopping the run."""
    rows = run_parity(bundle, ["ort-cpu", "torch"], n_tiles=3, batch=2, options={"precision": "fp16"})
    ort, torch_row = _row(rows, "ort-cpu"), rows[-1]
    assert ort.status == "pass" and ort.precision == "fp16" and ort.info["graph"] == "model.fp16.onnx"
    assert ort.thresholds["max_abs_diff"] == 5e-2
    assert torch_row.backend == "torch" and torch_row.status == "error"
    assert "fp16 on the CPU" in torch_row.reason


def test_every_backend_listed(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without names every registered backend gets a row; those that cannot run here say why."""
    real = registry.available_backends

    def avail() -> dict[str, str | None]:
        out = real()
        out["torch-compile"] = "skipped in this test (compiling takes minutes on a CPU)"
        out["triton"] = "skipped in this test (needs a Triton server; tests/deploy runs one)"
        return out

    monkeypatch.setattr(registry, "available_backends", avail)
    rows = run_parity(bundle, None, n_tiles=2, batch=2)
    assert [r.backend for r in rows] == ["torch", *[n for n in registry.backend_names() if n != "torch"]]
    assert _row(rows, "torch-compile").status == "unavailable"
    for r in rows:
        assert r.status in ("reference", "pass", "unavailable"), r
        if r.status == "unavailable":
            assert r.reason and r.max_abs_diff is None
    if real()["trt"] is not None:
        assert "slidefuse[trt]" in _row(rows, "trt").reason


def test_named_backend_that_cannot_run_is_an_error(bundle: Bundle) -> None:
    if registry.available_backends()["trt"] is None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendUnavailable, match="'trt' is not available here.*available backends: ort-cpu"):
        run_parity(bundle, ["ort-cpu", "trt"])
    with pytest.raises(UnknownName, match="valid backends"):
        run_parity(bundle, ["ort-gpu"])


def test_tiles_from_named_slides(bundle: Bundle, tmp_path: Path) -> None:
    """--parity-slides: the tiles are cut from the named slide at the bundle's pixel size; no random tiles."""
    from runtime.conftest import synthetic_rgb, write_pyramid_tiff

    slide = write_pyramid_tiff(synthetic_rgb(1024, 768), tmp_path / "synth.tif", 0.5)
    rows = run_parity(bundle, ["ort-cpu"], n_tiles=3, slides=[slide], batch=2)
    assert [(r.backend, r.status, r.tiles, r.tile_origin) for r in rows] == [
        ("torch", "reference", 3, "slides"), ("ort-cpu", "pass", 3, "slides")]


@pytest.mark.slow
def test_ort_cpu_agrees_with_torch_phikon(phikon_bundle: Path) -> None:
    """phikon (ViT-B/16, 768 wide, 12 blocks) at 512 px with random weights: the exported graph on ort-cpu
    against the torch backend on 4 tiles (2 shipped real tissue tiles, mirrored out to 512 px, and 2 random),
    batches 1 and 3."""
    b = load_bundle(phikon_bundle)
    tiles = parity_inputs(512, 4, seed=5).tiles
    with open_backend("torch", b, device="cpu") as be:
        ref = np.concatenate([be.run(tiles[:2]), be.run(tiles[2:])])
    with open_backend("ort-cpu", b) as be:
        out = np.concatenate([be.run(tiles[:1]), be.run(tiles[1:])])
    max_diff, agree = agreement(ref, out)
    print(f"phikon 512 px, 4 tiles: ort-cpu vs torch max |dp| {max_diff:.3g}, argmax agreement {agree:.6f}")
    assert max_diff <= 1e-3 and agree >= 0.999, (max_diff, agree)
