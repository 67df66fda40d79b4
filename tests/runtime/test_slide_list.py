"""Slide lists with per-slide options (`--list` CSV: path, mpp, out_name), plain lists still read, and files in
a scanned folder that are not slides listed in one warning instead of dropped silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import pyvips

import slidefuse
from slidefuse.errors import UsageError
from slidefuse.runtime.segment import collect_slides
from slidefuse.runtime.segment.inputs import ListEntry, read_list_file, read_slide_list

from .onnx_models import make_bundle


def _tiff(path: Path, mpp: float | None) -> Path:
    img = np.full((240, 320, 3), 242, dtype=np.uint8)
    img[60:180, 80:240] = (60, 40, 160)
    kw = {} if mpp is None else {"xres": 1000 / mpp, "yres": 1000 / mpp, "resunit": "cm"}
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(str(path), tile=True, tile_width=128,
                                                                     tile_height=128, compression="deflate", **kw)
    return path


def test_plain_list_still_reads(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("# slides\na.svs\n\n/abs/b.ndpi\n")
    assert read_list_file(tmp_path / "l.txt") == [tmp_path / "a.svs", Path("/abs/b.ndpi")]


def test_csv_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,mpp,out_name\n# a comment\na.svs,0.25,first\nsub/b.tif,,\n"
                                    "\"c, d.svs\",0.5,\n")
    assert read_slide_list(tmp_path / "l.csv") == [
        ListEntry(tmp_path / "a.svs", 0.25, "first"),
        ListEntry(tmp_path / "sub" / "b.tif", None, None),
        ListEntry(tmp_path / "c, d.svs", 0.5, None),
    ]


@pytest.mark.parametrize(("text", "match"), [
    ("path,mpp\na.svs,fast\n", r"l.csv, line 2: mpp 'fast' is not a positive number"),
    ("path,mpp\na.svs,-1\n", r"line 2: mpp '-1'"),
    ("path,colour\na.svs,red\n", r"unknown column\(s\) colour"),
    ("path,out_name\na.svs,x\nb.svs,x\n", r"line 3: out_name x is already given to the slide on line 2"),
    ("path,out_name\na.svs,../x\n", r"line 2: out_name '../x' is not a plain folder name"),
    ("path,mpp\n,0.5\n", r"line 2: no path"),
])
def test_csv_errors_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(UsageError, match=match):
        read_slide_list(tmp_path / "l.csv")


def test_per_slide_mpp_and_out_name_through_a_batch(tmp_path: Path) -> None:
    no_mpp = _tiff(tmp_path / "no_mpp.tif", None)  # the file has no pixel size: only the list's mpp makes it run
    other = _tiff(tmp_path / "other.tif", 0.5)
    (tmp_path / "slides.csv").write_text("path,mpp,out_name\nno_mpp.tif,0.5,\nother.tif,,renamed\n")
    bundle = make_bundle(tmp_path / "bundle", tile_size=64, mpp=2.0, overlap=16)
    out = tmp_path / "out"
    with slidefuse.load_model(bundle, backend="ort-cpu", workers=1, backend_options={"threads": 1}) as model:
        results = model.segment_batch([], out=out, list_file=tmp_path / "slides.csv")
        control = model.segment_batch([no_mpp], out=tmp_path / "control")  # the same file without the list
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert [r.out_dir for r in results] == [out / "no_mpp", out / "renamed"]
    report = json.loads((out / "no_mpp" / "report.json").read_text())
    assert report["slide"]["mpp"] == 0.5 and report["slide"]["mpp_source"] == "user"
    assert results[0].mask_array().shape == (60, 80)
    assert json.loads((out / "renamed" / "report.json").read_text())["slide"]["path"].endswith(other.name)
    assert control[0].status == "failed" and "pass mpp=" in str(control[0].error)


def test_unrecognised_files_in_a_folder_are_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "slides"
    (folder / "scan" / "MRX").mkdir(parents=True)
    _tiff(folder / "a.tif", 0.5)
    (folder / "notes.txt").write_text("x")
    (folder / "scan" / "photo.png").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "scan" / "MRX.mrxs").write_bytes(b"x")  # a MIRAX slide: its data folder is part of it
    (folder / "scan" / "MRX" / "Data0000.dat").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="slidefuse.runtime.segment.inputs"):
        slides = collect_slides([folder])
    assert slides == [folder / "a.tif", folder / "scan" / "MRX.mrxs"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped:")]
    assert len(lines) == 1 and lines[0].startswith("skipped: 2 file(s) not recognised as slides: ")
    assert str(folder / "notes.txt") in lines[0] and str(folder / "scan" / "photo.png") in lines[0]
    assert "Data0000" not in lines[0] and "DS_Store" not in lines[0]
