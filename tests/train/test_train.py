"""`slidefuse train`: dataset checks, augmentation, loss/metric, pseudo-labels, and an end-to-end run on tiles
made from a real slide whose checkpoint `slidefuse export` accepts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidefuse.cli import cli
from slidefuse.errors import SlidefuseError, UsageError
from slidefuse.train.dataset import IGNORE_INDEX, AugmentParams, DatasetError, augment_batch, load_dataset
from slidefuse.train.loop import TrainConfig, val_losses
from slidefuse.train.pseudolabels import (
    EOSIN,
    HAEMATOXYLIN,
    PSEUDO_CLASSES,
    class_fractions,
    pseudo_labels,
    stain_concentrations,
)
from slidefuse.train.tileset import SlideSource, TileSetParams, make_pseudolabel_dataset

torch = pytest.importorskip("torch")

CLASSES = ",".join(PSEUDO_CLASSES)


# ---------------------------------------------------------------------------------------------- helpers
def _write_pair(root: Path, split: str, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    for kind in ("images", "masks"):
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")


def _tiny_dataset(root: Path, tile: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(2):
            _write_pair(root, split, f"t{i}", rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8),
                        rng.integers(0, 3, (tile, tile), dtype=np.uint8))
    return root


def _stain_rgb(od_vector: tuple[float, float, float], amount: float) -> np.ndarray:
    od = np.asarray(od_vector) / np.linalg.norm(od_vector) * amount
    return np.clip(256 * np.exp(-od) - 1, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cmu_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pseudo-labelled tile set from CMU-1-Small-Region at 2 um/px, 128 px tiles."""
    from tests.conftest import CMU

    if not CMU.exists():
        pytest.skip(f"{CMU} is absent")
    out = tmp_path_factory.mktemp("cmu_tiles") / "tiles"
    params = TileSetParams(mpp=2.0, tile=128, train_per_slide=16, val_per_slide=6, scales=(1.0,),
                           val_fraction=0.3, seed=1)
    make_pseudolabel_dataset([SlideSource(CMU)], out, params)
    return out


