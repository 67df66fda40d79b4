"""`EmbedOptions`: every option of an embedding run, checked once; `EmbedSlideResult`: one slide's outcome."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidefuse.errors import UsageError
from slidefuse.numbers import finite_float, integer
from slidefuse.runtime.cores import usable_cores
from slidefuse.runtime.qc.policy import check_mode, check_on_stain_mismatch
from slidefuse.runtime.tissue import TissueParams
from slidefuse.runtime.types import Status

if TYPE_CHECKING:
    from slidefuse.runtime.embed.slide import EmbedPlan
    from slidefuse.runtime.grid import TileRC

FEATURE_FORMATS = ("h5", "zarr")  # features.h5 (TRIDENT's layout) and features.zarr (the same arrays)
# A hook that drops tiles before they run (e.g. a QC exclusion mask): (plan, tiles) -> the tiles to keep, a
# subset in the same row-major order.
TileFilter = Callable[["EmbedPlan", list["TileRC"]], list["TileRC"]]


def _default_workers() -> int:
    return 2 * usable_cores()


@dataclass(frozen=True)
class EmbedOptions:
    """How slides are embedded. Constructing one checks every value (UsageError naming the field)."""

    backend: str = "auto"  # backend registry name, or "auto"
    backend_options: Mapping[str, Any] = field(default_factory=dict)  # passed to open_backend (e.g. threads)
    batch_size: int = 32  # tiles per backend call
    stride: int | None = None  # px between tile origins at the bundle's mpp; None = the tile size (no overlap)
    tissue: TissueParams = TissueParams()  # tissue detection and tile selection (the segment command's)
    all_tiles: bool = False  # embed every tile of the grid, not only those touching tissue
    mpp: float | None = None  # um/px of slides that have none
    override_mpp: float | None = None  # um/px replacing every slide's own
    formats: tuple[str, ...] = ("h5",)  # of FEATURE_FORMATS
    fp16_features: bool = False  # store features as float16 (half the size); float32 otherwise
    overwrite: bool = False  # redo slides whose features are already complete for the same skip key
    workers: int = field(default_factory=_default_workers)  # reader threads
    prefetch: int = 2  # batches read ahead of the engine
    shard: tuple[int, int] | None = None  # (i, n): slides i, i+n, ... of the list
    claim_timeout: float = 120.0  # s without a heartbeat after which another process takes a claim over
    qc: str = "default"  # quality control, as segment's (`runtime.qc.policy`): "off", "flag", "default" (tiles
    # mostly pen ink are not embedded; blur and folds are marked in qc_flags) or "exclude" (all three left out)
    on_stain_mismatch: str = "warn"  # a slide whose stain is not the model's: "warn" (log, feature attributes)
    # or "fail" the slide
    tile_filter: TileFilter | None = field(default=None, compare=False)  # a further filter; None: keep all

    def __post_init__(self) -> None:
        for name, minimum in (("batch_size", 1), ("workers", 1), ("prefetch", 1)):
            object.__setattr__(self, name, integer(getattr(self, name), field=name, minimum=minimum))
        check_mode(self.qc)
        check_on_stain_mismatch(self.on_stain_mismatch)
        if self.stride is not None:
            object.__setattr__(self, "stride", integer(self.stride, field="stride", minimum=1))
        for name in ("mpp", "override_mpp"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, finite_float(value, field=name, above=0,
                                                            what="a positive number of microns per pixel"))
        bad = [f for f in self.formats if f not in FEATURE_FORMATS]
        if bad or not self.formats:
            raise UsageError(f"formats {list(self.formats)}: expected one or more of {', '.join(FEATURE_FORMATS)}",
                             field="formats")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise UsageError(f"shard {self.shard}: expected (i, n) with 0 <= i < n", field="shard")

    def check_stride(self, tile: int) -> int:
        """The stride in effect for `tile` px tiles: the tile itself, or `stride` when it lies in tile/2..tile
        (the tile grid's overlap is at most half a tile; gaps between tiles are not supported)."""
        stride = self.stride or tile
        if not tile - tile // 2 <= stride <= tile:
            raise UsageError(f"stride {stride} px for {tile} px tiles: expected {tile - tile // 2}..{tile} (at most "
                             "half a tile of overlap, no gaps)", field="stride")
        return stride


@dataclass(frozen=True)
class EmbedSlideResult:
    """One slide of an embedding run."""

    slide: Path  # the slide as given
    status: Status  # ok, skipped, failed, claimed, claim_lost
    out_dir: Path | None  # OUT/<slide>
    outputs: dict[str, Path] = field(default_factory=dict)  # format -> file written (or found complete)
    tiles: int = 0  # rows written (tiles embedded)
    dim: int = 0  # embedding width D
    seconds: float = 0.0  # wall time of this slide
    error: str | None = None  # one line, for failed and claim_lost
