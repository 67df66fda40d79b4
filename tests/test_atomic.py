"""slidefuse.atomic (files and folders swapped in whole, temporaries gone on error) and errors.one_line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidefuse.atomic import (
    atomic_folder,
    atomic_path,
    find_temporaries,
    temporary_path,
    write_bytes_atomic,
    write_json_atomic,
)
from slidefuse.errors import SlideReadError, one_line


def test_a_file_appears_whole_under_its_final_name_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "engine.bin"
    assert temporary_path(final) == tmp_path / "engine.bin.partial"
    write_bytes_atomic(final, b"v1")
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.write_bytes(b"v2, cut short")
        raise KeyboardInterrupt
    assert final.read_bytes() == b"v1" and find_temporaries(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="did not create"), atomic_path(final):
        pass  # a writer that wrote nothing must not be taken for one that wrote an empty file
    assert final.read_bytes() == b"v1"
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is renamed
        write_json_atomic(final, {"x": float("nan")})
    assert final.read_bytes() == b"v1" and find_temporaries(tmp_path) == []


def test_atomic_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "model.bundle"
    with atomic_folder(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".model.bundle.partial-")
        assert not out.exists()
        (stage / "manifest.json").write_text(json.dumps({"v": 1}))
    assert json.loads((out / "manifest.json").read_text()) == {"v": 1}
    with atomic_folder(out) as stage:
        (stage / "model.onnx").write_bytes(b"onnx")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # the old folder went whole
    assert [p.name for p in tmp_path.iterdir()] == ["model.bundle"]  # no staging or old folder left


def test_atomic_folder_leaves_the_target_alone_on_error_or_a_refused_swap(tmp_path: Path) -> None:
    out = tmp_path / "model.bundle"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="export failed"), atomic_folder(out) as stage:
        (stage / "half.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")

    def refuse() -> None:
        raise FileExistsError("something appeared meanwhile")

    with pytest.raises(FileExistsError), atomic_folder(out, before_swap=refuse) as stage:
        (stage / "new.onnx").write_bytes(b"new")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.bundle"]


def test_one_line_errors() -> None:
    assert one_line(SlideReadError("a.svs: not a slide\n  (libvips: bad header)")) == (
        "a.svs: not a slide (libvips: bad header)")  # our errors: the message alone
    assert one_line(ValueError("bad\tvalue\n")) == "ValueError: bad value"  # others: the type too
    assert one_line(MemoryError()) == "MemoryError"
    assert one_line(RuntimeError("x" * 50), max_chars=20) == "RuntimeError: xxx..."
    assert len(one_line(RuntimeError("x" * 500), max_chars=300)) == 300
