"""The parity seam (slidefuse.export.parity) without torch: `compare` over small numpy runners (a deliberately
broken one is caught), the outputs cache, tiles from a named slide through open_slide + tissue + grid, and the
shipped package tiles (loaded without touching ../shared)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from runtime.conftest import synthetic_rgb, write_pyramid_tiff

from slidefuse.errors import ParityError, SlideNotFound, UsageError
from slidefuse.export import parity
from slidefuse.export.parity import (
    FP16_THRESHOLDS,
    FP32_THRESHOLDS,
    ParityTiles,
    RunnerRecord,
    batch_sizes,
    compare,
    package_tile_index,
    package_tiles,
    parity_tiles,
)

REPO = Path(__file__).resolve().parents[2]


class SoftmaxRunner:
    """A runner computing a fixed per-pixel function of the tiles: softmax over 3 class scores made from the
    RGB channels. `swap` swaps classes 1 and 2 (the broken runner); `noise` adds a small perturbation."""

    def __init__(self, swap: bool = False, noise: float = 0.0, precision: str = "fp32") -> None:
        self.swap, self.noise, self.precision = swap, noise, precision
        self.calls: list[int] = []
        self.opened = 0

    def __enter__(self) -> SoftmaxRunner:
        self.opened += 1
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, tiles: np.ndarray) -> np.ndarray:
        self.calls.append(len(tiles))
        scores = tiles.astype(np.float32).transpose(0, 3, 1, 2) / 64.0  # [B, 3, T, T]
        if self.swap:
            scores = scores[:, [0, 2, 1]]
        e = np.exp(scores - scores.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        return (p + self.noise * np.sin(np.arange(p.size).reshape(p.shape))).astype(np.float32)

    def info(self) -> dict[str, str]:
        return {"backend": "softmax", "precision": self.precision}


def _tiles(n: int = 5, t: int = 16) -> ParityTiles:
    return parity.random_tiles(t, n, seed=4)


def test_a_broken_runner_is_caught_and_a_good_one_passes() -> None:
    tiles = _tiles()
    ref, same, broken = SoftmaxRunner(), SoftmaxRunner(), SoftmaxRunner(swap=True)
    report = compare({"ref": ref, "same": same, "broken": broken}, tiles)
    assert [p.candidate for p in report.pairs] == ["same", "broken"]
    good, bad = report.pairs
    assert good.passed and good.max_abs_diff == good.mean_abs_diff == 0.0 and good.argmax_agreement == 1.0
    assert not bad.passed and bad.argmax_agreement < 0.9 and bad.max_abs_diff > 0.1
    assert not report.passed and report.tile_origin == "random" and report.tiles == 5
    assert report.batch_sizes == (1, 2, 2) and ref.calls == [1, 2, 2]
    with pytest.raises(ParityError, match=r"^broken: parity with ref failed: max \|dp\| .* on 5 random"):
        report.check()
    rec = report.pair_record(1)
    assert rec["candidate"] == "broken" and rec["passed"] is False and rec["tile_origin"] == "random"
    assert rec["thresholds"] == {"max_abs_diff": 1e-3, "min_argmax_agreement": 0.999}


def _clear_tiles(n: int = 5, t: int = 16) -> ParityTiles:
    """Random tiles whose every pixel has one clearly brightest channel (no near-ties for the argmax)."""
    rng = np.random.default_rng(5)
    tiles = rng.integers(0, 150, size=(n, t, t, 3), dtype=np.uint8)
    np.put_along_axis(tiles, rng.integers(0, 3, size=(n, t, t, 1)), 250, axis=3)
    return ParityTiles(tiles, tuple(f"clear#{i}" for i in range(n)), ("random",))


def test_small_differences_pass_within_thresholds_and_fail_outside() -> None:
    tiles = _clear_tiles()
    assert compare({"a": SoftmaxRunner(), "b": SoftmaxRunner(noise=1e-4)}, tiles).check().passed
    report = compare({"a": SoftmaxRunner(), "b": SoftmaxRunner(noise=1e-2)}, tiles)
    assert not report.passed and 1e-3 < report.pairs[0].max_abs_diff <= 1e-2 + 1e-6
    loose = compare({"a": SoftmaxRunner(), "b": SoftmaxRunner(noise=1e-2)}, tiles, thresholds=FP16_THRESHOLDS)
    assert loose.passed


def test_threshold_rule_sees_the_candidates_precision() -> None:
    seen: list[RunnerRecord] = []

    def rule(rec: RunnerRecord) -> parity.ParityThresholds:
        seen.append(rec)
        return FP16_THRESHOLDS if rec.precision == "fp16" else FP32_THRESHOLDS

    report = compare({"a": SoftmaxRunner(), "b": SoftmaxRunner(noise=1e-2, precision="fp16")}, _clear_tiles(),
                     thresholds=rule, batch=2, warmup=True)
    assert [r.precision for r in seen] == ["fp16"] and report.passed
    assert report.batch_sizes == (2, 2, 1)
    assert report.runners[1].load_s is not None and report.runners[1].run_s is not None


def test_the_outputs_cache_runs_a_label_once() -> None:
    tiles, cache = _tiles(), {}
    ref = SoftmaxRunner()
    compare({"ref": ref}, tiles, outputs=cache)
    report = compare({"ref": ref, "other": SoftmaxRunner()}, tiles, outputs=cache)
    assert ref.opened == 1 and set(cache) == {"ref", "other"} and report.passed
    assert report.runners[0].run_s is None  # came from the cache


def test_wrong_output_shape_and_non_finite_outputs() -> None:
    class Short(SoftmaxRunner):
        def run(self, tiles: np.ndarray) -> np.ndarray:
            return super().run(tiles)[:, :2]

    class NaN(SoftmaxRunner):
        def run(self, tiles: np.ndarray) -> np.ndarray:
            out = super().run(tiles)
            out[0, 0, 0, 0] = np.nan
            return out

    with pytest.raises(ParityError, match="short: output shape .* differs from ref's"):
        compare({"ref": SoftmaxRunner(), "short": Short()}, _tiles())
    report = compare({"ref": SoftmaxRunner(), "nan": NaN()}, _tiles())
    assert report.pairs[0].max_abs_diff == float("inf") and not report.passed


def test_batch_sizes() -> None:
    assert batch_sizes(7) == [1, 2, 3, 1]
    assert batch_sizes(7, 3) == [3, 3, 1]
    with pytest.raises(UsageError, match="batch 0"):
        batch_sizes(3, 0)


# ---------------------------------------------------------------------------------------------- tiles
def test_package_tiles_at_the_models_size_and_pixel_size() -> None:
    index = package_tile_index()
    assert len(index) == 4 and {e["slide"] for e in index} == {"CMU-1-Small-Region.svs", "OS-2-vsi.ome.tif"}
    assert sum(p.stat().st_size for p in parity.PACKAGE_TILES.iterdir()) < 1_500_000
    t = package_tiles(64, 2.0, 4)  # 384 px at 0.5 um/px -> 96 px at 2 um/px -> centre 64 px
    assert t.tiles.shape == (4, 64, 64, 3) and t.tiles.dtype == np.uint8 and t.origin == "package-data"
    assert t.sources == tuple(f"package-data:{e['file']}" for e in index)
    assert all(tile.std() > 10 for tile in t.tiles)  # real texture, not blank or constant
    same = package_tiles(384, 0.5, 1).tiles[0]  # no resampling: exactly the PNG
    from PIL import Image

    png = np.asarray(Image.open(parity.PACKAGE_TILES / index[0]["file"]).convert("RGB"))
    assert np.array_equal(same, png)
    big = package_tiles(512, 0.5, 1).tiles[0]  # larger than the PNG: mirrored outwards, the centre unchanged
    assert np.array_equal(big[64:448, 64:448], same)
    assert np.array_equal(big[63], big[64]) and np.array_equal(big[:, 448], big[:, 447])
    with pytest.raises(UsageError, match="the package ships 4; ask for at most 4"):
        package_tiles(64, 2.0, 5)


def test_package_tiles_load_without_shared_data(tmp_path: Path) -> None:
    """In a fresh interpreter that fails any attempt to open a path under ../shared, the default real tiles
    still load (they come from the package, not from a development folder)."""
    script = textwrap.dedent(f"""
        import sys
        shared = {str(REPO.parent / "shared")!r}
        def hook(event, args):
            if event == "open" and isinstance(args[0], str) and args[0].startswith(shared):
                raise RuntimeError("opened " + args[0])
        sys.addaudithook(hook)
        from slidefuse.export.parity import parity_tiles
        t = parity_tiles(64, 2.0, n_real=4, n_random=0)
        print(t.tiles.shape, t.origin)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "SLIDEFUSE_SHARED": str(tmp_path / "none")},
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(4, 64, 64, 3) package-data"


