"""How many tiles a CPU backend runs per engine call so that its working memory stays under a budget.

A fused segmentation graph's working memory is dominated by the decoder's full-resolution activations: about
`ACTIVATIONS_PER_TILE` float32 maps of `decoder_width x T x T` alive at once per tile. Measured on phikon (ViT-B/16
+ decoder width 256) at 512 px with ort-cpu (memory pattern off, its default; `benchmarks/bench_engine_memory.py`,
`engine-memory.json`): whole-process peak RSS 1361, 2086, 3520 and 6193 MiB at batch 1, 2, 4 and 8, i.e. 0.67 GiB
more per tile, which is 2.7 such maps; the estimate uses 3. A batch larger than the budget allows is run in
sub-batches inside the backend (same outputs: every tile is computed on its own), so `--batch` keeps its meaning
for the pipeline while memory stays bounded.

The default budget is `DEFAULT_FRACTION` of the memory this process may use (the cgroup limit when one is set,
else the machine's RAM); `max_memory_gb=0` turns splitting off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slidefuse.runtime.bundle import Manifest

ACTIVATIONS_PER_TILE = 3  # float32 decoder_width x T x T maps alive at once per tile (2.7 measured, see above)
DEFAULT_FRACTION = 0.4  # of the usable memory, when no budget is given
_GIB = 1 << 30


def usable_memory_bytes() -> int | None:
    """The memory this process may use: the cgroup v2/v1 limit when set, else physical RAM; None if unknown."""
    limits = []
    for f in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    return min(limits) if limits else None


def tile_bytes(manifest: Manifest) -> int:
    """Estimated working memory of one tile in the fused graph (float32 activations)."""
    if manifest.embedding is not None:  # an encoder alone: tokens x (about 8 x the embedding's width) floats
        tokens = (manifest.tile_size // manifest.patch_size) ** 2 + 1
        return tokens * 8 * manifest.embedding.dim * 4
    width = max(manifest.decoder_width, manifest.num_classes, 1)
    return ACTIVATIONS_PER_TILE * width * manifest.tile_size ** 2 * 4


def budget_bytes(max_memory_gb: float | None) -> tuple[int | None, str]:
    """(budget in bytes or None for no limit, where it came from) for option `max_memory_gb`."""
    if max_memory_gb is not None:
        if max_memory_gb == 0:
            return None, "max_memory_gb=0: no limit"
        if not math.isfinite(max_memory_gb * _GIB):  # more bytes than a float holds: no limit either
            return None, f"max_memory_gb={max_memory_gb:g}: no limit"
        return int(max_memory_gb * _GIB), f"max_memory_gb={max_memory_gb:g}"
    usable = usable_memory_bytes()
    if usable is None:
        return None, "the usable memory is unknown: no limit"
    return int(usable * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:.0%} of {usable / _GIB:.1f} GiB usable memory"


def tiles_per_call(manifest: Manifest, max_memory_gb: float | None) -> tuple[int | None, str]:
    """(the most tiles per engine call under the budget, or None for no limit; a one-line reason for logs)."""
    budget, source = budget_bytes(max_memory_gb)
    if budget is None:
        return None, source
    per_tile = tile_bytes(manifest)
    n = max(1, math.floor(budget / per_tile))
    return n, (f"at most {n} tiles per engine call: ~{per_tile / _GIB:.2f} GiB each (estimated) within "
               f"{budget / _GIB:.1f} GiB ({source})")


def in_sub_batches(tiles: np.ndarray, max_batch: int | None, run_one: Callable[[np.ndarray], np.ndarray]
                   ) -> np.ndarray:
    """`run_one` over `tiles` in consecutive sub-batches of at most `max_batch` (None: all at once), joined in
    order."""
    step = max_batch or len(tiles)
    if len(tiles) <= step:
        return run_one(tiles)
    return np.concatenate([run_one(tiles[i:i + step]) for i in range(0, len(tiles), step)])
