"""Fixtures of the benchmark tests: one tiny exported bundle (64 px tiles at 2 um/px), shared by the session."""

from __future__ import annotations

import pytest

from slidefuse.runtime.bundle import Bundle

TILE = 64
CLASSES = ("background", "tumour", "stroma")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The `tiny` encoder + decoder (random weights) exported by `export_bundle`: uint8 [B, 64, 64, 3] in,
    float32 [B, 3, 64, 64] out, at 2 um/px, so the real CMU slide makes about a hundred tiles."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bench") / "tiny.bundle"
    return export_bundle(ExportConfig(encoder="tiny", classes=CLASSES, mpp=2.0, out=out, tile_size=TILE,
                                      random_weights=True, parity_real_tiles=0, parity_random_tiles=1))
