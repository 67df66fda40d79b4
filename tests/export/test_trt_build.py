"""TensorRT engine building: naming, compatibility checks, refusals, and the missing-extra error. The real build
is marked `gpu` (it needs TensorRT and CUDA, which the development machines do not have)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import EngineMismatch, MissingExtra, UsageError
from slidefuse.export.trt_build import BatchProfile, build_engine, check_precision
from slidefuse.runtime.engines import (
    TrtIdentity,
    check_engine_compatible,
    engine_filename,
    find_engine,
    timing_cache_filename,
)

H100 = TrtIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.8.0.43")
H200 = TrtIdentity("NVIDIA H200", "9.0", "10.8.0.43")


def _entry(identity: TrtIdentity, precision: str = "fp16") -> dict[str, object]:
    return {"file": engine_filename(identity, precision), "precision": precision, "gpu": identity.gpu,
            "compute_capability": identity.compute_capability, "trt_version": identity.trt_version,
            "batch": {"min": 1, "opt": 8, "max": 32}}


def test_engine_filename_names_gpu_cc_trt_and_precision() -> None:
    assert engine_filename(H100, "fp16") == "engines/nvidia-h100-80gb-hbm3_sm90_trt10.8.0.43_fp16.engine"
    assert timing_cache_filename(H100) == "engines/nvidia-h100-80gb-hbm3_sm90_trt10.8.0.43.timing-cache"
    assert engine_filename(H100, "bf16") != engine_filename(H200, "bf16")
    with pytest.raises(ValueError, match="fp32"):
        engine_filename(H100, "fp32")


def test_compatible_engine_passes() -> None:
    check_engine_compatible(_entry(H100), H100)
    assert find_engine([_entry(H100, "bf16"), _entry(H100)], H100, "fp16")["precision"] == "fp16"


@pytest.mark.parametrize(
    ("here", "why"),
    [
        (H200, "GPU 'NVIDIA H100 80GB HBM3' != 'NVIDIA H200'"),
        (TrtIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.9.0.34"), "TensorRT 10.8.0.43 != 10.9.0.34"),
        (TrtIdentity("NVIDIA H100 80GB HBM3", "8.9", "10.8.0.43"), "compute capability 9.0 != 8.9"),
    ],
)
def test_engine_from_elsewhere_is_refused_with_rebuild_command(here: TrtIdentity, why: str) -> None:
    with pytest.raises(EngineMismatch) as exc:
        check_engine_compatible(_entry(H100), here, bundle="my.bundle")
    msg = str(exc.value)
    assert why in msg and "slidefuse build my.bundle --precision fp16 --batch 1:8:32" in msg
    assert "\n" not in msg


def test_find_engine_lists_what_the_bundle_has() -> None:
    with pytest.raises(EngineMismatch, match=r"the bundle has: engines/nvidia-h100.*\(fp16\); build one here: "
                       r"slidefuse build b --precision fp16"):
        find_engine([_entry(H100)], H200, bundle="b")
    with pytest.raises(EngineMismatch, match="no bf16 TensorRT engine"):
        find_engine([_entry(H100)], H100, "bf16")


@pytest.mark.parametrize(("text", "want"), [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4))])
def test_batch_profile(text: str, want: tuple[int, int, int]) -> None:
    b = BatchProfile.parse(text)
    assert (b.min, b.opt, b.max) == want


@pytest.mark.parametrize("text", ["8:1:32", "0:1:2", "a:b:c", "1:2"])
def test_bad_batch_profile(text: str) -> None:
    with pytest.raises(UsageError, match="MIN:OPT:MAX"):
        BatchProfile.parse(text)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantised_precisions_are_refused(precision: str) -> None:
    with pytest.raises(UsageError, match="explicit quantisation"):
        check_precision(precision)


def test_missing_tensorrt_names_the_trt_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'slidefuse\[trt\]'"):
        build_engine(tmp_path, "fp16")


def test_build_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    runner = CliRunner()
    for args, expect in [
        (["--precision", "int8"], "explicit quantisation"),
        (["--batch", "9:1:1"], "MIN:OPT:MAX"),
        ([], "slidefuse[trt]"),
    ]:
        result = runner.invoke(cli, ["build", str(tmp_path), *args])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and expect in lines[0], result.output


@pytest.mark.gpu
def test_build_fp16_engine_on_this_gpu(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("onnxscript")
    from slidefuse.export.onnx_export import ExportConfig, export_bundle
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.engines import current_trt_identity

    out = tmp_path / "tiny.bundle"
    export_bundle(ExportConfig(encoder="tiny", classes=("background", "tissue"), mpp=2.0, out=out, tile_size=64,
                               random_weights=True, fp16=True, parity_real_tiles=0, parity_random_tiles=2))
    entry = build_engine(out, "fp16", BatchProfile(1, 2, 4), workspace_gb=1.0)
    b = load_bundle(out)  # re-hashed: engine and timing cache are covered
    assert entry in [dict(e) for e in b.manifest.engines]
    assert entry["file"] in b.manifest.files and entry["timing_cache"] in b.manifest.files
    check_engine_compatible(entry, current_trt_identity())
    build_engine(out, "fp16", BatchProfile(1, 2, 4))  # second build reuses the timing cache, same file name
    assert len(load_bundle(out).manifest.engines) == 1
