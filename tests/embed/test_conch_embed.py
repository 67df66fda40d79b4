"""CONCH embedding bundles end to end (slow: the full ViT-B/16 trunk at 448 px): `export conch --task embed`
from a CoCa checkpoint in the publisher's layout (random trunk, scrambled pooler), the graph run by onnxruntime
and by the torch backend (its state rebuilt from model.safetensors, pooler included), both against the
publisher's tower restated from CONCH's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slidefuse.export.references import conch_tower, save_conch_tower, scramble
from slidefuse.model.registry import get_spec


@pytest.mark.slow
def test_conch_embedding_bundle_equals_the_publishers_tower(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    from slidefuse.export.onnx_export import ExportConfig, export_bundle
    from slidefuse.runtime.backends import open_backend

    spec = get_spec("conch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tower = conch_tower("conch", spec)
    scramble(tower.attn_pool_contrast)
    scramble(tower.ln_contrast, 2)
    path = save_conch_tower("conch", tower, tmp_path)
    bundle = export_bundle(ExportConfig(encoder="conch", classes=(), mpp=0.5, tile_size=448,
                                        out=tmp_path / "conch.bundle", encoder_weights=path, task="embed",
                                        parity_real_tiles=2, parity_random_tiles=1))
    m = bundle.manifest
    assert m.embedding is not None and (m.embedding.dim, m.embedding.rule) == (512, "attn-pool")
    assert m.parity["fp32"]["passed"] and m.parity["fp32"]["max_abs_diff"] <= 1e-5
    tiles = np.random.default_rng(0).integers(0, 256, (2, 448, 448, 3), dtype=np.uint8)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = tower((x - mean) / std).numpy()
    for backend in ("ort-cpu", "torch"):
        with open_backend(backend, bundle) as b:
            got = b.run(tiles)
        assert got.shape == (2, 512)
        assert np.abs(got - want).max() <= 1e-5, backend
