"""Backends on the CPU: registry errors, option checks, ort-cpu / torch parity on the tiny model, `auto`, the
GPU backends' configuration, and the native TensorRT backend's double-buffered pipeline against a fake
TensorRT + CUDA runtime (deferred stream semantics), since neither exists on CI."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import re
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from slidefuse.errors import BackendUnavailable, EngineMismatch, UnknownName, UsageError
from slidefuse.runtime import engines
from slidefuse.runtime.backends import available_backends, backend_names, open_backend
from slidefuse.runtime.backends.auto import candidates, choose_backend
from slidefuse.runtime.bundle import Bundle, load_bundle

TILE = 64
CLASSES = ("background", "tumour", "stroma")
ALL = ["ort-cpu", "ort-cuda", "ort-trt", "ov-cpu", "trt", "torch", "torch-compile", "triton", "null"]


def tiny_bundle(base: Path) -> Bundle:
    """The tiny test encoder (ViT width 64, depth 2) at 64 px, random weights, with model.fp16.onnx; exported
    once per test session into `base` (pytest's basetemp) and shared by the backend, parity and CLI tests."""
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    folder = base / "tiny-backends.bundle"
    if (folder / "manifest.json").exists():
        return load_bundle(folder)
    # cpu_gates=False: a bundle without gated accelerated CPU paths (test_auto_isa.py covers the gated ones)
    return export_bundle(ExportConfig(encoder="tiny", classes=CLASSES, mpp=2.0, out=folder, tile_size=TILE,
                                      random_weights=True, fp16=True, parity_real_tiles=1, parity_random_tiles=1,
                                      cpu_gates=False))


def agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(max |dp|, argmax agreement) of two float32 [N, C, T, T] probability arrays."""
    return float(np.abs(ref - out).max()), float((ref.argmax(1) == out.argmax(1)).mean())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tiles(bundle: Bundle) -> np.ndarray:
    """Real tissue tiles (when ../shared is present) and random tiles, uint8 [6, 64, 64, 3]."""
    from slidefuse.bench.parity import parity_inputs

    return parity_inputs(TILE, 6, seed=3).tiles


@pytest.fixture(scope="module")
def torch_ref(bundle: Bundle, tiles: np.ndarray) -> np.ndarray:
    with open_backend("torch", bundle, device="cpu") as be:
        return be.run(tiles)


# ------------------------------------------------------------------------------------------- registry / errors
def test_registry_names() -> None:
    assert backend_names(include_internal=True) == ALL
    assert backend_names() == [n for n in ALL if n != "null"]  # internal: listed only when asked for
    assert set(available_backends()) == set(ALL)


def test_unknown_backend_lists_valid_names(bundle: Bundle) -> None:
    with pytest.raises(UnknownName) as err:
        open_backend("onnx-gpu", bundle)
    msg = str(err.value)
    assert "'onnx-gpu'" in msg and all(n in msg for n in [*ALL[:-1], "auto"]) and "\n" not in msg
    assert "null" not in msg


def test_unavailable_trt_lists_available(bundle: Bundle) -> None:
    if available_backends()["trt"] is None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendUnavailable) as err:
        open_backend("trt", bundle)
    msg = str(err.value)
    assert "slidefuse[trt]" in msg and "available backends: ort-cpu" in msg and "torch" in msg
    assert "\n" not in msg


def test_unavailable_ort_cuda_names_gpu_extra(bundle: Bundle) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable, match=r"slidefuse\[gpu\].*available backends: ort-cpu"):
        open_backend("ort-cuda", bundle)


def test_unknown_option_lists_valid_ones(bundle: Bundle) -> None:
    with pytest.raises(UsageError, match=r"unknown option 'thread'; valid options: .*threads"):
        open_backend("ort-cpu", bundle, thread=2)
    with pytest.raises(UsageError, match=r"precision 'int4' is not offered; choose one of fp32, fp16, bf16"):
        open_backend("torch", bundle, precision="int4")


def test_fp16_on_cpu_refused(bundle: Bundle) -> None:
    with pytest.raises(UsageError, match="fp16 on the CPU is not supported; use precision bf16 or fp32"):
        open_backend("torch", bundle, precision="fp16", device="cpu")


def test_cuda_device_without_gpu_is_an_error(bundle: Bundle) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="sees no CUDA device.*not falling back to the CPU"):
        open_backend("torch", bundle, device="cuda")


def test_torch_rejects_bad_inputs(bundle: Bundle) -> None:
    with open_backend("torch", bundle, device="cpu") as be:
        for bad in (np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, TILE, TILE, 4), np.uint8),
                    np.zeros((TILE, TILE, 3), np.uint8)):
            with pytest.raises(UsageError, match=r"tiles must have shape \[B, 64, 64, 3\]"):
                be.run(bad)
        with pytest.raises(UsageError, match="uint8"):
            be.run(np.zeros((1, TILE, TILE, 3), np.float32))
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        be.run(np.zeros((1, TILE, TILE, 3), np.uint8))


def test_ort_fp16_needs_the_fp16_graph(bundle: Bundle) -> None:
    no16 = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, fp16_model_file=None))
    with pytest.raises(UsageError, match=r"needs model.fp16.onnx.*fp16=True"):
        with open_backend("ort-cpu", no16, precision="fp16"):
            pass


# ------------------------------------------------------------------------------------------- parity on the CPU
def test_ort_cpu_matches_torch(bundle: Bundle, tiles: np.ndarray, torch_ref: np.ndarray) -> None:
    assert torch_ref.shape == (6, 3, TILE, TILE) and torch_ref.dtype == np.float32
    np.testing.assert_allclose(torch_ref.sum(1), 1.0, atol=1e-5)
    with open_backend("ort-cpu", bundle) as be:
        out = np.concatenate([be.run(tiles[:1]), be.run(tiles[1:4]), be.run(tiles[4:])])  # dynamic batch
    max_diff, agree = agreement(torch_ref, out)
    assert max_diff <= 1e-3 and agree >= 0.999, (max_diff, agree)


def test_ort_cpu_io_binding_and_fp16_graph(bundle: Bundle, tiles: np.ndarray, torch_ref: np.ndarray) -> None:
    with open_backend("ort-cpu", bundle, io_binding=True, threads=1, spin=False) as be:
        bound = np.concatenate([be.run(tiles[:3]), be.run(tiles[3:]), be.run(tiles[:3])])[:6]
        assert be.info().settings["io_binding"] is True
    assert agreement(torch_ref, bound)[0] <= 1e-3
    with open_backend("ort-cpu", bundle, precision="fp16") as be:
        half = be.run(tiles)
        assert be.info().graph == "model.fp16.onnx" and be.info().precision == "fp16"
    max_diff, agree = agreement(torch_ref, half)
    assert max_diff <= 5e-2 and agree >= 0.99, (max_diff, agree)


def test_torch_bf16_autocast_on_cpu(bundle: Bundle, tiles: np.ndarray, torch_ref: np.ndarray) -> None:
    with open_backend("torch", bundle, device="cpu", precision="bf16") as be:
        out = be.run(tiles)
        info = be.info()
        assert (info.precision, info.device, info.device_id) == ("bf16", "cpu", None) and out.dtype == np.float32
    max_diff, agree = agreement(torch_ref, out)
    assert 0 < max_diff <= 5e-2 and agree >= 0.99, (max_diff, agree)  # > 0: autocast really ran in bf16


@pytest.mark.slow
def test_torch_compile_matches_eager(bundle: Bundle, tiles: np.ndarray, torch_ref: np.ndarray) -> None:
    """torch.compile on the CPU (minutes of compilation here, hence slow): padded fixed batch, split batches."""
    with open_backend("torch-compile", bundle, device="cpu", batch=4) as be:
        out = np.concatenate([be.run(tiles[:1]), be.run(tiles[1:])])  # 1 (padded) and 5 (split 4 + 1)
        assert be.info().settings["compiled_batch"] == 4
    max_diff, agree = agreement(torch_ref, out)
    assert max_diff <= 1e-3 and agree >= 0.999, (max_diff, agree)


# ------------------------------------------------------------------------------------------- auto
def _gpu_here() -> bool:
    import torch

    return torch.cuda.is_available() or any(available_backends()[n] is None for n in ("ort-cuda", "ort-trt", "trt"))


def test_auto_picks_ort_cpu_and_says_so(bundle: Bundle, tiles: np.ndarray, torch_ref: np.ndarray,
                                       caplog: pytest.LogCaptureFixture) -> None:
    if _gpu_here():
        pytest.skip("a GPU backend is available: auto picks it (tests/runtime/test_backends_gpu.py)")
    with caplog.at_level(logging.INFO, logger="slidefuse.runtime.backends.auto"):
        backend = open_backend("auto", bundle)
    # ov-cpu fp32 ranks above ort-cpu fp32 where OpenVINO is installed (the dev extra installs it); this bundle
    # has no gated bf16 / int8 records, so no accelerated path may be picked
    expected = "ov-cpu" if available_backends()["ov-cpu"] is None else "ort-cpu"
    assert backend.name == expected and backend.info().precision == "fp32"
    assert f"backend auto: picked {expected}" in caplog.text
    # the near misses on the picked device at INFO (an ungated CPU path says how to gate it), other devices' at DEBUG
    assert "trt not used" not in caplog.text
    if expected == "ov-cpu":
        assert "ort-cpu (int8, gated) not used: backend ort-cpu: precision int8 needs model.int8.onnx" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="slidefuse.runtime.backends.auto"):
        open_backend("auto", bundle)
    assert "trt not used: TensorRT is not installed" in caplog.text
    with backend:
        assert agreement(torch_ref, backend.run(tiles))[0] <= 1e-3


def test_auto_skips_backends_that_do_not_take_the_options(bundle: Bundle) -> None:
    if _gpu_here():
        pytest.skip("a GPU backend is available")
    choice = choose_backend(bundle, precision="bf16")
    assert choice.name == "torch" and choice.backend.device_kind() == "cpu"
    assert "precision 'bf16' is not offered" in choice.skipped["ort-cpu"]
    assert "torch (cuda)" in choice.skipped and "not available" in choice.reason


def test_auto_with_an_option_no_backend_takes_is_a_usage_error(bundle: Bundle) -> None:
    """Every backend available here refuses the option: the caller's mistake (exit 2 in the CLI), each reason
    listed; backends not available here are left out."""
    with pytest.raises(UsageError, match=r"^backend auto: no backend that can run here takes the options given "
                                         r"\(.*ort-cpu: .*unknown option 'no_such_option'") as err:
        choose_backend(bundle, no_such_option=1)
    tried = {c.name for c in candidates()}  # backends with a placement (not null, triton)
    for name, reason in available_backends().items():
        listed = re.search(rf"(\(|; ){re.escape(name)}( \(|:)", str(err.value)) is not None
        assert listed == (reason is None and name in tried), name


# ------------------------------------------------------------------------------------------- GPU configuration
def test_ort_cuda_and_trt_provider_options(bundle: Bundle, tmp_path: Path) -> None:
    """The provider lists and options the GPU sessions are created with (checked without creating them)."""
    from slidefuse.runtime.backends.ort import OrtCudaBackend, OrtTrtBackend

    cuda = OrtCudaBackend(bundle, device_id=1)
    (name, opts), cpu = cuda.providers()
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider" and cuda.io_binding
    assert opts["device_id"] == "1" and opts["use_tf32"] == "0" and opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"

    copy = Bundle(shutil.copytree(bundle.path, tmp_path / "b"), bundle.manifest, bundle.digest)
    trt_ep = OrtTrtBackend(copy, precision="fp16", batch=4, max_batch=16)
    provs = trt_ep.providers()
    assert [p[0] if isinstance(p, tuple) else p for p in provs] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    t = provs[0][1]
    assert t["trt_engine_cache_enable"] == "True" and t["trt_fp16_enable"] == "True"
    assert Path(t["trt_engine_cache_path"]) == copy.path / "engines" / "ort-trt-cache"
    assert Path(t["trt_engine_cache_path"]).is_dir() and t["trt_timing_cache_path"] == t["trt_engine_cache_path"]
    assert (t["trt_profile_min_shapes"], t["trt_profile_opt_shapes"], t["trt_profile_max_shapes"]) == (
        "tiles:1x64x64x3", "tiles:4x64x64x3", "tiles:16x64x64x3")
    assert trt_ep.graph_path().name == "model.onnx"  # TensorRT EP makes fp16 kernels from the fp32 graph
    with pytest.raises(UsageError, match="expected 1 <= batch <= max_batch"):
        OrtTrtBackend(copy, batch=64, max_batch=16)


def test_ort_gpu_session_without_provider_is_refused(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """If onnxruntime lists the CUDA EP but the session comes up on the CPU only, the backend refuses."""
    import onnxruntime

    from slidefuse.runtime.backends.ort import OrtCudaBackend

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(OrtCudaBackend, "providers", lambda self: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="did not load CUDAExecutionProvider.*not falling back to the CPU"):
        with open_backend("ort-cuda", bundle):
            pass


# ------------------------------------------------------------------------------------------- native TensorRT, faked
class _FakeStream:
    """A CUDA stream whose work runs only when synchronised: reading results early, or overwriting a pinned
    buffer before its copy ran, gives wrong numbers (as on a real GPU)."""

    def __init__(self, handle: int) -> None:
        self.handle, self.queue = handle, []  # type: ignore[var-annotated]

    def __int__(self) -> int:
        return self.handle


def _fake_cuda(streams: dict[int, _FakeStream]) -> types.ModuleType:
    mem: dict[int, Any] = {}
    rt = types.ModuleType("cuda.bindings.runtime")

    def alloc(n: int) -> tuple[int, int]:
        buf = (ctypes.c_uint8 * n)()
        mem[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def create_stream(flags: int) -> tuple[int, _FakeStream]:
        s = _FakeStream(1000 + len(streams))
        streams[s.handle] = s
        return 0, s

    def memcpy(dst: int, src: int, n: int, kind: int, stream: _FakeStream) -> tuple[int]:
        stream.queue.append(lambda: ctypes.memmove(dst, src, n))
        return (0,)

    def sync(stream: _FakeStream) -> tuple[int]:
        while stream.queue:
            stream.queue.pop(0)()
        return (0,)

    rt.cudaGetDeviceCount = lambda: (0, 1)  # type: ignore[attr-defined]
    rt.cudaSetDevice = lambda i: (0,)  # type: ignore[attr-defined]
    rt.cudaStreamNonBlocking = 1  # type: ignore[attr-defined]
    rt.cudaStreamCreateWithFlags = create_stream  # type: ignore[attr-defined]
    rt.cudaMalloc = rt.cudaMallocHost = alloc  # type: ignore[attr-defined]
    rt.cudaFree = rt.cudaFreeHost = lambda p: (0,) if mem.pop(p, None) is not None else (1,)  # type: ignore[attr-defined]
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)  # type: ignore[attr-defined]
    rt.cudaMemcpyAsync = memcpy  # type: ignore[attr-defined]
    rt.cudaStreamSynchronize = sync  # type: ignore[attr-defined]
    rt.cudaStreamDestroy = lambda s: (0,)  # type: ignore[attr-defined]
    return rt


def _fake_tensorrt(streams: dict[int, _FakeStream], profile: tuple[int, int, int], calls: list[int]
                   ) -> types.ModuleType:
    """An engine file holds ONNX bytes; 'executing' it runs onnxruntime on the device buffers."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.fake"  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]
    trt.nptype = lambda dt: dt  # type: ignore[attr-defined]

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.addr, self.shape = engine, {}, None  # type: ignore[var-annotated]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shape = shape
            return profile[0] <= shape[0] <= profile[2]

        def execute_async_v3(self, handle: int) -> bool:
            shape, a_in, a_out = self.shape, self.addr["tiles"], self.addr["probabilities"]
            assert shape is not None
            calls.append(shape[0])

            def run() -> None:
                n = int(np.prod(shape))
                x = np.frombuffer((ctypes.c_uint8 * n).from_address(a_in), np.uint8).reshape(shape)
                y = np.ascontiguousarray(self.engine.sess.run(None, {"tiles": x.copy()})[0], np.float32)
                ctypes.memmove(a_out, y.ctypes.data, y.nbytes)

            streams[handle].queue.append(run)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, data: bytes) -> None:
            self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def get_tensor_name(self, i: int) -> str:
            return ["tiles", "probabilities"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "tiles" else "out"

        def get_tensor_dtype(self, name: str) -> Any:
            return np.uint8 if name == "tiles" else np.float32

        def get_tensor_profile_shape(self, name: str, i: int) -> tuple[tuple[int, ...], ...]:
            return tuple((b, TILE, TILE, 3) for b in profile)

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine(data) if data[:1] != b"!" else None

    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    return trt


FAKE_ID = engines.TrtIdentity("Fake GPU 80GB", "9.0", "10.0.fake")


@pytest.fixture
def fake_trt(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[Callable[..., tuple[Bundle, list[int]]]]:
    """Factory: fake_trt(profile=(1, 3, 5), identity=FAKE_ID) -> (bundle with a fake engine, batch calls)."""

    def make(profile: tuple[int, int, int] = (1, 3, 5), identity: engines.TrtIdentity = FAKE_ID,
             engine_bytes: bytes | None = None) -> tuple[Bundle, list[int]]:
        streams: dict[int, _FakeStream] = {}
        calls: list[int] = []
        cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        bindings.runtime = _fake_cuda(streams)  # type: ignore[attr-defined]
        cuda_pkg.bindings = bindings  # type: ignore[attr-defined]
        for name, mod in (("cuda", cuda_pkg), ("cuda.bindings", bindings),
                          ("cuda.bindings.runtime", bindings.runtime),  # type: ignore[attr-defined]
                          ("tensorrt", _fake_tensorrt(streams, profile, calls))):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(engines, "current_trt_identity", lambda device=0: FAKE_ID)
        rel = engines.engine_filename(identity, "fp16")
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(engine_bytes if engine_bytes is not None else bundle.model_path.read_bytes())
        shutil.copy(bundle.model_path, tmp_path / bundle.manifest.model_file)
        entry = {"file": rel, "precision": "fp16", "gpu": identity.gpu, "trt_version": identity.trt_version,
                 "compute_capability": identity.compute_capability,
                 "batch": {"min": profile[0], "opt": profile[1], "max": profile[2]}}
        m = dataclasses.replace(bundle.manifest, engines=(entry,))
        return Bundle(tmp_path, m, bundle.digest), calls

    yield make


def test_trt_double_buffered_pipeline(fake_trt: Callable[..., tuple[Bundle, list[int]]], tiles: np.ndarray,
                                      torch_ref: np.ndarray) -> None:
    b, calls = fake_trt(profile=(2, 3, 5))
    assert available_backends()["trt"] is None
    big = np.concatenate([tiles, tiles[::-1], tiles[:1]])  # 13 tiles: chunks 3,3,3,3,1 over two slots
    with open_backend("trt", b) as be:
        out = be.run(big)
        one = be.run(tiles[2:3])  # below the profile minimum: padded to 2
        info = be.info()
    assert calls == [3, 3, 3, 3, 2, 2] and info.settings["chunk"] == 3 and info.settings["slots"] == 2
    assert (info.device, info.device_name, info.precision) == ("cuda", "Fake GPU 80GB", "fp16")
    assert info.engine == b.manifest.engines[0]["file"] and info.versions["trt_version"] == "10.0.fake"
    ref = np.concatenate([torch_ref, torch_ref[::-1], torch_ref[:1]])
    assert agreement(ref, out)[0] <= 1e-3 and agreement(torch_ref[2:3], one)[0] <= 1e-3
    assert be._slots == []  # buffers freed on exit


def test_trt_chunk_option_and_limits(fake_trt: Callable[..., tuple[Bundle, list[int]]], tiles: np.ndarray,
                                     torch_ref: np.ndarray) -> None:
    b, calls = fake_trt(profile=(1, 2, 4))
    with open_backend("trt", b, batch=4) as be:
        out = be.run(tiles)
    assert calls == [4, 2] and agreement(torch_ref, out)[0] <= 1e-3
    with pytest.raises(UsageError, match=r"batch=8: this engine takes 1..4 tiles"):
        with open_backend("trt", b, batch=8):
            pass
    with pytest.raises(UsageError, match="TensorRT engines are built as fp16"):
        open_backend("trt", b, precision="fp32")


def test_trt_engine_for_another_gpu_is_refused(fake_trt: Callable[..., tuple[Bundle, list[int]]]) -> None:
    other = engines.TrtIdentity("NVIDIA A100-SXM4-80GB", "8.0", "10.0.fake")
    b, _ = fake_trt(identity=other)
    with pytest.raises(EngineMismatch, match=r"no TensorRT engine for Fake GPU 80GB.*slidefuse build"):
        with open_backend("trt", b):
            pass
    assert "no TensorRT engine for Fake GPU 80GB" in choose_backend(b).skipped["trt"]  # auto moves on
    b2, _ = fake_trt(engine_bytes=b"!corrupt")
    with pytest.raises(EngineMismatch, match="could not deserialise the engine.*rebuild it: slidefuse build"):
        with open_backend("trt", b2):
            pass


def test_auto_picks_trt_when_an_engine_fits(fake_trt: Callable[..., tuple[Bundle, list[int]]]) -> None:
    b, _ = fake_trt()
    assert choose_backend(b).name == "trt"
