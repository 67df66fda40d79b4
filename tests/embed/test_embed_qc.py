"""Quality control in `slidefuse embed`: tiles mostly pen ink are not embedded under the default policy and are
with --qc off; qc_flags marks each tile; the skip key follows the QC mode; the stain check's attributes; the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime.conftest import synthetic_rgb, write_pyramid_tiff

from slidefuse.cli import cli

h5py = pytest.importorskip("h5py")

TILE = 224
INK_ROWS = (2 * TILE - 8, 3 * TILE + 8)  # a blue marker band covering tile row 2 (and 8 px of rows 1 and 3)


@pytest.fixture(scope="module")
def clean_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blobs of tissue on glass, 1344 x 1120 px at 0.5 um/px (6 x 5 tiles)."""
    return write_pyramid_tiff(synthetic_rgb(6 * TILE, 5 * TILE, seed=3), tmp_path_factory.mktemp("clean") /
                              "clean.tif", 0.5)


@pytest.fixture(scope="module")
def inked_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean slide with a translucent, textured blue marker band over glass and tissue across tile row 2."""
    img = synthetic_rgb(6 * TILE, 5 * TILE, seed=3).astype(np.float32)
    rng = np.random.default_rng(1)
    y0, y1 = INK_ROWS
    band = img[y0:y1]
    alpha = 0.85 + 0.1 * rng.random(band.shape[:2])[..., None]
    img[y0:y1] = band * (1 - alpha) + alpha * np.asarray([35, 60, 190], np.float32) + rng.normal(0, 5, band.shape)
    folder = tmp_path_factory.mktemp("embed-qc")
    return write_pyramid_tiff(np.clip(img, 0, 255).astype(np.uint8), folder / "inked.tif", 0.5)


def _embed(runner: CliRunner, slide: Path, bundle: Path, out: Path, *extra: str) -> dict[str, np.ndarray | dict]:
    res = runner.invoke(cli, ["embed", str(slide), "--model", str(bundle), "--out", str(out), "--backend", "ort-cpu",
                              "--threads", "1", "--workers", "2", *extra])
    assert res.exit_code == 0, res.output
    with h5py.File(out / slide.stem / "features.h5", "r") as f:
        return {"coords": f["coords"][:], "flags": f["qc_flags"][:], "feat_attrs": dict(f["features"].attrs),
                "flag_attrs": dict(f["qc_flags"].attrs), "key": json.loads(f.attrs["slidefuse_key"])}


def _row(xy: np.ndarray) -> np.ndarray:
    return xy[:, 1] // TILE  # level 0 is the model frame here (both 0.5 um/px)


def test_default_policy_drops_the_inked_tiles_off_keeps_them(runner: CliRunner, embed_bundle: Path,
                                                             clean_slide: Path, inked_slide: Path,
                                                             tmp_path: Path) -> None:
    on = _embed(runner, inked_slide, embed_bundle, tmp_path / "on")
    off = _embed(runner, inked_slide, embed_bundle, tmp_path / "off", "--qc", "off")
    clean = _embed(runner, clean_slide, embed_bundle, tmp_path / "clean", "--qc", "off")
    rows_off, rows_on = _row(off["coords"]), _row(on["coords"])
    assert (rows_off == 2).sum() == 6  # the band is tissue to Otsu: the whole row runs without QC
    assert (rows_on == 2).sum() == 0  # every tile of the inked row is left out
    # the other tiles are those of the clean slide: ink on glass in rows 1 and 3 no longer makes a tile tissue
    assert {tuple(p) for p in on["coords"]} == {tuple(p) for p in clean["coords"] if p[1] // TILE != 2}
    assert len(set(map(tuple, off["coords"])) - set(map(tuple, clean["coords"]))) > 0  # without QC: ink tiles
    assert on["feat_attrs"]["qc_mode"] == "default" and off["feat_attrs"]["qc_mode"] == "off"
    assert on["feat_attrs"]["qc_excluded_tiles"] == len(off["coords"]) - len(on["coords"]) >= 6
    assert off["feat_attrs"]["qc_excluded_tiles"] == 0
    assert "ink" in on["feat_attrs"]["qc_found"].split(",")
    assert not off["flags"].any() and off["flags"].dtype == np.uint8 and off["flags"].shape == (len(off["coords"]),)
    assert list(on["flag_attrs"]["bit_names"]) == ["ink", "folds", "blur"]
    assert on["key"]["options"]["qc"]["mode"] == "default" and on["key"]["options"]["qc"]["methods"]
    assert off["key"]["options"]["qc"] == {"mode": "off", "methods": {}}


def test_flag_mode_keeps_every_tile_and_marks_the_ink(runner: CliRunner, embed_bundle: Path, inked_slide: Path,
                                                      tmp_path: Path) -> None:
    flag = _embed(runner, inked_slide, embed_bundle, tmp_path / "flag", "--qc", "flag")
    off = _embed(runner, inked_slide, embed_bundle, tmp_path / "off", "--qc", "off")
    assert np.array_equal(flag["coords"], off["coords"])  # nothing left out
    rows, ink = _row(flag["coords"]), (flag["flags"] & 1).astype(bool)
    assert ink[rows == 2].all()  # the band's tiles carry the ink bit
    assert not ink[(rows == 0) | (rows == 4)].any()  # tiles away from the band do not
    # (rows 1 and 3 hold 8 px of ink: on the coarse QC map, at most a thumbnail pixel or two, they may carry it)
    assert flag["feat_attrs"]["qc_excluded_tiles"] == 0


def test_skip_key_follows_the_qc_mode(runner: CliRunner, embed_bundle: Path, inked_slide: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "o"
    _embed(runner, inked_slide, embed_bundle, out, "--qc", "off")
    res = runner.invoke(cli, ["embed", str(inked_slide), "--model", str(embed_bundle), "--out", str(out),
                              "--backend", "ort-cpu", "--qc", "off"])
    assert res.exit_code == 0 and "0 embedded" in res.output and "1 skipped" in res.output, res.output
    redo = _embed(runner, inked_slide, embed_bundle, out)  # default QC: a new key, the slide is redone
    assert redo["feat_attrs"]["qc_mode"] == "default" and redo["feat_attrs"]["qc_excluded_tiles"] >= 6


def test_stain_check_is_recorded_and_can_fail(runner: CliRunner, embed_bundle: Path, tmp_path: Path) -> None:
    img = synthetic_rgb(3 * TILE, 2 * TILE, seed=4)
    tissue = img.min(axis=2) < 200
    img[tissue] = np.clip(np.asarray([150, 100, 60]) + np.random.default_rng(0).integers(-15, 16, (tissue.sum(), 1)),
                          0, 255)  # DAB-brown tissue
    slide = write_pyramid_tiff(img, tmp_path / "brown.tif", 0.5)
    warned = _embed(runner, slide, embed_bundle, tmp_path / "warn")
    assert warned["feat_attrs"]["qc_stain_mismatch"] and warned["feat_attrs"]["qc_model_stain"] == "H&E"
    res = runner.invoke(cli, ["embed", str(slide), "--model", str(embed_bundle), "--out", str(tmp_path / "fail"),
                              "--backend", "ort-cpu", "--on-stain-mismatch", "fail"])
    assert res.exit_code == 1 and "stain" in res.output and "brown.tif" in res.output, res.output


def test_api_embed_applies_the_models_qc(embed_bundle: Path, inked_slide: Path) -> None:
    import slidefuse

    with slidefuse.load_model(embed_bundle, backend="ort-cpu", workers=2) as model:
        on = model.embed(inked_slide)
    with slidefuse.load_model(embed_bundle, backend="ort-cpu", workers=2, qc="off") as model:
        off = model.embed(inked_slide)
    assert (_row(off.coords) == 2).sum() == 6 and (_row(on.coords) == 2).sum() == 0
    assert on.qc_flags is not None and on.qc_flags.shape == (len(on.coords),) and on.qc_flags.dtype == np.uint8


def test_bad_qc_option_names_it(runner: CliRunner, embed_bundle: Path, inked_slide: Path, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["embed", str(inked_slide), "--model", str(embed_bundle), "--out", str(tmp_path),
                              "--qc", "sometimes"])
    assert res.exit_code == 2 and "--qc" in res.output
