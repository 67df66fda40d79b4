"""A 3-slide batch for the viewer's tests: synthetic H&E-like slides segmented by the colour-classifier bundle
(default colours, so the viewer draws the review palette), one slide given a probability file and a QC section in
the documented formats."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from runtime.conftest import synthetic_rgb, write_pyramid_tiff
from runtime.onnx_models import make_bundle

from slidefuse.runtime.bundle import ClassInfo, load_bundle, write_manifest
from slidefuse.runtime.palette import default_colors

PROBS_SLIDE = 1  # the slide (run-log position) that gets probs.ome.tif and a QC section
QC_FLAGS = ["pen marks", "blur"]


def _bundle(folder: Path) -> Path:
    """The colour classifier with the exporter's default colours (none chosen by its maker)."""
    b = make_bundle(folder)
    colours = default_colors(len(b.manifest.classes))
    classes = tuple(ClassInfo(c.name, colours[i]) for i, c in enumerate(b.manifest.classes))
    write_manifest(folder, dataclasses.replace(b.manifest, classes=classes))
    load_bundle(folder)
    return folder


def add_probs_and_qc(out_dir: Path) -> None:
    """probs.ome.tif (uint8 per class, one OME plane per class, at the mask's size: 255 where mask.tif holds the
    class, else 0) and a QC section: flags and qc.png (qc.png's bits at thumbnail scale: tissue everywhere, a finding
    in the top-left quarter)."""
    import pyvips
    import tifffile

    mask = pyvips.Image.new_from_file(str(out_dir / "mask.tif"), page=0).numpy()
    report = json.loads((out_dir / "report.json").read_text())
    n = len(report["model"]["classes"])
    probs = np.stack([np.where(mask == c, 255, 0).astype(np.uint8) for c in range(n)])
    tifffile.imwrite(out_dir / "probs.ome.tif", probs, ome=True, photometric="minisblack", tile=(256, 256),
                     metadata={"axes": "CYX"})
    t = report["tissue"]
    labels = np.ones((t["thumbnail_height"] // 4, t["thumbnail_width"] // 4), dtype=np.uint8)  # bit 0: tissue
    labels[: labels.shape[0] // 2, : labels.shape[1] // 2] |= 1 << 1  # bit 1: the first QC method's finding
    from PIL import Image

    Image.fromarray(labels).save(out_dir / "qc.png")
    report["outputs"]["probs"] = {"file": "probs.ome.tif", "classes": n, "l0_per_px_x": report["mask"]["l0_per_px_x"],
                                  "l0_per_px_y": report["mask"]["l0_per_px_y"]}
    report["qc"] = {"flags": QC_FLAGS, "file": "qc.png"}
    (out_dir / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="session")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of a 3-slide batch (slides s0, s1, s2); s1 has probs.ome.tif and a QC section."""
    import slidefuse

    root = tmp_path_factory.mktemp("viewbatch")
    bundle = _bundle(root / "bundle")
    slides = [write_pyramid_tiff(synthetic_rgb(seed=i), root / f"s{i}.tif", 0.5) for i in range(3)]
    out = root / "out"
    with slidefuse.load_model(bundle) as model:
        results = model.segment_batch(slides, out=out, qc="off")  # only s1 gets a QC layer, made here
    assert [r.status for r in results] == ["ok"] * 3
    add_probs_and_qc(out / f"s{PROBS_SLIDE}")
    return out


@pytest.fixture
def client(batch: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from slidefuse.view.app import create_app
    from slidefuse.view.cache import TileCache

    with TestClient(create_app(batch, TileCache(tmp_path / "cache", 64 << 20))) as c:
        yield c
