"""One slide's embeddings: open it, find tissue, lay a tile grid at the bundle's pixel size (no overlap unless
a stride is given), run the tissue tiles through the backend and append each batch's embeddings, with the
level-0 top-left corner of each tile, to the feature files.

Coordinates: tiles live in the model frame (the slide at the bundle's um/px); a tile `(row, col)` starts at
model (col * stride, row * stride); its `coords` row is that point in level-0 pixels
(`coords.model_to_l0_xy`, rounded), as TRIDENT stores them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse._version import __version__
from slidefuse.runtime import coords, interrupt
from slidefuse.runtime.embed.features import CHUNK_ROWS, FeatureAttrs, FeatureStore, open_store
from slidefuse.runtime.embed.options import EmbedOptions
from slidefuse.runtime.embed.qc import FLAG_BITS, FLAG_MIN_FRACTION, TileQC, qc_attrs, run_embed_qc
from slidefuse.runtime.grid import TileGrid, TileRC, select_tiles
from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline
from slidefuse.runtime.segment.stages import find_tissue

if TYPE_CHECKING:
    from slidefuse.runtime.backends.base import Runner
    from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class EmbedPlan:
    """A slide opened, its tissue found and its tiles chosen. Holds the open slide (`close()` frees it)."""

    slide_path: Path
    slide: Any  # the open SlideReader
    view: Any  # the slide at the bundle's um/px (ScaledView)
    grid: TileGrid  # tiles of the bundle's size at `stride` px steps, from the model frame's origin
    tiles: list[TileRC]  # to embed, row-major
    stride: int  # px between tile origins (model frame)
    mpp: float  # um/px of the model frame (the bundle's)
    tissue: np.ndarray  # bool [h, w] on the thumbnail
    thumb_mpp: float  # um/px of the thumbnail
    l0_mpp: float  # um per level-0 px of the slide (after any override)
    tile_qc: TileQC  # the QC maps read per tile (the qc_flags byte of each tile)
    qc_excluded_tiles: int = 0  # tiles left out because QC excluded most of their area

    def l0_xy(self, tile_rc: TileRC) -> tuple[int, int]:
        """Level-0 (x, y) of the tile's top-left corner, rounded to the nearest pixel."""
        r, c = tile_rc
        x, y = coords.model_to_l0_xy(c * self.stride, r * self.stride, self.mpp, self.l0_mpp)
        return int(round(x)), int(round(y))

    def close(self) -> None:
        self.slide.close()
        self.view = None


def plan_embedding(slide_path: Path, bundle: Bundle, options: EmbedOptions, *, reader: Any = None) -> EmbedPlan:
    """Open the slide (or use `reader`), find tissue on a thumbnail and choose the tiles to embed."""
    from slidefuse.runtime.slide import open_slide

    m = bundle.manifest
    slide = reader if reader is not None else open_slide(Path(slide_path), mpp=options.override_mpp,
                                                         default_mpp=options.mpp,
                                                         colour_transform=m.color_transform)
    try:
        stride = options.check_stride(m.tile_size)
        view = slide.scaled(m.mpp)
        grid = TileGrid(view.width, view.height, m.tile_size, m.tile_size - stride, margin=0)
        thumb, found, thumb_mpp = find_tissue(slide, options.tissue)
        interrupt.check()
        qc, tissue = run_embed_qc(Path(slide_path), slide, view, bundle, options, thumb, found, thumb_mpp)
        tile_qc = TileQC(qc, m.tile_size, stride, float(m.mpp))
        interrupt.check()
        tiles = tile_qc.kept(_candidates(grid, tissue, float(m.mpp), thumb_mpp, options))
        before = len(tiles) if tissue is found else len(_candidates(grid, found, float(m.mpp), thumb_mpp, options))
        plan = EmbedPlan(Path(slide_path), slide, view, grid, tiles, stride, float(m.mpp), tissue, thumb_mpp,
                         float(slide.info.mpp), tile_qc, before - len(tiles))
        if options.tile_filter is not None:  # a further filter: a subset, kept in row-major order
            kept = set(options.tile_filter(plan, tiles))
            plan.tiles = [rc for rc in tiles if rc in kept]
    except BaseException:
        slide.close()
        raise
    log.info("%s: %d x %d px at %g um/px, %d of %d tiles to embed (tile %d, stride %d; %d left out by QC)",
             Path(slide_path).name, grid.width, grid.height, m.mpp, len(plan.tiles), grid.n_tiles, grid.tile, stride,
             plan.qc_excluded_tiles)
    return plan


def _candidates(grid: TileGrid, tissue: np.ndarray, mpp: float, thumb_mpp: float,
                options: EmbedOptions) -> list[TileRC]:
    """Every tile (all_tiles), or those touching `tissue`, row-major."""
    if options.all_tiles:
        return list(grid.tiles())
    return select_tiles(grid, tissue, mpp, thumb_mpp, options.tissue.tile_min_fraction)


