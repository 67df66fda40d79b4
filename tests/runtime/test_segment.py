"""segment_slide / segment_many: real slides end to end, failures that fail alone, run.json, rerun skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pyvips

from runtime.onnx_models import make_bundle
from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.segment import (
    SegmentOptions,
    collect_slides,
    output_dirs,
    segment_many,
    slide_stem,
)
from slidefuse.runtime.segment.runlog import read_run_log
from slidefuse.runtime.tissue import TissueParams

# one engine thread, a small tissue thumbnail: the machine is shared
FAST = {"backend_options": {"threads": 1}, "workers": 2, "batch_size": 8, "tissue": TissueParams(thumb_max_side=768)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Colour classifier at 2 um/px, 64 px tiles, 16 px overlap."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "colour", tile_size=64, mpp=2.0, overlap=16)


def _mask(out_dir: Path) -> np.ndarray:
    return np.asarray(pyvips.Image.new_from_file(str(out_dir / "mask.tif")).numpy())


def test_the_three_real_slides_segment(tmp_path: Path, bundle: Bundle, cmu_slide: Path, ome_slide: Path,
                                       tcga_slide: Path) -> None:
    out = tmp_path / "out"
    fmts = frozenset({"tiff", "report"})
    results = segment_many([cmu_slide, ome_slide], bundle, out, SegmentOptions(formats=fmts, **FAST))
    results += segment_many([tcga_slide], bundle, out, SegmentOptions(mpp=0.5, formats=fmts, **FAST))
    assert [r.status for r in results] == ["ok", "ok", "ok"], [r.error for r in results]
    for r in results:
        assert r.out_dir is not None
        report = json.loads((r.out_dir / "report.json").read_text())
        mask = _mask(r.out_dir)
        assert mask.shape == (report["mask"]["height"], report["mask"]["width"])
        assert mask.max() < 3
        assert 0 < r.tile_counts["run"] <= r.tile_counts["grid"]
        assert sum(report["areas"][c]["pixels"] for c in report["areas"]) == mask.size
    cmu = results[0]
    # CMU at 2 um/px from 0.499: 2220 x 2967 -> 554 x 740; tissue (both stain classes) is found
    assert _mask(cmu.out_dir).shape == (740, 554)  # type: ignore[arg-type]
    assert np.isin([1, 2], _mask(cmu.out_dir)).all()  # type: ignore[arg-type]
    assert results[1].out_dir == out / "OS-2-vsi"  # .ome.tif stem
    entries = read_run_log(out)
    assert {Path(e["slide"]) for e in entries} == {cmu_slide, ome_slide, tcga_slide}
    assert all(e["status"] == "ok" and e["error"] is None for e in entries)


def test_cost_follows_tissue_and_masks_match_the_tissue(tmp_path: Path, bundle: Bundle, synthetic_tiff: Path) -> None:
    (r,) = segment_many([synthetic_tiff], bundle, tmp_path / "a", SegmentOptions(formats=frozenset({"tiff"}), **FAST))
    (r_all,) = segment_many([synthetic_tiff], bundle, tmp_path / "b",
                            SegmentOptions(formats=frozenset({"tiff"}), all_tiles=True, **FAST))
    assert r.status == r_all.status == "ok"
    assert r.tile_counts["run"] == r.tile_counts["tissue"] < r.tile_counts["grid"]
    assert r_all.tile_counts["run"] == r_all.tile_counts["grid"]
    a, b = _mask(r.out_dir), _mask(r_all.out_dir)  # type: ignore[arg-type]
    assert a.shape == (384, 512)  # 2048 x 1536 at 0.5 um/px -> 2 um/px
    # skipping non-tissue tiles changes nothing where the model says glass anyway
    assert (a == b).mean() > 0.99
    # the synthetic slide: blobs of pink/purple on glass; glass is background
    assert a[0:20, 0:20].max() == 0 and (a > 0).mean() > 0.15


def test_a_corrupt_slide_fails_alone_with_a_one_line_reason(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, corrupt_slide: Path
) -> None:
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    results = segment_many([corrupt_slide, synthetic_tiff, missing], bundle, out,
                           SegmentOptions(formats=frozenset({"tiff"}), **FAST))
    assert [r.status for r in results] == ["failed", "ok", "failed"]
    for r in results[::2]:
        assert r.error is not None and str(r.slide) in r.error and "\n" not in r.error
        assert "Traceback" not in r.error
    assert "no such" in results[2].error  # type: ignore[operator]
    entries = {Path(e["slide"]).name: e for e in read_run_log(out)}
    assert entries[corrupt_slide.name]["status"] == "failed" and entries[corrupt_slide.name]["error"]
    assert entries[synthetic_tiff.name]["status"] == "ok"
    assert entries[synthetic_tiff.name]["outputs"]["tiff"].endswith("mask.tif")


def test_rerun_skips_complete_slides_unless_overwrite(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    opts = SegmentOptions(formats=frozenset({"tiff", "report"}), **FAST)
    (first,) = segment_many([synthetic_tiff], bundle, out, opts)
    assert first.status == "ok"
    mtime = (first.out_dir / "mask.tif").stat().st_mtime_ns  # type: ignore[operator]

    import slidefuse.runtime.segment as seg

    def no_inference(*a: object, **k: object) -> None:
        raise AssertionError("a complete slide was segmented again")

    monkeypatch.setattr(seg, "segment_slide", no_inference)
    (second,) = segment_many([synthetic_tiff], bundle, out, opts)
    assert second.status == "skipped"
    assert read_run_log(out)[0]["status"] == "ok"  # the entry of the run that made the outputs is kept
    monkeypatch.undo()

    (third,) = segment_many([synthetic_tiff], bundle, out, SegmentOptions(
        formats=frozenset({"tiff", "report"}), overwrite=True, **FAST))
    assert third.status == "ok"
    assert (third.out_dir / "mask.tif").stat().st_mtime_ns != mtime  # type: ignore[operator]
    assert not list(third.out_dir.glob("*.tmp")) and not list(third.out_dir.glob("*.partial"))  # type: ignore[union-attr]


def test_a_different_bundle_redoes_the_slide(tmp_path: Path, bundle: Bundle, synthetic_tiff: Path) -> None:
    out = tmp_path / "out"
    opts = SegmentOptions(formats=frozenset({"tiff"}), **FAST)
    assert segment_many([synthetic_tiff], bundle, out, opts)[0].status == "ok"
    other = make_bundle(tmp_path / "other", tile_size=64, mpp=2.0, overlap=8)
    assert segment_many([synthetic_tiff], other, out, opts)[0].status == "ok"


def test_the_backend_is_opened_once_for_all_slides(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidefuse.runtime.backends as backends

    calls: list[str] = []
    real = backends.open_backend

    def counting(name: str, b: Bundle, **kw: object) -> object:
        calls.append(name)
        return real(name, b, **kw)

    monkeypatch.setattr(backends, "open_backend", counting)
    copy = tmp_path / "in" / "copy.tif"
    copy.parent.mkdir()
    copy.write_bytes(synthetic_tiff.read_bytes())
    results = segment_many([synthetic_tiff, copy], bundle, tmp_path / "out",
                           SegmentOptions(formats=frozenset({"tiff"}), **FAST))
    assert [r.status for r in results] == ["ok", "ok"]
    assert calls == ["auto"]  # SegmentOptions' default backend, opened once


def test_collect_slides_scans_folders_reads_list_files_and_skips_the_output_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    for rel in ["a.svs", "sub/b.NDPI", "sub/deeper/c.ome.tif", "notes.txt", "sub/x.png", ".hidden.svs"]:
        (data / rel).write_bytes(b"x")
    out = data / "results"
    (out / "a").mkdir(parents=True)
    (out / "a" / "mask.tif").write_bytes(b"x")  # our own output must not be taken for a slide
    found = collect_slides([data], exclude=out)
    assert [p.relative_to(data).as_posix() for p in found] == ["a.svs", "sub/b.NDPI", "sub/deeper/c.ome.tif"]

    lst = tmp_path / "slides.txt"
    lst.write_text("# my slides\n\ndata/a.svs\n  data/sub/b.NDPI  \n/abs/missing.svs\n# done\n")
    from_list = collect_slides([data / "a.svs"], list_file=lst)
    assert from_list == [data / "a.svs", tmp_path / "data/sub/b.NDPI", Path("/abs/missing.svs")]  # no repeats

    with pytest.raises(UsageError, match="no slides given"):
        collect_slides([])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no slides found"):
        collect_slides([empty])


def test_output_folder_names() -> None:
    assert slide_stem(Path("x/CMU-1.svs")) == "CMU-1"
    assert slide_stem(Path("OS-2-vsi.ome.tif")) == "OS-2-vsi"
    assert slide_stem(Path("a.b.ndpi")) == "a.b"
    dirs = output_dirs([Path("p/s.svs"), Path("q/s.svs"), Path("q/s.tif")], Path("OUT"))
    assert dirs == [Path("OUT/s"), Path("OUT/q_s"), Path("OUT/q_s_2")]


def test_options_are_checked() -> None:
    with pytest.raises(UsageError, match="batch"):
        SegmentOptions(batch_size=0)
    with pytest.raises(UsageError, match="workers"):
        SegmentOptions(workers=0)
    with pytest.raises(UsageError, match="mpp"):
        SegmentOptions(mpp=-1.0)


def test_a_slide_without_tissue_runs_no_tile_and_is_all_background(tmp_path: Path, bundle: Bundle) -> None:
    blank = tmp_path / "blank.tif"
    white = np.full((300, 500, 3), 246, dtype=np.uint8)
    pyvips.Image.new_from_array(white, interpretation="srgb").tiffsave(
        str(blank), tile=True, tile_width=128, tile_height=128, pyramid=True, compression="jpeg",
        xres=1000 / 0.5, yres=1000 / 0.5, resunit="cm")
    (r,) = segment_many([blank], bundle, tmp_path / "out", SegmentOptions(formats=frozenset({"tiff"}), **FAST))
    assert r.status == "ok" and r.tile_counts["run"] == 0 and r.tile_counts["grid"] > 0
    mask = _mask(r.out_dir)  # type: ignore[arg-type]
    assert mask.shape == (75, 125) and not mask.any()


def _copies(src: Path, folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    out = []
    for k in range(n):
        p = folder / f"s{k}.tif"
        p.write_bytes(src.read_bytes())
        out.append(p)
    return out


def test_overlapped_slides_plan_ahead_and_write_behind_with_the_same_outputs(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import slidefuse.runtime.segment as seg

    slides = _copies(synthetic_tiff, tmp_path / "in", 3)
    where: dict[str, list[tuple[str, str]]] = {"plan": [], "finish": []}
    real_plan, real_finish = seg.plan_slide, seg.finish_slide

    def plan(path: Path, *a: object, **k: object) -> seg.PlannedSlide:
        where["plan"].append((Path(path).name, threading.current_thread().name))
        return real_plan(path, *a, **k)  # type: ignore[arg-type]

    def finish(done: seg.StitchedSlide, *a: object, **k: object) -> seg.SlideResult:
        where["finish"].append((done.slide_path.name, threading.current_thread().name))
        return real_finish(done, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(seg.stages, "plan_slide", plan)
    monkeypatch.setattr(seg.stages, "finish_slide", finish)
    fmts = frozenset({"tiff", "report"})
    overlapped = segment_many(slides, bundle, tmp_path / "a", SegmentOptions(formats=fmts, **FAST))
    assert [r.status for r in overlapped] == ["ok"] * 3
    # slide 1 planned here; slides 2 and 3 planned, and every slide's outputs written, on the background thread
    assert where["plan"][0] == ("s0.tif", threading.current_thread().name)
    assert [n for n, _ in where["plan"]] == ["s0.tif", "s1.tif", "s2.tif"]
    assert all(t.startswith("slidefuse-slide") for _, t in where["plan"][1:] + where["finish"])
    assert [n for n, _ in where["finish"]] == ["s0.tif", "s1.tif", "s2.tif"]  # written in slide order

    where["plan"].clear()
    where["finish"].clear()
    serial = segment_many(slides, bundle, tmp_path / "b",
                          SegmentOptions(formats=fmts, overlap_slides=False, **FAST))
    assert {t for _, t in where["plan"] + where["finish"]} == {threading.current_thread().name}
    for a, b in zip(overlapped, serial, strict=True):
        assert a.out_dir is not None and b.out_dir is not None
        np.testing.assert_array_equal(_mask(a.out_dir), _mask(b.out_dir))
        assert a.tile_counts == b.tile_counts
    assert [Path(e["slide"]).name for e in read_run_log(tmp_path / "a")] == ["s0.tif", "s1.tif", "s2.tif"]


def test_overlapped_slides_a_failed_output_fails_its_slide_alone(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, corrupt_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidefuse.runtime.segment as seg

    slides = _copies(synthetic_tiff, tmp_path / "in", 3)
    real_finish = seg.finish_slide

    def finish(done: seg.StitchedSlide, *a: object, **k: object) -> seg.SlideResult:
        if done.slide_path.name == "s0.tif":
            raise OSError(28, "No space left on device")
        return real_finish(done, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(seg.stages, "finish_slide", finish)
    results = segment_many([slides[0], corrupt_slide, slides[1], slides[2]], bundle, tmp_path / "out",
                           SegmentOptions(formats=frozenset({"tiff"}), **FAST))
    assert [r.status for r in results] == ["failed", "failed", "ok", "ok"]
    assert "s0.tif" in results[0].error and "No space left" in results[0].error  # type: ignore[operator]
    assert str(corrupt_slide) in results[1].error  # type: ignore[operator]
    assert not (tmp_path / "out" / "s0" / "mask.raw.tmp").exists()  # the raw mask is removed on failure
    statuses = {Path(e["slide"]).name: e["status"] for e in read_run_log(tmp_path / "out")}
    assert statuses == {"s0.tif": "failed", corrupt_slide.name: "failed", "s1.tif": "ok", "s2.tif": "ok"}


def test_an_interrupt_during_a_slide_still_finishes_and_records_the_previous_one(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidefuse.runtime.segment as seg

    slides = _copies(synthetic_tiff, tmp_path / "in", 3)
    real_infer = seg.infer_slide

    def infer(plan: seg.PlannedSlide, *a: object, **k: object) -> seg.StitchedSlide:
        if plan.slide_path.name == "s1.tif":
            plan.close()
            raise KeyboardInterrupt
        return real_infer(plan, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(seg.stages, "infer_slide", infer)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        segment_many(slides, bundle, out, SegmentOptions(formats=frozenset({"tiff", "report"}), **FAST))
    assert (out / "s0" / "mask.tif").is_file() and (out / "s0" / "report.json").is_file()
    assert not (out / "s0" / "mask.raw.tmp").exists()
    assert [(Path(e["slide"]).name, e["status"]) for e in read_run_log(out)] == [("s0.tif", "ok")]


def test_a_slides_view_is_freed_before_its_outputs_are_written(
    tmp_path: Path, bundle: Bundle, synthetic_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's view (its libvips image and any preloaded pixels) is dropped when the tiles are done, not when
    the last reference to the plan goes, so a slide's outputs do not stack on its decoded slide."""
    import gc
    import weakref

    import slidefuse.runtime.segment as seg

    views: list[weakref.ref[object]] = []
    plans: list[seg.PlannedSlide] = []  # kept alive on purpose, as a caller holding its plan would
    alive_at_outputs: list[bool] = []
    real_plan, real_finish = seg.plan_slide, seg.finish_slide

    def plan(*a: object, **k: object) -> seg.PlannedSlide:
        p = real_plan(*a, **k)  # type: ignore[arg-type]
        views.append(weakref.ref(p.view))
        plans.append(p)
        return p

    def finish(done: seg.StitchedSlide, *a: object, **k: object) -> seg.SlideResult:
        gc.collect()
        alive_at_outputs.append(views[-1]() is not None)
        return real_finish(done, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(seg.stages, "plan_slide", plan)
    monkeypatch.setattr(seg.stages, "finish_slide", finish)
    (res,) = segment_many([synthetic_tiff], bundle, tmp_path / "out",
                          SegmentOptions(formats=frozenset({"tiff", "report"}), overlap_slides=False, **FAST))
    assert res.status == "ok", res.error
    assert plans[0].view is None and alive_at_outputs == [False]
