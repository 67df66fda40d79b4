"""The network: encoders, decoder and their assembly into a `SegmentationModel` (uint8 RGB tiles
[B, T, T, 3] in 0..255 -> float32 class probabilities [B, C, T, T]).

    registry.py     EncoderSpec, the fifteen paper encoders + tiny test encoders, get_spec / list_specs
                    (no torch: works with the base install)
    encoders.py     architecture builders (timm VisionTransformer) and patch_tokens
    posembed.py     position embeddings at the tile's token grid, by each publisher's own rule
    decoder.py      the shared lightweight decoder of the reference benchmark
    geometry.py     tile geometry ("aligned" / "paper") and resolve_tile (no torch)
    assembly.py     SegmentationModel, build_model, build_model_from_state, save_model_state
    checkpoints.py  publisher-format checkpoints -> timm layout, loaded strictly; safetensors state files

Everything but `registry` and `geometry` needs the `export` extra (torch, timm, safetensors); this package
imports none of it until one of those modules is imported. Exporting a model to a bundle is the `export`
package's job; running one is `runtime`'s.
"""

from __future__ import annotations

from slidefuse.model.registry import EncoderSpec, get_spec, list_specs

__all__ = ["EncoderSpec", "get_spec", "list_specs"]
