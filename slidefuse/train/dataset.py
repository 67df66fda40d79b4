"""Tile datasets for `slidefuse train`: layout, validation, loading, and the augmentation.

Layout (one folder, two splits; file stems pair an image with its mask):

    DIR/train/images/<stem>.png   RGB tile, T x T px (T = --tile), at the microns per pixel the model will use
    DIR/train/masks/<stem>.png    uint8 class index per pixel (PNG mode L or P), same T x T size;
                                  0 .. C-1 for the C classes of --classes (0 = background), 255 = ignore
    DIR/val/images/<stem>.png     the same for the validation split
    DIR/val/masks/<stem>.png

Every pair is checked before training starts: a missing mask, a size mismatch, a mask that is not
single-channel, or a class index >= C (other than 255) is a DatasetError naming the file and the fix.
Tiles are small, so a split is held in memory as uint8 arrays (T * T * 4 bytes per tile).

Augmentation (`augment_batch`, training only; labels follow the image exactly, resampled nearest-neighbour):
random affine (rotation 0..360 deg, flips, isotropic scale 0.8..1.25, translation up to 10 % of T, shear up to
10 deg; pixels from outside the tile are white glass in the image and ignored (255) in the label) and
brightness / contrast / saturation / hue jitter. Augmented tiles are rounded back to uint8, so the model sees
exactly what it sees at inference (the SegmentationModel normalises uint8 tiles itself).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.errors import SlidefuseError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = 255  # mask value that no loss or metric counts (also what the affine fills in from outside)
SPLITS = ("train", "val")
LAYOUT_HELP = (
    "DIR/train/images/*.png + DIR/train/masks/*.png (same stem; mask = uint8 class index per pixel, "
    "255 = ignore) and DIR/val/images + DIR/val/masks; every tile T x T px with T = tile_size"
)


class DatasetError(SlidefuseError, ValueError):
    """A tile dataset that does not follow the documented layout."""


@dataclass(frozen=True)
class TileSplit:
    """One split held in memory."""

    name: str  # "train" or "val"
    stems: tuple[str, ...]  # file stems, sorted
    images: np.ndarray  # uint8 [N, T, T, 3] RGB 0..255
    masks: np.ndarray  # uint8 [N, T, T] class indices 0..C-1, IGNORE_INDEX = ignore

    def __len__(self) -> int:
        return len(self.stems)

    def class_pixels(self, num_classes: int) -> np.ndarray:
        """int64 [C]: labelled pixels per class in this split."""
        counts = np.bincount(self.masks.ravel(), minlength=256)
        return counts[:num_classes].astype(np.int64)


@dataclass(frozen=True)
class AugmentParams:
    rotate_deg: float = 180.0  # uniform rotation in [-rotate_deg, rotate_deg]
    flip: bool = True  # random horizontal flip (with the rotation this covers all 8 dihedral poses)
    scale: tuple[float, float] = (0.8, 1.25)  # isotropic scale range (log-uniform)
    translate: float = 0.1  # translation up to this fraction of the tile side, per axis
    shear_deg: float = 10.0  # shear in [-shear_deg, shear_deg]
    brightness: float = 0.15  # brightness factor in [1 - b, 1 + b]
    contrast: float = 0.15  # contrast factor in [1 - c, 1 + c]
    saturation: float = 0.15  # saturation factor in [1 - s, 1 + s]
    hue: float = 0.03  # hue shift in [-h, h] turns (0.5 = 180 deg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- loading
def _read_png(path: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if what == "image":
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            if im.mode not in ("L", "P"):
                raise DatasetError(
                    f"{path}: mask in PNG mode {im.mode}; expected a single-channel uint8 class-index PNG "
                    f"(mode L or P): save the class indices, not colours"
                )
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable PNG ({exc}); re-write the {what}") from exc


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of `root/split`, sorted by stem; raises DatasetError for a missing folder or mask."""
    images_dir, masks_dir = root / split / "images", root / split / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DatasetError(f"{d}: no such folder; expected the layout {LAYOUT_HELP}")
    images = sorted(images_dir.glob("*.png"))
    if not images:
        raise DatasetError(f"{images_dir}: no *.png tiles; expected the layout {LAYOUT_HELP}")
    pairs = []
    for img in images:
        mask = masks_dir / img.name
        if not mask.is_file():
            raise DatasetError(f"{img}: no mask {mask}; every image needs a mask PNG with the same name")
        pairs.append((img, mask))
    extra = sorted({p.stem for p in masks_dir.glob("*.png")} - {p.stem for p in images})
    if extra:
        log.warning("%s: %d masks without an image are ignored (first: %s.png)", masks_dir, len(extra), extra[0])
    return pairs


