"""Real-size exports at 512 px (marked `slow`; `make test-slow` / `pytest -m slow` runs them): a ViT-B/16
(phikon, with its fp16 graph) and a ViT-S/8 (lunit), random weights, parity gate on real tissue tiles."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from slidefuse.export.onnx_export import ExportConfig, export_bundle
from slidefuse.runtime.bundle import load_bundle

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("encoder", "patch", "fp16"), [("phikon", 16, True), ("lunit", 8, False)])
def test_export_at_512(tmp_path: Path, request: pytest.FixtureRequest, encoder: str, patch: int, fp16: bool) -> None:
    logging.getLogger("torch.__trace").disabled = True
    if encoder == "phikon":  # exported once per session, shared with the backend parity test
        out = request.getfixturevalue("phikon_bundle")
    else:
        out = tmp_path / f"{encoder}.bundle"
        export_bundle(ExportConfig(
            encoder=encoder, classes=("background", "tumour", "stroma"), mpp=0.5, out=out, tile_size=512,
            random_weights=True, fp16=fp16, parity_real_tiles=2, parity_random_tiles=1,
        ))
    b = load_bundle(out)
    m = b.manifest
    assert (m.encoder, m.patch_size, m.tile_size) == (encoder, patch, 512)
    fp32 = m.parity["fp32"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-3 and fp32["argmax_agreement"] >= 0.999
    assert fp32["tiles"] == 3
    if fp16:
        assert m.parity["fp16"]["passed"] and (out / "model.fp16.onnx").exists()
    assert b.manifest.export["graph"]["layernorm_ops"] >= 2 * 12 + 1  # two per block + the final norm
