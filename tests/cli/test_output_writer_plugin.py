"""A new output format is one writer class plus one registration call: a test-only writer, registered here
and nowhere else, works through `slidefuse segment --formats`, is reported in report.json and run.json, and
the rerun check (`outputs_current`) asks it whether its file is current."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from runtime.conftest import synthetic_rgb, write_pyramid_tiff

from slidefuse.atomic import write_text_atomic
from slidefuse.cli import cli
from slidefuse.runtime.outputs import (
    OutputContext,
    OutputOptions,
    OutputRecord,
    register_writer,
    unregister_writer,
)


class ClassCountsWriter:
    """Format "class-counts": `class_counts.csv`, a line per class with its pixel count at the model's mpp."""

    name = "class-counts"
    file_name = "class_counts.csv"

    def __init__(self) -> None:
        self.version = 1  # recorded in report.json; a new version makes earlier files stale
        self.calls = 0

    def write(self, context: OutputContext) -> OutputRecord:
        self.calls += 1
        counts = context.result.class_pixels
        rows = [f"{c.name},{int(n)}" for c, n in zip(context.classes, counts, strict=True)]
        path = write_text_atomic(context.out_dir / self.file_name, "class,pixels\n" + "\n".join(rows) + "\n")
        return OutputRecord(path, {"rows": len(rows), "version": self.version})

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return bool(report["outputs"][self.name].get("version") == self.version)


@pytest.fixture
def class_counts() -> Iterator[ClassCountsWriter]:
    writer = ClassCountsWriter()
    register_writer(writer)
    try:
        yield writer
    finally:
        unregister_writer(writer.name)



@pytest.fixture(scope="module")
def small_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600 x 400 pyramidal JPEG TIFF at 0.5 um/px with H&E-coloured blobs."""
    return write_pyramid_tiff(synthetic_rgb(600, 400), tmp_path_factory.mktemp("slides") / "small.tif", 0.5)


def _segment(slide: Path, bundle_dir: Path, out: Path, formats: str) -> Result:
    argv = ["segment", "--threads", "1", "--workers", "2", str(slide), "--model", str(bundle_dir),
            "--out", str(out), "--formats", formats]
    return CliRunner().invoke(cli, argv)


def test_a_registered_writer_works_through_segment_formats_and_the_rerun_check(
    class_counts: ClassCountsWriter, bundle_dir: Path, small_tiff: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = _segment(small_tiff, bundle_dir, out, "class-counts")
    assert first.exit_code == 0, first.output
    folder = out / "small"
    lines = (folder / "class_counts.csv").read_text().splitlines()
    assert lines[0] == "class,pixels" and [ln.split(",")[0] for ln in lines[1:]] == [
        "background", "haematoxylin", "eosin"]
    report = json.loads((folder / "report.json").read_text())
    assert report["formats"] == ["class-counts", "report"]
    recorded = report["outputs"]["class-counts"]
    assert recorded["file"] == "class_counts.csv" and recorded["rows"] == 3 and recorded["version"] == 1
    assert recorded["bytes"] == (folder / "class_counts.csv").stat().st_size
    assert sum(int(ln.split(",")[1]) for ln in lines[1:]) == 150 * 100  # every mask px at 2 um/px
    assert "output_class-counts" in report["timings"]
    assert not (folder / "mask.tif").exists() and not (folder / "preview.png").exists()  # only what was asked
    entry = json.loads((out / "run.json").read_text())["slides"][0]
    assert entry["status"] == "ok" and entry["outputs"]["class-counts"].endswith("class_counts.csv")
    assert class_counts.calls == 1

    again = _segment(small_tiff, bundle_dir, out, "class-counts")  # complete and current: skipped
    assert again.exit_code == 0 and "0 segmented, 1 skipped" in again.stderr, again.output
    assert class_counts.calls == 1

    class_counts.version = 2  # the writer now finds the recorded file stale: the slide is redone
    redo = _segment(small_tiff, bundle_dir, out, "class-counts")
    assert redo.exit_code == 0 and "1 segmented, 0 skipped" in redo.stderr, redo.output
    assert class_counts.calls == 2
    assert json.loads((folder / "report.json").read_text())["outputs"]["class-counts"]["version"] == 2

    (folder / "class_counts.csv").write_text("class,pixels\n")  # size differs from the record: redone
    assert "1 segmented" in _segment(small_tiff, bundle_dir, out, "class-counts").stderr
    assert class_counts.calls == 3

    both = _segment(small_tiff, bundle_dir, out, "tiff,class-counts")  # tiff was never written: redone
    assert both.exit_code == 0 and "1 segmented" in both.stderr, both.output
    assert (folder / "mask.tif").is_file() and class_counts.calls == 4


def test_help_lists_a_registered_writer_and_an_unregistered_name_is_refused(
    bundle_dir: Path, small_tiff: Path, tmp_path: Path
) -> None:
    writer = register_writer(ClassCountsWriter())
    try:
        text = CliRunner().invoke(cli, ["segment", "--help"], terminal_width=200).output
        assert ("tiff, geojson, preview, zarr, probs, probs-zarr, palette, class-counts, report (or 'all')"
                in text)
        assert "[default: tiff,geojson,preview,report]" in text  # a plug-in is not written unless asked for
    finally:
        unregister_writer(writer.name)
    refused = _segment(small_tiff, bundle_dir, tmp_path / "out", "class-counts")
    assert refused.exit_code == 2 and "class-counts" in refused.stderr
    assert "choose among geojson, palette, preview, probs, probs-zarr, report, tiff" in refused.stderr
    assert "Traceback" not in refused.output
