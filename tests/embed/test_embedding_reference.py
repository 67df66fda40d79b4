"""Every exported embedding against its publisher's own forward pass (timm `model(x)` with the model card's
kwargs, transformers `last_hidden_state[:, 0]` / `pooler_output`, the Virchow cards' class token ++ mean patch
token): the publisher's model is built with random weights, saved in the publisher's file format, loaded
through slidefuse, and both embeddings compared on uint8 tiles at the native tile size. Reduced size here
(depth 2, width 128-160); full width under `slow`. Gate: max |diff| <= 1e-5."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from slidefuse.errors import UsageError
from slidefuse.model.registry import PAPER_IDS, get_spec

pytest.importorskip("transformers")

from slidefuse.export.references import compare_embedding, reference_embeddings

TOL = 1e-5
SMALL_WIDTH = {"virchow": 160, "virchow2": 160}
EMBED_IDS = tuple(reference_embeddings())
POOLED = tuple(i for i in PAPER_IDS if i not in EMBED_IDS)


def test_every_paper_encoder_has_a_sourced_embedding_rule() -> None:
    for encoder_id in PAPER_IDS:
        spec = get_spec(encoder_id)
        assert spec.embedding_source and spec.embedding_dim() > 0, encoder_id
    assert get_spec("virchow2").embedding_dim() == 2560 and get_spec("uni").embedding_dim() == 1024
    assert get_spec("conch").embedding_dim() == 512 and get_spec("conch-v1.5").embedding_dim() == 768
    assert set(POOLED) == {"conch", "conch-v1.5"}


@pytest.mark.parametrize("encoder_id", EMBED_IDS)
def test_embedding_matches_the_publishers_forward(encoder_id: str, tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec(encoder_id), width=SMALL_WIDTH.get(encoder_id, 128), num_heads=2, depth=2)
    assert compare_embedding(encoder_id, spec, tmp_path) <= TOL


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


@pytest.mark.parametrize("encoder_id", POOLED)
def test_attention_pooled_encoders_are_refused_by_name(encoder_id: str) -> None:
    from slidefuse.model.embedding import build_embedding_model

    with pytest.raises(UsageError, match=f"'{encoder_id}'.*attentional pooler"):
        build_embedding_model(encoder_id, random_weights=True)
