"""Every paper encoder against its publisher's own implementation (timm with the model card's kwargs,
transformers models from configs, CONCH v1.5's position rule): the publisher's model is built with random
weights, saved in the publisher's file format, loaded through slidefuse, and the patch tokens compared at 224 px
and at the product's tile sizes (512; 518 and 512 for patch 14). Reduced size here (depth 2, width 128-160);
full width in test_reference_full.py (slow). Gate: max |diff| <= 1e-5."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from slidefuse.errors import CheckpointError
from slidefuse.export.references import compare, conch15_load_pos, references, run_sizes, scramble
from slidefuse.model.checkpoints import load_encoder_weights, to_timm
from slidefuse.model.encoders import build_vit, patch_tokens
from slidefuse.model.registry import PAPER_IDS, EncoderSpec, get_spec

pytest.importorskip("transformers")

TOL = 1e-5
REFS = references()
# Widths at which each publisher's MLP ratio still gives an even packed-SwiGLU width (timm requires it).
SMALL_WIDTH = {"virchow": 160, "virchow2": 160}
PUBLISHED_PREFIX = {"conch": "visual.trunk.", "conch-v1.5": "trunk."}  # wrapper prefixes of the shipped files


def small(spec: EncoderSpec) -> EncoderSpec:
    """The encoder at depth 2, width 128 (or SMALL_WIDTH), 2 heads: every other option unchanged."""
    return dataclasses.replace(spec, width=SMALL_WIDTH.get(spec.id, 128), num_heads=2, depth=2)


def images(size: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize("encoder_id", PAPER_IDS)
def test_patch_tokens_match_the_publishers_code(encoder_id: str, tmp_path: Path) -> None:
    spec = small(get_spec(encoder_id))
    diffs = compare(encoder_id, spec, tmp_path, run_sizes(spec))
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("encoder_id", PAPER_IDS)
def test_full_size_keys_and_shapes_match_the_reference(encoder_id: str) -> None:
    """The full-size publisher model (meta device) and slidefuse's have the same tensors, name for name and
    shape for shape, once the publisher's layout is converted."""
    spec = get_spec(encoder_id)
    with torch.device("meta"):
        src = REFS[encoder_id].build(spec)
        ours = spec.builder(spec, spec.native_size)
    prefix = PUBLISHED_PREFIX.get(encoder_id, "")
    theirs = to_timm({prefix + k: v for k, v in src.state_dict().items()}, spec)
    mine = ours.state_dict()
    assert sorted(theirs) == sorted(mine)
    bad = {k: (list(v.shape), list(mine[k].shape)) for k, v in theirs.items() if v.shape != mine[k].shape}
    assert not bad, bad


@pytest.mark.parametrize(("encoder_id", "fc1", "fc2"), [("hibou-b", [4096, 768], [768, 2048]),
                                                        ("hibou-l", [5472, 1024], [1024, 2736])])
def test_hibou_is_swiglu_with_histai_hidden_sizes(encoder_id: str, fc1: list[int], fc2: list[int]) -> None:
    spec = get_spec(encoder_id)
    with torch.device("meta"):
        src, ours = REFS[encoder_id].build(spec), spec.builder(spec, spec.native_size)
    assert list(src.encoder.layer[0].mlp.gate_proj.weight.shape) == [fc1[0] // 2, fc1[1]]  # type: ignore[index]
    assert list(ours.blocks[0].mlp.fc1.weight.shape) == fc1  # type: ignore[index]
    assert list(ours.blocks[0].mlp.fc2.weight.shape) == fc2  # type: ignore[index]
    assert spec.num_registers == 4 and spec.init_values is not None


def test_a_gelu_hibou_file_is_refused_naming_the_mlp(tmp_path: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    spec = small(get_spec("hibou-b"))
    cfg = Dinov2WithRegistersConfig(hidden_size=spec.width, num_hidden_layers=2, num_attention_heads=2,
                                    patch_size=14, num_register_tokens=4, use_swiglu_ffn=False)
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "gelu")
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(build_vit(spec, 518), spec, tmp_path / "gelu" / "model.safetensors")
    msg = str(err.value)
    swiglu = spec.mlp_hidden()  # DINOv2's rule: 2 x ((int(512 * 2 / 3) + 7) // 8 * 8) = 688 at width 128
    assert swiglu == 688
    assert "'hibou-b'" in msg and "its MLP is GELU (fc1 [512, 128]" in msg
    assert f"the model's is packed SwiGLU (fc1 [{swiglu}, 128], fc2 [128, {swiglu // 2}])" in msg


def test_conch_v15_checkpoint_of_another_grid_goes_through_the_trunk_grid(tmp_path: Path) -> None:
    """A CONCH v1.5 file whose position embeddings have a 28 x 28 grid: the publisher's loader resizes them to
    the trunk's 14 x 14 (bilinear), its forward interpolates from there (DINO-style); slidefuse matches both."""
    spec = small(get_spec("conch-v1.5"))
    ref = REFS["conch-v1.5"]
    src = ref.build(spec)
    scramble(src)
    sd = {f"trunk.{k}": v.detach().clone() for k, v in src.state_dict().items()}
    sd["trunk.pos_embed"] = torch.randn(1, 1 + 28 * 28, spec.width, generator=torch.Generator().manual_seed(3))
    torch.save(sd, tmp_path / "pytorch_model_vision.bin")
    with torch.no_grad():
        src.pos_embed.copy_(conch15_load_pos(src, sd["trunk.pos_embed"]))
    for size in (448, 512):
        enc = build_vit(spec, size).eval()
        load_encoder_weights(enc, spec, tmp_path / "pytorch_model_vision.bin")
        x = images(size)
        with torch.no_grad():
            assert (patch_tokens(enc, spec, x) - ref.tokens(src, x)).abs().max().item() <= TOL