class FeatureSink:
    """The pipeline's TileSink for embeddings: buffers rows and appends them to every store in chunks."""

    def __init__(self, plan: EmbedPlan, stores: list[FeatureStore], dim: int, dtype: np.dtype[Any],
                 chunk_rows: int) -> None:
        self.plan, self.stores, self.dim, self.dtype, self.chunk_rows = plan, stores, dim, dtype, chunk_rows
        self._rows: list[np.ndarray] = []
        self._xy: list[tuple[int, int]] = []
        self._flags: list[int] = []
        self.written = 0

    def add(self, tile_rc: TileRC, result: np.ndarray, /) -> None:
        if result.shape != (self.dim,):
            raise ValueError(f"embedding of shape {list(result.shape)}, expected [{self.dim}]")
        self._rows.append(result)
        self._xy.append(self.plan.l0_xy(tile_rc))
        self._flags.append(self.plan.tile_qc.flags(tile_rc))
        if len(self._rows) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        feats = np.stack(self._rows).astype(self.dtype, copy=False)
        xy = np.asarray(self._xy, dtype=np.int64)
        flags = np.asarray(self._flags, dtype=np.uint8)
        for store in self.stores:
            store.append(feats, xy, flags)
        self.written += len(self._rows)
        self._rows, self._xy, self._flags = [], [], []


def feature_attrs(plan: EmbedPlan, bundle: Bundle, key: dict[str, Any], name: str, folder: Path) -> FeatureAttrs:
    """The attributes TRIDENT writes (see features.py), plus slidefuse's own. `folder`: where the file goes
    (TRIDENT's `savetodir`)."""
    m = bundle.manifest
    info = plan.slide.info
    l0_mpp = float(info.mpp)
    l0_mag = float(info.objective_power) if info.objective_power else 10.0 / l0_mpp
    target_mag = l0_mag * l0_mpp / m.mpp
    feats = {"name": name, "savetodir": str(folder), "encoder": m.encoder,
             "embedding_rule": m.embedding.rule if m.embedding else None, "bundle_digest": bundle.digest,
             "slidefuse_version": __version__, **qc_attrs(plan.tile_qc.qc, plan.qc_excluded_tiles)}
    coords_attrs = {
        "patch_size": m.tile_size, "patch_size_level0": int(round(m.tile_size * m.mpp / l0_mpp)),
        "level0_magnification": _mag(l0_mag), "target_magnification": _mag(target_mag),
        "overlap": m.tile_size - plan.stride, "name": name, "savetodir": str(folder), "level0_width": int(info.width),
        "level0_height": int(info.height), "mpp": float(m.mpp), "level0_mpp": l0_mpp, "stride": plan.stride,
    }
    flags_attrs = {"bit_names": list(FLAG_BITS), "description": f"bit i (value 2**i) set: QC's bit_names[i] map covers "
                   f"at least {FLAG_MIN_FRACTION:g} of the tile"}
    return FeatureAttrs(feats, coords_attrs, key, flags_attrs)


def _mag(value: float) -> int | float:
    """A magnification as TRIDENT stores it (an integer such as 20 or 40) when it is one, else as is."""
    return int(round(value)) if abs(value - round(value)) < 1e-3 else float(value)


@dataclass(frozen=True)
class EmbedRun:
    """What `embed_plan` wrote."""

    outputs: dict[str, Path]  # format -> file
    tiles: int  # rows written
    seconds: float


def embed_plan(plan: EmbedPlan, bundle: Bundle, backend: Runner, options: EmbedOptions, out_dir: Path,
               key: dict[str, Any], name: str) -> EmbedRun:
    """Embed the plan's tiles into OUT/<slide>/features.{h5,zarr}; closes the slide. Nothing is left under the
    final names unless every tile was written."""
    m = bundle.manifest
    if m.embedding is None:
        raise ValueError("embed_plan needs an embedding bundle (manifest task 'embed')")
    t0 = time.perf_counter()
    dtype = np.dtype(np.float16 if options.fp16_features else np.float32)
    attrs = feature_attrs(plan, bundle, key, name, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stores: list[FeatureStore] = []
    try:
        for fmt in options.formats:
            stores.append(open_store(fmt, out_dir, m.embedding.dim, dtype, attrs, CHUNK_ROWS))
        sink = FeatureSink(plan, stores, m.embedding.dim, dtype, CHUNK_ROWS)
        run_pipeline(plan.view, plan.grid, plan.tiles, backend, sink,
                     PipelineOptions(batch_size=options.batch_size, workers=options.workers,
                                     prefetch=options.prefetch))
        sink.flush()
        outputs = {fmt: store.finish() for fmt, store in zip(options.formats, stores, strict=True)}
    except BaseException:
        for store in stores:
            store.abort()
        raise
    finally:
        plan.close()
    return EmbedRun(outputs, sink.written, time.perf_counter() - t0)
