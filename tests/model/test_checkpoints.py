"""Publisher checkpoint formats: write a random checkpoint in each layout, load it through slidefuse, and
compare the encoder's patch tokens with the source model's (fp32, native size, max abs diff <= 1e-5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slidefuse.errors import CheckpointError, UsageError
from slidefuse.model.checkpoints import load_decoder_weights, load_encoder_weights, read_state_file
from slidefuse.model.decoder import Decoder
from slidefuse.model.encoders import build_vit, patch_tokens
from slidefuse.model.registry import EncoderSpec, get_spec

TOL = 1e-5


def _scramble(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter distinct random values (LayerScale, LayerNorm and biases included), so that a
    wrong key mapping cannot hide behind default initialisations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "layernorm_before.weight",
                              "layernorm_after.weight", "layernorm.weight")):
                noise += 1.0  # keep LayerNorm scales near 1
            p.copy_(noise)


def _images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def _ours(spec: EncoderSpec, path: Path) -> torch.nn.Module:
    enc = build_vit(spec, spec.native_size).eval()
    load_encoder_weights(enc, spec, path)
    return enc


def _assert_tokens_equal(spec: EncoderSpec, enc: torch.nn.Module, ref: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        got = patch_tokens(enc, spec, x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= TOL


# ------------------------------------------------------------------------------------------- timm layout
def _timm_source(spec: EncoderSpec) -> torch.nn.Module:
    src = build_vit(spec, spec.native_size).eval()
    _scramble(src)
    return src


def test_timm_safetensors(tmp_path: Path) -> None:
    spec = get_spec("tiny")
    src = _timm_source(spec)
    save_file(src.state_dict(), str(tmp_path / "tiny.safetensors"))
    x = _images(spec.native_size)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "tiny.safetensors"), ref, x)


def test_timm_created_by_timm_with_wrapper_and_prefix(tmp_path: Path) -> None:
    """A model made by timm.create_model (not by slidefuse), saved as {"model": {"module.*": ...}} with a
    classifier head, loads through torch.load(weights_only=True)."""
    import timm

    spec = get_spec("tiny-p8")
    src = timm.create_model("vit_small_patch8_224", pretrained=False, embed_dim=64, depth=2, num_heads=2,
                            num_classes=5).eval()
    _scramble(src)
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt.pth")
    x = _images(224)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "ckpt.pth"), ref, x)


def test_timm_registers_swiglu_layerscale(tmp_path: Path) -> None:
    """The UNI2-h / H-optimus family: SwiGLU-packed MLP, LayerScale, registers, no class pos-embed."""
    spec = dataclasses.replace(get_spec("tiny-p14-reg"), checkpoint_format="timm", mlp="swiglu-packed",
                               mlp_ratio=4.0, init_values=1e-5)
    src = _timm_source(spec)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    x = _images(spec.native_size)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 5:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "w.safetensors"), ref, x)


def test_conch_v15_vision_tower_keeps_the_trunk(tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec("tiny"), native_size=448, init_values=1.0)
    src = _timm_source(spec)
    sd = {f"trunk.{k}": v for k, v in src.state_dict().items()}
    sd["attn_pool_contrast.query"] = torch.randn(1, 32)
    sd["ln_contrast.weight"] = torch.ones(32)
    torch.save(sd, tmp_path / "pytorch_model_vision.bin")
    x = _images(448, n=1)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "pytorch_model_vision.bin"), ref, x)


# ------------------------------------------------------------------------------------------- open_clip CONCH
def test_open_clip_conch_trunk(tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec("tiny"), checkpoint_format="open_clip-conch", native_size=448)
    src = _timm_source(spec)
    sd = {f"visual.trunk.{k}": v for k, v in src.state_dict().items()}
    sd["visual.attn_pool_contrast.query"] = torch.randn(1, 32)
    sd["text.token_embedding.weight"] = torch.randn(10, 32)
    sd["logit_scale"] = torch.tensor(1.0)
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.bin")
    x = _images(448, n=1)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "pytorch_model.bin"), ref, x)


def test_open_clip_without_trunk_names_the_expected_prefix(tmp_path: Path) -> None:
    spec = get_spec("conch")
    save_file({"text.token_embedding.weight": torch.zeros(2, 2)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=r"'conch'.*visual\.trunk"):
        load_encoder_weights(torch.nn.Linear(1, 1), spec, tmp_path / "c.safetensors")


# ------------------------------------------------------------------------------------------- transformers layouts
def test_hf_vit_phikon_layout(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                    image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-12)
    src = ViTModel(cfg, add_pooling_layer=True).eval()  # Phikon ships the pooler; slidefuse drops it
    _scramble(src)
    src.save_pretrained(tmp_path / "phikon")
    spec = dataclasses.replace(get_spec("tiny"), checkpoint_format="hf-vit", norm_eps=1e-12)
    x = _images(224)
    with torch.no_grad():
        ref = src(pixel_values=x).last_hidden_state[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "phikon" / "model.safetensors"), ref, x)


def test_hf_dinov2_phikon_v2_layout(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                       image_size=224, patch_size=16, layerscale_value=1.0, layer_norm_eps=1e-6)
    src = Dinov2Model(cfg).eval()
    _scramble(src)
    src.save_pretrained(tmp_path / "phikon-v2")
    spec = dataclasses.replace(get_spec("tiny"), checkpoint_format="hf-dinov2", init_values=1.0)
    x = _images(224)
    with torch.no_grad():
        ref = src(pixel_values=x).last_hidden_state[:, 1:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "phikon-v2" / "model.safetensors"), ref, x)


@pytest.mark.parametrize("writer", ["save_pretrained", "state_dict"])
def test_hf_dinov2_with_registers_hibou_layout(tmp_path: Path, writer: str) -> None:
    """Both the published layout (save_pretrained: attention.attention.query, ...) and transformers 5's
    in-memory state dict (attention.q_proj, ...)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    spec = get_spec("tiny-p14-reg")
    cfg = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                                    image_size=spec.native_size, patch_size=14, num_register_tokens=4,
                                    layerscale_value=1.0, layer_norm_eps=1e-6)
    src = Dinov2WithRegistersModel(cfg).eval()
    _scramble(src)
    if writer == "save_pretrained":
        src.save_pretrained(tmp_path / "hibou")
        path = tmp_path / "hibou" / "model.safetensors"
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(src.state_dict(), path)
    x = _images(spec.native_size)
    with torch.no_grad():
        ref = src(pixel_values=x).last_hidden_state[:, 5:]
    _assert_tokens_equal(spec, _ours(spec, path), ref, x)


