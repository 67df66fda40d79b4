"""A bundle is one sealed unit: every manifest field and every file is covered by its identity; a crafted
manifest (types, ranges, paths, versions) is refused at load with one line, by `info`, `segment` and `bench`."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import BundleError, IntegrityError
from slidefuse.runtime.bundle import load_bundle, manifest_digest
from slidefuse.runtime.manifest_schema import json_schema

from .conftest import REPO, one_error_line, segment


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _edit(folder: Path, change: Callable[[dict[str, Any]], None], *, reseal: bool) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    if reseal:
        data["integrity"] = manifest_digest(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        d[key] = value
    return change


# Edits that keep the schema but change what the bundle is: refused as tampering (integrity mismatch).
TAMPERING = {
    "random_weights": _set("random_weights", True),
    "demo": _set("demo", True),
    "classes": lambda d: d["classes"][1].update(name="tumour"),
    "colour": lambda d: d["classes"][1].update(color=[1, 2, 3]),
    "mpp": _set("mpp", 1.0),
    "tile_size": _set("tile_size", 32),
    "weights": _set("weights", {"kind": "something else"}),
    "a file hash": lambda d: d["files"].update({"model.onnx": "0" * 64}),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_any_edited_field_is_refused(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(bundle_dir, tmp_path)
    load_bundle(folder)
    _edit(folder, TAMPERING[name], reseal=False)
    with pytest.raises(IntegrityError, match="differs from its integrity record"):
        load_bundle(folder)
    with pytest.raises(IntegrityError):
        load_bundle(folder, verify=False)  # the manifest's own seal is checked even without file hashes


# Crafted manifests that break the schema (resealed, so only the schema can catch them): field -> (edit, text).
CRAFTED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "model_file absolute": (_set("model_file", "/etc/passwd"), "model_file"),
    "model_file dotdot": (_set("model_file", "../other/model.onnx"), "model_file"),
    "files dotdot": (lambda d: d["files"].update({"../../etc/passwd": "0" * 64}), "files"),
    "files absolute": (lambda d: d["files"].update({"/etc/passwd": "0" * 64}), "files"),
    "files newline": (lambda d: d["files"].update({"model.onnx\n": "0" * 64}), "files"),
    "model_file newline": (_set("model_file", "model.onnx\n"), "model_file"),
    "model_file unlisted": (_set("model_file", "other.onnx"), "not listed in files"),
    "engine dotdot": (_set("engines", [{"file": "../x.engine"}]), "engines.0.file"),
    "tile 0": (_set("tile_size", 0), "tile_size"),
    "tile 1e12": (_set("tile_size", 10**12), "tile_size"),
    "tile string": (_set("tile_size", "64"), "tile_size"),
    "mpp 0": (_set("mpp", 0), "mpp"),
    "mpp 1e-9": (_set("mpp", 1e-9), "mpp"),
    "mpp 1e9": (_set("mpp", 1e9), "mpp"),
    "no classes": (_set("classes", []), "classes"),
    "one class": (lambda d: d.update(classes=d["classes"][:1]), "classes"),
    "class colour out of range": (lambda d: d["classes"][0].update(color=[300, -1, 2]), "classes.0.color"),
    "class colour short": (lambda d: d["classes"][0].update(color=[1, 2]), "classes.0.color"),
    "class name null": (lambda d: d["classes"][0].update(name=None), "classes.0.name"),
    "duplicate class": (lambda d: d["classes"][1].update(name=d["classes"][0]["name"]), "unique"),
    "classes a map": (_set("classes", {"a": 1}), "classes"),
    "mean a string": (_set("mean", "0.5"), "mean"),
    "std zero": (_set("std", [0, 1, 1]), "std"),
    "files a list": (_set("files", ["model.onnx"]), "files"),
    "files empty": (_set("files", {}), "files"),
    "bad sha256": (lambda d: d["files"].update({"model.onnx": "xyz"}), "files"),
    "random_weights a string": (_set("random_weights", "false"), "random_weights"),
    "geometry unknown": (_set("geometry", "round"), "geometry"),
    "color_transform unknown": (_set("color_transform", "magic"), "color_transform"),
    "unknown field": (_set("surprise", 1), "surprise"),
    "missing encoder": (lambda d: d.pop("encoder"), "encoder"),
    "format 999": (_set("format_version", 999), "format_version"),
    "format 1": (_set("format_version", 1), "older slidefuse"),
    "format string": (_set("format_version", "2"), "format_version"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_manifest_is_refused_in_one_line(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(bundle_dir, tmp_path)
    change, text = CRAFTED[name]
    _edit(folder, change, reseal=True)
    with pytest.raises(BundleError) as err:
        load_bundle(folder)
    message = str(err.value)
    assert "\n" not in message and text in message and "invalid manifest" in message, message
    one_error_line(CliRunner().invoke(cli, ["info", str(folder)]), text, code=1)


@pytest.mark.parametrize("content", ["[]", "null", "42", '"text"', "{", "", "\xff\xfe"])
def test_manifest_not_an_object(bundle_dir: Path, tmp_path: Path, content: str) -> None:
    folder = _copy(bundle_dir, tmp_path)
    (folder / "manifest.json").write_bytes(content.encode("latin-1"))
    one_error_line(CliRunner().invoke(cli, ["info", str(folder)]), "manifest", code=1)


def test_manifest_that_is_a_folder(bundle_dir: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_dir, tmp_path)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    one_error_line(CliRunner().invoke(cli, ["info", str(folder)]), "unreadable manifest", code=1)


def test_symlink_leaving_the_bundle_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    folder = _copy(bundle_dir, tmp_path)
    outside = tmp_path / "outside.onnx"
    (folder / "model.onnx").rename(outside)
    os.symlink(outside, folder / "model.onnx")  # same bytes, so the sha256 matches: only the path check stops it
    with pytest.raises(IntegrityError, match="leads outside the bundle"):
        load_bundle(folder)


def test_model_file_outside_refused_by_info_segment_and_bench(bundle_dir: Path, tmp_path: Path,
                                                              slide: Path) -> None:
    folder = _copy(bundle_dir, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(folder / "model.onnx", outside / "model.onnx")
    _edit(folder, _set("model_file", str(outside / "model.onnx")), reseal=False)  # as an attacker would
    runner = CliRunner()
    one_error_line(runner.invoke(cli, ["info", str(folder)]), "manifest", code=1)
    one_error_line(segment(slide, "--model", folder, "--out", tmp_path / "out", runner=runner), "manifest", code=1)
    one_error_line(runner.invoke(cli, ["bench", "engine", "--model", str(folder)]), "manifest", code=1)
    assert not (tmp_path / "out").exists()


def test_random_weights_flip_is_refused_by_segment(bundle_dir: Path, tmp_path: Path, slide: Path) -> None:
    folder = _copy(bundle_dir, tmp_path)
    _edit(folder, _set("random_weights", True), reseal=False)
    one_error_line(segment(slide, "--model", folder, "--out", tmp_path / "out"), "integrity record", code=1)


def test_digest_covers_manifest_and_files(bundle_dir: Path, tmp_path: Path) -> None:
    a = load_bundle(bundle_dir)
    folder = _copy(bundle_dir, tmp_path)
    _edit(folder, _set("overlap", 8), reseal=True)  # a legitimate re-export with another field
    assert load_bundle(folder).digest != a.digest


def test_shipped_schema_matches_the_code() -> None:
    shipped = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    regenerate = "python -m slidefuse.runtime.manifest_schema > docs/manifest.schema.json"
    assert shipped == json_schema(), f"the shipped schema is stale: {regenerate}"


def test_demo_bundle_loads_and_is_sealed() -> None:
    b = load_bundle(REPO / "slidefuse" / "data" / "default")
    assert b.manifest.demo and b.manifest.format_version == 2 and len(b.digest) == 64


def test_schema_lists_every_manifest_field() -> None:
    import dataclasses

    from slidefuse.runtime.bundle import Manifest
    from slidefuse.runtime.manifest_schema import SEALED

    schema = json_schema()
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(Manifest)] + ["integrity"]
    assert set(SEALED) <= set(schema["required"])


# Relations between fields that a JSON Schema cannot state: only `check_manifest` refuses them.
BEYOND_JSON_SCHEMA = {"duplicate class", "model_file unlisted"}


def test_shipped_schema_accepts_a_bundle_and_refuses_crafted_manifests() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    shipped = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(shipped)
    jsonschema.Draft202012Validator.check_schema(shipped)
    good = json.loads((REPO / "slidefuse" / "data" / "default" / "manifest.json").read_text())
    assert not list(validator.iter_errors(good))
    for name, (change, _) in CRAFTED.items():
        data = json.loads(json.dumps(good))
        change(data)
        refused = bool(list(validator.iter_errors(data)))
        assert refused != (name in BEYOND_JSON_SCHEMA), name
