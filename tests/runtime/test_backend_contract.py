"""The backend contract as data: a test-only backend (one class + one registration) that works in
`slidefuse segment` and `slidefuse bench engine` through the real CLI; BackendInfo; options that validate
themselves; the registry's rules and its one "available backends" message; how `auto` chooses."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
from click.testing import CliRunner

from runtime.onnx_models import make_bundle
from slidefuse.cli import cli
from slidefuse.errors import BackendUnavailable, UnknownName, UsageError
from slidefuse.runtime.backends import (
    Backend,
    BackendInfo,
    BackendOptions,
    Placement,
    backend_names,
    open_backend,
    register_backend,
    registered_backend,
    registry,
    unregister_backend,
)
from slidefuse.runtime.backends.auto import choose_backend
from slidefuse.runtime.backends.base import DeviceKind, unavailable
from slidefuse.runtime.backends.registry import available_backends, get_backend
from slidefuse.runtime.bundle import Bundle

BUILT_IN = ["ort-cpu", "ort-cuda", "ort-trt", "ov-cpu", "trt", "torch", "torch-compile", "triton", "null"]


# ------------------------------------------------------------------------------------------- a test-only backend
@dataclass(frozen=True)
class OneHotOptions(BackendOptions):
    label: int = 2  # the class every pixel is given
    batch: int | None = None  # tiles per call it is built for (as a compiled backend would be)


class OneHotBackend(Backend):
    """Every pixel of every tile is class `label` (probability 1): uint8 [B, T, T, 3] -> float32 [B, C, T, T]."""

    name = "test-onehot"
    options: OneHotOptions
    options_type = OneHotOptions
    opened: ClassVar[list[int | None]] = []  # the `batch` option of every instance loaded, in order

    @classmethod
    def availability(cls) -> str | None:
        return None

    def _load(self) -> None:
        self.opened.append(self.options.batch)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        m = self.bundle.manifest
        out = np.zeros((len(tiles), m.num_classes, m.tile_size, m.tile_size), np.float32)
        out[:, self.options.label] = 1.0
        return out

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "cpu", "fp32", settings={"label": self.options.label})


@pytest.fixture
def onehot() -> Iterator[type[OneHotBackend]]:
    OneHotBackend.opened.clear()
    with registered_backend(OneHotBackend):
        yield OneHotBackend
    assert OneHotBackend.name not in backend_names()


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The pure-ONNX colour classifier (64 px tiles at 2 um/px): no torch weights, no fp16 graph."""
    return make_bundle(tmp_path_factory.mktemp("contract") / "colour", tile_size=64, mpp=2.0, overlap=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The exported tiny ViT bundle (its FLOPs are countable, which `bench engine` reports)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from runtime.test_backends import tiny_bundle

    return tiny_bundle(tmp_path_factory.getbasetemp())


def test_a_registered_test_backend_runs_in_segment(onehot: type[OneHotBackend], colour_bundle: Bundle,
                                                  synthetic_tiff: Path, runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["segment", str(synthetic_tiff), "--model", str(colour_bundle.path), "--out",
                              str(tmp_path), "--backend", onehot.name, "--workers", "1", "--formats", "report"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / synthetic_tiff.stem / "report.json").read_text())
    assert report["backend"] == BackendInfo("test-onehot", "cpu", "fp32", settings={"label": 2}).to_dict()
    areas = report["areas"]
    assert areas["eosin"]["pixels"] > 0 and areas["haematoxylin"]["pixels"] == 0  # every inferred pixel: class 2
    assert onehot.opened == [None]


def test_a_registered_test_backend_runs_in_bench_engine(onehot: type[OneHotBackend], tiny: Bundle,
                                                        runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny.path), "--backend", onehot.name,
                              "--batch", "1,3", "--iters", "2", "--warmup", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["backend"]["name"] == "test-onehot" and doc["backend"]["device"] == "cpu"
    assert doc["backend"]["precision"] == "fp32" and doc["backend"]["info"]["label"] == 2
    assert [r["batch"] for r in doc["results"]] == [1, 3] and not doc["settings"]["backend_per_batch"]
    assert onehot.opened == [None]  # one instance for the whole sweep
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny.path), "--backend", onehot.name,
                              "--precision", "fp16"])
    assert res.exit_code == 2 and "backend test-onehot: unknown option 'precision'; valid options: batch, label" \
        in res.output and "Traceback" not in res.output


