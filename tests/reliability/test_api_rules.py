"""The Python API follows the command line's rules: it never replaces outputs without overwrite=True, refuses an
output root inside a bundle and output folder names the CLI would refuse, takes numpy scalars but not bools for
numbers, and refuses arrays too small or of the wrong kind with one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pyvips

import slidefuse
from slidefuse.api import Model
from slidefuse.errors import InvalidPixelSize, UsageError
from slidefuse.runtime.outputs.report import read_report

from .conftest import segment, write_slide


@pytest.fixture(scope="module")
def model(bundle_dir: Path) -> Iterator[Model]:
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", backend_options={"threads": 1}, workers=1) as m:
        yield m


def _tissue(h: int = 48, w: int = 48) -> np.ndarray:
    img = np.full((h, w, 3), 242, np.uint8)
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (200, 120, 170)
    return img


def _one_line(exc: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text


def test_an_array_never_replaces_another_slides_outputs(model: Model, tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "slides" / "cmu.tif")
    out = tmp_path / "out"
    assert segment(slide, "--model", model.bundle.path, "--out", out).exit_code == 0
    before = (out / "cmu" / "mask.tif").read_bytes()
    with pytest.raises(UsageError) as err:
        model.segment(_tissue(), mpp=2.0, out=out, name="cmu")
    _one_line(err, "already holds the outputs of", str(slide), "overwrite=True")
    assert (out / "cmu" / "mask.tif").read_bytes() == before
    assert read_report(out / "cmu")["slide"]["path"] == str(slide)  # type: ignore[index]
    # said explicitly, it replaces them
    res = model.segment(_tissue(), mpp=2.0, out=out, name="cmu", overwrite=True)
    assert res.ok and read_report(out / "cmu")["slide"]["path"] == "cmu"  # type: ignore[index]


def test_an_array_reruns_into_its_folder_only_with_overwrite(model: Model, tmp_path: Path) -> None:
    assert model.segment(_tissue(), mpp=2.0, out=tmp_path, name="a").ok
    with pytest.raises(UsageError, match="overwrite=True"):
        model.segment(_tissue(), mpp=2.0, out=tmp_path, name="a")
    assert model.segment(_tissue(), mpp=2.0, out=tmp_path, name="a", overwrite=True).ok


@pytest.mark.parametrize("name", [".run", "run.json", "run.json.lock", ".hidden", ".", "..", "a/b", "a\\b",
                                  "x\0y", "x\ny", "", "n" * 201, 7])
def test_names_are_checked_like_a_lists_out_name(model: Model, tmp_path: Path, name: object) -> None:
    with pytest.raises(UsageError) as err:
        model.segment(_tissue(), mpp=2.0, out=tmp_path / "out", name=name)  # type: ignore[arg-type]
    _one_line(err, "name")
    assert not (tmp_path / "out").exists()


def test_out_inside_a_bundle_is_refused(model: Model, tmp_path: Path, slide: Path) -> None:
    for out in (model.bundle.path, model.bundle.path / "results"):
        with pytest.raises(UsageError) as err:
            model.segment(_tissue(), mpp=2.0, out=out, name="x")
        _one_line(err, "inside the model bundle")
        with pytest.raises(UsageError, match="inside the model bundle"):
            model.segment(slide, out=out)
        with pytest.raises(UsageError, match="inside the model bundle"):
            model.segment_batch([slide], out=out)
    assert not (model.bundle.path / "results").exists() and not (model.bundle.path / "x").exists()


def test_out_that_is_a_file_is_refused(model: Model, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(UsageError) as err:
            model.segment(_tissue(), mpp=2.0, out=out, name="x")
        _one_line(err, "is a file")


def test_numpy_scalars_are_numbers_and_bools_are_not(model: Model, tmp_path: Path) -> None:
    res = model.segment(_tissue(), mpp=np.float32(2.0), out=tmp_path, name="np")
    assert res.ok and res.mpp == (2.0, 2.0)
    for bad in (True, np.bool_(True)):
        with pytest.raises(InvalidPixelSize) as err:
            model.segment(_tissue(), mpp=bad, out=tmp_path, name="bool")
        _one_line(err, "mpp")
    assert not (tmp_path / "bool").exists()


@pytest.mark.parametrize("shape", [(1, 1, 3), (0, 0, 3), (1, 40, 3), (40, 0, 3)])
def test_tiny_or_empty_arrays_get_one_line(model: Model, tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(UsageError) as err:
        model.segment(np.zeros(shape, np.uint8), mpp=2.0, out=tmp_path / "out", name="tiny")
    _one_line(err, str(shape), "at least 2 x 2 px")
    assert not (tmp_path / "out" / "tiny").exists()  # no outputs without a report


@pytest.mark.parametrize("array", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                   np.zeros((8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.uint8)])
def test_arrays_of_the_wrong_kind_get_one_line(model: Model, tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(UsageError) as err:
        model.segment(array, mpp=2.0, out=tmp_path, name="bad")
    _one_line(err, "expected uint8 [H, W, 3]")


def test_the_smallest_array_is_segmented_with_a_report(model: Model, tmp_path: Path) -> None:
    res = model.segment(np.full((2, 2, 3), 200, np.uint8), mpp=2.0, out=tmp_path, name="two")
    assert res.ok and res.report["slide"]["path"] == "two" and res.mask_array().shape == (2, 2)


def test_a_one_pixel_slide_file_gets_a_preview(tmp_path: Path, bundle_dir: Path) -> None:
    slide = tmp_path / "one.tif"
    pyvips.Image.new_from_array(np.full((1, 1, 3), 200, np.uint8), interpretation="srgb").tiffsave(
        str(slide), xres=1000 / 2.0, yres=1000 / 2.0, resunit="cm")
    result = segment(slide, "--model", bundle_dir, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "one" / "preview.png").is_file() and read_report(tmp_path / "out" / "one")


def test_a_failed_array_leaves_no_outputs_without_a_report(model: Model, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from slidefuse.runtime.outputs import preview

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("preview failed")

    monkeypatch.setattr(preview, "write_preview", broken)
    with pytest.raises(RuntimeError, match="preview failed"):
        model.segment(_tissue(), mpp=2.0, out=tmp_path, name="broken")
    assert not (tmp_path / "broken").exists()
