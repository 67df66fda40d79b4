"""`SegmentationModel`: uint8 RGB tiles in, class probabilities out; and `build_model`, its one builder.

    tiles uint8 [B, H, W, 3] (RGB, 0..255)
      -> float, normalised with the encoder's mean/std (constants inside the graph)
      -> encoder (timm ViT built for H) -> patch tokens [B, h*w, d] (class token and registers dropped)
      -> feature map [B, d, h, w] -> decoder -> logits [B, C, H, W] -> softmax over C

Everything shape-related is fixed when the model is built (tile size, grid, number of decoder blocks), so the
forward has no data-dependent control flow and exports to ONNX with a dynamic batch axis.
Nothing falls back to random weights silently: `build_model` raises unless weights are given or
`random_weights=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from slidefuse.errors import UsageError
from slidefuse.model.checkpoints import (
    load_decoder_weights,
    load_encoder_weights,
    load_strict,
    read_state_file,
)
from slidefuse.model.decoder import Decoder
from slidefuse.model.encoders import patch_tokens
from slidefuse.model.registry import EncoderSpec, get_spec

log = logging.getLogger(__name__)


class SegmentationModel(nn.Module):
    """Encoder + shared decoder. `forward(tiles uint8 [B, T, T, 3]) -> float32 probabilities [B, C, T, T]`.

    Attributes: `spec` (EncoderSpec), `num_classes` (C), `tile_size` (T), `decoder_width` (D), `grid`
    (h = T // P), `encoder` (timm VisionTransformer), `decoder` (Decoder). The state dict holds the encoder's
    and decoder's weights only (`encoder.*`, `decoder.*`); the normalisation constants are non-persistent
    buffers rebuilt from the spec.
    """

    def __init__(self, spec: EncoderSpec, encoder: nn.Module, decoder: Decoder, tile_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.tile_size = tile_size
        self.grid = spec.grid_size(tile_size)
        self.num_classes = decoder.num_classes
        self.decoder_width = decoder.width
        self.encoder = encoder
        self.decoder = decoder
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, T, 3] RGB 0..255 -> float [B, 3, T, T] normalised with the encoder's mean/std
        (in the dtype of the model's parameters)."""
        t = self.tile_size
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # shapes are fixed by the export
        if not tracing and (tiles.dim() != 4 or tuple(tiles.shape[1:]) != (t, t, 3)):
            raise UsageError(
                f"tiles of shape {list(tiles.shape)}: expected [B, {self.tile_size}, {self.tile_size}, 3] "
                f"(uint8 RGB); cut tiles of the model's tile size"
            )
        scale: torch.Tensor = self.scale  # type: ignore[assignment]
        shift: torch.Tensor = self.shift  # type: ignore[assignment]
        x = tiles.permute(0, 3, 1, 2).to(scale.dtype)
        x = x * scale + shift
        return x.to(self.decoder.proj.weight.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float [B, 3, T, T] -> feature map float [B, d, h, w] from the encoder's patch tokens."""
        tokens = patch_tokens(self.encoder, self.spec, images)  # [B, h*w, d]
        fmap = tokens.reshape(-1, self.grid, self.grid, self.spec.width)
        return fmap.permute(0, 3, 1, 2)

    def forward_logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, T, 3] -> class logits float [B, C, T, T] (before softmax)."""
        return self.decoder(self.features(self.normalise(tiles)))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 RGB tiles [B, T, T, 3] in 0..255 -> float32 class probabilities [B, C, T, T] (softmax over C)."""
        return torch.softmax(self.forward_logits(tiles).float(), dim=1)


def _check_args(spec: EncoderSpec, num_classes: int, tile_size: int, decoder_width: int | None) -> None:
    if num_classes < 1:
        raise UsageError(f"num_classes {num_classes}: expected at least 1 class (background counts)")
    if tile_size < spec.patch_size:
        raise UsageError(
            f"tile size {tile_size}: expected at least the patch size {spec.patch_size} of encoder '{spec.id}'"
        )
    if decoder_width is not None and decoder_width < 1:
        raise UsageError(f"decoder width {decoder_width}: expected a positive integer (the paper uses 256)")


def build_model(
    encoder_id: str,
    num_classes: int,
    *,
    tile_size: int = 512,
    decoder_width: int | None = None,
    encoder_weights: Path | None = None,
    decoder_weights: Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> SegmentationModel:
    """Build encoder `encoder_id` + decoder for `num_classes` classes and `tile_size` px tiles (eval mode, fp32,
    CPU).

    Weights: `encoder_weights` is a local checkpoint in the publisher's format (converted and loaded strictly;
    position embeddings resampled to the tile grid); `decoder_weights` a decoder (or whole-model) state dict.
    A part whose weights are not given is randomly initialised (seeded by `seed`) only when
    `random_weights=True`; otherwise this raises UsageError naming the missing option.
    """
    spec = get_spec(encoder_id)
    _check_args(spec, num_classes, tile_size, decoder_width)
    if encoder_weights is None and not random_weights:
        raise UsageError(
            f"encoder '{encoder_id}' has no weights: pass encoder_weights=FILE (its {spec.checkpoint_format} "
            f"checkpoint) or random_weights=True for tests and benchmarks", field="encoder_weights"
        )
    if decoder_weights is None and not random_weights:
        raise UsageError(
            f"the decoder for encoder '{encoder_id}' has no weights: pass decoder_weights=FILE "
            f"(a trained decoder state dict) or random_weights=True for tests and benchmarks", field="decoder_weights"
        )
    model = _assemble(spec, num_classes, tile_size, decoder_width or spec.default_decoder_width, seed)
    encoder, decoder = model.encoder, model.decoder
    if encoder_weights is not None:
        load_encoder_weights(encoder, spec, encoder_weights)
    else:
        log.warning("encoder '%s' has RANDOM weights (--random-weights): outputs are meaningless", encoder_id)
    if decoder_weights is not None:
        load_decoder_weights(decoder, decoder_weights)
    else:
        log.info("decoder for '%s' is randomly initialised (seed %d)", encoder_id, seed)
    return model


def _assemble(spec: EncoderSpec, num_classes: int, tile_size: int, width: int, seed: int) -> SegmentationModel:
    """A SegmentationModel with random initial weights (seeded; the global RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = spec.builder(spec, tile_size)
        decoder = Decoder(spec.width, num_classes, width, spec.grid_size(tile_size), tile_size)
    return SegmentationModel(spec, encoder, decoder, tile_size).eval()


def load_model_state(model: SegmentationModel, path: Path | str) -> None:
    """Load a whole-model state dict (`encoder.*` and `decoder.*`, e.g. a bundle's model.safetensors) into
    `model`, strictly."""
    sd = read_state_file(path)
    load_strict(model, sd, f"the '{model.spec.id}' segmentation model ({model.num_classes} classes, "
                f"tile {model.tile_size}, decoder width {model.decoder_width})", path)


def build_model_from_state(
    encoder_id: str, num_classes: int, tile_size: int, decoder_width: int, state_path: Path | str
) -> SegmentationModel:
    """Rebuild a SegmentationModel from a whole-model state dict file (as saved by `save_model_state`)."""
    spec = get_spec(encoder_id)
    _check_args(spec, num_classes, tile_size, decoder_width)
    model = _assemble(spec, num_classes, tile_size, decoder_width, seed=0)
    load_model_state(model, state_path)
    return model


def save_model_state(model: SegmentationModel, path: Path | str) -> Path:
    """Write the whole model's state dict (`encoder.*`, `decoder.*`) to a .safetensors file."""
    from slidefuse.model.checkpoints import save_state

    return save_state(model, path)
