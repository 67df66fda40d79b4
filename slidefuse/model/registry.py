"""The encoder registry: the fifteen pathology foundation-model encoders of the reference benchmark plus tiny
test encoders.

Each encoder is one frozen `EncoderSpec` (metadata and architecture hyper-parameters); the architecture is
built by `spec.builder(spec, img_size)` (see `slidefuse.model.encoders`). This module imports neither torch
nor timm, so `get_spec` and `list_specs` work with the base install; `count_params` needs the export extra.

Every paper encoder names its source in `EncoderSpec.reference`: the publisher's model card or code that fixes
its MLP type and activation, LayerScale init, registers, class token, position-embedding layout and the way the
publisher's code resamples position embeddings for another input size (`pos_resample`).
The exporter's `references` module rebuilds each one with the publisher's own library for the tests.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slidefuse.errors import UnknownName, did_you_mean

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
HALF = (0.5, 0.5, 0.5)

CHECKPOINT_FORMATS = ("timm", "hf-vit", "hf-dinov2", "hf-dinov2-reg", "open_clip-conch")
MLP_KINDS = ("gelu", "swiglu-packed", "swiglu-dinov2")
# How the publisher's code brings position embeddings to another token grid (see slidefuse.model.posembed):
# "bicubic-antialias": F.interpolate(size, bicubic, antialias=True): timm resample_abs_pos_embed (timm models,
#     dynamic_img_size) and transformers Dinov2WithRegistersModel;
# "bicubic": F.interpolate(size, bicubic, no antialias): transformers ViTModel / Dinov2Model;
# "bicubic-offset": DINO / iBOT style, F.interpolate(scale_factor=(g + 0.1) / g0, bicubic, no antialias) from the
#     trunk's own grid (CONCH v1.5, whose loader first brings a checkpoint to that grid with bilinear).
POS_RESAMPLE = ("bicubic-antialias", "bicubic", "bicubic-offset")
# The publisher's own patch embedding (`slidefuse export --task embed`), from the trunk's tokens after its final
# LayerNorm: "cls": the class token [d]; "cls+mean": the class token concatenated with the mean of the patch
# tokens, registers excluded [2d]; "attn-pool": the CoCa attentional pooler (one query) + LayerNorm of the
# CONCH models, whose weights sit beside the trunk in the publisher's file [embedding_width].
EMBEDDING_RULES = ("cls", "cls+mean", "attn-pool")

Builder = Callable[["EncoderSpec", int], "nn.Module"]


def _build_vit(spec: EncoderSpec, img_size: int) -> nn.Module:
    """Default builder: a timm VisionTransformer (imported lazily so this module needs no torch)."""
    from slidefuse.model.encoders import build_vit

    return build_vit(spec, img_size)


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder: what it is, how to build it, and how its published checkpoint is laid out."""

    id: str  # registry id, e.g. "uni"
    architecture: str  # human description, e.g. "ViT-L/16, LayerScale"
    patch_size: int  # patch side P in px; the token grid of a HxW tile is (H // P) x (W // P)
    width: int  # token dimension d fed to the decoder (the trunk's embed dim)
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads per block
    mlp_ratio: float  # MLP hidden width / d (for SwiGLU-packed: fc1 output width / d, both halves)
    mlp: str  # "gelu" (fc1-GELU-fc2), "swiglu-packed" (timm SwiGLUPacked with SiLU, fc1 = int(d * mlp_ratio)) or
    # "swiglu-dinov2" (the same packed SwiGLU sized by DINOv2's rule: each half (int(d * mlp_ratio * 2 / 3) + 7)
    # // 8 * 8, i.e. fc1 [4096, 768] for ViT-B, [5472, 1024] for ViT-L)
    init_values: float | None  # LayerScale init value; None = no LayerScale parameters
    num_registers: int  # register tokens after the class token (DINOv2-reg style); 0 = none
    num_prefix_tokens: int  # tokens before the patch tokens (class token + registers); dropped by the model
    no_embed_class: bool  # True: position embeddings cover patch tokens only (timm `no_embed_class`)
    native_size: int  # input side in px whose token grid the publisher's model holds position embeddings for
    mean: tuple[float, float, float]  # RGB normalisation mean on the 0..1 scale
    std: tuple[float, float, float]  # RGB normalisation std on the 0..1 scale
    checkpoint_format: str  # published layout: one of CHECKPOINT_FORMATS
    paper_params: int  # parameter count the reference paper reports
    note: str = ""  # why the counted parameters differ from `paper_params`, and other caveats
    default_decoder_width: int = 256  # decoder width D when none is given
    norm_eps: float = 1e-6  # LayerNorm epsilon (Hugging Face ViT uses 1e-12)
    qkv_bias: bool = True  # bias on the fused qkv projection
    pos_resample: str = "bicubic-antialias"  # the publisher's position-embedding resampling: one of POS_RESAMPLE
    reference: str = ""  # where the architecture and its options come from (model card, code, kwargs)
    embedding: str = "cls"  # the publisher's patch embedding: one of EMBEDDING_RULES
    embedding_source: str = ""  # the model card or code that defines `embedding`
    embedding_width: int | None = None  # "attn-pool" only: the pooler's output width (the embedding dim)
    builder: Builder = dataclasses.field(default=_build_vit, repr=False, compare=False)  # (spec, img_size) -> nn.Module

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"{self.id}: checkpoint_format {self.checkpoint_format!r} not in {CHECKPOINT_FORMATS}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"{self.id}: mlp {self.mlp!r} not in {MLP_KINDS}")
        if self.pos_resample not in POS_RESAMPLE:
            raise ValueError(f"{self.id}: pos_resample {self.pos_resample!r} not in {POS_RESAMPLE}")
        if self.embedding not in EMBEDDING_RULES:
            raise ValueError(f"{self.id}: embedding {self.embedding!r} not in {EMBEDDING_RULES}")
        if (self.embedding == "attn-pool") != (self.embedding_width is not None):
            raise ValueError(f"{self.id}: embedding_width is set for the 'attn-pool' embedding only")
        if self.num_prefix_tokens != 1 + self.num_registers:
            raise ValueError(f"{self.id}: num_prefix_tokens must be 1 (class token) + {self.num_registers} registers")

    def grid_size(self, tile_size: int) -> int:
        """Token grid side h = w = tile_size // patch_size (pixels past the last full patch are ignored)."""
        return tile_size // self.patch_size

    def embedding_dim(self) -> int:
        """Width D of the publisher's patch embedding (`embedding`): d, 2d (class token ++ mean patch token), or
        the attentional pooler's width."""
        if self.embedding == "cls+mean":
            return 2 * self.width
        return self.embedding_width if self.embedding_width is not None else self.width

    def mlp_hidden(self) -> int:
        """Output width of the first MLP projection (fc1): the hidden width, both halves for SwiGLU."""
        if self.mlp == "swiglu-dinov2":
            half = (int(int(self.width * self.mlp_ratio) * 2 / 3) + 7) // 8 * 8
            return 2 * half
        return int(self.width * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the builder as its function name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "builder"}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["builder"] = getattr(self.builder, "__name__", str(self.builder))
        return d


