"""Property-based fuzz (hypothesis, derandomized so every run tries the same cases): manifests with any field
replaced by any JSON value, TIFF files with bytes of their directory changed, slide-list files (random bytes, CSVs in
several encodings with hostile names and numbers) and the Python API's arguments (mpp, name, out, array shape and
dtype). Each case either works or is
refused with slidefuse's own one-line error; nothing else (a traceback) and nothing slow (a hang) is allowed.
`make test` runs a bounded number of cases; `make test-slow` runs many more."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from slidefuse.errors import SlidefuseError
from slidefuse.runtime.bundle import load_bundle, manifest_digest
from slidefuse.runtime.slide import open_slide

from .tiffs import write_huge_tiff

FAST, SLOW = 500, 5000  # manifest cases
TIFF_FAST, TIFF_SLOW = 250, 2500  # TIFF cases

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check_manifest_case(bundle_dir: Path, field: str, value: Any, reseal: bool, drop: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "b"
        shutil.copytree(bundle_dir, folder)
        data = json.loads((folder / "manifest.json").read_text())
        if drop:
            data.pop(field, None)
        else:
            data[field] = value
        if reseal:
            try:
                data["integrity"] = manifest_digest(data)
            except (TypeError, ValueError):  # not JSON-able: cannot be written as a manifest at all
                return
        (folder / "manifest.json").write_text(json.dumps(data))
        try:
            load_bundle(folder)
        except SlidefuseError as exc:
            assert "\n" not in str(exc)


FIELDS = st.sampled_from(["encoder", "patch_size", "tile_size", "mpp", "classes", "mean", "std", "model_file",
                          "fp16_model_file", "torch_weights", "overlap", "random_weights", "demo", "geometry",
                          "color_transform", "engines", "tools", "files", "format_version", "integrity",
                          "weights", "opset", "surprise"])


@pytest.mark.parametrize("n", [pytest.param(FAST, id="bounded"),
                               pytest.param(SLOW, id="long", marks=pytest.mark.slow)])
def test_fuzzed_manifests(bundle_dir: Path, n: int) -> None:
    @_settings(n)
    @given(field=FIELDS, value=json_values, reseal=st.booleans(), drop=st.booleans())
    def case(field: str, value: Any, reseal: bool, drop: bool) -> None:
        _check_manifest_case(bundle_dir, field, value, reseal, drop)

    case()


def _small_tiff(folder: Path) -> tuple[bytes, int]:
    """A small tiled TIFF's bytes and the offset of its directory (written last by `write_huge_tiff`)."""
    path = write_huge_tiff(folder / "seed.tif", 700, 500, tile=256, mpp=0.5)
    raw = path.read_bytes()
    return raw, int.from_bytes(raw[4:8], "little")


def _check_tiff_case(raw: bytes, ifd_at: int, edits: list[tuple[int, int]], folder: Path) -> None:
    data = bytearray(raw)
    span = len(data) - ifd_at
    for pos, value in edits:
        data[ifd_at + pos % span] = value
    path = folder / "fuzzed.tif"
    path.write_bytes(bytes(data))
    try:
        with open_slide(path) as slide:
            level = slide.info.levels[-1]
            if level.width * level.height <= 16_000_000:
                slide.thumbnail(64)
    except SlidefuseError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("n", [pytest.param(TIFF_FAST, id="bounded"),
                               pytest.param(TIFF_SLOW, id="long", marks=pytest.mark.slow)])
def test_fuzzed_tiff_directories(tmp_path: Path, n: int) -> None:
    raw, ifd_at = _small_tiff(tmp_path)

    @_settings(n)
    @given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
    def case(edits: list[tuple[int, int]]) -> None:
        _check_tiff_case(raw, ifd_at, edits, tmp_path)

    case()


# ------------------------------------------------------------------------------------------- slide lists
LIST_FAST, LIST_SLOW = 300, 3000  # slide-list cases
API_FAST, API_SLOW = 150, 1500  # API argument cases
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "shift_jis"]
names = st.text(max_size=24) | st.sampled_from(["run.json", "run.json.lock", ".run", ".x", ".", "..", "a/b", "a\\b",
                                                "x\0y", "x\ny", "n" * 300, "ok", "é"])
cells = names | st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.sampled_from(["", "0", "-1", "1e400",
                                                                                             "0.5", '"', '"a,b"'])


def _list_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(row) for row in [header, *rows]) + "\n"


list_texts = st.builds(_list_text, st.lists(st.sampled_from(["path", "mpp", "out_name", "PATH", " mpp", "other"]),
                                            min_size=1, max_size=4),
                       st.lists(st.lists(cells, min_size=0, max_size=4), max_size=5))
list_files = (st.binary(max_size=200)
              | st.tuples(list_texts, st.sampled_from(ENCODINGS)).map(lambda t: t[0].encode(t[1], "replace")))


