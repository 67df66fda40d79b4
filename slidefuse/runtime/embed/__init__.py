"""Embedding slides: patch features and level-0 coordinates from an embedding bundle (task "embed").

    options.py   EmbedOptions (checked once), EmbedSlideResult, the QC hook type (TileFilter)
    slide.py     plan_embedding (tissue, tile grid at the bundle's mpp, tiles), embed_plan (pipeline -> files)
    features.py  features.h5 (TRIDENT's layout) and features.zarr, appended chunk by chunk
    batch.py     embed_many: discovery, list files, shards, claims, the skip key, OUT/run.json
"""

from __future__ import annotations

import contextlib

# h5py first: libvips (imported by the slide readers below) may link another HDF5 version than h5py's, and the
# first one loaded serves both; h5py then fails on its first dataset ("Not a datatype"). Without h5py,
# features.h5 is refused later with the extra to install (features.require_formats).
with contextlib.suppress(ImportError, ValueError):  # ValueError: libvips came first (reported when writing)
    import h5py  # noqa: F401

from slidefuse.runtime.embed.batch import embed_many
from slidefuse.runtime.embed.options import EmbedOptions, EmbedSlideResult

__all__ = ["EmbedOptions", "EmbedSlideResult", "embed_many"]
