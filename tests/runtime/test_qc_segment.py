"""Quality control through `segment`: ink excluded by default (not run, not tissue, class 0 in the mask), the
report's qc section, qc.png and the API's `qc()`, tissue.png's palette, the stain check and its policy, the
skip key, the CLI's options and the manifest's stain."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import slidefuse
from slidefuse.api import ResultError
from slidefuse.cli import cli
from slidefuse.errors import UsageError

FAST = {"workers": 2, "backend_options": {"threads": 1}, "backend": "ort-cpu"}
MPP = 2.0  # the test bundle's um/px: the synthetic slides are written at it


def _slide(path: Path, ink: bool = False, brown: bool = False) -> Path:
    """A 1600 x 1200 px slide at 2 um/px: an H&E-like pink disc and a purple one on glass; `ink`: a blue marker
    band over rows 560..640 (over glass and the pink disc); `brown`: the discs DAB-brown instead."""
    import pyvips

    h, w = 1200, 1600
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 242, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    pink, purple = ((150, 105, 70), (120, 90, 60)) if brown else ((225, 140, 190), (170, 110, 190))
    img[(xx - 500) ** 2 + (yy - 600) ** 2 < 380 ** 2] = pink
    img[(xx - 1250) ** 2 + (yy - 600) ** 2 < 250 ** 2] = purple
    img += rng.normal(0, 6, img.shape)
    if ink:
        img[560:640] *= 0.15 + 0.85 * np.asarray([30, 60, 200], np.float32) / 255
    arr = np.clip(img, 0, 255).astype(np.uint8)
    pyvips.Image.new_from_array(arr, interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="deflate",
        xres=1000 / MPP, yres=1000 / MPP, resunit="cm")
    return path


@pytest.fixture(scope="module")
def inked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _slide(tmp_path_factory.mktemp("qc") / "inked.tif", ink=True)


def test_default_policy_excludes_ink_from_tissue_tiles_and_mask(bundle_dir: Path, inked: Path,
                                                                 tmp_path: Path) -> None:
    with slidefuse.load_model(bundle_dir, **FAST) as model:
        on = model.segment(inked, out=tmp_path / "on")
    with slidefuse.load_model(bundle_dir, qc="off", **FAST) as model:
        off = model.segment(inked, out=tmp_path / "off")
    qc = on.report["qc"]
    assert qc["mode"] == "default" and qc["flags"] == ["ink"]
    ink = qc["methods"]["ink"]
    assert ink["action"] == "exclude" and ink["method"] == "InkDetector" and ink["thresholds"]["blue_saturation"]
    # the band, 80 x 1600 px at 2 um/px, and the soft-edge allowance (smoothing and growth: about 16 um a side)
    assert 0.95 < ink["area_mm2"] / (80 * 1600 * (MPP / 1000) ** 2) < 1.35
    assert qc["methods"]["folds"]["action"] == qc["methods"]["blur"]["action"] == "flag"
    assert on.report["tile_counts"]["run"] < off.report["tile_counts"]["run"]  # glass-only ink tiles not run
    assert on.report["tissue"]["area_mm2"] < off.report["tissue"]["area_mm2"]
    band = np.asarray(on.mask_array())[570:630]  # the mask (at 2 um/px) over the band: class 0
    assert (band == 0).mean() > 0.99 and (np.asarray(off.mask_array())[570:630] > 0).mean() > 0.3
    maps = on.qc()
    rows = maps.maps["ink"].shape[0] / 1200  # thumbnail rows per slide row
    assert maps.maps["ink"][int(590 * rows):int(610 * rows)].all() and not maps.maps["ink"][:int(400 * rows)].any()
    assert maps.section["flags"] == ["ink"] and maps.mpp == pytest.approx(on.report["outputs"]["qc"]["mpp"])
    with Image.open(on.out_dir / "tissue.png") as img:
        assert img.mode == "P" and set(np.unique(np.asarray(img))) >= {0, 1, 255}
    assert off.report["qc"]["mode"] == "off" and off.report["qc"]["methods"] == {}


def test_flag_reports_ink_and_removes_nothing(bundle_dir: Path, inked: Path, tmp_path: Path) -> None:
    with slidefuse.load_model(bundle_dir, qc="flag", **FAST) as model:
        flag = model.segment(inked, out=tmp_path / "flag")
    with slidefuse.load_model(bundle_dir, qc="off", **FAST) as model:
        off = model.segment(inked, out=tmp_path / "off")
    assert flag.report["qc"]["methods"]["ink"]["action"] == "flag" and "ink" in flag.report["qc"]["flags"]
    assert flag.report["areas"] == off.report["areas"] and flag.report["tile_counts"] == off.report["tile_counts"]


def test_a_changed_qc_policy_reruns_the_slide(bundle_dir: Path, inked: Path, tmp_path: Path) -> None:
    with slidefuse.load_model(bundle_dir, qc="off", **FAST) as model:
        model.segment(inked, out=tmp_path)
        assert model.segment(inked, out=tmp_path).status.value == "skipped"
    with slidefuse.load_model(bundle_dir, **FAST) as model:
        assert model.segment(inked, out=tmp_path).status.value == "ok"
        assert model.segment(inked, out=tmp_path).status.value == "skipped"  # the key survives its JSON round trip


def test_stain_mismatch_warns_by_default_and_fails_when_asked(bundle_dir: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    brown = _slide(tmp_path / "brown.tif", brown=True)
    with slidefuse.load_model(bundle_dir, **FAST) as model:
        res = model.segment(brown, out=tmp_path / "warn")
    stain = res.report["qc"]["stain"]
    assert stain["estimate"] == "H-DAB" and stain["model"] == "H&E" and stain["mismatch"]
    assert "stain-mismatch" in res.report["qc"]["flags"]
    assert any("stain looks like H-DAB" in r.getMessage() for r in caplog.records)
    with slidefuse.load_model(bundle_dir, on_stain_mismatch="fail", **FAST) as model:
        with pytest.raises(ResultError, match="brown.tif: the tissue's stain looks like H-DAB.*on_stain_mismatch=warn"):
            model.segment(brown, out=tmp_path / "fail")
    clean = _slide(tmp_path / "clean.tif")
    with slidefuse.load_model(bundle_dir, on_stain_mismatch="fail", **FAST) as model:
        ok = model.segment(clean, out=tmp_path / "ok")
    assert ok.report["qc"]["stain"]["estimate"] == "H&E" and ok.report["qc"]["flags"] == []


def test_bad_qc_options_are_refused_naming_the_field() -> None:
    with pytest.raises(UsageError, match="qc must be one of"):
        slidefuse.api.check_options(qc="strict")
    with pytest.raises(UsageError, match="on_stain_mismatch must be one of"):
        slidefuse.api.check_options(on_stain_mismatch="ignore")


def test_cli_choices_are_the_library_values() -> None:
    from slidefuse.commands import export, segment
    from slidefuse.runtime.manifest_schema import STAINS
    from slidefuse.runtime.qc.base import QC_MODES

    params = {p.name: p for p in segment.command.params}
    assert tuple(params["qc"].type.choices) == QC_MODES  # type: ignore[attr-defined]
    assert tuple(params["on_stain_mismatch"].type.choices) == ("warn", "fail")  # type: ignore[attr-defined]
    stain = {p.name: p for p in export.command.params}["stain"]
    assert tuple(stain.type.choices) == STAINS  # type: ignore[attr-defined]


def test_cli_refuses_an_unknown_qc_mode(runner: CliRunner, inked: Path, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["segment", str(inked), "--out", str(tmp_path), "--qc", "strict"])
    assert res.exit_code == 2 and "'strict' is not one of" in res.output


def test_manifest_stain_defaults_to_h_and_e_and_is_checked(bundle_dir: Path) -> None:
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.manifest_schema import Manifest, check_manifest

    m = load_bundle(bundle_dir).manifest
    assert m.stain == "H&E"  # a bundle made before the field
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["stain"] = "Giemsa"
    assert any(p.startswith("stain") for p in check_manifest(data))
    assert dataclasses.replace(m, stain="H-DAB").to_dict()["stain"] == "H-DAB"
    assert "stain" in {f.name for f in dataclasses.fields(Manifest)}
