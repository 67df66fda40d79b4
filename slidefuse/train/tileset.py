"""Make a pseudo-labelled tile dataset (the layout of `slidefuse.train.dataset`) from real H&E slides.

For each slide and each scale jitter factor s, the whole slide is read at `mpp * s` um/px (the slides at hand
are small; a large slide would be read region by region), pseudo-labelled as a whole (`pseudolabels`, so tissue
detection and the stain threshold see the whole slide), and random `tile` x `tile` crops are cut from it with a
random flip / 90-degree rotation. Crops of the training split lie in the top (1 - val_fraction) of each slide;
validation crops (scale 1 only, no flips) lie in the bottom `val_fraction`, so the two splits never share
pixels. Most crops are drawn where the tile holds tissue; `background_share` of them anywhere.

Writes `out/{train,val}/{images,masks}/*.png` and `out/dataset.json` (classes, colours, mpp, slides, the pixel
size assumed for slides without one, per-class pixel fractions, parameters).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.train.pseudolabels import PSEUDO_CLASSES, PSEUDO_COLORS, PseudoLabelParams, pseudo_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideSource:
    path: Path  # slide file
    mpp: float | None = None  # pixel size to assume when the file has none (recorded as an assumption)


@dataclass(frozen=True)
class TileSetParams:
    mpp: float = 1.0  # microns per pixel of the tiles (the model's mpp)
    tile: int = 256  # tile side in px
    train_per_slide: int = 120  # training tiles per slide (spread over the scales)
    val_per_slide: int = 16  # validation tiles per slide
    scales: tuple[float, ...] = (0.8, 1.0, 1.25)  # scale jitter: slides are read at mpp * s
    val_fraction: float = 0.2  # bottom fraction of each slide reserved for validation
    min_tissue: float = 0.15  # a "tissue" crop holds at least this fraction of tissue
    background_share: float = 0.1  # fraction of crops drawn anywhere (mostly glass)
    seed: int = 0  # seed of the crop positions and flips
    labels: PseudoLabelParams = field(default_factory=PseudoLabelParams)  # pseudo-label parameters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, optimize=False, compress_level=1)


def _crop_positions(tissue: np.ndarray, y_lo: int, y_hi: int, tile: int, n: int, min_tissue: float,
                    background_share: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `n` crop corners (x, y) with y_lo <= y and y + tile <= y_hi; mostly crops holding tissue."""
    h, w = tissue.shape
    if y_hi - y_lo < tile or w < tile:
        return []
    integral = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        x = int(rng.integers(0, w - tile + 1))
        y = int(rng.integers(y_lo, y_hi - tile + 1))
        frac = (integral[y + tile, x + tile] - integral[y, x + tile] - integral[y + tile, x]
                + integral[y, x]) / tile**2
        if frac >= min_tissue or rng.random() < background_share:
            out.append((x, y))
    return out


def _prepare_out(out: Path, sources: Sequence[SlideSource]) -> None:
    """Refuse a non-empty `out` or no slides, then create the train/val image and mask folders."""
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty; choose a new folder or remove it")
    if not sources:
        raise UsageError("no slides given: pass at least one H&E slide")
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (out / split / kind).mkdir(parents=True, exist_ok=True)


def make_pseudolabel_dataset(sources: Sequence[SlideSource], out: Path | str,
                             params: TileSetParams | None = None) -> dict[str, Any]:
    """Write the dataset (see the module docstring) into `out` (created; must be empty or absent) and return
    the summary also written to `out/dataset.json`."""
    from slidefuse.runtime.slide import open_slide

    p = params or TileSetParams()
    out = Path(out)
    _prepare_out(out, sources)
    rng = np.random.default_rng(p.seed)
    counts = {"train": np.zeros(len(PSEUDO_CLASSES), np.int64), "val": np.zeros(len(PSEUDO_CLASSES), np.int64)}
    n_tiles = {"train": 0, "val": 0}
    slides_info = []
    for src in sources:
        with open_slide(src.path, mpp=src.mpp) as slide:
            stem = src.path.name.split(".")[0]
            slides_info.append({"file": src.path.name, "mpp": slide.info.mpp,
                                "mpp_assumed": src.mpp is not None})
            for s in p.scales:
                mpp = p.mpp * s
                rgb = slide.scaled(mpp).read_all()
                labels = pseudo_labels(rgb, mpp, p.labels)
                tissue = labels > 0
                split_y = int(round(rgb.shape[0] * (1.0 - p.val_fraction)))
                n_train = int(round(p.train_per_slide / len(p.scales)))
                jobs = [("train", _crop_positions(tissue, 0, split_y, p.tile, n_train, p.min_tissue,
                                                  p.background_share, rng))]
                if s == 1.0:
                    jobs.append(("val", _crop_positions(tissue, split_y, rgb.shape[0], p.tile, p.val_per_slide,
                                                        p.min_tissue, p.background_share, rng)))
                for split, positions in jobs:
                    for x, y in positions:
                        img = rgb[y : y + p.tile, x : x + p.tile]
                        lab = labels[y : y + p.tile, x : x + p.tile]
                        if split == "train":
                            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                            img, lab = np.rot90(img, k), np.rot90(lab, k)
                            if flip:
                                img, lab = img[:, ::-1], lab[:, ::-1]
                        name = f"{stem}_s{s:g}_x{x}_y{y}_{n_tiles[split]:04d}.png"
                        _save_png(np.ascontiguousarray(img), out / split / "images" / name)
                        _save_png(np.ascontiguousarray(lab), out / split / "masks" / name)
                        counts[split] += np.bincount(lab.ravel(), minlength=len(PSEUDO_CLASSES))
                        n_tiles[split] += 1
                log.info("%s at %.2f um/px: %d x %d px, %d crops", src.path.name, mpp, rgb.shape[1], rgb.shape[0],
                         sum(len(j[1]) for j in jobs))
    summary = {
        "kind": "slidefuse pseudo-labelled tiles (colour deconvolution; no pathologist)",
        "classes": list(PSEUDO_CLASSES), "colors": [list(c) for c in PSEUDO_COLORS],
        "mpp": p.mpp, "tile": p.tile, "tiles": n_tiles,
        "class_fractions": {k: [round(float(x), 4) for x in v / max(1, v.sum())] for k, v in counts.items()},
        "slides": slides_info, "params": p.to_dict(),
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
