"""The streaming pipeline: order, preallocated buffers, overlap of stages, error propagation, seam-free output."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.onnx_models import make_bundle, run_whole
from slidefuse.errors import SlideReadError
from slidefuse.runtime.grid import TileGrid
from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline
from slidefuse.runtime.stitch import Stitcher

T = 32


class CoordSource:
    """A synthetic slide whose pixels encode their own model-frame position: R = x % 251, G = y % 251,
    B = (x // 251) + 16 * (y // 251). Outside the image it is white, like the real reader."""

    def __init__(self, width: int, height: int, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.width, self.height = width, height
        self.fail_at = fail_at
        self.delay = delay
        self.reads = 0
        self.read_times: list[float] = []
        self._lock = threading.Lock()

    def read(self, model_x: int, model_y: int, w: int, h: int) -> np.ndarray:
        with self._lock:
            self.reads += 1
            n = self.reads
            self.read_times.append(time.perf_counter())
        if self.delay:
            time.sleep(self.delay)
        if self.fail_at is not None and n >= self.fail_at:
            raise SlideReadError(f"synthetic read failure at read {n}")
        return self.pixels(model_x, model_y, w, h)

    def pixels(self, model_x: int, model_y: int, w: int, h: int) -> np.ndarray:
        yy, xx = np.mgrid[model_y : model_y + h, model_x : model_x + w]
        out = np.stack([xx % 251, yy % 251, xx // 251 + 16 * (yy // 251)], axis=-1).astype(np.uint8)
        outside = (xx < 0) | (yy < 0) | (xx >= self.width) | (yy >= self.height)
        out[outside] = 255
        return out


def decode_origin(tile: np.ndarray) -> tuple[int, int]:
    """Model-frame (x, y) of a CoordSource tile's top-left pixel (inside the image)."""
    r, g, b = (int(v) for v in tile[0, 0])
    return r + 251 * (b % 16), g + 251 * (b // 16)


class RecordingBackend:
    """Checks each batch's pixels against the source, records the tiles' origins; probabilities say class
    (x // 10) % 3 at each pixel so the stitched mask is checkable. Optionally slow or failing."""

    def __init__(self, source: CoordSource, delay: float = 0.0, fail_at_batch: int | None = None) -> None:
        self.source = source
        self.delay = delay
        self.fail_at_batch = fail_at_batch
        self.origins: list[tuple[int, int]] = []
        self.wrong_pixels = 0  # tiles whose pixels differ from the source's
        self.buffer_addresses: set[int] = set()
        self.batches = 0
        self.spans: list[tuple[float, float]] = []

    def run(self, tiles: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        self.batches += 1
        if self.fail_at_batch is not None and self.batches >= self.fail_at_batch:
            raise RuntimeError(f"synthetic engine failure in batch {self.batches}")
        assert tiles.dtype == np.uint8 and tiles.shape[1:] == (T, T, 3)
        self.buffer_addresses.add(tiles.__array_interface__["data"][0])
        out = np.zeros((tiles.shape[0], 3, T, T), dtype=np.float32)
        for i, tile in enumerate(tiles):
            x, y = decode_origin(tile)
            self.origins.append((x, y))
            self.wrong_pixels += not np.array_equal(tile, self.source.pixels(x, y, T, T))
            cls = ((np.arange(x, x + T) // 10) % 3)[None, :].repeat(T, axis=0)
            out[i, cls, np.arange(T)[:, None], np.arange(T)[None, :]] = 1.0
        if self.delay:
            time.sleep(self.delay)
        self.spans.append((t0, time.perf_counter()))
        return out


def run_with_timeout(fn: Callable[[], Any], seconds: float = 30.0) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), "the pipeline hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _no_pipeline_threads_left() -> bool:
    for _ in range(50):
        if not any(t.name.startswith("slidefuse-") for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


def test_tiles_arrive_in_order_with_the_right_pixels_and_stitch_correctly(tmp_path: Path) -> None:
    src = CoordSource(300, 200)
    grid = TileGrid(300, 200, T, 8)
    tiles = [rc for rc in grid.tiles() if (rc[0] + rc[1]) % 3 != 1]  # gaps, like non-tissue tiles
    backend = RecordingBackend(src)
    opts = PipelineOptions(batch_size=5, workers=3, prefetch=2)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st:
        stats = run_with_timeout(lambda: run_pipeline(src, grid, tiles, backend, st, opts))
        st.finish()
    assert backend.origins == [grid.tile_box(rc)[:2] for rc in tiles]  # order preserved
    assert backend.wrong_pixels == 0  # no buffer was overwritten while in use
    assert stats.tiles == len(tiles) and stats.batches == -(-len(tiles) // 5)
    assert len(backend.buffer_addresses) <= opts.prefetch + 2  # preallocated buffers are reused
    mask = np.fromfile(tmp_path / "m.raw", dtype=np.uint8).reshape(200, 300)
    covered = np.zeros((200, 300), dtype=bool)
    for rc in tiles:
        x, y, w, h = grid.tile_box(rc)
        covered[y : y + h, x : x + w] = True
    want = np.broadcast_to((np.arange(300) // 10) % 3, (200, 300))
    assert np.array_equal(mask[covered], want[covered])
    assert not mask[~covered].any()
    assert _no_pipeline_threads_left()


def test_reading_runs_ahead_while_the_engine_works(tmp_path: Path) -> None:
    src = CoordSource(400, 64)
    grid = TileGrid(400, 64, T, 0)
    backend = RecordingBackend(src, delay=0.05)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st:
        run_with_timeout(lambda: run_pipeline(src, grid, list(grid.tiles()), backend, st,
                                              PipelineOptions(batch_size=2, workers=2, prefetch=2, run_length=1)))
    # some tile was read while a batch was inside the engine: the stages overlap (an ordering fact,
    # not a speed assertion)
    during = [t for t in src.read_times if any(a < t < b for a, b in backend.spans)]
    assert len(during) >= len(backend.spans)


def test_a_reader_exception_propagates_without_hanging(tmp_path: Path) -> None:
    src = CoordSource(400, 400, fail_at=7)
    grid = TileGrid(400, 400, T, 8)
    backend = RecordingBackend(src)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st, pytest.raises(SlideReadError, match="read failure"):
        run_with_timeout(lambda: run_pipeline(src, grid, list(grid.tiles()), backend, st,
                                              PipelineOptions(batch_size=4, workers=2)))
    assert _no_pipeline_threads_left()


def test_a_backend_exception_propagates_without_hanging(tmp_path: Path) -> None:
    src = CoordSource(400, 400)
    grid = TileGrid(400, 400, T, 8)
    backend = RecordingBackend(src, fail_at_batch=3)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st, pytest.raises(RuntimeError, match="engine failure"):
        run_with_timeout(lambda: run_pipeline(src, grid, list(grid.tiles()), backend, st,
                                              PipelineOptions(batch_size=4, workers=2)))
    assert backend.batches == 3
    assert _no_pipeline_threads_left()


def test_a_stitcher_exception_propagates(tmp_path: Path) -> None:
    class WrongClasses(RecordingBackend):
        def run(self, tiles: np.ndarray) -> np.ndarray:
            return np.zeros((tiles.shape[0], 5, T, T), dtype=np.float32)

    src = CoordSource(200, 200)
    grid = TileGrid(200, 200, T, 8)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st, pytest.raises(ValueError, match=r"\[3, 32, 32\]"):
        run_with_timeout(lambda: run_pipeline(src, grid, list(grid.tiles()), WrongClasses(src), st))
    assert _no_pipeline_threads_left()


def test_tiles_out_of_order_are_refused(tmp_path: Path) -> None:
    src = CoordSource(100, 100)
    grid = TileGrid(100, 100, T, 8)
    with Stitcher(grid, 3, tmp_path / "m.raw") as st, pytest.raises(ValueError, match="row-major"):
        run_pipeline(src, grid, [(1, 0), (0, 1)], RecordingBackend(src), st)


def test_seam_free_on_a_real_slide_region(tmp_path: Path, cmu_slide: Path) -> None:
    """Done-when: with a receptive field (7 px) inside the overlap (32 px), the stitched mask equals the model
    run on the whole 1500 x 1500 region in one piece on >= 99.9% of pixels. The region is a crop of the real
    CMU slide at its native 0.499 um/px; like the slide reader, the one-piece run sees white glass beyond the
    region's edges."""
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.slide import InMemorySlide, open_slide

    with open_slide(cmu_slide) as slide:
        mpp = slide.info.mpp
        crop = slide.scaled(mpp).read(300, 700, 1500, 1500)
    radius, tile, overlap = 3, 128, 32
    bundle = make_bundle(tmp_path / "bundle", tile_size=tile, mpp=mpp, overlap=overlap, blur_radius=radius)
    view = InMemorySlide(crop, mpp).scaled(mpp)
    grid = TileGrid(view.width, view.height, tile, overlap, margin=overlap)
    with open_backend("ort-cpu", bundle, threads=1) as backend, Stitcher(grid, 3, tmp_path / "m.raw") as st:
        run_pipeline(view, grid, list(grid.tiles()), backend, st, PipelineOptions(batch_size=8, workers=2))
        st.finish()
    stitched = np.fromfile(tmp_path / "m.raw", dtype=np.uint8).reshape(1500, 1500)
    on_glass = np.pad(crop, ((radius, radius), (radius, radius), (0, 0)), constant_values=255)
    whole = run_whole(bundle.model_path, on_glass)[:, radius:-radius, radius:-radius].argmax(axis=0)
    agreement = float((stitched == whole).mean())
    assert agreement >= 0.999, agreement
    assert len(np.unique(whole)) == 3  # the region really has all three colour classes
