"""Property-based fuzz (hypothesis, derandomized so every run tries the same cases): manifests with any field
replaced by any JSON value, and TIFF files with bytes of their directory changed. Each case either works or is
refused with slidefuse's own one-line error; nothing else (a traceback) and nothing slow (a hang) is allowed.
`make test` runs a bounded number of cases; `make test-slow` runs many more."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