_TIMM_CLS = "timm forward with num_classes=0 (global_pool 'token'): the class token after the final LayerNorm"
_TRIDENT = "TRIDENT trident/patch_encoder_models/load.py"
# encoder id -> (embedding rule, its source, pooler width for "attn-pool")
_EMBEDDINGS: dict[str, tuple[str, str, int | None]] = {
    "uni": ("cls", f"MahmoodLab/UNI model card (`model(image)`, [1, 1024]): {_TIMM_CLS}; {_TRIDENT} uni_v1", None),
    "uni2-h": ("cls", f"MahmoodLab/UNI2-h model card (`model(image)`, [1, 1536]): {_TIMM_CLS}; {_TRIDENT} uni_v2",
               None),
    "conch": ("attn-pool", "MahmoodLab/CONCH: `model.encode_image(image, proj_contrast=False, normalize=False)` = "
              "VisualModel.forward_no_head: ln_contrast(attn_pool_contrast(trunk tokens)[:, 0]), before "
              "proj_contrast (open_clip AttentionalPooler, 8 heads, 1 query, 512-d); " + _TRIDENT + " conch_v1", 512),
    "conch-v1.5": ("attn-pool", "MahmoodLab/TITAN conch_v1_5.py CONCHVisionTower.forward: "
                   "ln_contrast(attn_pool_contrast(trunk.forward_features(x))[:, 0]) (CoCa AttentionalPooler, "
                   "8 heads, 1 query, 768-d); " + _TRIDENT + " conch_v15", 768),
    "virchow": ("cls+mean", "paige-ai/Virchow model card: torch.cat([class_token, patch_tokens.mean(1)]) with "
                "patch_tokens = output[:, 1:], 2560-d; " + _TRIDENT + " virchow", None),
    "virchow2": ("cls+mean", "paige-ai/Virchow2 model card: torch.cat([class_token, patch_tokens.mean(1)]) with "
                 "patch_tokens = output[:, 5:] (the 4 registers excluded), 2560-d; " + _TRIDENT + " virchow2", None),
    "phikon": ("cls", "owkin/phikon model card: `outputs.last_hidden_state[:, 0, :]` (transformers ViTModel, "
               "after the final LayerNorm; the pooler is not used), 768-d; " + _TRIDENT + " phikon", None),
    "phikon-v2": ("cls", "owkin/phikon-v2 model card: `outputs.last_hidden_state[:, 0, :]` (transformers "
                  "Dinov2Model), 1024-d; " + _TRIDENT + " phikon_v2", None),
    "prov-gigapath": ("cls", "prov-gigapath/prov-gigapath model card (tile encoder `tile_encoder(x)`, [1, 1536]): "
                      + _TIMM_CLS + "; " + _TRIDENT + " gigapath", None),
    "h-optimus-0": ("cls", "bioptimus/H-optimus-0 model card (`model(x)`, [1, 1536]): " + _TIMM_CLS + "; "
                    + _TRIDENT + " hoptimus0", None),
    "h-optimus-1": ("cls", "bioptimus/H-optimus-1 model card (`model(x)`, [1, 1536]): " + _TIMM_CLS + "; "
                    + _TRIDENT + " hoptimus1", None),
    "kaiko": ("cls", "kaiko-ai/towards_large_pathology_fms (torch hub 'vitl14', `model(x)`, [1, 1024]): "
              + _TIMM_CLS + "; " + _TRIDENT + " kaiko-vitl14", None),
    "lunit": ("cls", "lunit-io/benchmark-ssl-pathology (timm ViT-S/8, `model(x)`, [1, 384]): " + _TIMM_CLS + "; "
              + _TRIDENT + " lunit-vits8", None),
    "hibou-b": ("cls", "histai/hibou-b model card: `outputs.pooler_output` = the class token after the final "
                "LayerNorm (transformers Dinov2WithRegistersModel), 768-d", None),
    "hibou-l": ("cls", "histai/hibou-L model card: `outputs.pooler_output` = the class token after the final "
                "LayerNorm (transformers Dinov2WithRegistersModel), 1024-d; " + _TRIDENT + " hibou_l", None),
    "tiny-p14-reg": ("cls+mean", "test encoder: exercises the register exclusion of 'cls+mean'", None),
}


