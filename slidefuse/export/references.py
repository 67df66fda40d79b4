"""The fifteen encoders as their publishers build them, with the publishers' own libraries: the yardstick for
slidefuse's encoders (tests/export/test_reference_encoders.py, benchmarks/encoder_fidelity.py).

Each `Reference` builds the publisher's model (`timm.create_model` with the kwargs on the publisher's model
card, or a transformers model from its config), saves it in the publisher's file format (key names, wrapper
prefixes, .bin / .safetensors) and computes its patch tokens the way the publisher's code does at any input
size (timm with `dynamic_img_size=True`; transformers with `interpolate_pos_encoding`; CONCH v1.5's DINO-style
rule). Nothing here imports slidefuse's own builders or loaders: the architecture options (MLP, activation,
LayerScale, registers, class-token position embedding) are the publisher's, not read from the registry. Only
the size (width, depth, heads) comes from the `EncoderSpec` passed in, so the tests can shrink a model.

Needs timm and transformers (transformers is a dev dependency). CONCH and CONCH v1.5 ship with their own code
(a fork of open_clip; TITAN's `conch_v1_5.py`), which is not on PyPI: their references are the timm trunk those
codes build, and for CONCH v1.5 its run-time position-embedding rule, restated below from its source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from slidefuse.model.registry import EncoderSpec

Tokens = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Reference:
    """How one publisher builds, ships and runs its encoder."""

    library: str  # the reference implementation, e.g. "timm vit_large_patch16_224 (UNI kwargs)"
    build: Callable[[EncoderSpec], nn.Module]  # the publisher's model (eval mode) at the spec's width/depth/heads
    save: Callable[[nn.Module, Path], Path]  # write the publisher's checkpoint file into a folder; returns it
    tokens: Tokens  # (model, normalised float [B, 3, H, W]) -> patch tokens float [B, (H//P)*(W//P), d]


# ---------------------------------------------------------------------------------------------- timm
def _timm(name: str, **kw: Any) -> Callable[[EncoderSpec], nn.Module]:
    def build(spec: EncoderSpec) -> nn.Module:
        import timm

        size = {"embed_dim": spec.width, "depth": spec.depth, "num_heads": spec.num_heads}
        return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                 **{**kw, **size}).eval()

    return build


def _timm_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x)[:, model.num_prefix_tokens :]  # type: ignore[operator,index]


def _torch_file(name: str, prefix: str = "", extra: dict[str, torch.Tensor] | None = None,
                wrapper: str | None = None) -> Callable[[nn.Module, Path], Path]:
    """A torch.save'd state dict named `name`, keys prefixed, optional extra tensors and wrapper entry."""

    def save(model: nn.Module, folder: Path) -> Path:
        sd: dict[str, Any] = {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
        sd.update(extra or {})
        path = Path(folder) / name
        torch.save({wrapper: sd} if wrapper else sd, path)
        return path

    return save


def _safetensors_file(name: str) -> Callable[[nn.Module, Path], Path]:
    def save(model: nn.Module, folder: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / name
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        return path

    return save


# ---------------------------------------------------------------------------------------------- transformers
def _hf_config(spec: EncoderSpec, cls_name: str, **kw: Any) -> Any:
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(hidden_size=spec.width, num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads, **kw)


def _phikon(spec: EncoderSpec) -> nn.Module:
    from transformers import ViTModel

    cfg = _hf_config(spec, "ViTConfig", intermediate_size=4 * spec.width, image_size=224, patch_size=16,
                     qkv_bias=True, layer_norm_eps=1e-12, hidden_act="gelu")
    return ViTModel(cfg, add_pooling_layer=True).eval()  # owkin/phikon ships the pooler


def _phikon_v2(spec: EncoderSpec) -> nn.Module:
    from transformers import Dinov2Model

    cfg = _hf_config(spec, "Dinov2Config", mlp_ratio=4, image_size=224, patch_size=16, layerscale_value=1.0,
                     layer_norm_eps=1e-6, use_swiglu_ffn=False, qkv_bias=True)
    return Dinov2Model(cfg).eval()


def _hibou(spec: EncoderSpec) -> nn.Module:
    from transformers import Dinov2WithRegistersModel

    cfg = _hf_config(spec, "Dinov2WithRegistersConfig", mlp_ratio=4, image_size=224, patch_size=14,
                     num_register_tokens=4, layerscale_value=1e-5, layer_norm_eps=1e-6, use_swiglu_ffn=True,
                     qkv_bias=True)
    return Dinov2WithRegistersModel(cfg).eval()


def _save_pretrained(model: nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)  # type: ignore[operator]
    return Path(folder) / "model.safetensors"


def _hf_tokens(prefix: int, **kw: Any) -> Tokens:
    def tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x, **kw).last_hidden_state[:, prefix:]

    return tokens


# ---------------------------------------------------------------------------------------------- CONCH v1.5
def conch15_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """CONCH v1.5's `interpolate_pos_encoding` (TITAN conch_v1_5.py, after DINO): [1, 1 + N, d] position
    embeddings of its trunk -> [1, 1 + grid*grid, d]; unchanged when grid*grid == N."""
    n = pos.shape[1] - 1
    if grid * grid == n:
        return pos
    dim = pos.shape[-1]
    w0 = h0 = grid + 0.1  # "a small number to avoid floating point error in the interpolation"
    patch = F.interpolate(
        pos[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic",
    )
    return torch.cat((pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def conch15_load_pos(model: nn.Module, pos: torch.Tensor) -> torch.Tensor:
    """CONCH v1.5's loader (`resize_pos_embed`): a checkpoint's position embeddings -> the trunk's grid with
    timm's resample_abs_pos_embed, bilinear, no antialias."""
    from timm.layers import resample_abs_pos_embed

    if pos.shape == model.pos_embed.shape:  # type: ignore[union-attr]
        return pos
    return resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=1,  # type: ignore
                                  interpolation="bilinear", antialias=False)


def _conch15_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CONCH v1.5's trunk.forward_features: patch embed, class token, DINO-style position embeddings, blocks,
    LayerNorm; all tokens [B, 1 + N, d]."""
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)  # type: ignore[union-attr,operator]
    t = torch.cat((model.cls_token.expand(t.shape[0], -1, -1), t), dim=1)  # type: ignore[union-attr,operator]
    t = t + conch15_pos_embed(model.pos_embed, x.shape[-2] // 16)  # type: ignore[arg-type]
    return model.norm(model.blocks(t))  # type: ignore[operator,no-any-return]


def _conch15_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CONCH v1.5's patch tokens (`_conch15_features` without the class token)."""
    return _conch15_features(model, x)[:, 1:]


# ---------------------------------------------------------------------------------------------- CONCH poolers
class OpenClipPooler(nn.Module):
    """MahmoodLab/CONCH conch/open_clip_custom/transformer.py `AttentionalPooler`, as written there."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        n = x.shape[1]
        q = self.ln_q(self.query)
        out = self.attn(q.unsqueeze(1).repeat(1, n, 1), x, x, need_weights=False)[0]
        return out.permute(1, 0, 2)  # type: ignore[no-any-return]  # LND -> NLD


class TitanPooler(nn.Module):
    """TITAN / TRIDENT conch_v1_5.py `AttentionalPooler`; its einops `rearrange`/`repeat`/`einsum` restated in
    torch ('b t n (h d) -> b h t n d' splits the last axis heads-outer)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        dim_head = d_model // n_head
        self.scale = dim_head**-0.5
        self.heads = n_head
        inner_dim = dim_head * n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, inner_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, d_model, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # 'b t n (h d) -> b h t n d'
        b, m, n, hd = t.shape
        return t.reshape(b, m, n, self.heads, hd // self.heads).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)  # 'b n d -> b 1 n d'
        q = self.query.expand(x.shape[0], x.shape[1], -1, -1)  # 'n d -> b m n d'
        x = self.ln_k(x)
        q = self.ln_q(q)
        q = self.to_q(q)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        q = q * self.scale
        sim = torch.einsum("...id,...jd->...ij", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        out = torch.einsum("...ij,...jd->...id", attn, v)
        b, h, m, n, d = out.shape
        out = out.permute(0, 2, 3, 1, 4).reshape(b, m, n, h * d)  # 'b h t n d -> b t n (h d)'
        return self.to_out(out).squeeze(dim=1)  # type: ignore[no-any-return]


class ConchTower(nn.Module):
    """The vision tower around a trunk: CONCH's `VisualModel` (forward_no_head) or CONCH v1.5's
    `CONCHVisionTower`: ln_contrast(attn_pool_contrast(trunk tokens)[:, 0])."""

    def __init__(self, trunk: nn.Module, pooler: nn.Module, d: int, features: Tokens, projection: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = pooler
        self.ln_contrast = nn.LayerNorm(d)
        if projection:  # CONCH's proj_contrast: in the file, not in the embedding (proj_contrast=False)
            self.proj_contrast = nn.Parameter(d**-0.5 * torch.randn(d, d))
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.attn_pool_contrast(self.features(self.trunk, x))[:, 0]
        return self.ln_contrast(pooled)  # type: ignore[no-any-return]


def _timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x)  # type: ignore[operator,no-any-return]


def conch_tower(encoder_id: str, spec: EncoderSpec) -> ConchTower:
    """The publisher's vision tower of "conch" / "conch-v1.5" at the spec's size (random weights, eval)."""
    d, ctx = spec.embedding_dim(), spec.width
    trunk = references()[encoder_id].build(spec)
    if encoder_id == "conch":
        return ConchTower(trunk, OpenClipPooler(d, ctx), d, _timm_features, projection=True).eval()
    return ConchTower(trunk, TitanPooler(d, ctx), d, _conch15_features, projection=False).eval()


def save_conch_tower(encoder_id: str, tower: nn.Module, folder: Path) -> Path:
    """The tower in its publisher's file: CONCH's whole CoCa `pytorch_model.bin` (`visual.*` + text tower
    stand-ins), CONCH v1.5's `pytorch_model_vision.bin` (`trunk.*`, `attn_pool_contrast.*`, `ln_contrast.*`)."""
    if encoder_id == "conch":
        text = {k: v for k, v in _COCA.items() if not k.startswith("visual.")}
        return _torch_file("pytorch_model.bin", "visual.", text)(tower, folder)
    return _torch_file("pytorch_model_vision.bin")(tower, folder)


# ---------------------------------------------------------------------------------------------- table
_G = 2.66667 * 2
_NOISE = {"attn_pool_contrast.query": torch.zeros(1, 8), "ln_contrast.weight": torch.ones(8)}
_COCA = {"visual.attn_pool_contrast.query": torch.zeros(1, 8), "text.token_embedding.weight": torch.zeros(4, 8),
         "logit_scale": torch.tensor(1.0)}


def _swiglu(**kw: Any) -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, **kw}


def references() -> dict[str, Reference]:
    """encoder id -> its Reference, for the fifteen paper encoders."""
    vir = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375}
    giant = {"img_size": 224, "init_values": 1e-5}
    tm = _timm_tokens
    return {
        "uni": Reference("timm vit_large_patch16_224 (UNI model-card kwargs)", _timm(
            "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5),
            _torch_file("pytorch_model.bin"), tm),
        "uni2-h": Reference("timm vit_giant_patch14_224 (UNI2-h model-card kwargs)", _timm(
            "vit_giant_patch14_224", **_swiglu(img_size=224, patch_size=14, init_values=1e-5, mlp_ratio=_G,
                                               no_embed_class=True, reg_tokens=8)),
            _torch_file("pytorch_model.bin"), tm),
        "conch": Reference("timm vit_base_patch16_224 at 448 px (CONCH's open_clip vision trunk)", _timm(
            "vit_base_patch16_224", img_size=448), _torch_file("pytorch_model.bin", "visual.trunk.", _COCA), tm),
        "conch-v1.5": Reference("timm vit_large_patch16_224 trunk + CONCH v1.5's DINO-style position rule", _timm(
            "vit_large_patch16_224", img_size=224, init_values=1.0),
            _torch_file("pytorch_model_vision.bin", "trunk.", _NOISE), _conch15_tokens),
        "virchow": Reference("timm vit_huge_patch14_224 (Virchow model-card kwargs)", _timm(
            "vit_huge_patch14_224", **_swiglu(**vir)), _safetensors_file("model.safetensors"), tm),
        "virchow2": Reference("timm vit_huge_patch14_224 (Virchow2 model-card kwargs)", _timm(
            "vit_huge_patch14_224", **_swiglu(reg_tokens=4, **vir)), _safetensors_file("model.safetensors"), tm),
        "phikon": Reference("transformers ViTModel (interpolate_pos_encoding=True)", _phikon, _save_pretrained,
                            _hf_tokens(1, interpolate_pos_encoding=True)),
        "phikon-v2": Reference("transformers Dinov2Model", _phikon_v2, _save_pretrained, _hf_tokens(1)),
        "prov-gigapath": Reference("timm vit_giant_patch14_dinov2 (Prov-GigaPath config kwargs)", _timm(
            "vit_giant_patch14_dinov2", img_size=224, patch_size=16, init_values=1e-5, mlp_ratio=5.33334),
            _torch_file("pytorch_model.bin"), tm),
        "h-optimus-0": Reference("timm vit_giant_patch14_reg4_dinov2 (H-optimus-0 kwargs)", _timm(
            "vit_giant_patch14_reg4_dinov2", **giant), _safetensors_file("model.safetensors"), tm),
        "h-optimus-1": Reference("timm vit_giant_patch14_reg4_dinov2 (H-optimus-1 kwargs)", _timm(
            "vit_giant_patch14_reg4_dinov2", **giant), _safetensors_file("model.safetensors"), tm),
        "kaiko": Reference("timm vit_large_patch14_reg4_dinov2 (kaiko torch hub)", _timm(
            "vit_large_patch14_reg4_dinov2"), _safetensors_file("model.safetensors"), tm),
        "lunit": Reference("timm vit_small_patch8_224 (Lunit DINO release)", _timm("vit_small_patch8_224"),
                           _torch_file("dino_vit_small_patch8_ep200.torch"), tm),
        "hibou-b": Reference("transformers Dinov2WithRegistersModel(use_swiglu_ffn=True)", _hibou,
                             _save_pretrained, _hf_tokens(5)),
        "hibou-l": Reference("transformers Dinov2WithRegistersModel(use_swiglu_ffn=True)", _hibou,
                             _save_pretrained, _hf_tokens(5)),
    }


def scramble(module: nn.Module, seed: int = 1) -> None:
    """Give every parameter distinct random values (LayerScale, LayerNorm, position embeddings and biases
    included), so that a wrong key mapping or resampling rule cannot hide behind default initialisations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            leaf = name.rsplit(".", 2)[-2:]  # e.g. ["norm1", "weight"]
            if len(leaf) == 2 and ("norm" in leaf[0] or leaf[0].startswith("ln_")) and leaf[1] == "weight":
                noise += 1.0  # keep LayerNorm scales near 1
            p.copy_(noise)


def run_sizes(spec: EncoderSpec) -> tuple[int, ...]:
    """224 px and the product's tile sizes: 512, plus 518 = 37 x 14 (pixel-aligned) for patch 14."""
    return (224, 518, 512) if spec.patch_size == 14 else (224, 512)


def compare(encoder_id: str, spec: EncoderSpec, folder: Path, sizes: tuple[int, ...]) -> dict[int, float]:
    """Build the publisher's model for `spec` (random weights), save it in the publisher's format under
    `folder`, load that file through slidefuse and return max |patch tokens slidefuse - publisher| per input
    size (one random image each). At 512 px with patch 14 the publisher's model sees the 504 px its 36 x 36
    grid covers (the paper's floor), exactly what the strided patch embedding reads of a 512 px tile."""
    from slidefuse.model.checkpoints import load_encoder_weights
    from slidefuse.model.encoders import build_vit, patch_tokens

    ref = references()[encoder_id]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        src = ref.build(spec)
    scramble(src)
    path = ref.save(src, folder)
    out = {}
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        enc = build_vit(spec, size).eval()
        load_encoder_weights(enc, spec, path)
        covered = spec.grid_size(size) * spec.patch_size
        with torch.no_grad():
            want, got = ref.tokens(src, x[..., :covered, :covered]), patch_tokens(enc, spec, x)
        if got.shape != want.shape:
            raise ValueError(f"{encoder_id} at {size} px: slidefuse tokens {list(got.shape)}, publisher's "
                             f"{list(want.shape)}")
        out[size] = (got - want).abs().max().item()
        del enc
    return out


# ---------------------------------------------------------------------------------------------- embeddings
Embed = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (publisher's model, normalised images) -> [B, D]


def _timm_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model cards' `model(x)`: timm's forward with num_classes=0 (its default global_pool)."""
    return model(x)


def _cls_mean(first_patch: int) -> Embed:
    """The Virchow model cards' embedding: torch.cat([output[:, 0], output[:, first_patch:].mean(1)], -1)."""

    def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model.forward_features(x)  # type: ignore[operator]
        return torch.cat([out[:, 0], out[:, first_patch:].mean(1)], dim=-1)

    return embed


def _hf_cls(**kw: Any) -> Embed:
    def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x, **kw).last_hidden_state[:, 0, :]

    return embed


def _hf_pooler(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).pooler_output


def reference_embeddings() -> dict[str, Embed]:
    """encoder id -> the publisher's patch embedding as its model card computes it, for the encoders whose
    embedding is a token rule of the trunk (the CONCH models pool with their towers: `conch_tower`)."""
    return {
        "uni": _timm_forward, "uni2-h": _timm_forward, "prov-gigapath": _timm_forward,
        "h-optimus-0": _timm_forward, "h-optimus-1": _timm_forward, "kaiko": _timm_forward, "lunit": _timm_forward,
        "virchow": _cls_mean(1), "virchow2": _cls_mean(5),
        "phikon": _hf_cls(interpolate_pos_encoding=True), "phikon-v2": _hf_cls(),
        "hibou-b": _hf_pooler, "hibou-l": _hf_pooler,
    }


def _publisher_embedder(encoder_id: str, spec: EncoderSpec, folder: Path) -> tuple[nn.Module, Path, Embed]:
    """(publisher's model, scrambled; its checkpoint file under `folder`; its embedding function)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        src = conch_tower(encoder_id, spec) if spec.embedding == "attn-pool" else references()[encoder_id].build(spec)
    scramble(src)
    if spec.embedding == "attn-pool":
        return src, save_conch_tower(encoder_id, src, folder), lambda model, x: model(x)
    return src, references()[encoder_id].save(src, folder), reference_embeddings()[encoder_id]


def compare_embedding(encoder_id: str, spec: EncoderSpec, folder: Path, batch: int = 2,
                      size: int | None = None) -> float:
    """Build the publisher's model for `spec` (random weights, scrambled), save it in the publisher's format,
    build slidefuse's EmbeddingModel from that file at `size` px (default: the native tile size; the trunk, and
    for "attn-pool" the pooler, each loaded by slidefuse's own loaders), and return max |embedding slidefuse -
    publisher| over `batch` random uint8 tiles, both fed the same normalised images (the normalisation inside
    the graph is the segmentation model's, checked with it)."""
    from slidefuse.model.attn_pool import build_pooler, load_pooler_weights
    from slidefuse.model.checkpoints import load_encoder_weights
    from slidefuse.model.embedding import EmbeddingModel
    from slidefuse.model.encoders import build_vit

    src, path, embed = _publisher_embedder(encoder_id, spec, folder)
    size = size or spec.native_size
    enc = build_vit(spec, size).eval()
    load_encoder_weights(enc, spec, path)
    pooler = None
    if spec.embedding == "attn-pool":
        pooler = build_pooler(spec)
        load_pooler_weights(pooler, spec, path)
    ours = EmbeddingModel(spec, enc, size, pooler).eval()
    tiles = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        x = ours.normalise(tiles)  # one input for both: the comparison is of the networks and their pooling
        want, got = embed(src, x), ours.pool(enc.forward_features(x))  # type: ignore[operator]
    if got.shape != want.shape:
        raise ValueError(f"{encoder_id}: slidefuse embedding {list(got.shape)}, publisher's {list(want.shape)}")
    return float((got - want).abs().max().item())
