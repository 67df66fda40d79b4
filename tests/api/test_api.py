"""The Python API (`slidefuse.load_model`, `Model.segment`, `slidefuse.segment_many`) on small synthetic slides
with the colour-classifier bundle: masks read back with tifffile, arrays against files, results as slides
finish, progress events, bad input, and `import slidefuse` staying light."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import pyvips

import slidefuse
from slidefuse.api import ResultError, SegmentationResult
from slidefuse.errors import UsageError
from slidefuse.runtime.progress import ProgressEvent

FAST = {"workers": 2, "backend_options": {"threads": 1}}


def _blobs(w: int, h: int, shift: int = 0) -> np.ndarray:
    """uint8 [h, w, 3]: a pink and a purple disc on white glass."""
    img = np.full((h, w, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - w // 3 - shift) ** 2 + (yy - h // 2) ** 2 < (h // 3) ** 2] = (220, 130, 180)
    img[(xx - 3 * w // 4) ** 2 + (yy - h // 2) ** 2 < (h // 4) ** 2] = (110, 70, 150)
    return img


def _tiff(path: Path, img: np.ndarray, mpp: float = 0.5, pyramid: bool = True) -> Path:
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=128, tile_height=128, pyramid=pyramid, compression="deflate",
        xres=1000 / mpp, yres=1000 / mpp, resunit="cm")
    return path



@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    return [_tiff(folder / f"s{i}.tif", _blobs(480, 320, shift=20 * i)) for i in range(3)]


def _read_tiff_level0(path: Path) -> np.ndarray:
    tifffile = pytest.importorskip("tifffile")
    return np.asarray(tifffile.imread(path, key=0))


def test_segment_a_slide_returns_its_mask_areas_and_report(bundle_dir: Path, slides: list[Path],
                                                          tmp_path: Path) -> None:
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", **FAST) as model:
        result = model.segment(slides[0], out=tmp_path)
    assert isinstance(result, SegmentationResult) and result.status == "ok"
    assert result.out_dir == tmp_path / "s0"
    mask = result.mask_array()
    assert mask.dtype == np.uint8 and mask.shape == (80, 120)  # 480 x 320 px at 0.5 um/px -> 2 um/px
    assert isinstance(mask, np.memmap)
    np.testing.assert_array_equal(mask, _read_tiff_level0(result.outputs["tiff"]))  # tifffile, not libvips
    assert not list(result.out_dir.glob(".mask-*"))  # the scratch file is unlinked once mapped
    lazy = result.mask()
    assert (lazy.width, lazy.height, lazy.bands) == (120, 80, 1)
    np.testing.assert_array_equal(lazy.crop(60, 40, 10, 10).numpy().reshape(10, 10), mask[40:50, 60:70])
    np.testing.assert_array_equal(lazy.crop(0, 0, 10, 10).numpy().reshape(10, 10), mask[:10, :10])  # any order
    assert result.mpp == pytest.approx((2.0, 2.0)) and result.l0_per_px == pytest.approx((4.0, 4.0))
    report = json.loads((result.out_dir / "report.json").read_text())
    assert result.class_areas_mm2 == {k: v["area_mm2"] for k, v in report["areas"].items()}
    counts = np.bincount(mask.ravel(), minlength=len(model.classes))
    px_mm2 = (2.0 / 1000) ** 2
    for i, name in enumerate(model.classes):
        assert result.class_areas_mm2[name] == pytest.approx(counts[i] * px_mm2)
    assert counts[1:].sum() > 0  # the blobs are found


def test_an_array_segments_like_the_same_pixels_in_a_file(bundle_dir: Path, tmp_path: Path) -> None:
    img = _blobs(480, 320)
    path = _tiff(tmp_path / "same.tif", img, pyramid=False)  # lossless, one level: the same pixels
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", **FAST) as model:
        from_array = model.segment(img, mpp=0.5, out=tmp_path / "a", name="same")
        from_file = model.segment(path, out=tmp_path / "f")
    assert from_array.out_dir == tmp_path / "a" / "same"
    np.testing.assert_array_equal(from_array.mask_array(), from_file.mask_array())
    assert from_array.report["slide"]["loader"] == "memory"


def test_segment_many_yields_each_slide_before_the_batch_ends(bundle_dir: Path, slides: list[Path],
                                                              tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    first_result = threading.Event()
    yielded_before_slide_3: list[bool] = []

    def progress(event: ProgressEvent) -> None:  # runs on the batch's thread
        events.append(event)
        if event.kind == "start" and event.index == 3:  # hold slide 3 until the consumer has slide 1
            yielded_before_slide_3.append(first_result.wait(timeout=30))

    results = []
    for res in slidefuse.segment_many(slides, bundle_dir, out=tmp_path, backend="ort-cpu", progress=progress,
                                      **FAST):
        results.append(res)
        first_result.set()
    assert [r.slide for r in results] == slides and all(r.status == "ok" for r in results)
    assert yielded_before_slide_3 == [True]  # slide 1 came back while slide 3 had not started
    kinds = {(e.index, e.kind) for e in events}
    assert {(i, k) for i in (1, 2, 3) for k in ("start", "tiles", "end")} <= kinds
    tiles = [e for e in events if e.kind == "tiles" and e.index == 1]
    assert tiles[0].done_tiles == 0 and tiles[-1].done_tiles == tiles[-1].total_tiles > 0
    assert json.loads((tmp_path / "run.json").read_text())["counts"]["ok"] == 3


def test_stopping_the_iteration_stops_the_batch(bundle_dir: Path, slides: list[Path], tmp_path: Path) -> None:
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", overlap_slides=False, **FAST) as model:
        first = next(iter_ := model.segment_many(slides, out=tmp_path))
        iter_.close()
    assert first.slide == slides[0]
    assert not (tmp_path / "s2" / "report.json").exists()


def test_bad_input_raises_one_clear_error(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown option.*bogus"):
        slidefuse.load_model(bundle_dir, backend="ort-cpu", bogus=1)
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", **FAST) as model:
        with pytest.raises(ResultError, match="missing.tif"):
            model.segment(tmp_path / "missing.tif", out=tmp_path)
        with pytest.raises(UsageError, match="mpp"):
            model.segment(_blobs(64, 64), out=tmp_path)
        with pytest.raises(UsageError, match="segment_many"):
            model.segment(tmp_path, out=tmp_path / "o")
        res = model.segment_batch([tmp_path / "missing.tif"], out=tmp_path / "b")
    assert res[0].status == "failed" and "missing.tif" in str(res[0].error)
    with pytest.raises(ResultError, match="failed"):
        res[0].mask_array()


def test_formats_are_parsed_once_per_run(bundle_dir: Path, slides: list[Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model parses the formats and builds the OutputOptions once; the scheduler, the skip check and the
    writers of every slide take them as built (a rerun that skips both slides parses nothing)."""
    import slidefuse.runtime.outputs as outputs
    from slidefuse.runtime.outputs import base, registry

    calls = {"parse_formats": 0, "OutputOptions": 0}
    parse, post_init = registry.parse_formats, base.OutputOptions.__post_init__

    def counted_parse(formats: object) -> frozenset[str]:
        calls["parse_formats"] += 1
        return parse(formats)  # type: ignore[arg-type]

    def counted_post_init(self: base.OutputOptions) -> None:
        calls["OutputOptions"] += 1
        post_init(self)

    monkeypatch.setattr(registry, "parse_formats", counted_parse)
    monkeypatch.setattr(outputs, "parse_formats", counted_parse)
    monkeypatch.setattr(base.OutputOptions, "__post_init__", counted_post_init)
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", formats="tiff,geojson", **FAST) as model:
        first = model.segment_batch(slides[:2], out=tmp_path)
        assert [r.status for r in first] == ["ok", "ok"]
        assert calls == {"parse_formats": 1, "OutputOptions": 1}
        again = model.segment_batch(slides[:2], out=tmp_path)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert calls == {"parse_formats": 1, "OutputOptions": 1}
    assert json.loads((tmp_path / "s0" / "report.json").read_text())["formats"] == ["geojson", "report", "tiff"]


def test_import_slidefuse_stays_light() -> None:
    code = ("import sys, slidefuse; heavy = [m for m in ('numpy', 'pyvips', 'onnxruntime', 'tqdm', 'slidefuse.api')"
            " if m in sys.modules]; print(heavy); slidefuse.load_model; print('slidefuse.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]