def _spec(**kw: Any) -> EncoderSpec:
    kw.setdefault("num_registers", 0)
    kw.setdefault("num_prefix_tokens", 1 + kw["num_registers"])
    kw.setdefault("no_embed_class", False)
    kw.setdefault("mlp", "gelu")
    kw.setdefault("mlp_ratio", 4.0)
    kw.setdefault("init_values", None)
    kw.setdefault("native_size", 224)
    kw.setdefault("mean", IMAGENET_MEAN)
    kw.setdefault("std", IMAGENET_STD)
    kw.setdefault("checkpoint_format", "timm")
    rule, source, pooled = _EMBEDDINGS.get(kw["id"], ("cls", "test encoder: the class token", None))
    kw.setdefault("embedding", rule)
    kw.setdefault("embedding_source", source)
    kw.setdefault("embedding_width", pooled)
    return EncoderSpec(**kw)


_HIBOU_NOTE = ("mask token dropped; loads HistAI's transformers checkpoint (DINOv2 with registers, SwiGLU "
               "mlp.weights_in/weights_out) and a packed-SwiGLU timm layout")
_G = 2.66667 * 2  # SwiGLU-packed ratio of the DINOv2-g style models (fc1 = 8192 for d = 1536)
_TIMM_AA = "position embeddings resampled as timm's dynamic_img_size does (bicubic, antialias)"
_HIBOU_REF = ("histai/hibou-b|L model card (transformers, trust_remote_code: DINOv2 with 4 registers, "
              "use_swiglu_ffn) and HistAI/hibou build_model (ffn_layer='swiglufused', layerscale=1e-5, "
              "num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0); verified against "
              "transformers Dinov2WithRegistersModel(use_swiglu_ffn=True), which resamples position embeddings "
              "bicubic with antialias like HistAI's code")

