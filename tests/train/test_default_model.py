"""The committed demonstration bundle (slidefuse/data/default): intact, marked as a demo, and on
CMU-1-Small-Region its tissue agrees with an Otsu tissue mask of the thumbnail and both tissue classes matter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.bundle import load_bundle
from slidefuse.train.demo import DEFAULT_BUNDLE, check_on_slide, otsu_tissue
from slidefuse.train.pseudolabels import PSEUDO_CLASSES

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from tests.conftest import CMU

    if not CMU.exists():
        pytest.skip(f"{CMU} is absent")
    return check_on_slide(DEFAULT_BUNDLE, CMU, tmp_path_factory.mktemp("demo"), all_tiles=True)


def test_default_bundle_is_a_small_verified_demo() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)  # verifies every sha256
    m = bundle.manifest
    assert m.demo and not m.random_weights
    assert m.class_names == list(PSEUDO_CLASSES)
    assert len({c.color for c in m.classes}) == len(m.classes)  # distinct colours
    size = sum(p.stat().st_size for p in DEFAULT_BUNDLE.rglob("*") if p.is_file())
    assert size < 5_000_000, f"{size} bytes: keep the committed bundle a few MB"
    assert "fp32" in m.parity and m.parity["fp32"]["argmax_agreement"] >= 0.999
    training = json.loads((DEFAULT_BUNDLE / "training.json").read_text())
    assert training["encoder"] == m.encoder and training["classes"] == m.class_names
    assert "NOT the paper" in training["protocol"]  # says plainly what it is


def test_otsu_reference_mask() -> None:
    img = np.full((40, 40, 3), 245, np.uint8)
    img[10:30, 10:30] = (180, 80, 160)  # a pink square on glass
    mask = otsu_tissue(img)
    assert mask[10:30, 10:30].all() and mask.sum() == 400


def test_tissue_agrees_with_otsu_on_cmu(figures: dict[str, object]) -> None:
    agreement = float(figures["agreement"])  # type: ignore[arg-type]
    assert agreement >= 0.90, figures
    assert 0.15 < float(figures["model_tissue_fraction"]) < 0.6, figures  # type: ignore[arg-type]


def test_both_tissue_classes_cover_at_least_5_percent(figures: dict[str, object]) -> None:
    fractions = figures["tissue_class_fractions"]
    assert isinstance(fractions, dict) and set(fractions) == set(PSEUDO_CLASSES[1:])
    for name, frac in fractions.items():
        assert frac >= 0.05, (name, figures)
    assert Path(str(figures["outputs"]["preview"])).is_file()  # type: ignore[index]
