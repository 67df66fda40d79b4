"""`null`: a zero-cost engine for measuring the host side of the runtime (reading, batching, stitching).

It returns valid class probabilities without looking at the pixels: a fixed, spatially varying pattern of ``C``
soft classes computed once per tile size (so stitching, argmax and every output do real work), at once or at a
set engine rate (``rate`` tiles/s, to simulate a given GPU: a batch of B tiles then takes B / rate seconds,
sleeping off what the call did not use). By default calls rotate over a few distinct read-only output buffers
made once (all holding the pattern), so the stitcher reads a different ``B * C * T * T`` float32 array each
time, as it does from a real engine whose output a device-to-host copy (DMA, no host CPU) filled; with
``copy=false`` every call hands out one shared broadcast view (the best case for caches). `slidefuse bench slide
--backend null` so measures the host ceiling of the whole runtime. `auto` never picks it: it segments nothing
real, and listings leave it out (`Backend.internal`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.runtime.backends.base import Backend, BackendInfo
from slidefuse.runtime.backends.options import BackendOptions

ROTATE = 3  # distinct output buffers per batch size (copy=true)


@dataclass(frozen=True)
class NullOptions(BackendOptions):
    rate: float | None = None  # simulated engine speed in tiles/s; None = return at once
    period: int = 97  # px: the pattern's period, so class boundaries cross tiles at varied places
    copy: bool = True  # rotate over distinct output buffers (as a real engine's outputs); False: one shared view

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate is not None and not self.rate > 0:
            raise UsageError(f"option rate={self.rate!r}: expected a positive number of tiles per second")
        if self.period < 2:
            raise UsageError(f"option period={self.period!r}: expected an integer >= 2 (px)")


def null_probabilities(num_classes: int, tile: int, period: int) -> np.ndarray:
    """float32 ``[C, T, T]`` (tile frame) soft probabilities summing to 1 over C: diagonal bands of ``period``
    px, each class winning on its own band, with smooth transitions (so blending and argmax are exercised)."""
    y, x = np.mgrid[0:tile, 0:tile].astype(np.float32)
    phase = ((x + 2.0 * y) % period) / period * num_classes  # 0..C
    centres = np.arange(num_classes, dtype=np.float32)[:, None, None] + 0.5
    logits = -4.0 * np.minimum(np.abs(phase - centres), num_classes - np.abs(phase - centres))
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


class NullBackend(Backend):
    name = "null"
    description = "no engine: fixed probabilities at once or at a set rate (host benchmarks only)"
    options: NullOptions
    options_type = NullOptions
    computes_model = False
    internal = True  # not in listings (errors, help) unless asked for; runs when named

    @classmethod
    def availability(cls) -> str | None:
        return None

    def _load(self) -> None:
        m = self.bundle.manifest
        if m.embedding is not None:  # an embedding bundle: one fixed unit vector [D]
            tile = np.full(m.embedding.dim, 1.0 / np.sqrt(m.embedding.dim), dtype=np.float32)
        else:
            tile = null_probabilities(m.num_classes, m.tile_size, self.options.period)
        tile.flags.writeable = False
        self._tile = tile
        self._batches: dict[int, list[np.ndarray]] = {}
        self._calls = 0

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        b = len(tiles)
        pool = self._batches.get(b)
        if pool is None:  # read-only: nobody can write into them, so handing them out again is safe
            view = np.broadcast_to(self._tile, (b, *self._tile.shape))
            pool = [view] if not self.options.copy else [np.array(view) for _ in range(ROTATE)]
            for arr in pool:
                arr.flags.writeable = False
            self._batches[b] = pool
        out = pool[self._calls % len(pool)]
        self._calls += 1
        if self.options.rate is not None:
            left = b / self.options.rate - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
        return out

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "cpu", None, settings={"rate": self.options.rate,
                                                              "period": self.options.period,
                                                              "copy": self.options.copy})
