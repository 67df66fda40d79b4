"""The tiles of `slidefuse quantize`: tissue tiles cut from the user's slides (`parity.slide_tiles`: tissue on a
thumbnail, a tile grid at the bundle's mpp and tile size), split by a seeded shuffle into calibration tiles and
held-out gate tiles that never share a tile; and the record of each slide kept in the manifest."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.export.parity import ParityTiles, slide_tiles
from slidefuse.export.quantize.config import QuantizeConfig
from slidefuse.runtime.slide.decode import SlideDecodeError, describe


def calibration_and_gate_tiles(config: QuantizeConfig, tile_size: int, mpp: float) -> tuple[ParityTiles, ParityTiles]:
    """(calibration tiles, gate tiles) of `tile_size` px at `mpp` um/px (the bundle's) from `config.slides`:
    uint8 [N, T, T, 3] RGB 0..255 each, `config.calibration_tiles` and `config.gate_tiles` of them.
    A slide with a tile that the decoder reports as corrupt (among those read) is refused: SlideDecodeError."""
    try:
        pool = slide_tiles(list(config.slides), tile_size, mpp, config.calibration_tiles + config.gate_tiles)
    except SlideDecodeError as exc:
        raise SlideDecodeError(f"calibration slide {describe(exc.path, exc.tile)}; quantize does not calibrate on "
                               "a damaged slide: re-copy it or calibrate on another slide", path=exc.path,
                               tile=exc.tile) from None
    return split_tiles(pool, config.calibration_tiles, config.gate_tiles, config.seed,
                       what=f"tissue tiles of {tile_size} px at {mpp:g} um/px (the bundle's)")


def split_tiles(pool: ParityTiles, n_calibration: int, n_gate: int, seed: int, *, what: str = "tissue tiles"
                ) -> tuple[ParityTiles, ParityTiles]:
    """(calibration tiles, gate tiles): a seeded shuffle of `pool` split into two disjoint sets, each kept in
    the pool's order. UsageError (saying `what` the pool holds) when it has fewer than `n_calibration + n_gate`."""
    n = len(pool.tiles)
    if n < n_calibration + n_gate:
        raise UsageError(
            f"the slides give {n} {what}, but calibration_tiles="
            f"{n_calibration} + gate_tiles={n_gate} = {n_calibration + n_gate} were asked for; ask for at most "
            f"{n} in all (e.g. calibration_tiles={max(1, n - max(1, n // 3))} gate_tiles={max(1, n // 3)}) "
            "or name more slides")
    order = np.random.default_rng(seed).permutation(n)
    gate_idx = np.sort(order[:n_gate])
    cal_idx = np.sort(order[n_gate:n_gate + n_calibration])

    def part(idx: np.ndarray) -> ParityTiles:
        return ParityTiles(pool.tiles[idx], tuple(pool.sources[i] for i in idx), pool.origins)

    return part(cal_idx), part(gate_idx)


def slide_record(path: Path) -> dict[str, Any]:
    """A calibration slide as the manifest records it: file name, size in bytes, mtime (UTC)."""
    st = Path(path).stat()
    mtime = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return {"file": Path(path).name, "bytes": st.st_size, "mtime": mtime}