def _check_list_case(data: bytes, folder: Path) -> None:
    from slidefuse.api_checks import check_name
    from slidefuse.runtime.segment.inputs import read_slide_list

    path = folder / "slides.csv"
    path.write_bytes(data)
    try:
        entries = read_slide_list(path)
    except SlidefuseError as exc:
        assert "\n" not in str(exc)
        return
    for entry in getattr(entries, "entries", entries):  # entries, or (once rows fail alone) entries and failures
        assert "\0" not in str(entry.path)
        if entry.out_name is not None:
            check_name(entry.out_name, "out_name")
        assert entry.mpp is None or (math.isfinite(entry.mpp) and entry.mpp > 0)


def _lists_refuse_bad_rows() -> bool:
    """Whether `read_slide_list` refuses a list that is not UTF-8 and reserved names with its own errors (the
    row checks of the slide-list part of this work); until then the list fuzz is expected to find them."""
    from slidefuse.runtime.segment.inputs import read_slide_list

    with tempfile.TemporaryDirectory() as tmp:
        probes = ["path\n\xe4.svs\n".encode("latin-1"), b"path,out_name\na.svs,run.json\n"]
        for i, data in enumerate(probes):
            (Path(tmp) / f"{i}.csv").write_bytes(data)
            try:
                read_slide_list(Path(tmp) / f"{i}.csv")
                return False
            except SlidefuseError:
                continue
            except Exception:
                return False
    return True


@pytest.mark.xfail(not _lists_refuse_bad_rows(), strict=True, reason="read_slide_list does not check its rows yet "
                   "(non-UTF-8 lists, reserved or unsafe out_name): the slide-list part of this issue does")
@pytest.mark.parametrize("n", [pytest.param(LIST_FAST, id="bounded"),
                               pytest.param(LIST_SLOW, id="long", marks=pytest.mark.slow)])
def test_fuzzed_slide_lists(tmp_path: Path, n: int) -> None:
    @settings(_settings(n), phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: stays fast
    @given(data=list_files)
    def case(data: bytes) -> None:
        _check_list_case(data, tmp_path)

    case()


# ------------------------------------------------------------------------------------------- API arguments
def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four from `good`, so that a fair share of cases pass every check and really run."""
    return st.integers(0, 3).flatmap(lambda k: bad if k == 0 else good)


numbers = _mostly(st.sampled_from([2.0, 0.5, 4, np.float32(2.0), np.float64(1.0), np.int64(2)]),
                  st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 10**6) | st.booleans() | st.none()
                  | st.sampled_from([np.bool_(True), np.float32("nan"), "2.0", [2.0], 1e-300]))
arg_names = _mostly(st.sampled_from([None, "a", "b", "é x"]), names | st.integers())
shapes = _mostly(st.tuples(st.integers(2, 12), st.integers(2, 12), st.just(3)),
                 st.lists(st.integers(0, 12), min_size=0, max_size=4).map(tuple))
dtypes = _mostly(st.just(np.uint8), st.sampled_from([np.float32, np.int16, np.bool_, np.uint16]))
outs = _mostly(st.sampled_from(["out", "out/deeper"]), st.sampled_from(["bundle", "bundle/sub", "file", "file/sub"]))


def _check_api_case(model: Any, bundle: Path, folder: Path, mpp: Any, name: Any, out: str, shape: tuple[int, ...],
                    dtype: Any, overwrite: bool) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        (Path(tmp) / "file").write_bytes(b"x")
        root = bundle / out[len("bundle"):].lstrip("/") if out.startswith("bundle") else Path(tmp) / out
        try:
            res = model.segment(np.full(shape, 200, dtype=dtype), mpp=mpp, out=root, name=name, overwrite=overwrite)
        except SlidefuseError as exc:
            assert "\n" not in str(exc)
            return
        assert res.ok and res.report["slide"]["path"]


@pytest.mark.parametrize("n", [pytest.param(API_FAST, id="bounded"),
                               pytest.param(API_SLOW, id="long", marks=pytest.mark.slow)])
def test_fuzzed_api_arguments(bundle_dir: Path, tmp_path: Path, n: int) -> None:
    import slidefuse

    with slidefuse.load_model(bundle_dir, backend="ort-cpu", backend_options={"threads": 1}, workers=1) as model:
        @_settings(n)
        @given(mpp=numbers, name=arg_names, out=outs, shape=shapes, dtype=dtypes,
               overwrite=st.booleans())
        def case(mpp: Any, name: Any, out: str, shape: tuple[int, ...], dtype: Any, overwrite: bool) -> None:
            _check_api_case(model, bundle_dir, tmp_path, mpp, name, out, shape, dtype, overwrite)

        case()
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["manifest.json", "model.onnx"]  # nothing written there
