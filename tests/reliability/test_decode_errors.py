"""Decoder errors are never silent: a tiled TIFF, an OME-TIFF and a DICOM series with 64 bytes overwritten inside
one JPEG tile fail with one line naming the tile (the batch goes on), or, with --on-decode-error warn, are
segmented with the bad tile counted in report.json, outlined in preview.png and counted in run.json. The tile
reported is checked against an independent decoder (tifffile + Pillow, wsidicom): the only stored tile whose
pixels differ from the clean file's."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import pyvips

from slidefuse.runtime.slide import open_slide, reader
from slidefuse.runtime.slide.decode import SlideDecodeError
from tests.conftest import need_slide

from .conftest import one_error_line, segment, write_slide

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

# 64 bytes that end the entropy-coded data early (an EOI marker inside): libjpeg reports "Corrupt JPEG data".
PATCH = bytes(np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8))[:10] + b"\xff\xd9" + bytes(52)


def _corrupt(data: bytearray, offset: int, count: int) -> None:
    start = offset + count // 2
    data[start:start + len(PATCH)] = PATCH


def _tile_pixels(path: Path, index: int) -> np.ndarray:
    """Level 0's stored tile `index` decoded by tifffile's bytes + Pillow (libvips not involved)."""
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        t.filehandle.seek(page.dataoffsets[index])
        data = t.filehandle.read(page.databytecounts[index])
        jpeg = page.jpegtables[:-2] + data[2:] if page.jpegtables else data
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def corrupt_tiff_tile(src: Path, dst: Path, index: int) -> tuple[int, int, int, int]:
    """Copy `src` to `dst` with 64 bytes overwritten inside level 0's JPEG tile `index`; returns that tile's
    level-0 box (x, y, w, h), after checking with tifffile + Pillow that it is the only tile whose pixels
    changed."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        page = t.pages[0]
        _corrupt(data, page.dataoffsets[index], page.databytecounts[index])
        tw, th, (h, w) = page.tilewidth, page.tilelength, page.shape[:2]
        n = len(page.dataoffsets)
    dst.write_bytes(bytes(data))
    changed = [i for i in range(n) if not np.array_equal(_tile_pixels(src, i), _tile_pixels(dst, i))]
    assert changed == [index]
    cols = -(-w // tw)
    x, y = (index % cols) * tw, (index // cols) * th
    return x, y, min(tw, w - x), min(th, h - y)


def _box(tile: dict) -> tuple[int, int, int, int]:
    return tile["l0_x"], tile["l0_y"], tile["width"], tile["height"]


@pytest.fixture
def bad_tiff(tmp_path: Path) -> tuple[Path, tuple[int, int, int, int]]:
    clean = write_slide(tmp_path / "src" / "clean.tif", size=(600, 400))
    bad = tmp_path / "slides" / "bad.tif"
    bad.parent.mkdir(parents=True, exist_ok=True)
    return bad, corrupt_tiff_tile(clean, bad, 6)  # row 1, column 1 of 128 px tiles: on a blob of tissue


@pytest.fixture
def bad_ome(tmp_path: Path) -> tuple[Path, tuple[int, int, int, int]]:
    bad = tmp_path / "slides" / "bad.ome.tif"
    bad.parent.mkdir(parents=True, exist_ok=True)
    return bad, corrupt_tiff_tile(need_slide("OS-2-vsi.ome.tif"), bad, 4)


def _check_warned(out: Path, name: str, box: tuple[int, int, int, int]) -> None:
    report = json.loads((out / name / "report.json").read_text())
    errors = report["slide"]["decode_errors"]
    assert errors["count"] == 1 and [_box(t) for t in errors["tiles"]] == [box]
    assert "Corrupt JPEG data" in errors["tiles"][0]["message"]
    assert report["run"]["options"]["on_decode_error"] == "warn"
    preview = np.asarray(Image.open(out / name / "preview.png").convert("RGB"))
    assert ((preview == (230, 0, 0)).all(axis=-1)).sum() > 20  # the red outline (and the legend's line)
    entry = next(e for e in json.loads((out / "run.json").read_text())["slides"] if Path(e["slide"]).name
                 .startswith(name))
    assert entry["status"] == "ok" and entry["decode_errors"] == 1


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_corrupt_jpeg_tile_fails_its_slide_with_one_line_and_the_batch_goes_on(
        kind: str, bad_tiff: tuple, bad_ome: tuple, slide: Path, bundle_dir: Path, tmp_path: Path) -> None:
    bad, (x, y, _, _) = bad_tiff if kind == "tiff" else bad_ome
    result = segment(bad, slide, "--model", bundle_dir, "--out", tmp_path / "out")
    line = one_error_line(result, str(bad), f"level-0 x={x}, y={y}", "Corrupt JPEG data", code=1)
    assert "--on-decode-error warn" in line
    assert not (tmp_path / "out" / bad.name.split(".")[0] / "report.json").exists()
    clean = json.loads((tmp_path / "out" / "small" / "report.json").read_text())
    assert clean["slide"]["decode_errors"] == {"count": 0, "tiles": []}
    entries = {Path(e["slide"]).name: e for e in json.loads((tmp_path / "out" / "run.json").read_text())["slides"]}
    assert entries[bad.name]["status"] == "failed" and entries["small.tif"]["decode_errors"] == 0


@pytest.mark.parametrize("kind", ["tiff", "ome"])
def test_warn_segments_the_slide_and_counts_the_bad_tile(kind: str, bad_tiff: tuple, bad_ome: tuple,
                                                         bundle_dir: Path, tmp_path: Path) -> None:
    bad, box = bad_tiff if kind == "tiff" else bad_ome
    out = tmp_path / "out"
    result = segment(bad, "--model", bundle_dir, "--out", out, "--on-decode-error", "warn")
    assert result.exit_code == 0, result.output
    assert "1 corrupt tile(s) in 1 segmented slide(s)" in result.stderr
    _check_warned(out, bad.name.split(".")[0], box)


def test_streamed_reads_from_many_threads_name_the_bad_tile(bad_tiff: tuple,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Level 0 not held in memory: tiles read through per-thread regions, the report traced to its tile."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(reader, "SMALL_LEVEL_PIXELS", 0)
    bad, box = bad_tiff
    with open_slide(bad, on_decode_error="warn") as s:
        view = s.scaled(s.info.mpp)
        boxes = [(x, y, 96, 96) for y in range(0, view.height, 80) for x in range(0, view.width, 80)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: view.read(*b), boxes))
        errors = s.decode_errors()
    assert errors.count == 1 and (errors.tiles[0].l0_x, errors.tiles[0].l0_y, errors.tiles[0].width,
                                  errors.tiles[0].height) == box
    with open_slide(bad) as s, pytest.raises(SlideDecodeError, match=f"x={box[0]}, y={box[1]}"):
        view = s.scaled(s.info.mpp)
        for b in boxes:
            view.read(*b)


def test_clean_slide_reports_no_decode_errors(slide: Path) -> None:
    with open_slide(slide) as s:
        s.thumbnail(256)
        s.scaled(s.info.mpp).read_all()
        assert s.decode_errors().count == 0


def test_quantize_refuses_a_calibration_slide_with_a_corrupt_tile(bad_tiff: tuple, tmp_path: Path) -> None:
    from slidefuse.export.quantize.config import QuantizeConfig
    from slidefuse.export.quantize.tiles import calibration_and_gate_tiles

    bad, (x, y, _, _) = bad_tiff
    config = QuantizeConfig(bundle=tmp_path, slides=(bad,), calibration_tiles=2, gate_tiles=1)
    with pytest.raises(SlideDecodeError) as exc:
        calibration_and_gate_tiles(config, 64, 0.5)
    text = str(exc.value)
    assert text.startswith("calibration slide ") and str(bad) in text and f"x={x}, y={y}" in text
    assert "\n" not in text


# ------------------------------------------------------------------------------------------------ DICOM


@pytest.fixture
def bad_dicom(tmp_path: Path) -> tuple[Path, tuple[int, int, int, int]]:
    """A JPEG DICOM series of CMU-1-Small-Region with 64 bytes overwritten inside level 0's frame (2, 3);
    returns the series folder and that frame's level-0 box, checked with wsidicom's own decoder (Pillow)."""
    wsidicomizer = pytest.importorskip("wsidicomizer")
    pytest.importorskip("tiffslide")
    codec = pytest.importorskip("wsidicom.codec")
    from wsidicom import WsiDicom
    from wsidicomizer.sources import TiffSlideSource

    clean = tmp_path / "dicom-clean"
    clean.mkdir()
    wsidicomizer.WsiDicomizer.convert(need_slide("CMU-1-Small-Region.svs"), clean, preferred_source=TiffSlideSource,
                                      encoding=codec.JpegSettings(quality=90), include_label=False,
                                      include_overview=False, include_thumbnail=False, workers=1)
    bad = tmp_path / "slides" / "cmu-dicom"
    shutil.copytree(clean, bad)
    col, row = 2, 3
    with WsiDicom.open(clean) as wsi:
        frame = bytes(wsi.read_encoded_tile(0, (col, row)))
        tw, th = wsi.levels[0].tile_size.width, wsi.levels[0].tile_size.height
    for f in bad.glob("*.dcm"):
        data = bytearray(f.read_bytes())
        at = data.find(frame)
        if at >= 0:
            _corrupt(data, at, len(frame))
            f.write_bytes(bytes(data))
            break
    else:
        pytest.fail("frame not found in the series' files")
    with WsiDicom.open(clean) as a, WsiDicom.open(bad) as b:
        size = a.levels[0].size
        tiles = [(c, r) for r in range(-(-size.height // th)) for c in range(-(-size.width // tw))]
        changed = [t for t in tiles if not np.array_equal(np.asarray(a.read_tile(0, t)), np.asarray(b.read_tile(0, t)))]
    assert changed == [(col, row)]
    return bad, (col * tw, row * th, tw, th)


def test_dicom_series_with_a_corrupt_frame(bad_dicom: tuple, slide: Path, bundle_dir: Path, tmp_path: Path) -> None:
    bad, box = bad_dicom
    pyvips.cache_set_max(0)  # the frames of the two runs are the same bytes: decode them afresh
    try:
        result = segment(bad, slide, "--model", bundle_dir, "--out", tmp_path / "fail")
        one_error_line(result, str(bad), f"level-0 x={box[0]}, y={box[1]}", "Corrupt JPEG data", code=1)
        assert (tmp_path / "fail" / "small" / "report.json").is_file()
        result = segment(bad, "--model", bundle_dir, "--out", tmp_path / "warn", "--on-decode-error", "warn")
        assert result.exit_code == 0, result.output
    finally:
        pyvips.cache_set_max(100)
    report = json.loads((tmp_path / "warn" / "cmu-dicom" / "report.json").read_text())
    errors = report["slide"]["decode_errors"]
    assert errors["count"] == 1 and _box(errors["tiles"][0]) == box


def test_a_slide_opened_again_in_one_process_is_decoded_again(bad_tiff: tuple,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """libvips caches a load with its decoded tiles: without a fresh load, a second open of the same corrupt file
    (an API user's rerun, QC then segmentation, this file's own tests) read cached pixels and reported nothing.
    Reads from 4 threads over overlapping boxes: each open records the one bad tile once, never the box."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(reader, "SMALL_LEVEL_PIXELS", 0)
    bad, box = bad_tiff
    for _ in range(5):
        with open_slide(bad, on_decode_error="warn") as s:
            view = s.scaled(s.info.mpp)
            boxes = [(x, y, 96, 96) for y in range(0, view.height, 80) for x in range(0, view.width, 80)]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda b, v=view: v.read(*b), boxes))
            errors = s.decode_errors()
        assert errors.count == 1 and (errors.tiles[0].l0_x, errors.tiles[0].l0_y) == box[:2]
        with open_slide(bad) as s, pytest.raises(SlideDecodeError):
            view = s.scaled(s.info.mpp)
            for b in boxes:
                view.read(*b)