_ENCODERS: tuple[EncoderSpec, ...] = (
    _spec(id="uni", architecture="ViT-L/16, LayerScale", patch_size=16, width=1024, depth=24, num_heads=16,
          init_values=1e-5, paper_params=303_000_000,
          reference="MahmoodLab/UNI model card: timm.create_model('vit_large_patch16_224', img_size=224, "
                    "patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True); " + _TIMM_AA),
    _spec(id="uni2-h", architecture="ViT-H/14-like, SwiGLU (packed), 8 registers, no class pos-embed",
          patch_size=14, width=1536, depth=24, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=8, no_embed_class=True, paper_params=681_000_000,
          reference="MahmoodLab/UNI2-h model card: timm.create_model('vit_giant_patch14_224', img_size=224, "
                    "patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, "
                    "mlp_ratio=2.66667*2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked, "
                    "act_layer=SiLU, reg_tokens=8, dynamic_img_size=True); " + _TIMM_AA),
    _spec(id="conch", architecture="ViT-B/16 vision trunk of the CONCH CoCa model (open_clip)",
          patch_size=16, width=768, depth=12, num_heads=12, native_size=448, mean=CLIP_MEAN, std=CLIP_STD,
          checkpoint_format="open_clip-conch", paper_params=200_000_000,
          note="paper's 200 M is the whole CoCa model (text tower, attentional poolers, projection); "
               "slidefuse loads and counts the vision trunk only (visual.trunk.*)",
          reference="MahmoodLab/CONCH conch_ViT-B-16 config: vision trunk timm 'vit_base_patch16_224' at "
                    "image_size 448 (GELU MLP, no LayerScale, class token); CONCH's code only runs 448 px, so "
                    "other sizes use timm's resampling (bicubic, antialias)"),
    _spec(id="conch-v1.5", architecture="ViT-L/16, LayerScale (run at 448 px by TITAN)", patch_size=16,
          width=1024, depth=24, num_heads=16, init_values=1.0, native_size=224, pos_resample="bicubic-offset",
          paper_params=307_000_000,
          note="trunk only (trunk.* of pytorch_model_vision.bin); the paper's 307 M adds the ~2.8 M "
               "attentional pooler + LayerNorm, unused for segmentation",
          reference="MahmoodLab/TITAN conch_v1_5 (CONCHVisionTower): vit_large(patch 16, init_values=1.0, "
                    "qkv_bias) with the default img_size 224 (14x14 position grid; a checkpoint of another grid "
                    "is resized to it with bilinear at load), interpolated at run time DINO-style: bicubic, "
                    "scale_factor (g + 0.1) / 14"),
    _spec(id="virchow", architecture="ViT-H/14, SwiGLU (packed), LayerScale", patch_size=14, width=1280,
          depth=32, num_heads=16, mlp="swiglu-packed", mlp_ratio=5.3375, init_values=1e-5,
          paper_params=631_000_000,
          note="decoder uses the 1280-d patch tokens; the paper's 2560-d embedding is CLS + mean patch token",
          reference="paige-ai/Virchow model card: timm 'vit_huge_patch14_224' with img_size=224, "
                    "init_values=1e-5, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=SiLU, "
                    "dynamic_img_size=True; " + _TIMM_AA),
    _spec(id="virchow2", architecture="ViT-H/14, SwiGLU (packed), LayerScale, 4 registers", patch_size=14,
          width=1280, depth=32, num_heads=16, mlp="swiglu-packed", mlp_ratio=5.3375, init_values=1e-5,
          num_registers=4, paper_params=631_000_000,
          note="decoder uses the 1280-d patch tokens; the paper's 2560-d embedding is CLS + mean patch token",
          reference="paige-ai/Virchow2 model card: as Virchow plus reg_tokens=4 (position embeddings cover the "
                    "class and register tokens: no_embed_class=False); " + _TIMM_AA),
    _spec(id="phikon", architecture="ViT-B/16 (iBOT)", patch_size=16, width=768, depth=12, num_heads=12,
          norm_eps=1e-12, checkpoint_format="hf-vit", pos_resample="bicubic", paper_params=86_000_000,
          note="the transformers pooler (pooler.*) is dropped: segmentation uses the patch tokens",
          reference="owkin/phikon model card: transformers ViTModel (hidden 768, 12 layers, GELU, "
                    "layer_norm_eps 1e-12, image_size 224); other sizes with interpolate_pos_encoding=True "
                    "(bicubic, no antialias)"),
    _spec(id="phikon-v2", architecture="ViT-L/16 (DINOv2)", patch_size=16, width=1024, depth=24,
          num_heads=16, init_values=1.0, checkpoint_format="hf-dinov2", pos_resample="bicubic",
          paper_params=303_000_000, note="the DINOv2 mask token (training only) is dropped",
          reference="owkin/phikon-v2 model card: transformers Dinov2Model (hidden 1024, 24 layers, GELU MLP, "
                    "LayerScale, no registers); position embeddings interpolated at run time (bicubic, no "
                    "antialias)"),
    _spec(id="prov-gigapath", architecture="ViT-g, SwiGLU (packed), LayerScale, patch 16", patch_size=16,
          width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G, init_values=1e-5,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B",
          reference="prov-gigapath/prov-gigapath config: timm 'vit_giant_patch14_dinov2' with img_size=224, "
                    "patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, "
                    "mlp_ratio=5.33334 (SwiGLUPacked, SiLU), class token in the position embeddings; " + _TIMM_AA),
    _spec(id="h-optimus-0", architecture="ViT-g/14, SwiGLU (packed), LayerScale, 4 registers (DINOv2)",
          patch_size=14, width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=4, no_embed_class=True, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B",
          reference="bioptimus/H-optimus-0 model card: timm 'vit_giant_patch14_reg4_dinov2' with img_size=224, "
                    "init_values=1e-5, dynamic_img_size=True (SwiGLUPacked, 4 registers, no_embed_class); "
                    + _TIMM_AA),
    _spec(id="h-optimus-1", architecture="ViT-g/14, SwiGLU (packed), LayerScale, 4 registers (DINOv2)",
          patch_size=14, width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=4, no_embed_class=True, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B",
          reference="bioptimus/H-optimus-1 model card: same timm architecture and kwargs as H-optimus-0; "
                    + _TIMM_AA),
    _spec(id="kaiko", architecture="ViT-L/14, LayerScale, 4 registers (DINOv2; timm vit_large_patch14_reg4_dinov2)",
          patch_size=14, width=1024, depth=24, num_heads=16, init_values=1e-5, num_registers=4,
          no_embed_class=True, native_size=518, mean=HALF, std=HALF, paper_params=304_000_000,
          reference="kaiko-ai/towards_large_pathology_fms (torch hub 'vitl14', used by kaiko-ai/eva with "
                    "dynamic_img_size=True): timm 'vit_large_patch14_reg4_dinov2' (518 px, 4 registers, "
                    "LayerScale 1e-5, GELU); " + _TIMM_AA),
    _spec(id="lunit", architecture="ViT-S/8 (DINO)", patch_size=8, width=384, depth=12, num_heads=6,
          mean=LUNIT_MEAN, std=LUNIT_STD, paper_params=22_000_000,
          reference="lunit-io/benchmark-ssl-pathology: timm VisionTransformer ViT-S/8 (224 px, GELU, no "
                    "LayerScale), as kaiko-ai/eva loads it ('vit_small_patch8_224', dynamic_img_size=True); "
                    + _TIMM_AA),
    _spec(id="hibou-b", architecture="ViT-B/14, SwiGLU, LayerScale, 4 registers (DINOv2)", patch_size=14,
          width=768, depth=12, num_heads=12, mlp="swiglu-dinov2", init_values=1e-5, num_registers=4,
          no_embed_class=True, mean=HIBOU_MEAN, std=HIBOU_STD, checkpoint_format="hf-dinov2-reg",
          paper_params=86_000_000, note=_HIBOU_NOTE, reference=_HIBOU_REF),
    _spec(id="hibou-l", architecture="ViT-L/14, SwiGLU, LayerScale, 4 registers (DINOv2)", patch_size=14,
          width=1024, depth=24, num_heads=16, mlp="swiglu-dinov2", init_values=1e-5, num_registers=4,
          no_embed_class=True, mean=HIBOU_MEAN, std=HIBOU_STD, checkpoint_format="hf-dinov2-reg",
          paper_params=304_000_000, note=_HIBOU_NOTE, reference=_HIBOU_REF),
    # Tiny test encoders (width 64, depth 2): same families, seconds to build and export.
    _spec(id="tiny", architecture="test ViT/16, width 64, depth 2", patch_size=16, width=64, depth=2,
          num_heads=2, default_decoder_width=32, paper_params=0, note="test encoder, not in the paper"),
    _spec(id="tiny-p14-reg", architecture="test ViT/14, LayerScale, 4 registers (DINOv2-reg style)",
          patch_size=14, width=64, depth=2, num_heads=2, init_values=1.0, num_registers=4,
          no_embed_class=True, checkpoint_format="hf-dinov2-reg", default_decoder_width=32, paper_params=0,
          note="test encoder, not in the paper"),
    _spec(id="tiny-p8", architecture="test ViT/8, width 64, depth 2", patch_size=8, width=64, depth=2,
          num_heads=2, default_decoder_width=32, paper_params=0, note="test encoder, not in the paper"),
)