def test_bench_engine_opens_a_per_batch_backend_once_per_batch_size(onehot: type[OneHotBackend],
                                                                    tiny: Bundle, runner: CliRunner,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(onehot, "needs_per_batch_setup", True)
    out = tmp_path / "engine.json"
    res = runner.invoke(cli, ["bench", "engine", "--model", str(tiny.path), "--backend", onehot.name,
                              "--batch", "1,3", "--iters", "1", "--warmup", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert onehot.opened == [1, 3] and doc["settings"]["backend_per_batch"]
    assert all(r["backend_info"]["backend"] == "test-onehot" for r in doc["results"])


# ------------------------------------------------------------------------------------------- BackendInfo
def test_backend_info_is_frozen_and_serialises_flat() -> None:
    info = BackendInfo("ort-cuda", "cuda", "fp16", device_id=1, providers=("CUDAExecutionProvider", "CPU"),
                       graph="model.fp16.onnx", versions={"onnxruntime": "1.0"},
                       settings={"io_binding": True, "batch": {"opt": 8, "max": 32}})
    d = info.to_dict()
    assert d["backend"] == "ort-cuda" and d["device"] == "cuda" and d["device_id"] == 1 and d["engine"] is None
    assert d["providers"] == ["CUDAExecutionProvider", "CPU"] and d["onnxruntime"] == "1.0"
    assert d["io_binding"] is True and d["batch"] == {"opt": 8, "max": 32}
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.precision = "fp32"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"keys \['precision'\] would collide"):
        BackendInfo("x", "cpu", "fp32", settings={"precision": "fp16"})


def test_built_in_backends_report_typed_info(colour_bundle: Bundle) -> None:
    from slidefuse.runtime.backends.ort import OrtCudaBackend

    with open_backend("ort-cpu", colour_bundle, threads=1) as be:
        info = be.info()
    assert (info.backend, info.device, info.precision, info.graph, info.threads) == (
        "ort-cpu", "cpu", "fp32", "model.onnx", 1)
    assert info.providers == ("CPUExecutionProvider",) and info.device_id is None
    cuda = OrtCudaBackend(colour_bundle, device_id=1).info()  # not loaded: what it asks for
    assert cuda.device == "cuda" and cuda.device_id == 1 and cuda.providers[0] == "CUDAExecutionProvider"
    assert cuda.settings["io_binding"] is True


# ------------------------------------------------------------------------------------------- options
def test_options_list_valid_keys_and_check_types_and_ranges(colour_bundle: Bundle) -> None:
    from slidefuse.runtime.backends.ort import OrtOptions, OrtTrtOptions

    with pytest.raises(UsageError, match=r"^backend ort-cpu: unknown option 'thread'; valid options: arena, "
                                         r"batch, device_id, io_binding, max_memory_gb, mem_pattern, precision, "
                                         r"spin, threads, unverified$"):
        open_backend("ort-cpu", colour_bundle, thread=2)
    with pytest.raises(UsageError, match=r"^backend ort-cpu: option threads='2': expected an integer$"):
        OrtOptions.parse("ort-cpu", {"threads": "2"})
    with pytest.raises(UsageError, match="option threads=True: expected an integer"):
        OrtOptions(threads=True)  # a bool is not a thread count
    with pytest.raises(UsageError, match="option threads=-1: expected a value >= 0"):
        OrtOptions(threads=-1)
    with pytest.raises(UsageError, match="option spin='no': expected true or false"):
        OrtOptions(spin="no")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="precision 'bf16' is not offered; choose one of fp32, fp16"):
        OrtOptions(precision="bf16")  # type: ignore[arg-type]
    assert OrtOptions.parse("ort-cpu", {"threads": None, "precision": None}) == OrtOptions()  # None = default
    trt = OrtTrtOptions(workspace_gb=4, batch=4, max_batch=16)
    assert isinstance(trt.workspace_gb, float) and (trt.opt_batch, trt.profile_max) == (4, 16)
    assert OrtTrtOptions(batch=40).profile_max == 40
    with pytest.raises(UsageError, match="expected 1 <= batch <= max_batch"):
        OrtTrtOptions(batch=64, max_batch=16)
    with pytest.raises(UsageError, match="workspace_gb=0.0: expected a positive number"):
        OrtTrtOptions(workspace_gb=0)


def test_trt_and_torch_options() -> None:
    from slidefuse.runtime.backends.torch_backend import TorchCompileOptions, TorchOptions
    from slidefuse.runtime.backends.trt import TrtOptions

    assert TrtOptions(precision="auto").precision is None and TrtOptions(precision="int8").precision == "int8"
    with pytest.raises(UsageError, match="TensorRT engines are built as fp16, bf16, fp8, int8"):
        TrtOptions(precision="fp32")
    assert TorchOptions(device="cuda:1").device == "cuda:1"
    with pytest.raises(UsageError, match="device 'gpu': expected cpu, cuda, cuda:N or auto"):
        TorchOptions(device="gpu")
    with pytest.raises(UsageError, match="compile_mode 'fast' is not offered; choose one of default, "):
        TorchCompileOptions(compile_mode="fast")  # type: ignore[arg-type]
    assert "warmup" in TorchCompileOptions.keys() and "warmup" not in TorchOptions.keys()


def test_can_run_says_what_the_bundle_lacks(colour_bundle: Bundle) -> None:
    from slidefuse.runtime.backends.ort import OrtCpuBackend, OrtOptions, OrtTrtBackend, OrtTrtOptions
    from slidefuse.runtime.backends.torch_backend import TorchBackend, TorchOptions

    assert OrtCpuBackend.can_run(colour_bundle, OrtOptions()) is None
    assert "needs model.fp16.onnx" in str(OrtCpuBackend.can_run(colour_bundle, OrtOptions(precision="fp16")))
    assert OrtTrtBackend.can_run(colour_bundle, OrtTrtOptions(precision="fp16")) is None  # fp16 from model.onnx
    assert "names no torch weights" in str(TorchBackend.can_run(colour_bundle, TorchOptions()))


# ------------------------------------------------------------------------------------------- registry
def test_registry_rules(onehot: type[OneHotBackend], colour_bundle: Bundle) -> None:
    assert backend_names(include_internal=True) == [*BUILT_IN, "test-onehot"]
    assert available_backends()["test-onehot"] is None
    with pytest.raises(UsageError, match="'test-onehot' is already registered"):
        register_backend(onehot)
    for bad in ("auto", "Shouty"):
        with pytest.raises(UsageError, match="is not allowed"):
            register_backend(type("Bad", (OneHotBackend,), {"name": bad}))
    with pytest.raises(UnknownName, match="unknown backend 'nope'; valid backends: ort-cpu, .*test-onehot, auto"):
        unregister_backend("nope")
    with open_backend("test-onehot", colour_bundle, label=1) as be:
        assert be.run(np.zeros((2, 64, 64, 3), np.uint8))[:, 1].min() == 1.0


def test_registry_imports_no_backend_and_backends_import_no_registry() -> None:
    """The built-in backends are registered as "module:Class" strings: importing the registry imports none of
    them, and no backend module imports the registry (they word errors with `base.unavailable`)."""
    code = ("import json, sys, slidefuse.runtime.backends.registry; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('slidefuse.runtime.backends.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the package's __init__ exports open_backend from auto (the chooser); no backend implementation is imported
    assert json.loads(out) == [f"slidefuse.runtime.backends.{m}" for m in ("auto", "base", "options", "registry")]
    assert list(registry.BUILTIN_BACKENDS) == BUILT_IN
    folder = Path(registry.__file__).parent
    importers = [f.name for f in folder.glob("*.py") if "backends.registry import" in f.read_text()
                 or "backends import registry" in f.read_text()]
    assert sorted(importers) == ["__init__.py", "auto.py"]  # the package's exports; auto picks among the registered


def test_a_lazy_entry_must_name_a_backend_class_of_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._BACKENDS, "test-wrong", "slidefuse.runtime.backends.ort:OrtCpuBackend")
    with pytest.raises(UsageError, match="'test-wrong' is registered as .* not a Backend subclass named"):
        get_backend("test-wrong")
    assert "not a Backend subclass" in (available_backends()["test-wrong"] or "")  # listed as unavailable
    monkeypatch.setitem(registry._BACKENDS, "test-gone", "slidefuse.no_such_module:Thing")
    assert "No module named" in (available_backends()["test-gone"] or "")


def test_one_unavailable_message(monkeypatch: pytest.MonkeyPatch, colour_bundle: Bundle) -> None:
    class Missing(OneHotBackend):
        name = "test-missing"

        @classmethod
        def availability(cls) -> str | None:
            return "its runtime is not installed: pip install nothing"

    with registered_backend(Missing):
        err = unavailable("test-missing", "why")
        assert isinstance(err, BackendUnavailable) and "test-missing" not in str(err).split("available backends:")[1]
        with pytest.raises(BackendUnavailable, match=r"^backend 'test-missing' is not available here: its runtime "
                                                     r"is not installed: pip install nothing; available backends: "
                                                     r"ort-cpu, "):
            open_backend("test-missing", colour_bundle)
    assert "test-missing" not in backend_names()


# ------------------------------------------------------------------------------------------- auto
@dataclass(frozen=True)
class WhereOptions(BackendOptions):
    where: Literal["cpu", "cuda"] = "cpu"  # the device this fake claims to run on


class FakeGpuBackend(Backend):
    """Claims the GPU (at a priority above every built-in backend) and runs where its `where` option says."""

    name = "test-fake-gpu"
    options: WhereOptions
    options_type = WhereOptions
    placements: ClassVar[tuple[Placement, ...]] = (Placement("cuda", 1000, {"where": "cuda"}),)

    @classmethod
    def availability(cls) -> str | None:
        return None

    def device_kind(self) -> DeviceKind:
        return self.options.where

    def _load(self) -> None:
        pass

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        raise AssertionError("auto tests never run it")

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.device_kind(), "fp32")