@pytest.fixture(scope="module")
def tiny_encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 'tiny' encoder saved in timm layout: stands in for a published checkpoint."""
    from slidefuse.model.assembly import build_model
    from slidefuse.model.checkpoints import save_state

    model = build_model("tiny", 3, tile_size=128, random_weights=True, seed=3)
    return save_state(model.encoder, tmp_path_factory.mktemp("enc") / "tiny_encoder.safetensors")


# ---------------------------------------------------------------------------------------------- dataset
def test_dataset_loads_and_counts(tmp_path: Path) -> None:
    train, val = load_dataset(_tiny_dataset(tmp_path), 3, 32)
    assert train.images.shape == (2, 32, 32, 3) and train.images.dtype == np.uint8
    assert val.masks.shape == (2, 32, 32)
    assert train.class_pixels(3).sum() == 2 * 32 * 32


def test_dataset_missing_mask_names_the_file(tmp_path: Path) -> None:
    root = _tiny_dataset(tmp_path)
    (root / "train" / "masks" / "t1.png").unlink()
    with pytest.raises(DatasetError, match=r"t1\.png: no mask"):
        load_dataset(root, 3, 32)


def test_dataset_size_mismatch_names_the_file(tmp_path: Path) -> None:
    root = _tiny_dataset(tmp_path)
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "val" / "masks" / "t0.png")
    with pytest.raises(DatasetError, match=r"val/masks/t0\.png: mask of 32 x 30 px"):
        load_dataset(root, 3, 32)
    with pytest.raises(DatasetError, match=r"expected 48 x 48 \(tile_size=48\)"):
        load_dataset(root, 3, 48)


def test_dataset_class_index_out_of_range(tmp_path: Path) -> None:
    root = _tiny_dataset(tmp_path)
    mask = np.zeros((32, 32), np.uint8)
    mask[5, 5] = 7
    mask[6, 6] = IGNORE_INDEX  # allowed
    Image.fromarray(mask).save(root / "train" / "masks" / "t0.png")
    with pytest.raises(DatasetError, match=r"train/masks/t0\.png: class index 7 with 3 classes"):
        load_dataset(root, 3, 32)


def test_dataset_rgb_mask_refused(tmp_path: Path) -> None:
    root = _tiny_dataset(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "masks" / "t0.png")
    with pytest.raises(DatasetError, match="mode RGB"):
        load_dataset(root, 3, 32)


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_moves_labels_with_pixels() -> None:
    """A tile whose colour encodes its class: after the affine, every labelled pixel still has its class's
    colour (nearest labels, bilinear image; edges between classes excepted), and outside pixels are ignored."""
    t = 64
    mask = np.zeros((t, t), np.uint8)
    mask[:, 20:44] = 1
    mask[40:, :] = 2
    palette = np.array([[250, 250, 250], [40, 40, 200], [200, 40, 40]], np.uint8)
    tiles = torch.from_numpy(np.stack([palette[mask]] * 4))
    masks = torch.from_numpy(np.stack([mask] * 4))
    p = AugmentParams(brightness=0, contrast=0, saturation=0, hue=0)
    out, lab = augment_batch(tiles, masks, p, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == tiles.shape and lab.shape == masks.shape
    assert not torch.equal(lab, masks)  # it did move
    assert (lab == IGNORE_INDEX).any() or True  # may or may not leave the tile, depending on the draw
    from scipy import ndimage

    for b in range(4):
        lab_b, img_b = lab[b].numpy(), out[b].numpy().astype(int)
        for c in range(3):
            interior = ndimage.binary_erosion(lab_b == c, iterations=2)
            if interior.sum() < 20:
                continue
            err = np.abs(img_b[interior] - palette[c].astype(int)).max()
            assert err <= 2, (b, c, err)


def test_augmentation_colour_jitter_changes_pixels_not_labels() -> None:
    tiles = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)
    tiles[:, :, :, 0] = 180
    masks = torch.ones((2, 32, 32), dtype=torch.uint8)
    p = AugmentParams(rotate_deg=0, flip=False, scale=(1.0, 1.0), translate=0, shear_deg=0)
    out, lab = augment_batch(tiles, masks, p, torch.Generator().manual_seed(1))
    assert torch.equal(lab, masks)
    assert not torch.equal(out, tiles)


# ---------------------------------------------------------------------------------------------- loss and metric
def test_loss_and_dice() -> None:
    from slidefuse.train.losses import DiceMeter, ce_dice_loss

    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).float() * 20
    ce, dice = ce_dice_loss(perfect, target)
    assert float(ce) < 1e-6 and float(dice) < 1e-6
    wrong = perfect.roll(1, dims=1)
    ce_w, dice_w = ce_dice_loss(wrong, target)
    assert float(ce_w) == pytest.approx(20.0, abs=1e-3)  # every labelled pixel off by a logit gap of 20
    assert float(dice_w) == pytest.approx(1 - 1 / 3, abs=1e-4)  # per class (0 + eps) / (1 + 1 + eps), eps = 1
    meter = DiceMeter(3)
    meter.update(perfect, target)
    assert meter.mean() == 1.0
    meter2 = DiceMeter(4)  # class 3 in neither labels nor predictions: left out of the mean
    meter2.update(torch.cat([perfect, torch.zeros(1, 1, 2, 2)], 1), target)
    assert math.isnan(meter2.per_class()[3]) and meter2.mean() == 1.0


# ---------------------------------------------------------------------------------------------- pseudo-labels
def test_colour_deconvolution_separates_stains() -> None:
    h = stain_concentrations(_stain_rgb(HAEMATOXYLIN, 1.0)[None, None])[0, 0]
    e = stain_concentrations(_stain_rgb(EOSIN, 1.0)[None, None])[0, 0]
    assert h[0] > 0.8 and abs(h[1]) < 0.15
    assert e[1] > 0.8 and abs(e[0]) < 0.15
    white = stain_concentrations(np.full((1, 1, 3), 255, np.uint8))[0, 0]
    assert np.abs(white).max() < 0.01


def test_pseudo_labels_synthetic_tissue_with_a_glass_hole() -> None:
    """A tissue disc on glass, its left half haematoxylin-stained, right half eosin, with a glass hole
    inside: glass and the hole are background, the halves get their classes."""
    size, mpp = 200, 2.0
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    hole = (yy - 100) ** 2 + (xx - 140) ** 2 < 6**2
    rgb = np.full((size, size, 3), 242, np.uint8)
    rgb[disc & (xx < 100)] = _stain_rgb(HAEMATOXYLIN, 1.2)
    rgb[disc & (xx >= 100)] = _stain_rgb(EOSIN, 0.8)
    rgb[hole] = 242
    labels = pseudo_labels(rgb, mpp)
    assert (labels[~disc] == 0).mean() > 0.99
    assert (labels[hole] == 0).mean() > 0.9  # glass inside the tissue outline
    assert (labels[disc & (xx < 90)] == 1).mean() > 0.95
    assert (labels[disc & (xx > 110) & ~hole] == 2).mean() > 0.9


def test_pseudo_labels_on_real_slide(cmu_slide: Path) -> None:
    from slidefuse.runtime.slide import open_slide

    with open_slide(cmu_slide) as slide:
        rgb = slide.scaled(2.0).read_all()
    labels = pseudo_labels(rgb, 2.0)
    assert labels.shape == rgb.shape[:2] and labels.dtype == np.uint8
    frac = class_fractions(labels)
    tissue = frac[1] + frac[2]
    assert 0.2 < tissue < 0.6  # CMU-1-Small-Region: about a third of the field is tissue
    assert frac[1] / tissue > 0.15 and frac[2] / tissue > 0.15
    # haematoxylin-dense pixels are bluer / darker in the blue-minus-red sense than eosin-dominant ones
    br = rgb[..., 2].astype(float) - rgb[..., 0].astype(float)
    assert br[labels == 1].mean() > br[labels == 2].mean()


# ---------------------------------------------------------------------------------------------- options
def test_encoder_is_never_random_silently(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    root = _tiny_dataset(tmp_path / "d")
    res = runner.invoke(cli, ["train", "--encoder", "tiny", "--tiles", str(root), "--classes", CLASSES,
                              "--out", str(tmp_path / "c.safetensors"), "--tile", "32"])
    assert res.exit_code == 2, res.output
    assert "--encoder-weights" in res.output and "--random-encoder" in res.output
    assert not (tmp_path / "c.safetensors").exists()


def test_conflicting_options() -> None:
    base = dict(encoder="tiny", classes=("a", "b"), tiles=Path("x"), out=Path("c.safetensors"))
    with pytest.raises(UsageError, match="both given"):
        TrainConfig(**base, encoder_weights=Path("w"), random_encoder=True).check()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="cache_features=True with train_encoder=True"):
        TrainConfig(**base, random_encoder=True, cache_features=True, train_encoder=True).check()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"\.safetensors"):
        TrainConfig(**{**base, "out": Path("c.pt")}, random_encoder=True).check()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="epochs=0"):
        TrainConfig(**base, random_encoder=True, epochs=0).check()  # type: ignore[arg-type]


def test_device_option() -> None:
    from slidefuse.train.loop import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            resolve_device("cuda")


def test_bad_dataset_is_a_clean_cli_error(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    root = _tiny_dataset(tmp_path / "d")
    (root / "val" / "masks" / "t0.png").unlink()
    res = runner.invoke(cli, ["train", "--encoder", "tiny", "--random-encoder", "--tiles", str(root),
                              "--classes", CLASSES, "--out", str(tmp_path / "c.safetensors"), "--tile", "32"])
    assert res.exit_code == 1
    assert "t0.png: no mask" in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


# ---------------------------------------------------------------------------------------------- end to end
def test_train_lowers_val_loss_and_export_accepts_checkpoint(  # type: ignore[no-untyped-def]
    cmu_tiles: Path, tiny_encoder_file: Path, tmp_path: Path, runner
) -> None:
    """The paper's protocol (frozen encoder, augmentation on) on real-slide tiles, then `slidefuse export`."""
    ckpt = tmp_path / "ckpt" / "decoder.safetensors"
    res = runner.invoke(cli, [
        "train", "--encoder", "tiny", "--encoder-weights", str(tiny_encoder_file), "--tiles", str(cmu_tiles),
        "--classes", CLASSES, "--out", str(ckpt), "--tile", "128", "--epochs", "6", "--val-every", "3",
        "--restart-every", "3", "--batch", "8", "--lr", "2e-3", "--seed", "0",
    ])
    assert res.exit_code == 0, res.output
    assert "export with: slidefuse export tiny" in res.output
    side = json.loads(ckpt.with_suffix(".json").read_text())
    assert side["encoder"] == "tiny" and side["classes"] == list(PSEUDO_CLASSES)
    assert side["tile_size"] == 128 and side["decoder_width"] == 32 and side["mpp"] == 2.0
    assert side["files"]["encoder"] is None  # frozen encoder from a file: export uses that file
    assert side["protocol"].startswith("paper")
    hist = side["history"]
    assert [e["epoch"] for e in hist] == list(range(7))
    losses = val_losses(hist)
    assert len(losses) == 3  # before training, epochs 3 and 6
    assert losses[-1] < 0.9 * losses[0], losses
    assert side["best"]["epoch"] > 0 and side["best"]["val_dice"] > hist[0]["val_dice"]
    lrs = [e["lr"] for e in hist[1:]]  # lr at the start of each epoch: warm restart at epoch 4
    assert lrs[0] == pytest.approx(2e-3) and lrs[3] == pytest.approx(2e-3) and lrs[2] < lrs[1] < lrs[0]
    assert not (tmp_path / "ckpt" / "decoder.encoder.safetensors").exists()

    bundle = tmp_path / "bundle"
    res = runner.invoke(cli, [
        "export", "tiny", "--encoder-weights", str(tiny_encoder_file), "--decoder-weights", str(ckpt),
        "--decoder-width", "32", "--tile", "128", "--classes", CLASSES, "--mpp", "2", "--out", str(bundle),
        "--parity-tiles", "1:1",
    ])
    assert res.exit_code == 0, res.output
    from slidefuse.runtime.bundle import load_bundle

    m = load_bundle(bundle).manifest
    assert m.class_names == list(PSEUDO_CLASSES) and m.tile_size == 128 and not m.random_weights