def test_tiles_from_a_named_slide_go_through_open_slide_tissue_and_grid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slidefuse.runtime import grid, slide, tissue

    calls: list[str] = []

    def spy(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*a: object, **kw: object) -> object:
            calls.append(name)
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((slide, "open_slide"), (tissue, "detect_tissue"), (grid, "select_tiles")):
        spy(module, name)
    path = write_pyramid_tiff(synthetic_rgb(1024, 768), tmp_path / "synth.tif", 0.5)
    t = parity_tiles(64, 1.0, n_real=3, n_random=2, seed=7, slides=[path])
    assert calls[0] == "open_slide" and "detect_tissue" in calls and calls[-1] == "select_tiles"
    assert t.tiles.shape == (5, 64, 64, 3) and t.origin == "slides+random"
    assert [s.split("@")[0] for s in t.sources[:3]] == ["synth.tif"] * 3
    assert t.sources[3] == "random(seed=7)#0"
    with slide.open_slide(path) as reader:  # each tile is the slide's own pixels at 1 um/px, and tissue
        view = reader.scaled(1.0)
        for tile, src in zip(t.tiles[:3], t.sources[:3], strict=True):
            x, y = (int(v) for v in src.split("=")[1].split(","))
            assert np.array_equal(tile, view.read(x, y, 64, 64))
            assert (tile.min(axis=2) < 200).mean() > 0.75  # stained, not glass