# ------------------------------------------------------------------------------------------- strictness
def test_wrong_architecture_names_the_id_and_the_first_mismatches(tmp_path: Path) -> None:
    src = _timm_source(get_spec("tiny"))  # patch 16, no registers
    save_file(src.state_dict(), str(tmp_path / "tiny.safetensors"))
    spec = get_spec("tiny-p14-reg")
    with pytest.raises(CheckpointError) as err:
        _ours(spec, tmp_path / "tiny.safetensors")
    msg = str(err.value)
    assert "'tiny-p14-reg'" in msg and "tiny.safetensors" in msg
    assert "missing" in msg and "reg_token" in msg and "ls1.gamma" in msg


def test_shape_mismatch_names_the_parameter_and_both_shapes(tmp_path: Path) -> None:
    spec = get_spec("tiny")
    wide = build_vit(dataclasses.replace(spec, width=96, num_heads=2), spec.native_size)
    save_file(wide.state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError) as err:
        _ours(spec, tmp_path / "wide.safetensors")
    msg = str(err.value)
    assert "'tiny'" in msg and "[1, 1, 96]" in msg and "[1, 1, 64]" in msg and "cls_token" in msg


def test_unexpected_keys_are_listed(tmp_path: Path) -> None:
    spec = get_spec("tiny")
    sd = _timm_source(spec).state_dict()
    sd["blocks.7.attn.qkv.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys: blocks\.7\.attn\.qkv\.weight"):
        _ours(spec, tmp_path / "extra.safetensors")


def test_position_embeddings_are_resampled_once_at_load(tmp_path: Path) -> None:
    from timm.layers import resample_abs_pos_embed

    spec = get_spec("tiny")
    src = _timm_source(spec)  # 224 px: 14x14 grid
    save_file(src.state_dict(), str(tmp_path / "tiny.safetensors"))
    enc = build_vit(spec, 512)  # 32x32 grid
    load_encoder_weights(enc, spec, tmp_path / "tiny.safetensors")
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[32, 32], old_size=[14, 14],
                                      num_prefix_tokens=1)
    assert enc.pos_embed.shape == (1, 1 + 32 * 32, 64)
    assert torch.equal(enc.pos_embed.detach(), expected)
    assert torch.equal(enc.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_file(tmp_path / "evil.pth")


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "w.npz").write_bytes(b"0")
    with pytest.raises(CheckpointError, match=r"\.npz.*\.safetensors"):
        read_state_file(tmp_path / "w.npz")
    with pytest.raises(UsageError, match="does not exist"):
        read_state_file(tmp_path / "nope.safetensors")


def test_teacher_wrapper_with_backbone_prefix(tmp_path: Path) -> None:
    sd = {"backbone.a": torch.ones(2), "backbone.b": torch.zeros(1)}
    torch.save({"teacher": sd, "student": {"x": torch.ones(1)}}, tmp_path / "dino.pth")
    assert set(read_state_file(tmp_path / "dino.pth")) == {"a", "b"}


# ------------------------------------------------------------------------------------------- decoder
def test_decoder_weights_round_trip_and_strictness(tmp_path: Path) -> None:
    dec = Decoder(64, 3, 16, grid=14, out_size=224)
    _scramble(dec)
    save_file(dec.state_dict(), str(tmp_path / "decoder.safetensors"))
    other = Decoder(64, 3, 16, grid=14, out_size=224)
    load_decoder_weights(other, tmp_path / "decoder.safetensors")
    x = torch.randn(1, 64, 14, 14)
    with torch.no_grad():
        assert torch.equal(dec(x), other(x))
    with pytest.raises(CheckpointError, match=r"head\.weight.*\[3, 16, 1, 1\].*\[4, 16, 1, 1\]"):
        load_decoder_weights(Decoder(64, 4, 16, grid=14, out_size=224), tmp_path / "decoder.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 2 keys: blocks\.4\.1\.weight"):
        load_decoder_weights(Decoder(64, 3, 16, grid=7, out_size=224), tmp_path / "decoder.safetensors")


def test_timm_layout_file_of_an_hf_format_encoder_is_not_folded(tmp_path: Path) -> None:
    """An encoder saved in timm keys (as `slidefuse train` writes NAME.encoder.safetensors) for an encoder
    whose publisher format is transformers: its position embeddings have no class row and load unchanged."""
    spec = get_spec("tiny-p14-reg")
    src = _timm_source(spec)
    save_file(src.state_dict(), str(tmp_path / "enc.safetensors"))
    x = _images(spec.native_size)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 5:]
    _assert_tokens_equal(spec, _ours(spec, tmp_path / "enc.safetensors"), ref, x)
