"""Backends on an NVIDIA GPU (marked `gpu`: skipped without CUDA; run with `pytest -m gpu`).

torch on CUDA (fp32 / fp16 / bf16 autocast, torch.compile with CUDA graphs, a ViT-L/16-size model at 512 px),
onnxruntime's CUDA and TensorRT execution providers (when onnxruntime-gpu is installed) and the native TensorRT
engine (when TensorRT is installed), each against ort-cpu / torch on the same tiles. Tests whose runtime is
missing skip with the reason.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from runtime.test_backends import TILE, agreement, tiny_bundle
from slidefuse.errors import EngineMismatch, UsageError
from slidefuse.runtime.backends import available_backends, open_backend
from slidefuse.runtime.bundle import Bundle, load_bundle

pytestmark = pytest.mark.gpu

FP32 = (1e-3, 0.999)  # max |dp|, min argmax agreement
REDUCED = (5e-2, 0.99)  # fp16 / bf16 / TF32 (TensorRT's fp32 uses TF32 unless told otherwise)


def _need(name: str) -> None:
    reason = available_backends()[name]
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


def _check(ref: np.ndarray, out: np.ndarray, limits: tuple[float, float]) -> None:
    max_diff, agree = agreement(ref, out)
    assert max_diff <= limits[0] and agree >= limits[1], (max_diff, agree)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    from slidefuse.bench.parity import parity_inputs

    return parity_inputs(TILE, 7, seed=11).tiles


@pytest.fixture(scope="module")
def cpu_ref(bundle: Bundle, tiles: np.ndarray) -> np.ndarray:
    with open_backend("ort-cpu", bundle) as be:
        return be.run(tiles)


# ------------------------------------------------------------------------------------------- torch on CUDA
def test_torch_cuda_fp32(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray) -> None:
    with open_backend("torch", bundle, device="cuda") as be:
        out = np.concatenate([be.run(tiles[:3]), be.run(tiles[3:])])
        info = be.info()
    assert info.device == "cuda" and info.device_id == 0 and info.device_name
    assert info.settings["channels_last"] and not info.settings["tf32"]
    _check(cpu_ref, out, FP32)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_autocast(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray, precision: str) -> None:
    with open_backend("torch", bundle, device="cuda", precision=precision) as be:
        out = be.run(tiles)
        assert be.info().precision == precision
    assert out.dtype == np.float32 and agreement(cpu_ref, out)[0] > 0  # really ran in reduced precision
    _check(cpu_ref, out, REDUCED)


def test_torch_compile_cuda_graphs(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray) -> None:
    with open_backend("torch-compile", bundle, device="cuda", batch=4) as be:
        out = np.concatenate([be.run(tiles[:1]), be.run(tiles[1:])])  # padded 1 -> 4; 6 = 4 + 2 (padded)
        again = be.run(tiles[:4])
        info = be.info()
    assert info.settings["cuda_graphs"] and info.settings["compile_mode"] == "reduce-overhead"
    _check(cpu_ref, out, FP32)
    np.testing.assert_allclose(again, out[:4], atol=1e-5)  # replays do not clobber returned results


def test_torch_cuda_bad_device_index(bundle: Bundle) -> None:
    import torch

    with pytest.raises(UsageError, match=f"CUDA device {torch.cuda.device_count()} does not exist"):
        open_backend("torch", bundle, device=f"cuda:{torch.cuda.device_count()}")


def test_auto_picks_a_gpu_backend(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray) -> None:
    from slidefuse.runtime.backends.auto import choose_backend

    choice = choose_backend(bundle)
    assert choice.name in ("trt", "ort-trt", "torch", "ort-cuda"), choice
    with choice.backend as be:
        _check(cpu_ref, be.run(tiles), REDUCED)


def test_torch_vit_l16_at_512_fp16_bf16(tmp_path: Path) -> None:
    """uni (ViT-L/16, 1024 wide, 24 blocks) at 512 px, random weights, in fp16 and bf16 against fp32 on the GPU.
    The bundle holds only the torch weights (no ONNX export needed for the torch backend)."""
    from slidefuse.model.assembly import build_model, save_model_state
    from slidefuse.runtime.bundle import ClassInfo, Manifest, write_manifest

    model = build_model("uni", 3, tile_size=512, random_weights=True)
    save_model_state(model, tmp_path / "model.safetensors")
    m = Manifest(encoder="uni", patch_size=16, tile_size=512, mpp=0.5,
                 classes=tuple(ClassInfo(n, (i * 80, 0, 0)) for i, n in enumerate(("bg", "a", "b"))),
                 mean=tuple(model.spec.mean), std=tuple(model.spec.std),  # type: ignore[arg-type]
                 decoder_width=model.decoder_width, random_weights=True)
    del model
    write_manifest(tmp_path, m)
    b = load_bundle(tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (4, 512, 512, 3), dtype=np.uint8)
    with open_backend("torch", b, device="cuda") as be:
        ref = be.run(x)
    for precision in ("fp16", "bf16"):
        with open_backend("torch", b, device="cuda", precision=precision) as be:
            _check(ref, be.run(x), REDUCED)


# ------------------------------------------------------------------------------------------- onnxruntime GPU
def test_ort_cuda(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray) -> None:
    _need("ort-cuda")
    with open_backend("ort-cuda", bundle) as be:
        out = np.concatenate([be.run(tiles[:2]), be.run(tiles[2:]), be.run(tiles[:2])])[:7]
        info = be.info()
    assert info.providers[0] == "CUDAExecutionProvider" and info.settings["io_binding"] and info.device == "cuda"
    _check(cpu_ref, out, FP32)
    with open_backend("ort-cuda", bundle, precision="fp16") as be:
        _check(cpu_ref, be.run(tiles), REDUCED)


def test_ort_trt_with_engine_cache_in_bundle(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray,
                                            tmp_path: Path) -> None:
    _need("ort-trt")
    copy = Bundle(shutil.copytree(bundle.path, tmp_path / "b"), bundle.manifest, bundle.digest)
    for precision in ("fp32", "fp16"):
        with open_backend("ort-trt", copy, precision=precision, batch=4, max_batch=8) as be:
            out = np.concatenate([be.run(tiles[:4]), be.run(tiles[4:])])
            assert be.info().providers[0] == "TensorrtExecutionProvider"
        _check(cpu_ref, out, REDUCED)
    assert any((copy.path / "engines" / "ort-trt-cache").iterdir()), "TensorRT EP wrote no engine cache"
    with open_backend("ort-trt", copy, batch=4, max_batch=8) as be:  # starts from the cache
        _check(cpu_ref, be.run(tiles), REDUCED)


# ------------------------------------------------------------------------------------------- native TensorRT
def test_native_trt_engine(bundle: Bundle, tiles: np.ndarray, cpu_ref: np.ndarray, tmp_path: Path) -> None:
    _need("trt")
    from slidefuse.export.trt_build import BatchProfile, build_engine

    folder = shutil.copytree(bundle.path, tmp_path / "b")
    entry = build_engine(folder, "fp16", BatchProfile(1, 2, 4))
    b = load_bundle(folder)
    with open_backend("trt", b) as be:
        out = be.run(tiles)  # 7 tiles: chunks 2,2,2,1 over the two slots
        one = be.run(tiles[:1])
        info = be.info()
    assert info.engine == entry["file"] and info.precision == "fp16" and info.settings["slots"] == 2
    _check(cpu_ref, out, REDUCED)
    np.testing.assert_allclose(one, out[:1], atol=1e-3)

    wrong = dict(entry, gpu="Some Other GPU")
    other = dataclasses.replace(b, manifest=dataclasses.replace(b.manifest, engines=(wrong,)))
    with pytest.raises(EngineMismatch, match="slidefuse build"):
        with open_backend("trt", other):
            pass