_BY_ID: dict[str, EncoderSpec] = {s.id: s for s in _ENCODERS}
# the fifteen of the reference benchmark
PAPER_IDS: tuple[str, ...] = tuple(s.id for s in _ENCODERS if s.paper_params > 0)
TEST_IDS: tuple[str, ...] = tuple(s.id for s in _ENCODERS if s.paper_params == 0)  # tiny test encoders


def list_specs(include_test: bool = True) -> list[EncoderSpec]:
    """All registered encoders in table order (the fifteen paper encoders, then the tiny test encoders)."""
    return [s for s in _ENCODERS if include_test or s.paper_params > 0]


def get_spec(encoder_id: str) -> EncoderSpec:
    """The spec of `encoder_id`; an unknown id raises UnknownName listing the valid ids."""
    try:
        return _BY_ID[encoder_id]
    except KeyError:
        raise UnknownName(
            f"unknown encoder {encoder_id!r}{did_you_mean(encoder_id, _BY_ID)}: expected one of "
            f"{', '.join(_BY_ID)} (see `slidefuse models`)"
        ) from None


@functools.cache
def count_params(encoder_id: str, img_size: int | None = None) -> int:
    """Parameters of the encoder as built by slidefuse (at `img_size`, default its native size), counted on
    torch's meta device so that even the 1.1 B models allocate no memory. Cached per (id, size)."""
    import torch

    spec = get_spec(encoder_id)
    with torch.device("meta"):
        model = spec.builder(spec, img_size or spec.native_size)
    return sum(p.numel() for p in model.parameters())
