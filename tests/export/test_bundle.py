"""Bundle integrity without torch: sha256 of every file, refusal of changed/missing files, manifest round trip,
model card. The bundle here is synthetic (placeholder files), so these tests run on the base install."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidefuse.errors import BundleError, BundleNotFound, IntegrityError
from slidefuse.runtime.bundle import (
    ClassInfo,
    Manifest,
    load_bundle,
    model_card,
    read_manifest,
    verify_files,
    write_manifest,
)


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = dict(
        encoder="tiny", patch_size=16, tile_size=64, mpp=2.0,
        classes=(ClassInfo("background", (0, 0, 0)), ClassInfo("tumour", (228, 26, 28))),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), random_weights=True,
        parity={"fp32": {"reference": "torch", "candidate": "model.onnx", "max_abs_diff": 1e-7,
                         "argmax_agreement": 1.0, "tiles": 3,
                         "thresholds": {"max_abs_diff": 1e-3, "min_argmax_agreement": 0.999}}},
        engines=({"file": "engines/nvidia-h100_sm90_trt10.8.0_fp16.engine", "precision": "fp16",
                  "gpu": "NVIDIA H100", "compute_capability": "9.0", "trt_version": "10.8.0",
                  "batch": {"min": 1, "opt": 8, "max": 32}},),
    )
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    d = tmp_path / "b.bundle"
    (d / "engines").mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"graph" * 100)
    (d / "model.onnx.data").write_bytes(b"\x00" * 4096)
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "engines" / "nvidia-h100_sm90_trt10.8.0_fp16.engine").write_bytes(b"plan")
    write_manifest(d, _manifest())
    return d


def test_manifest_lists_every_file(bundle_dir: Path) -> None:
    m = read_manifest(bundle_dir)
    assert set(m.files) == {"model.onnx", "model.onnx.data", "model.safetensors",
                            "engines/nvidia-h100_sm90_trt10.8.0_fp16.engine"}
    assert all(len(h) == 64 for h in m.files.values())
    b = load_bundle(bundle_dir)
    assert b.manifest == m and len(b.digest) == 64


def test_round_trip_keeps_every_field(bundle_dir: Path) -> None:
    m = read_manifest(bundle_dir)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_shipped_manifest_round_trips_key_for_key() -> None:
    """`to_dict` writes the fields in the order and form of manifest.json (what `write_manifest` dumps)."""
    shipped = json.loads((Path(__file__).parents[2] / "slidefuse" / "data" / "default" / "manifest.json").read_text())
    body = {k: v for k, v in shipped.items() if k != "integrity"}
    again = json.loads(json.dumps(Manifest.from_dict(body).to_dict()))
    assert again.pop("int8_model_file") is None  # a field newer than the demo bundle
    assert again.pop("stain") == "H&E"  # a field newer than the demo bundle: its default
    assert list(again.items()) == list(body.items())


@pytest.mark.parametrize("rel", ["model.onnx", "model.onnx.data", "engines/nvidia-h100_sm90_trt10.8.0_fp16.engine"])
def test_one_changed_byte_is_refused(bundle_dir: Path, rel: str) -> None:
    p = bundle_dir / rel
    raw = bytearray(p.read_bytes())
    raw[0] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=rf"{p.name}: sha256 .* differs from the manifest"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # explicitly unchecked loads still work


def test_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match="model.safetensors: missing from the bundle"):
        verify_files(bundle_dir, read_manifest(bundle_dir))


def test_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFound, match="not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(BundleNotFound, match="no such model bundle"):
        load_bundle(tmp_path / "absent")


def test_unreadable_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(bundle_dir)


def test_model_card(bundle_dir: Path) -> None:
    card = model_card(load_bundle(bundle_dir))
    assert "all 4 files match their sha256" in card
    assert "encoder    tiny (patch 16)" in card and "64 px at 2 um/px" in card
    assert "1: tumour" in card and "#e41a1c" in card
    assert "max |dp| 1e-07, argmax agreement 1.00000 on 3 tiles" in card
    assert "NVIDIA H100 (sm 9.0), TensorRT 10.8.0  batch 1:8:32" in card
    assert "RANDOM" in card