def load_split(root: Path | str, split: str, num_classes: int, tile_size: int) -> TileSplit:
    """Load and check one split of the dataset at `root` (see the module docstring for the layout)."""
    root = Path(root)
    pairs = list_pairs(root, split)
    n = len(pairs)
    images = np.empty((n, tile_size, tile_size, 3), dtype=np.uint8)
    masks = np.empty((n, tile_size, tile_size), dtype=np.uint8)
    for i, (img_path, mask_path) in enumerate(pairs):
        img = _read_png(img_path, "image")
        mask = _read_png(mask_path, "mask")
        if img.shape[:2] != (tile_size, tile_size):
            raise DatasetError(
                f"{img_path}: image of {img.shape[1]} x {img.shape[0]} px; expected {tile_size} x {tile_size} "
                f"(tile_size={tile_size}): cut tiles of the model's tile size or pass tile_size={img.shape[1]}"
            )
        if mask.shape != img.shape[:2]:
            raise DatasetError(
                f"{mask_path}: mask of {mask.shape[1]} x {mask.shape[0]} px, its image {img_path.name} is "
                f"{img.shape[1]} x {img.shape[0]}: masks must have their image's size"
            )
        bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(
                f"{mask_path}: class index {int(mask[bad].max())} with {num_classes} classes (valid: "
                f"0..{num_classes - 1}, {IGNORE_INDEX} = ignore): fix the mask or the classes"
            )
        images[i], masks[i] = img, mask
    return TileSplit(split, tuple(p[0].stem for p in pairs), images, masks)


def load_dataset(root: Path | str, num_classes: int, tile_size: int) -> tuple[TileSplit, TileSplit]:
    """(train, val) splits of the dataset at `root`, checked; see the module docstring for the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"tiles={root}: no such folder; expected the layout {LAYOUT_HELP}")
    train = load_split(root, "train", num_classes, tile_size)
    val = load_split(root, "val", num_classes, tile_size)
    return train, val


# ---------------------------------------------------------------------------------------------- augmentation
def _affine_thetas(n: int, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """float [n, 2, 3] affine matrices in normalised coordinates (output -> input sampling grid)."""
    import torch

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-p.rotate_deg, p.rotate_deg) * math.pi / 180
    shear = uniform(-p.shear_deg, p.shear_deg) * math.pi / 180
    scale = torch.exp(uniform(math.log(p.scale[0]), math.log(p.scale[1])))
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if p.flip else torch.ones(n)
    tx, ty = uniform(-p.translate, p.translate) * 2, uniform(-p.translate, p.translate) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # A = R(angle) @ Shear @ diag(flip, 1) / scale  (sampling grid: zooming in = scale > 1)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.stack([torch.stack([torch.ones(n), torch.tan(shear)], -1),
                      torch.stack([torch.zeros(n), torch.ones(n)], -1)], -2)
    fl = torch.diag_embed(torch.stack([flip, torch.ones(n)], -1))
    a = rot @ sh @ fl / scale.view(n, 1, 1)
    return torch.cat([a, torch.stack([tx, ty], -1).unsqueeze(-1)], dim=-1)


def random_affine(images: torch.Tensor, masks: torch.Tensor, p: AugmentParams,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random affine for image and label: float [B, 3, T, T] (0..255) and uint8 [B, T, T] ->
    (float [B, 3, T, T] bilinear, white outside; uint8 [B, T, T] nearest, IGNORE_INDEX outside)."""
    import torch
    import torch.nn.functional as F

    b, _, t, _ = images.shape
    theta = _affine_thetas(b, p, gen).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [b, 3, t, t], align_corners=False)
    inside = F.grid_sample(torch.ones(b, 1, t, t, dtype=images.dtype, device=images.device), grid, mode="nearest",
                           padding_mode="zeros", align_corners=False)[:, 0] > 0.5
    out = F.grid_sample(images - 255.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 255.0
    lab = F.grid_sample(masks.unsqueeze(1).to(images.dtype), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].round().to(torch.uint8)
    lab[~inside] = IGNORE_INDEX
    return out, lab


_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights (R, G, B)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def colour_jitter(images: torch.Tensor, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per tile, batched: float [B, 3, T, T] in 0..255 -> same.

    brightness: x * b; contrast: blend with the tile's mean grey; saturation: blend with each pixel's grey;
    hue: rotation of the chroma plane in YIQ space by 360 * h degrees (a linear map, so cheap on a batch).
    """
    import torch

    b = images.shape[0]
    dev = images.device
    f = (2 * torch.rand(b, 4, generator=gen) - 1).to(dev)  # four uniforms in [-1, 1] per tile (CPU generator)
    bright = (1 + p.brightness * f[:, 0]).view(b, 1, 1, 1)
    contrast = (1 + p.contrast * f[:, 1]).view(b, 1, 1, 1)
    sat = (1 + p.saturation * f[:, 2]).view(b, 1, 1, 1)
    grey_w = torch.tensor(_GREY, device=dev).view(1, 3, 1, 1)
    x = images * bright
    mean_grey = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean_grey) * contrast + mean_grey
    grey = (x * grey_w).sum(1, keepdim=True)
    x = (x - grey) * sat + grey
    if p.hue > 0:
        to_yiq = torch.tensor(_RGB_TO_YIQ, device=dev)
        angle = 2 * torch.pi * p.hue * f[:, 3]
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(b, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # [B, 3, 3], RGB -> RGB
        x = torch.einsum("bij,bjhw->bihw", m, x)
    return x.clamp(0.0, 255.0)


def augment_batch(tiles: torch.Tensor, masks: torch.Tensor, p: AugmentParams,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation: uint8 tiles [B, T, T, 3] (RGB 0..255) and uint8 masks [B, T, T] ->
    augmented uint8 tiles [B, T, T, 3] and uint8 masks [B, T, T] (IGNORE_INDEX where the affine left the tile)."""
    import torch

    x = tiles.permute(0, 3, 1, 2).float()
    x, lab = random_affine(x, masks, p, gen)
    x = colour_jitter(x, p, gen)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous(), lab
