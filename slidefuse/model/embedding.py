"""`EmbeddingModel`: uint8 RGB tiles in, the publisher's own patch embedding out; `build_embedding_model`, its
builder, and `embedding_from_segmentation`, the encoder part of a segmentation model run alone.

    tiles uint8 [B, T, T, 3] (RGB, 0..255)
      -> float, normalised with the encoder's mean/std (constants inside the graph)
      -> encoder (timm ViT built for T) -> tokens [B, prefix + h*w, d] after the final LayerNorm
      -> the encoder's embedding rule (`EncoderSpec.embedding`) -> float32 embeddings [B, D]

Rules (registry.EMBEDDING_RULES): "cls" the class token; "cls+mean" the class token concatenated with the mean
of the patch tokens (registers excluded); "attn-pool" (CONCH, CONCH v1.5) the publisher's attentional pooler
+ LayerNorm over all tokens (`slidefuse.model.attn_pool`), loaded from the same publisher checkpoint as the
trunk. A segmentation model holds no pooler, so its encoder part embeds with "cls" / "cls+mean" rules only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from slidefuse.errors import UsageError
from slidefuse.model.attn_pool import AttentionalPool, build_pooler, load_pooler_weights
from slidefuse.model.registry import EncoderSpec, get_spec

log = logging.getLogger(__name__)

SUPPORTED_RULES = ("cls", "cls+mean", "attn-pool")  # the rules this release computes


class EmbeddingModel(nn.Module):
    """Encoder + the publisher's pooling. `forward(tiles uint8 [B, T, T, 3]) -> float32 embeddings [B, D]`.

    Attributes: `spec`, `tile_size` (T), `dim` (D = spec.embedding_dim()), `encoder` (timm VisionTransformer),
    `pooler` (the "attn-pool" rule's AttentionalPool, else None). The state dict holds the encoder's weights
    (`encoder.*`, the same keys as a SegmentationModel's encoder part) and, for "attn-pool", `pooler.*`.
    """

    def __init__(self, spec: EncoderSpec, encoder: nn.Module, tile_size: int,
                 pooler: AttentionalPool | None = None) -> None:
        super().__init__()
        check_rule(spec)
        if (spec.embedding == "attn-pool") != (pooler is not None):
            raise ValueError(f"encoder '{spec.id}' ({spec.embedding!r} embedding): an attentional pooler is "
                             "needed for 'attn-pool' and only for it")
        self.pooler = pooler
        self.spec = spec
        self.tile_size = tile_size
        self.dim = spec.embedding_dim()
        self.encoder = encoder
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)  # x_norm = x * scale + shift
        self.register_buffer("shift", -mean / std, persistent=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, T, 3] RGB 0..255 -> float [B, 3, T, T] normalised with the encoder's mean/std."""
        t = self.tile_size
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and (tiles.dim() != 4 or tuple(tiles.shape[1:]) != (t, t, 3)):
            raise UsageError(f"tiles of shape {list(tiles.shape)}: expected [B, {t}, {t}, 3] (uint8 RGB); cut "
                             "tiles of the model's tile size")
        scale: torch.Tensor = self.scale  # type: ignore[assignment]
        shift: torch.Tensor = self.shift  # type: ignore[assignment]
        return tiles.permute(0, 3, 1, 2).to(scale.dtype) * scale + shift

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens float [B, prefix + h*w, d] after the final LayerNorm -> embeddings [B, D] by the spec's rule."""
        if self.pooler is not None:
            return self.pooler(tokens)  # type: ignore[no-any-return]
        return pool_tokens(tokens, self.spec)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 RGB tiles [B, T, T, 3] in 0..255 -> float32 embeddings [B, D]."""
        tokens = self.encoder.forward_features(self.normalise(tiles))  # type: ignore[operator]
        return self.pool(tokens).float()


def check_rule(spec: EncoderSpec) -> None:
    """Raise UsageError when this release cannot compute `spec`'s embedding rule."""
    if spec.embedding not in SUPPORTED_RULES:
        raise UsageError(
            f"encoder '{spec.id}': its publisher's embedding is {spec.embedding!r} (an attentional pooler "
            f"beside the trunk, {spec.embedding_dim()}-d), which slidefuse does not load; embeddings are "
            f"available for the encoders whose rule is one of {', '.join(SUPPORTED_RULES)} (see `slidefuse models`)",
            field="task")


def pool_tokens(tokens: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    """The embedding rule over tokens [B, prefix + h*w, d]: "cls" -> [B, d]; "cls+mean" -> [B, 2d] (class
    token, then the mean of the h*w patch tokens; the registers between them are excluded). "attn-pool" has
    weights of its own: `EmbeddingModel.pool` runs it."""
    cls = tokens[:, 0]
    if spec.embedding == "cls":
        return cls
    if spec.embedding == "cls+mean":
        return torch.cat([cls, tokens[:, spec.num_prefix_tokens:].mean(dim=1)], dim=-1)
    raise ValueError(f"encoder '{spec.id}': the {spec.embedding!r} embedding needs its pooler's weights "
                     "(EmbeddingModel.pool)")


def build_embedding_model(encoder_id: str, *, tile_size: int | None = None, encoder_weights: Path | None = None,
                          random_weights: bool = False, seed: int = 0) -> EmbeddingModel:
    """The embedding model of `encoder_id` at `tile_size` px (default: the encoder's native size), eval, fp32,
    CPU. `encoder_weights`: a local checkpoint in the publisher's format (loaded strictly, position embeddings
    resampled to the tile grid by the publisher's rule); without it, random weights only when
    `random_weights=True`, else UsageError."""
    from slidefuse.model.checkpoints import load_encoder_weights

    spec = get_spec(encoder_id)
    check_rule(spec)
    size = tile_size or spec.native_size
    if size < spec.patch_size:
        raise UsageError(f"tile size {size}: expected at least the patch size {spec.patch_size} of encoder "
                         f"'{encoder_id}'", field="tile_size")
    if encoder_weights is None and not random_weights:
        raise UsageError(f"encoder '{encoder_id}' has no weights: pass encoder_weights=FILE (its "
                         f"{spec.checkpoint_format} checkpoint) or random_weights=True for tests and benchmarks",
                         field="encoder_weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = spec.builder(spec, size)
        pooler = _random_pooler(spec)
    if encoder_weights is not None:
        load_encoder_weights(encoder, spec, encoder_weights)
        if pooler is not None:
            load_pooler_weights(pooler, spec, encoder_weights)
    else:
        log.warning("encoder '%s' has RANDOM weights (--random-weights): embeddings are meaningless", encoder_id)
    return EmbeddingModel(spec, encoder, size, pooler).eval()


def _random_pooler(spec: EncoderSpec) -> AttentionalPool | None:
    """The "attn-pool" rule's pooler with random weights (query ~ N(0, 1) as the publishers initialise it)."""
    if spec.embedding != "attn-pool":
        return None
    pooler = build_pooler(spec)
    nn.init.normal_(pooler.query)
    return pooler


def embedding_from_segmentation(model: nn.Module) -> EmbeddingModel:
    """The encoder part of a SegmentationModel (`model.encoder`, shared, not copied) with its publisher's
    embedding rule, at the segmentation model's tile size."""
    spec: EncoderSpec = model.spec  # type: ignore[assignment]
    if spec.embedding == "attn-pool":
        raise UsageError(f"encoder '{spec.id}': its embedding comes from an attentional pooler that a "
                         "segmentation bundle does not hold; export the embedding bundle from the publisher's "
                         "checkpoint instead (encoder_weights=FILE, no source bundle)",
                         field="from_bundle")
    return EmbeddingModel(spec, model.encoder, int(model.tile_size)).eval()  # type: ignore[arg-type]


def embedding_model_from_state(encoder_id: str, tile_size: int, state_path: Path | str) -> EmbeddingModel:
    """Rebuild an EmbeddingModel from its state dict file (`encoder.*`, as an embedding bundle's
    model.safetensors holds it), strictly."""
    from slidefuse.model.checkpoints import load_strict, read_state_file

    spec = get_spec(encoder_id)
    pooler = build_pooler(spec) if spec.embedding == "attn-pool" else None
    model = EmbeddingModel(spec, spec.builder(spec, tile_size), tile_size, pooler)
    load_strict(model, read_state_file(state_path), f"the '{encoder_id}' embedding model (tile {tile_size})",
                state_path)
    return model.eval()