class CannotRunBackend(FakeGpuBackend):
    name = "test-cannot-run"
    placements = (Placement("cuda", 2000, {"where": "cuda"}),)

    @classmethod
    def can_run(cls, bundle: Bundle, options: BackendOptions) -> str | None:
        return f"{bundle.path.name} has no engine for this test"


def test_auto_picks_by_priority_and_can_run_and_logs_why(colour_bundle: Bundle,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with registered_backend(FakeGpuBackend), registered_backend(CannotRunBackend):
        with caplog.at_level(logging.INFO, logger="slidefuse.runtime.backends.auto"):
            choice = choose_backend(colour_bundle)
        assert choice.name == "test-fake-gpu" and choice.backend.device_kind() == "cuda"
        assert choice.skipped == {"test-cannot-run": "colour has no engine for this test"}
        assert choice.reason.startswith("priority 1000 on the cuda, the first that can run here in the order "
                                        "test-cannot-run > test-fake-gpu > trt > ort-trt > torch (cuda) > ")
        assert "backend auto: picked test-fake-gpu" in caplog.text
        assert "test-cannot-run not used: colour has no engine for this test" in caplog.text
        # the caller's own option wins over the placement's; a candidate that then runs elsewhere is skipped
        with pytest.raises(BackendUnavailable, match="test-fake-gpu: the options given put it on the cpu"):
            choose_backend(colour_bundle, where="cpu")


def test_auto_without_test_backends_on_the_colour_bundle(colour_bundle: Bundle) -> None:
    """The colour bundle has no torch weights: auto never picks torch for it, and says why. It was never gated
    (no `slidefuse quantize`): auto picks no accelerated CPU path for it, and says why."""
    choice = choose_backend(colour_bundle)
    cpu_pick = "ov-cpu" if available_backends()["ov-cpu"] is None else "ort-cpu"  # fp32: ov-cpu 22 > ort-cpu 20
    assert choice.name in ("ort-trt", "ort-cuda", cpu_pick), choice  # no engine in the bundle: never trt
    if choice.name == cpu_pick:
        assert choice.backend.info().precision == "fp32"
        assert "precision int8 needs model.int8.onnx" in choice.skipped["ort-cpu (int8, gated)"]
        if cpu_pick == "ov-cpu":
            assert "precision int8 needs model.int8.onnx" in choice.skipped["ov-cpu (int8, gated)"]
            bf16 = choice.skipped["ov-cpu (bf16, gated)"]
            assert "not verified for this bundle: gate it with `slidefuse quantize`" in bf16 or "bf16 support" in bf16
    assert "no TensorRT engine" in choice.skipped["trt"] or "TensorRT" in available_backends()["trt"]
    if choice.name != "ort-trt" and available_backends()["torch"] is None:  # torch (cuda) was tried
        assert "names no torch weights" in choice.skipped["torch (cuda)"]


def test_a_registered_test_backend_runs_in_bench_parity(onehot: type[OneHotBackend], tiny: Bundle,
                                                        runner: CliRunner, tmp_path: Path) -> None:
    """The same test-only backend is compared with torch by `bench parity`; it predicts one class
    everywhere, so the comparator must find it far from the reference and --check must fail."""
    out = tmp_path / "parity.json"
    res = runner.invoke(cli, ["-q", "bench", "parity", "--model", str(tiny.path), "--backends",
                              f"ort-cpu,{onehot.name}", "--tiles", "2", "--json", str(out), "--check"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert rows["ort-cpu"]["status"] == "pass"
    assert rows[onehot.name]["status"] == "fail" and rows[onehot.name]["max_abs_diff"] > 0.1