def test_train_with_cached_features_and_trained_encoder(  # type: ignore[no-untyped-def]
    cmu_tiles: Path, tmp_path: Path
) -> None:
    """--cache-features (decoder only) and --train-encoder (encoder written beside the decoder) both learn."""
    from slidefuse.model.assembly import build_model
    from slidefuse.train.loop import train

    cached = train(TrainConfig(encoder="tiny", classes=PSEUDO_CLASSES, tiles=cmu_tiles,
                               out=tmp_path / "a.safetensors", random_encoder=True, cache_features=True,
                               epochs=4, val_every=4, lr=3e-3, tile_size=128))
    assert val_losses(cached.history)[-1] < val_losses(cached.history)[0]
    assert cached.encoder_checkpoint is not None  # random encoder: saved so export reproduces it

    both = train(TrainConfig(encoder="tiny", classes=PSEUDO_CLASSES, tiles=cmu_tiles,
                             out=tmp_path / "b.safetensors", random_encoder=True, train_encoder=True,
                             epochs=2, val_every=2, lr=1e-3, tile_size=128, augment=False))
    assert both.encoder_checkpoint is not None
    side = json.loads(both.sidecar.read_text())
    assert "NOT the paper" in side["protocol"]
    # the written encoder + decoder rebuild the model and reproduce the best validation figures
    model = build_model("tiny", 3, tile_size=128, encoder_weights=both.encoder_checkpoint,
                        decoder_weights=both.checkpoint)
    from slidefuse.train.dataset import load_split
    from slidefuse.train.loop import evaluate

    val = load_split(cmu_tiles, "val", 3, 128)
    best = next(e for e in both.history if e["epoch"] == both.best_epoch)
    assert evaluate(model, val, 8)["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)


def test_train_errors_are_slidefuse_errors(tmp_path: Path) -> None:
    from slidefuse.train.loop import train

    with pytest.raises(SlidefuseError):
        train(TrainConfig(encoder="nope", classes=("a", "b"), tiles=_tiny_dataset(tmp_path / "d"),
                          out=tmp_path / "c.safetensors", random_encoder=True, tile_size=32))
