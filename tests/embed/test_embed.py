"""`slidefuse export --task embed` bundles on every CPU backend, and `slidefuse embed` end to end: features.h5 in
TRIDENT's layout, checked against the bundle run on tiles read from the TIFF by libvips directly, skip and
overwrite, zarr, the Python API, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.export.parity import cosine_rows
from slidefuse.runtime.bundle import load_bundle

h5py = pytest.importorskip("h5py")

# What TRIDENT's writer puts in a features file (trident/IO.py save_h5, coords_to_h5; WSI.extract_patch_features)
TRIDENT_FEATURE_ATTRS = {"name", "savetodir", "encoder"}
TRIDENT_COORD_ATTRS = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
                       "name", "savetodir", "level0_width", "level0_height"}


def _tiles(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_embedding_bundle_manifest_and_parity(embed_bundle: Path) -> None:
    m = load_bundle(embed_bundle).manifest
    assert m.task == "embed" and m.classes == () and m.output_name == "embeddings"
    assert m.embedding is not None and (m.embedding.dim, m.embedding.rule) == (64, "cls")
    assert m.parity["fp32"]["passed"] and m.parity["fp32"]["min_cosine"] >= 0.99999
    assert m.parity["fp32"]["max_abs_diff"] <= 1e-5
    assert m.output_shape(3) == (3, 64)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch", "null"])
def test_backends_return_embeddings(embed_bundle: Path, backend: str) -> None:
    from slidefuse.runtime.backends import open_backend

    bundle = load_bundle(embed_bundle)
    tiles = _tiles(3)
    with open_backend("ort-cpu", bundle) as ref_backend:
        ref = ref_backend.run(tiles)
    with open_backend(backend, bundle) as b:
        out = b.run(tiles)
    assert out.shape == (3, 64) and out.dtype == np.float32
    if backend != "null":
        assert cosine_rows(ref, out).min() >= 0.99999
        assert np.abs(ref - out).max() <= 1e-4


def test_segmentation_bundle_is_refused_by_embed(runner: CliRunner, bundle_dir: Path, embed_slide: Path,
                                                 tmp_path: Path) -> None:
    res = runner.invoke(cli, ["embed", str(embed_slide), "--model", str(bundle_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "segmentation bundle" in res.output and "task 'embed'" in res.output
    assert "Traceback" not in res.output


def _run(runner: CliRunner, *args: str) -> str:
    res = runner.invoke(cli, ["embed", *args, "--threads", "2"])
    assert res.exit_code == 0, res.output
    return res.output


def test_embed_writes_tridents_layout_and_the_bundles_embeddings(runner: CliRunner, embed_bundle: Path,
                                                                 embed_slide: Path, tmp_path: Path) -> None:
    import pyvips

    out = tmp_path / "features"
    _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out), "--formats", "h5,zarr")
    path = out / "blobs" / "features.h5"
    with h5py.File(path, "r") as f:
        assert set(f) == {"features", "coords", "qc_flags"}  # qc_flags: slidefuse's own (tests/embed/test_embed_qc.py)
        feats, xy = f["features"][:], f["coords"][:]
        assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int64
        assert f["features"].maxshape == (None, 64) and f["coords"].maxshape == (None, 2)
        assert TRIDENT_FEATURE_ATTRS <= set(f["features"].attrs) and TRIDENT_COORD_ATTRS <= set(f["coords"].attrs)
        ca = dict(f["coords"].attrs)
        assert f["features"].attrs["encoder"] == "tiny"
        assert f["features"].attrs["bundle_digest"] == load_bundle(embed_bundle).digest
        assert (ca["patch_size"], ca["patch_size_level0"], ca["overlap"]) == (224, 224, 0)
        assert (ca["level0_width"], ca["level0_height"]) == (1024, 768)
    assert 0 < len(feats) < 4 * 5 and feats.shape == (len(xy), 64)
    assert (xy % 224 == 0).all() and len({tuple(p) for p in xy}) == len(xy)
    # the same tiles cut from the TIFF by libvips itself, run through the bundle
    image = pyvips.Image.new_from_file(str(embed_slide), access="random")
    padded = image.embed(0, 0, 5 * 224, 4 * 224, extend="white")
    tiles = np.stack([np.ndarray(buffer=padded.crop(int(x), int(y), 224, 224).write_to_memory(), dtype=np.uint8,
                                 shape=(224, 224, 3)) for x, y in xy])
    from slidefuse.runtime.backends import open_backend

    with open_backend("ort-cpu", load_bundle(embed_bundle)) as b:
        want = b.run(tiles)
    assert cosine_rows(want, feats).min() >= 0.9999
    import zarr

    g = zarr.open_group(str(out / "blobs" / "features.zarr"), mode="r")
    assert np.array_equal(g["features"][:], feats) and np.array_equal(g["coords"][:], xy)
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["ok"]


def test_rerun_skips_overwrite_redoes(runner: CliRunner, embed_bundle: Path, embed_slide: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "f"
    _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out))
    first = (out / "blobs" / "features.h5").stat().st_mtime_ns
    assert "1 skipped" in _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out))
    assert (out / "blobs" / "features.h5").stat().st_mtime_ns == first
    assert "1 embedded" in _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out),
                                "--overwrite")
    assert "1 embedded" in _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out),
                                "--stride", "112")  # another stride: another key


def test_a_bad_slide_fails_alone(runner: CliRunner, embed_bundle: Path, embed_slide: Path, tmp_path: Path) -> None:
    bad = tmp_path / "in" / "broken.tif"
    bad.parent.mkdir()
    bad.write_bytes(b"not a tiff at all")
    shutil.copy(embed_slide, tmp_path / "in" / "good.tif")
    res = CliRunner().invoke(cli, ["embed", str(tmp_path / "in"), "--model", str(embed_bundle), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("slidefuse: error:")]
    assert len(errors) == 1 and "broken.tif" in errors[0]
    assert (tmp_path / "o" / "good" / "features.h5").is_file()
    assert not (tmp_path / "o" / "broken" / "features.h5").exists()


def test_api_embed_equals_the_file(runner: CliRunner, embed_bundle: Path, embed_slide: Path, tmp_path: Path) -> None:
    import slidefuse

    out = tmp_path / "f"
    _run(runner, str(embed_slide), "--model", str(embed_bundle), "--out", str(out))
    with slidefuse.load_model(embed_bundle, backend="ort-cpu") as model:
        res = model.embed(embed_slide)
    with h5py.File(out / "blobs" / "features.h5", "r") as f:
        assert np.array_equal(res.coords, f["coords"][:])
        assert cosine_rows(res.features, f["features"][:]).min() >= 0.99999
    assert (res.mpp, res.tile_size, res.encoder) == (0.5, 224, "tiny")


@pytest.mark.slow
def test_a_segmentation_bundles_encoder_embeds(runner: CliRunner, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    seg = tmp_path / "seg.bundle"
    res = runner.invoke(cli, ["-q", "export", "tiny", "--random-weights", "--classes", "background,tumour", "--mpp",
                              "0.5", "--tile", "224", "--out", str(seg), "--parity-tiles", "1:1"])
    assert res.exit_code == 0, res.output
    emb = tmp_path / "emb.bundle"
    res = runner.invoke(cli, ["-q", "export", "tiny", "--task", "embed", "--from-bundle", str(seg), "--out", str(emb),
                              "--parity-tiles", "1:1"])
    assert res.exit_code == 0, res.output
    m = load_bundle(emb).manifest
    assert (m.task, m.tile_size, m.mpp) == ("embed", 224, 0.5)
    assert m.weights["encoder"]["bundle"] == load_bundle(seg).digest
    seg_sd, emb_sd = load_file(str(seg / "model.safetensors")), load_file(str(emb / "model.safetensors"))
    enc = {k: v for k, v in seg_sd.items() if k.startswith("encoder.")}
    assert sorted(enc) == sorted(emb_sd) and all(np.array_equal(enc[k], emb_sd[k]) for k in enc)


def test_tile_filter_hook_and_shards(embed_bundle: Path, embed_slide: Path, tmp_path: Path) -> None:
    """The QC hook drops tiles before they run; --shard splits the list statically."""
    from slidefuse.runtime.embed import EmbedOptions, embed_many

    bundle = load_bundle(embed_bundle)
    full = embed_many([embed_slide], bundle, tmp_path / "all", EmbedOptions(backend="ort-cpu"))
    kept = embed_many([embed_slide], bundle, tmp_path / "odd", EmbedOptions(
        backend="ort-cpu", tile_filter=lambda plan, tiles: [rc for rc in tiles if rc[1] % 2 == 1]))
    assert full[0].status == "ok" and kept[0].status == "ok"
    with h5py.File(tmp_path / "all" / "blobs" / "features.h5", "r") as f:
        all_xy = {tuple(p) for p in f["coords"][:]}
    with h5py.File(tmp_path / "odd" / "blobs" / "features.h5", "r") as f:
        odd_xy = {tuple(p) for p in f["coords"][:]}
    assert odd_xy and odd_xy < all_xy and all((x // 224) % 2 == 1 for x, _ in odd_xy)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(embed_slide, two / f"{name}.tif")
    first = embed_many([two], bundle, tmp_path / "sh", EmbedOptions(backend="ort-cpu", shard=(0, 2)))
    second = embed_many([two], bundle, tmp_path / "sh", EmbedOptions(backend="ort-cpu", shard=(1, 2)))
    assert [r.slide.name for r in first] == ["a.tif", "c.tif"] and [r.slide.name for r in second] == ["b.tif"]
    run = json.loads((tmp_path / "sh" / "run.json").read_text())
    assert sorted(Path(s["slide"]).name for s in run["slides"] if s["status"] == "ok") == ["a.tif", "b.tif", "c.tif"]
