"""Fixtures for the embedding tests: a tiny embedding bundle (exported once per session) and a synthetic slide."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime.conftest import synthetic_rgb, write_pyramid_tiff


@pytest.fixture(scope="session")
def embed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test encoder (ViT/16, width 64) as an embedding bundle: 224 px tiles at 0.5 um/px, class token."""
    pytest.importorskip("onnxscript")
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("embed") / "tiny-embed.bundle"
    export_bundle(ExportConfig(encoder="tiny", classes=(), mpp=0.5, out=out, tile_size=224, random_weights=True,
                               task="embed", parity_real_tiles=2, parity_random_tiles=1))
    return out


@pytest.fixture(scope="session")
def embed_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 768 pyramidal JPEG TIFF at 0.5 um/px with tissue-like blobs on glass."""
    folder = tmp_path_factory.mktemp("embed-slides")
    return write_pyramid_tiff(synthetic_rgb(1024, 768, seed=3), folder / "blobs.tif", 0.5)
