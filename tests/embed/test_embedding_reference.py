"""Every exported embedding against its publisher's own forward pass (timm `model(x)` with the model card's
kwargs, transformers `last_hidden_state[:, 0]` / `pooler_output`, the Virchow cards' class token ++ mean patch
token, the CONCH towers' attentional pooler + LayerNorm restated from the publishers' code): the publisher's
model is built with random weights, saved in the publisher's file format, loaded through slidefuse, and both
embeddings compared on uint8 tiles at the native tile size. Reduced size here (depth 2, width 128-160, CONCH
poolers 64-d); full width under `slow`. Gate: max |diff| <= 1e-5."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from slidefuse.errors import UsageError
from slidefuse.model.checkpoints import CheckpointError
from slidefuse.model.registry import PAPER_IDS, EncoderSpec, get_spec

pytest.importorskip("transformers")

from slidefuse.export.references import compare_embedding, reference_embeddings

TOL = 1e-5
SMALL_WIDTH = {"virchow": 160, "virchow2": 160}
TOKEN_IDS = tuple(reference_embeddings())
POOLED = tuple(i for i in PAPER_IDS if i not in TOKEN_IDS)
EMBED_IDS = TOKEN_IDS + POOLED


def test_every_paper_encoder_has_a_sourced_embedding_rule() -> None:
    for encoder_id in PAPER_IDS:
        spec = get_spec(encoder_id)
        assert spec.embedding_source and spec.embedding_dim() > 0, encoder_id
    assert get_spec("virchow2").embedding_dim() == 2560 and get_spec("uni").embedding_dim() == 1024
    assert get_spec("conch").embedding_dim() == 512 and get_spec("conch-v1.5").embedding_dim() == 768
    assert set(POOLED) == {"conch", "conch-v1.5"}


@pytest.mark.parametrize("encoder_id", EMBED_IDS)
def test_embedding_matches_the_publishers_forward(encoder_id: str, tmp_path: Path) -> None:
    spec = _small(encoder_id)
    assert compare_embedding(encoder_id, spec, tmp_path) <= TOL


def _small(encoder_id: str) -> EncoderSpec:
    spec = get_spec(encoder_id)
    pooled = 64 if spec.embedding == "attn-pool" else None
    return dataclasses.replace(spec, width=SMALL_WIDTH.get(encoder_id, 128), num_heads=2, depth=2,
                               embedding_width=pooled)


@pytest.mark.slow
@pytest.mark.parametrize("encoder_id", EMBED_IDS)
def test_full_width_embedding_matches_the_publishers_forward(encoder_id: str, tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec(encoder_id), depth=2)
    assert compare_embedding(encoder_id, spec, tmp_path, batch=1) <= TOL


def test_register_tokens_are_excluded_from_the_mean() -> None:
    from slidefuse.model.embedding import pool_tokens

    spec = get_spec("tiny-p14-reg")  # cls+mean, 4 registers
    tokens = torch.zeros(1, 1 + 4 + 9, spec.width)
    tokens[:, 0] = 1.0
    tokens[:, 1:5] = 100.0  # registers: must not reach the mean
    tokens[:, 5:] = 2.0
    out = pool_tokens(tokens, spec)
    assert out.shape == (1, 2 * spec.width)
    assert torch.equal(out[0, : spec.width], torch.ones(spec.width))
    assert torch.equal(out[0, spec.width :], torch.full((spec.width,), 2.0))


def test_conch_v15_pooler_matches_at_trident_tile_size(tmp_path: Path) -> None:
    """TRIDENT runs CONCH v1.5 at 448 px (its img_size default): same embedding there too."""
    assert compare_embedding("conch-v1.5", _small("conch-v1.5"), tmp_path, size=448) <= TOL


@pytest.mark.parametrize("encoder_id", POOLED)
def test_pooler_weights_are_read_from_the_publishers_file(encoder_id: str, tmp_path: Path) -> None:
    """The pooler tensors are those of the file, not initialisations: a different pooler in the file gives a
    different embedding, and a file without the pooler is refused by name."""
    from slidefuse.export.references import conch_tower, save_conch_tower
    from slidefuse.model.attn_pool import build_pooler, load_pooler_weights

    spec = _small(encoder_id)
    tower = conch_tower(encoder_id, spec)
    path = save_conch_tower(encoder_id, tower, tmp_path)
    pooler = build_pooler(spec)
    load_pooler_weights(pooler, spec, path)
    assert torch.equal(pooler.query, tower.attn_pool_contrast.query.reshape(1, -1))
    assert torch.equal(pooler.ln.weight, tower.ln_contrast.weight)
    sd = torch.load(path, weights_only=True)
    bare = {k: v for k, v in sd.items() if "attn_pool_contrast" not in k}
    torch.save(bare, tmp_path / "trunk_only.bin")
    with pytest.raises(CheckpointError, match=f"no attentional pooler for encoder '{encoder_id}'"):
        load_pooler_weights(pooler, spec, tmp_path / "trunk_only.bin")


@pytest.mark.parametrize("encoder_id", POOLED)
def test_segmentation_encoders_of_pooled_models_cannot_embed(encoder_id: str) -> None:
    """A segmentation model holds the trunk only: its encoder part is refused, naming the pooler."""
    from types import SimpleNamespace

    from slidefuse.model.embedding import embedding_from_segmentation

    seg = SimpleNamespace(spec=_small(encoder_id), encoder=torch.nn.Identity(), tile_size=224)  # its 3 fields
    with pytest.raises(UsageError, match=f"'{encoder_id}'.*attentional pooler.*encoder_weights=FILE"):
        embedding_from_segmentation(seg)  # type: ignore[arg-type]
