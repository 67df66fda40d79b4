"""The encoder registry: the fifteen pathology foundation-model encoders of SPEC §1 plus tiny test encoders.

Each encoder is one frozen `EncoderSpec` (metadata and architecture hyper-parameters); the architecture is
built by `spec.builder(spec, img_size)` (see `slidefuse.export.encoders`). This module imports neither torch
nor timm, so `get_spec` and `list_specs` work with the base install; `count_params` needs the export extra.

Sources of the hyper-parameters (the `timm_kwargs` / `config.json` on each publisher's model card):
UNI (MahmoodLab/UNI), UNI2-h (MahmoodLab/UNI2-h), CONCH (MahmoodLab/CONCH, open_clip `conch_ViT-B-16`),
CONCH v1.5 (MahmoodLab/conchv1_5), Virchow / Virchow2 (paige-ai), Phikon / Phikon-v2 (owkin),
Prov-GigaPath (prov-gigapath/prov-gigapath), H-optimus-0/1 (bioptimus), kaiko
(kaiko-ai/towards_large_pathology_fms), Lunit (lunit-io/benchmark-ssl-pathology), Hibou (histai/hibou-b, -l).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slidefuse.errors import UnknownName

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
MLP_KINDS = ("gelu", "swiglu-packed")

Builder = Callable[["EncoderSpec", int], "nn.Module"]


def _build_vit(spec: EncoderSpec, img_size: int) -> nn.Module:
    """Default builder: a timm VisionTransformer (imported lazily so this module needs no torch)."""
    from slidefuse.export.encoders import build_vit

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
    mlp: str  # "gelu" (fc1-GELU-fc2) or "swiglu-packed" (timm SwiGLUPacked with SiLU)
    init_values: float | None  # LayerScale init value; None = no LayerScale parameters
    num_registers: int  # register tokens after the class token (DINOv2-reg style); 0 = none
    num_prefix_tokens: int  # tokens before the patch tokens (class token + registers); dropped by the model
    no_embed_class: bool  # True: position embeddings cover patch tokens only (timm `no_embed_class`)
    native_size: int  # input side in px the published checkpoint's position embeddings were made for
    mean: tuple[float, float, float]  # RGB normalisation mean on the 0..1 scale
    std: tuple[float, float, float]  # RGB normalisation std on the 0..1 scale
    checkpoint_format: str  # published layout: one of CHECKPOINT_FORMATS
    paper_params: int  # parameter count the reference paper reports
    note: str = ""  # why the counted parameters differ from `paper_params`, and other caveats
    default_decoder_width: int = 256  # decoder width D when none is given
    norm_eps: float = 1e-6  # LayerNorm epsilon (Hugging Face ViT uses 1e-12)
    qkv_bias: bool = True  # bias on the fused qkv projection
    builder: Builder = dataclasses.field(default=_build_vit, repr=False, compare=False)  # (spec, img_size) -> nn.Module

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"{self.id}: checkpoint_format {self.checkpoint_format!r} not in {CHECKPOINT_FORMATS}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"{self.id}: mlp {self.mlp!r} not in {MLP_KINDS}")
        if self.num_prefix_tokens != 1 + self.num_registers:
            raise ValueError(f"{self.id}: num_prefix_tokens must be 1 (class token) + {self.num_registers} registers")

    def grid_size(self, tile_size: int) -> int:
        """Token grid side h = w = tile_size // patch_size (pixels past the last full patch are ignored)."""
        return tile_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the builder as its function name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "builder"}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["builder"] = getattr(self.builder, "__name__", str(self.builder))
        return d


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
    return EncoderSpec(**kw)


_HIBOU_NOTE = ("mask token dropped; Hibou's custom DINOv2 code is read as transformers' Dinov2WithRegistersModel "
               "layout (verified against transformers, not against the gated weights)")
_G = 2.66667 * 2  # SwiGLU-packed ratio of the DINOv2-g style models (fc1 = 8192 for d = 1536)

