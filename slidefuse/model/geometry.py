"""Tile geometry: how a tile of T px maps onto the encoder's token grid.

- "aligned": T is a multiple of the patch size P (518 = 37 x 14 for P = 14; 512 for P = 16 or 8), so the
  h = T // P tokens cover the tile exactly and overlapping tiles agree pixel for pixel.
- "paper": the reference paper's fixed 512 px tile with P = 14: a 36 x 36 grid covers 504 px and the decoder's
  output is resized to 512, stretching predictions by up to 8 px towards the tile's far edges. Decoders trained
  that way need it.

`resolve_tile` picks the tile for an export: an explicit --tile, else --geometry, else the tile recorded in the
decoder's training sidecar (NAME.json beside NAME.safetensors), else the aligned tile nearest above 512.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slidefuse.errors import UsageError

log = logging.getLogger(__name__)

GEOMETRIES = ("aligned", "paper")
PAPER_TILE = 512  # the reference paper's tile side in px


def geometry_of(tile_size: int, patch_size: int) -> str:
    """'aligned' when the token grid covers the tile exactly (T % P == 0), else 'paper' (floor, then resize)."""
    return "aligned" if tile_size % patch_size == 0 else "paper"


def aligned_tile(patch_size: int, near: int = PAPER_TILE) -> int:
    """The smallest multiple of `patch_size` at or above `near`: 518 for P = 14, 512 for P = 16 or 8."""
    return -(-near // patch_size) * patch_size


def sidecar_tile(decoder_weights: Path | None) -> int | None:
    """The tile size recorded by `slidefuse train` in NAME.json beside a decoder NAME.safetensors, or None."""
    if decoder_weights is None:
        return None
    sidecar = Path(decoder_weights).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        tile = json.loads(sidecar.read_text()).get("tile_size")
    except (json.JSONDecodeError, AttributeError, OSError):
        log.warning("%s: unreadable decoder sidecar; its tile size is not used", sidecar)
        return None
    return tile if isinstance(tile, int) and tile > 0 else None


def resolve_tile(patch_size: int, tile_size: int | None, geometry: str | None,
                 decoder_weights: Path | None = None) -> tuple[int, str]:
    """(tile size, geometry) for an export. Raises UsageError when --tile and --geometry contradict each other.

    Order: --tile (its geometry follows from it); --geometry ('aligned': aligned_tile, 'paper': 512); the
    decoder sidecar's tile; the aligned tile.
    """
    if geometry is not None and geometry not in GEOMETRIES:
        raise UsageError(f"geometry={geometry!r}: expected one of {', '.join(GEOMETRIES)}", field="geometry")
    trained = sidecar_tile(decoder_weights)
    if tile_size is not None:
        got = geometry_of(tile_size, patch_size)
        if geometry is not None and got != geometry:
            raise UsageError(
                f"tile_size={tile_size} with geometry={geometry}: a {tile_size} px tile is {got} for patch size "
                f"{patch_size}; drop one of them (aligned tiles are multiples of {patch_size}, e.g. "
                f"{aligned_tile(patch_size)})", field="tile_size"
            )
        chosen = tile_size
    elif geometry is not None:
        chosen = aligned_tile(patch_size) if geometry == "aligned" else PAPER_TILE
    else:
        chosen = trained if trained is not None else aligned_tile(patch_size)
    if trained is not None and trained != chosen:
        log.warning("the decoder was trained on %d px tiles (its sidecar); exporting %d px tiles (%s)", trained,
                    chosen, geometry_of(chosen, patch_size))
    return chosen, geometry_of(chosen, patch_size)