def test_slides_split_the_tiles_and_bad_slides_are_refused(tmp_path: Path) -> None:
    a = write_pyramid_tiff(synthetic_rgb(1024, 768, seed=1), tmp_path / "a.tif", 0.5)
    b = write_pyramid_tiff(synthetic_rgb(1024, 768, seed=2), tmp_path / "b.tif", 0.5)
    t = parity_tiles(64, 1.0, n_real=3, slides=[a, b])  # ceil(3 / 2) = 2 from each
    assert [s.split("@")[0] for s in t.sources] == ["a.tif", "a.tif", "b.tif", "b.tif"]
    glass = write_pyramid_tiff(np.full((512, 512, 3), 245, np.uint8), tmp_path / "glass.tif", 0.5)
    with pytest.raises(UsageError, match=r"glass.tif: no 64 px tile at 1 um/px touches tissue"):
        parity_tiles(64, 1.0, n_real=1, slides=[glass])
    with pytest.raises(SlideNotFound, match="nope.svs: no such parity slide"):
        parity_tiles(64, 1.0, n_real=1, slides=[tmp_path / "nope.svs"])
    with pytest.raises(UsageError, match="no tiles"):
        parity_tiles(64, 1.0, n_real=0, n_random=0)


def test_slide_tiles_take_from_the_other_slides_what_a_small_one_lacks(cmu_slide: Path, ome_slide: Path) -> None:
    # at 2 um/px and 128 px CMU-1-Small-Region holds 21 tissue tiles and OS-2 only 4: asking 15 of the two must
    # give 15 (4 + 11), not 4 + ceil(15 / 2)
    tiles = parity.slide_tiles([cmu_slide, ome_slide], 128, 2.0, 15)
    assert len(tiles.tiles) == 15 and len(set(tiles.sources)) == 15
    assert sum(s.startswith(ome_slide.name) for s in tiles.sources) == 4
    assert len(parity.slide_tiles([cmu_slide, ome_slide], 128, 2.0, 100).tiles) == 25  # all there are
