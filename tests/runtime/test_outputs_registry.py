"""The output-writer registry: registering and removing a writer, the names it refuses, what `write_outputs`
hands a writer and does with its record, writers running side by side, and `outputs_current` asking each
writer whether its file is current."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from slidefuse.atomic import find_temporaries, write_text_atomic
from slidefuse.errors import UnknownName, UsageError
from slidefuse.runtime.outputs import (
    ALL_FORMATS,
    OutputContext,
    OutputOptions,
    OutputRecord,
    format_names,
    get_writer,
    parse_formats,
    register_writer,
    unregister_writer,
    write_outputs,
)

from .test_outputs_common import blobby_mask, current, make_bundle, make_result, make_slide


class NoteWriter:
    """A test-only format: a text file with what the writer was given; optionally waits on a barrier."""

    def __init__(self, name: str = "note", file_name: str = "note.txt",
                 barrier: threading.Barrier | None = None, fail: bool = False) -> None:
        self.name, self.file_name, self.barrier, self.fail = name, file_name, barrier, fail
        self.current = True
        self.contexts: list[OutputContext] = []

    def write(self, context: OutputContext) -> OutputRecord:
        self.contexts.append(context)
        if self.barrier is not None:
            self.barrier.wait()  # returns only when every writer sharing the barrier runs at the same time
        if self.fail:
            raise RuntimeError(f"{self.name} failed on purpose")
        text = f"{context.slide.path} {context.result.mask_width}x{context.result.mask_height}\n"
        path = write_text_atomic(context.out_dir / self.file_name, text)
        return OutputRecord(path, {"thread": threading.get_ident()})

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return self.current


@pytest.fixture
def registered() -> Iterator[list[NoteWriter]]:
    """Writers a test registers through `add` are removed again afterwards."""
    added: list[NoteWriter] = []
    yield added
    for w in added:
        unregister_writer(w.name)


def _add(registered: list[NoteWriter], writer: NoteWriter) -> NoteWriter:
    register_writer(writer)
    registered.append(writer)
    return writer


def _inputs(tmp_path: Path):  # type: ignore[no-untyped-def]
    result = make_result(blobby_mask(120, 160, seed=3), tmp_path / "m.raw", mpp=1.0)
    return result, make_slide(320, 240, 0.5), make_bundle(tmp_path)


def test_builtin_formats_and_the_registry_round_trip(registered: list[NoteWriter]) -> None:
    # zarr, probs and probs-zarr: opt-in, not defaults
    assert format_names() == ("tiff", "geojson", "preview", "zarr", "probs", "probs-zarr", "palette", "report")
    assert ALL_FORMATS == {"tiff", "geojson", "report", "preview"}
    assert get_writer("tiff").file_name == "mask.tif"
    _add(registered, NoteWriter())
    assert format_names() == ("tiff", "geojson", "preview", "zarr", "probs", "probs-zarr", "palette", "note", "report")
    assert parse_formats("note,report") == {"note", "report"} and "note" in parse_formats("all")
    assert ALL_FORMATS == {"tiff", "geojson", "report", "preview"}  # the built-ins; plug-ins are asked for
    unregister_writer("note")
    registered.clear()
    assert "note" not in format_names()
    with pytest.raises(UsageError,
                       match="note.*choose among geojson, palette, preview, probs, probs-zarr, report, tiff, zarr"):
        parse_formats("note")


@pytest.mark.parametrize(
    ("name", "file_name", "match"),
    [
        ("tiff", "other.tif", "already registered"),
        ("report", "r.json", "not allowed"),
        ("all", "all.txt", "not allowed"),
        ("Note", "note.txt", "lower-case"),
        ("a,b", "note.txt", "lower-case"),
        ("note", "mask.tif", "used by format 'tiff'"),
        ("note", "report.json", "slidefuse itself"),
        ("note", "tissue.png", "slidefuse itself"),
        ("note", "sub/note.txt", "not free"),
    ],
)
def test_register_refuses_taken_or_bad_names(name: str, file_name: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        register_writer(NoteWriter(name, file_name))
    assert format_names() == ("tiff", "geojson", "preview", "zarr", "probs", "probs-zarr", "palette", "report")


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(UnknownName, match="'zip' is not registered; registered: tiff, geojson, preview, zarr"):
        get_writer("zip")
    with pytest.raises(UnknownName, match="registered: tiff, geojson, preview"):
        unregister_writer("zip")


def test_write_outputs_hands_each_writer_the_context_and_reports_its_record(
    tmp_path: Path, registered: list[NoteWriter]
) -> None:
    note = _add(registered, NoteWriter())
    result, slide, bundle = _inputs(tmp_path)
    out = tmp_path / "out"
    options = OutputOptions(formats=frozenset({"tiff", "note"}), mask_mpp=2.0)
    paths = write_outputs(result, slide, bundle, out, options)
    assert set(paths) == {"tissue", "tiff", "note", "report"} and paths["note"] == out / "note.txt"
    (context,) = note.contexts
    assert context.out_dir == out and context.slide is slide and context.bundle is bundle
    assert context.result is result and context.options is options
    assert [c.name for c in context.classes] == ["background", "tumour", "stroma"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.out_dir = tmp_path  # type: ignore[misc]
    report = json.loads((out / "report.json").read_text())
    assert list(report["outputs"]) == ["tissue", "tiff", "note"]  # registry order, tissue first
    assert report["outputs"]["note"]["file"] == "note.txt"
    assert report["outputs"]["note"]["bytes"] == (out / "note.txt").stat().st_size
    assert report["formats"] == ["note", "report", "tiff"]
    assert {"output_tissue", "output_tiff", "output_note"} <= set(report["timings"])
    assert not (out / "mask.geojson").exists() and not (out / "preview.png").exists()


def test_writers_run_side_by_side_and_a_failure_leaves_no_report(
    tmp_path: Path, registered: list[NoteWriter]
) -> None:
    barrier = threading.Barrier(2, timeout=20)  # broken (an error) unless both writers wait at the same time
    _add(registered, NoteWriter("left", "left.txt", barrier))
    _add(registered, NoteWriter("right", "right.txt", barrier))
    result, slide, bundle = _inputs(tmp_path)
    out = tmp_path / "out"
    write_outputs(result, slide, bundle, out, OutputOptions(formats=frozenset({"left", "right"})))
    outputs = json.loads((out / "report.json").read_text())["outputs"]
    assert outputs["left"]["thread"] != outputs["right"]["thread"]

    _add(registered, NoteWriter("broken", "broken.txt", fail=True))
    with pytest.raises(RuntimeError, match="broken failed on purpose"):
        write_outputs(result, slide, bundle, out, OutputOptions(formats=frozenset({"tiff", "broken"})))
    assert not (out / "report.json").exists() and not (out / "broken.txt").exists()
    assert (out / "mask.tif").is_file() and find_temporaries(out) == []  # the others finished, atomically
    assert not current(out, frozenset({"tiff"}))


def test_outputs_current_asks_each_requested_writer_whether_its_file_is_current(
    tmp_path: Path, registered: list[NoteWriter]
) -> None:
    note = _add(registered, NoteWriter())
    result, slide, bundle = _inputs(tmp_path)
    out = tmp_path / "out"
    write_outputs(result, slide, bundle, out, OutputOptions(formats=frozenset({"tiff", "note"})))
    assert current(out, frozenset({"tiff", "note"}))
    note.current = False
    assert not current(out, frozenset({"note"}))
    assert current(out, frozenset({"tiff"}))  # not asked for: not asked
    note.current = True
    (out / "note.txt").write_text("changed since\n")
    assert not current(out, frozenset({"note"}))  # size differs from the record
    assert not current(out, frozenset({"geojson"}))  # never written
    assert not current(out, frozenset({"tiff"}), mask_mpp=2.0)  # the tiff writer says


@pytest.mark.parametrize(
    "kw", [dict(mask_mpp=0.0), dict(geojson_mpp=-1.0), dict(geojson_max_pixels=0)]
)
def test_output_options_refuse_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match=next(iter(kw))):
        OutputOptions(**kw)


def test_output_options_take_parsed_formats_only() -> None:
    assert OutputOptions().formats == ALL_FORMATS  # every built-in format
    with pytest.raises(UsageError, match="parse_formats"):
        OutputOptions(formats="tiff")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="zip not registered; registered: tiff, geojson"):
        OutputOptions(formats=frozenset({"tiff", "zip"}))
