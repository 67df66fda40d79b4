"""SegmentationModel / build_model: uint8 tiles in, probabilities out; weights never silently random."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slidefuse.errors import CheckpointError, UnknownName, UsageError
from slidefuse.model.assembly import (
    SegmentationModel,
    build_model,
    build_model_from_state,
    load_model_state,
    save_model_state,
)
from slidefuse.model.decoder import Decoder
from slidefuse.model.encoders import build_vit
from slidefuse.model.registry import get_spec


def _tiles(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(("encoder_id", "grid", "blocks", "resize"),
                         [("tiny", 32, 4, False), ("tiny-p14-reg", 36, 4, True), ("tiny-p8", 64, 3, False)])
def test_forward_contract_at_512(encoder_id: str, grid: int, blocks: int, resize: bool) -> None:
    model = build_model(encoder_id, 3, random_weights=True)
    assert isinstance(model, SegmentationModel)
    assert (model.num_classes, model.tile_size, model.decoder_width, model.grid) == (3, 512, 32, grid)
    assert model.spec is get_spec(encoder_id)
    assert len(model.decoder.blocks) == blocks and model.decoder.needs_resize is resize
    tiles = _tiles(2, 512)
    with torch.no_grad():
        feats = model.features(model.normalise(tiles))
        probs = model(tiles)
        logits = model.forward_logits(tiles)
    assert feats.shape == (2, 64, grid, grid)
    assert probs.shape == (2, 3, 512, 512) and probs.dtype == torch.float32
    assert torch.all(probs >= 0) and torch.allclose(probs.sum(1), torch.ones(2, 512, 512), atol=1e-5)
    assert torch.allclose(probs, torch.softmax(logits, 1))


def test_feature_map_is_the_reshaped_patch_tokens() -> None:
    model = build_model("tiny-p14-reg", 2, tile_size=224, random_weights=True)
    x = model.normalise(_tiles(1, 224))
    with torch.no_grad():
        tokens = model.encoder.forward_features(x)  # [1, 5 + 16*16, 64]
        fmap = model.features(x)
    assert tokens.shape == (1, 5 + 256, 64)
    # token 5 + r*16 + c is grid cell (r, c)
    assert torch.equal(fmap[0, :, 2, 3], tokens[0, 5 + 2 * 16 + 3])


def test_normalisation_uses_the_encoder_mean_and_std() -> None:
    model = build_model("tiny", 2, tile_size=64, random_weights=True)
    tiles = _tiles(1, 64)
    mean = torch.tensor(model.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.spec.std).view(1, 3, 1, 1)
    expected = (tiles.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(model.normalise(tiles), expected, atol=1e-5)
    assert set(model.state_dict()) == {f"encoder.{k}" for k in model.encoder.state_dict()} | {
        f"decoder.{k}" for k in model.decoder.state_dict()}  # normalisation constants are not weights


def test_no_silent_random_weights(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"'tiny'.*encoder_weights=FILE.*random_weights=True"):
        build_model("tiny", 3)
    enc = build_vit(get_spec("tiny"), 224)
    save_file(enc.state_dict(), str(tmp_path / "enc.safetensors"))
    with pytest.raises(UsageError, match=r"decoder.*decoder_weights=FILE.*random_weights=True"):
        build_model("tiny", 3, encoder_weights=tmp_path / "enc.safetensors")


def test_given_weights_are_loaded_and_random_fills_only_the_rest(tmp_path: Path) -> None:
    src = build_model("tiny", 3, tile_size=224, random_weights=True, seed=5)
    save_file(src.encoder.state_dict(), str(tmp_path / "enc.safetensors"))
    save_file(src.decoder.state_dict(), str(tmp_path / "dec.safetensors"))
    full = build_model("tiny", 3, tile_size=224, encoder_weights=tmp_path / "enc.safetensors",
                       decoder_weights=tmp_path / "dec.safetensors")
    tiles = _tiles(2, 224)
    with torch.no_grad():
        assert torch.equal(full(tiles), src(tiles))
    half = build_model("tiny", 3, tile_size=224, encoder_weights=tmp_path / "enc.safetensors",
                       random_weights=True, seed=9)  # trained encoder, fresh decoder (training)
    assert torch.equal(half.encoder.pos_embed, src.encoder.pos_embed)
    assert not torch.equal(half.decoder.head.weight, src.decoder.head.weight)


def test_encoder_weights_at_another_size_are_resampled_to_the_tile() -> None:
    src = build_model("tiny", 2, tile_size=224, random_weights=True)
    assert src.encoder.pos_embed.shape == (1, 1 + 14 * 14, 64)
    big = build_model("tiny", 2, tile_size=512, random_weights=True)
    assert big.encoder.pos_embed.shape == (1, 1 + 32 * 32, 64)


def test_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("tiny", 2, tile_size=64, random_weights=True, seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model("tiny", 2, tile_size=64, random_weights=True, seed=1)
    c = build_model("tiny", 2, tile_size=64, random_weights=True, seed=2)
    assert torch.equal(a.decoder.proj.weight, b.decoder.proj.weight)
    assert not torch.equal(a.decoder.proj.weight, c.decoder.proj.weight)


def test_whole_model_state_round_trip(tmp_path: Path) -> None:
    model = build_model("tiny-p14-reg", 4, tile_size=224, decoder_width=16, random_weights=True, seed=3)
    path = save_model_state(model, tmp_path / "model.safetensors")
    again = build_model_from_state("tiny-p14-reg", 4, 224, 16, path)
    tiles = _tiles(2, 224)
    with torch.no_grad():
        assert torch.equal(model(tiles), again(tiles))
    other = build_model("tiny-p14-reg", 3, tile_size=224, decoder_width=16, random_weights=True)
    with pytest.raises(CheckpointError, match=r"decoder\.head\.weight.*\[4, 16, 1, 1\].*\[3, 16, 1, 1\]"):
        load_model_state(other, path)
    with pytest.raises(CheckpointError, match=r"'tiny'.*unexpected 5 keys.*reg_token"):
        build_model_from_state("tiny", 4, 224, 16, path)


def test_decoder_weights_from_a_whole_model_file(tmp_path: Path) -> None:
    model = build_model("tiny", 2, tile_size=64, random_weights=True, seed=4)
    path = save_model_state(model, tmp_path / "model.safetensors")
    dec = build_model("tiny", 2, tile_size=64, decoder_weights=path, random_weights=True).decoder
    assert isinstance(dec, Decoder) and torch.equal(dec.head.weight, model.decoder.head.weight)


def test_bad_arguments() -> None:
    with pytest.raises(UnknownName, match="valid|expected one of"):
        build_model("nope", 2, random_weights=True)
    with pytest.raises(UsageError, match="num_classes 0"):
        build_model("tiny", 0, random_weights=True)
    with pytest.raises(UsageError, match="tile size 8"):
        build_model("tiny", 2, tile_size=8, random_weights=True)
    model = build_model("tiny", 2, tile_size=64, random_weights=True)
    with pytest.raises(UsageError, match=r"\[1, 32, 32, 3\].*\[B, 64, 64, 3\]"):
        model(_tiles(1, 32))


def test_onnx_export_with_dynamic_batch(tmp_path: Path) -> None:
    """The forward traces to ONNX (opset 17, uint8 input, dynamic batch) and matches onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = build_model("tiny-p14-reg", 3, tile_size=112, random_weights=True)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (_tiles(2, 112),), str(path), input_names=["tiles"], output_names=["probabilities"],
                      opset_version=17, dynamic_axes={"tiles": {0: "batch"}, "probabilities": {0: "batch"}},
                      dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tiles = _tiles(3, 112, seed=1)
    got = sess.run(None, {"tiles": tiles.numpy()})[0]
    with torch.no_grad():
        ref = model(tiles).numpy()
    assert got.shape == (3, 3, 112, 112)
    assert np.abs(got - ref).max() < 1e-4