_SPECS: tuple[EncoderSpec, ...] = (
    _spec(id="uni", architecture="ViT-L/16, LayerScale", patch_size=16, width=1024, depth=24, num_heads=16,
          init_values=1e-5, paper_params=303_000_000),
    _spec(id="uni2-h", architecture="ViT-H/14-like, SwiGLU (packed), 8 registers, no class pos-embed",
          patch_size=14, width=1536, depth=24, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=8, no_embed_class=True, paper_params=681_000_000),
    _spec(id="conch", architecture="ViT-B/16 vision trunk of the CONCH CoCa model (open_clip)",
          patch_size=16, width=768, depth=12, num_heads=12, native_size=448, mean=CLIP_MEAN, std=CLIP_STD,
          checkpoint_format="open_clip-conch", paper_params=200_000_000,
          note="paper's 200 M is the whole CoCa model (text tower, attentional poolers, projection); "
               "slidefuse loads and counts the vision trunk only (visual.trunk.*)"),
    _spec(id="conch-v1.5", architecture="ViT-L/16, LayerScale, 448 px native", patch_size=16, width=1024,
          depth=24, num_heads=16, init_values=1.0, native_size=448, paper_params=307_000_000,
          note="trunk only (trunk.* of pytorch_model_vision.bin); the paper's 307 M adds the ~2.8 M "
               "attentional pooler + LayerNorm, unused for segmentation"),
    _spec(id="virchow", architecture="ViT-H/14, SwiGLU (packed), LayerScale", patch_size=14, width=1280,
          depth=32, num_heads=16, mlp="swiglu-packed", mlp_ratio=5.3375, init_values=1e-5,
          paper_params=631_000_000,
          note="decoder uses the 1280-d patch tokens; the paper's 2560-d embedding is CLS + mean patch token"),
    _spec(id="virchow2", architecture="ViT-H/14, SwiGLU (packed), LayerScale, 4 registers", patch_size=14,
          width=1280, depth=32, num_heads=16, mlp="swiglu-packed", mlp_ratio=5.3375, init_values=1e-5,
          num_registers=4, paper_params=631_000_000,
          note="decoder uses the 1280-d patch tokens; the paper's 2560-d embedding is CLS + mean patch token"),
    _spec(id="phikon", architecture="ViT-B/16 (iBOT)", patch_size=16, width=768, depth=12, num_heads=12,
          norm_eps=1e-12, checkpoint_format="hf-vit", paper_params=86_000_000,
          note="the transformers pooler (pooler.*) is dropped: segmentation uses the patch tokens"),
    _spec(id="phikon-v2", architecture="ViT-L/16 (DINOv2)", patch_size=16, width=1024, depth=24,
          num_heads=16, init_values=1.0, checkpoint_format="hf-dinov2", paper_params=303_000_000,
          note="the DINOv2 mask token (training only) is dropped"),
    _spec(id="prov-gigapath", architecture="ViT-g, SwiGLU (packed), LayerScale, patch 16", patch_size=16,
          width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G, init_values=1e-5,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B"),
    _spec(id="h-optimus-0", architecture="ViT-g/14, SwiGLU (packed), LayerScale, 4 registers (DINOv2)",
          patch_size=14, width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=4, no_embed_class=True, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B"),
    _spec(id="h-optimus-1", architecture="ViT-g/14, SwiGLU (packed), LayerScale, 4 registers (DINOv2)",
          patch_size=14, width=1536, depth=40, num_heads=24, mlp="swiglu-packed", mlp_ratio=_G,
          init_values=1e-5, num_registers=4, no_embed_class=True, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
          paper_params=1_100_000_000, note="the paper rounds to 1.1 B"),
    _spec(id="kaiko", architecture="ViT-L/14, LayerScale, 4 registers (DINOv2; timm vit_large_patch14_reg4_dinov2)",
          patch_size=14, width=1024, depth=24, num_heads=16, init_values=1e-5, num_registers=4,
          no_embed_class=True, native_size=518, mean=HALF, std=HALF, paper_params=304_000_000),
    _spec(id="lunit", architecture="ViT-S/8 (DINO)", patch_size=8, width=384, depth=12, num_heads=6,
          mean=LUNIT_MEAN, std=LUNIT_STD, paper_params=22_000_000),
    _spec(id="hibou-b", architecture="ViT-B/14, LayerScale, 4 registers (DINOv2)", patch_size=14, width=768,
          depth=12, num_heads=12, init_values=1.0, num_registers=4, no_embed_class=True, mean=HIBOU_MEAN,
          std=HIBOU_STD, checkpoint_format="hf-dinov2-reg", paper_params=86_000_000, note=_HIBOU_NOTE),
    _spec(id="hibou-l", architecture="ViT-L/14, LayerScale, 4 registers (DINOv2)", patch_size=14, width=1024,
          depth=24, num_heads=16, init_values=1.0, num_registers=4, no_embed_class=True, mean=HIBOU_MEAN,
          std=HIBOU_STD, checkpoint_format="hf-dinov2-reg", paper_params=304_000_000, note=_HIBOU_NOTE),
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

_BY_ID: dict[str, EncoderSpec] = {s.id: s for s in _SPECS}
PAPER_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.paper_params > 0)  # the fifteen of SPEC §1
TEST_IDS: tuple[str, ...] = tuple(s.id for s in _SPECS if s.paper_params == 0)  # tiny test encoders


def list_specs(include_test: bool = True) -> list[EncoderSpec]:
    """All registered encoders in table order (the fifteen of SPEC §1, then the tiny test encoders)."""
    return [s for s in _SPECS if include_test or s.paper_params > 0]


def get_spec(encoder_id: str) -> EncoderSpec:
    """The spec of `encoder_id`; an unknown id raises UnknownName listing the valid ids."""
    try:
        return _BY_ID[encoder_id]
    except KeyError:
        raise UnknownName(
            f"unknown encoder {encoder_id!r}: expected one of {', '.join(_BY_ID)} (see `slidefuse models`)"
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
