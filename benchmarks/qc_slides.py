"""Test slides for quality control, made from the real slides: marker ink, a blurred region, a fold.

For each source slide (CMU-1-Small-Region.svs, the TCGA slide, the Ki-67 OME-TIFF) this writes, beside a
ground-truth PNG per artifact (level-0 frame, 255 where the artifact was drawn):

- ``<stem>-ink.tif``: marker strokes (blue, green, black, red) drawn as a multiplicative filter (a marker is a
  coloured transparent film: out = in * (1 - a + a * ink)), with opacity ``a`` between 0.55 and 0.95 that varies
  along the stroke (texture) and falls off at the stroke's edge; strokes cross glass and tissue.
- ``<stem>-inkglass.tif``: the same strokes kept only on the glass (60 um or more from the tissue), the usual
  place of a pathologist's marks: the copy the class areas are compared on.
- ``<stem>-blur.tif``: one rectangle of tissue Gaussian-blurred (sigma ``BLUR_SIGMA_UM`` um).
- ``<stem>-fold.tif``: one strip where the tissue is doubled (the slide times itself shifted by a few hundred
  um, two layers' transmittances multiplied) and darkened a little, as a fold is.

Each is a tiled pyramidal TIFF (deflate, lossless) with the source's pixel size in its resolution tags.

    python benchmarks/qc_slides.py --out .cache/qc_slides
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.slides import require_slide

SOURCES = {"cmu": ("CMU-1-Small-Region.svs", None), "tcga": ("TCGA-CR-7395-01A-01-TS1.svs", 0.25),
           "ki67": ("OS-2-vsi.ome.tif", None)}  # key -> (file, mpp for a file without one)
INKS = {"blue": (30, 60, 200), "green": (20, 140, 60), "black": (35, 30, 40), "red": (205, 30, 40)}
BLUR_SIGMA_UM = 4.0  # the blurred region's Gaussian sigma, um
STROKE_UM = (90.0, 160.0)  # stroke widths, um


@dataclass(frozen=True)
class Made:
    slide: Path  # the TIFF written
    truth: Path  # ground-truth PNG (level 0, 255 = drawn)
    mpp: float


def read_level0(name: str, mpp: float | None) -> tuple[np.ndarray, float]:
    """The source slide's level 0 as uint8 [H, W, 3] RGB and its um/px (read by slidefuse's reader)."""
    from slidefuse.runtime.slide import open_slide

    slide = open_slide(require_slide(name), default_mpp=mpp)
    try:
        view = slide.scaled(slide.info.mpp)
        return view.read(0, 0, view.width, view.height), float(slide.info.mpp)
    finally:
        slide.close()


def write_tiff(rgb: np.ndarray, mpp: float, path: Path) -> Path:
    import pyvips

    path.parent.mkdir(parents=True, exist_ok=True)
    img = pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).copy(interpretation="srgb")
    res = 1000.0 / mpp  # px per mm
    img.tiffsave(str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="deflate",
                 xres=res, yres=res, resunit="cm")
    return path


def write_truth(mask: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def _path(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random stroke: [n, 2] (y, x) points crossing the image."""
    n = 400
    t = np.linspace(0, 1, n)
    y0, y1 = rng.uniform(0.05, 0.95, 2) * h
    x0, x1 = rng.uniform(0.0, 0.15) * w, rng.uniform(0.85, 1.0) * w
    if rng.random() < 0.5:  # vertical-ish instead
        y0, y1, x0, x1 = rng.uniform(0, 0.15) * h, rng.uniform(0.85, 1.0) * h, *(rng.uniform(0.05, 0.95, 2) * w)
    wobble = rng.uniform(0.03, 0.08) * min(h, w) * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * t + rng.random()))
    ys = y0 + (y1 - y0) * t + wobble * (x1 - x0) / max(abs(x1 - x0) + abs(y1 - y0), 1)
    xs = x0 + (x1 - x0) * t - wobble * (y1 - y0) / max(abs(x1 - x0) + abs(y1 - y0), 1)
    return np.stack([ys, xs], axis=1)


def stroke_alpha(shape: tuple[int, int], mpp: float, rng: np.random.Generator) -> np.ndarray:
    """float32 [h, w] opacity of one stroke: 0.55..0.95 inside, textured, falling off over its last 20%."""
    h, w = shape
    line = np.zeros(shape, dtype=bool)
    pts = _path(rng, h, w)
    dense = np.concatenate([np.linspace(pts[i], pts[i + 1], 20) for i in range(len(pts) - 1)])
    iy, ix = np.round(dense).astype(int).T
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    line[iy[ok], ix[ok]] = True
    half = rng.uniform(*STROKE_UM) / 2 / mpp
    dist = np.asarray(ndimage.distance_transform_edt(~line), dtype=np.float32)
    edge = np.clip((half - dist) / (0.2 * half), 0, 1)
    texture = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 6.0 / mpp)
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    return np.asarray(edge * (0.55 + 0.4 * texture), dtype=np.float32)


def glass(rgb: np.ndarray, mpp: float, margin_um: float = 60.0) -> np.ndarray:
    """bool [H, W]: glass at least `margin_um` from the tissue slidefuse finds (on an 8x reduced copy)."""
    from slidefuse.runtime.tissue import detect_tissue

    small = rgb[::8, ::8]
    tissue = detect_tissue(np.ascontiguousarray(small), thumb_mpp=mpp * 8)
    near = ndimage.distance_transform_edt(~tissue) <= margin_um / (mpp * 8)
    return np.repeat(np.repeat(~near, 8, axis=0), 8, axis=1)[:rgb.shape[0], :rgb.shape[1]]


def draw_ink(rgb: np.ndarray, mpp: float, seed: int, glass_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(inked copy, bool truth): one stroke per ink colour; `glass_only`: strokes cut to the glass (a
    pathologist's marks beside the tissue), else across glass and tissue alike."""
    rng = np.random.default_rng(seed)
    out = rgb.astype(np.float32)
    truth = np.zeros(rgb.shape[:2], dtype=bool)
    allowed = glass(rgb, mpp) if glass_only else np.ones(rgb.shape[:2], dtype=bool)
    for colour in INKS.values():
        a = (stroke_alpha(rgb.shape[:2], mpp, rng) * allowed)[..., None]
        out *= 1 - a + a * (np.asarray(colour, dtype=np.float32) / 255)
        truth |= a[..., 0] > 0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), truth


def _tissue_box(rgb: np.ndarray, frac: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of `frac` of the slide's height and width centred on the tissue's centroid."""
    from slidefuse.runtime.tissue import saturation_value

    sat, _ = saturation_value(rgb[::8, ::8])
    ys, xs = np.nonzero(sat > 0.15)
    cy, cx = (ys.mean() * 8, xs.mean() * 8) if ys.size else (rgb.shape[0] / 2, rgb.shape[1] / 2)
    h, w = int(rgb.shape[0] * frac), int(rgb.shape[1] * frac)
    y0 = int(np.clip(cy - h / 2, 0, rgb.shape[0] - h))
    x0 = int(np.clip(cx - w / 2, 0, rgb.shape[1] - w))
    return y0, y0 + h, x0, x0 + w


def draw_blur(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    y0, y1, x0, x1 = _tissue_box(rgb, 0.4)
    out = rgb.copy()
    sigma = BLUR_SIGMA_UM / mpp
    out[y0:y1, x0:x1] = ndimage.gaussian_filter(rgb[y0:y1, x0:x1].astype(np.float32), (sigma, sigma, 0)).round()
    truth = np.zeros(rgb.shape[:2], dtype=bool)
    truth[y0:y1, x0:x1] = True
    return out, truth


def draw_fold(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """A vertical strip (a fifth of the width) through the tissue, doubled with the tissue 300 um to its right."""
    _, _, x0, x1 = _tissue_box(rgb, 0.2)
    shift = int(300 / mpp)
    src = np.roll(rgb, -shift, axis=1)[:, x0:x1].astype(np.float32) / 255
    strip = rgb[:, x0:x1].astype(np.float32) * src * 0.9
    out = rgb.copy()
    out[:, x0:x1] = np.clip(np.rint(strip), 0, 255).astype(np.uint8)
    truth = np.zeros(rgb.shape[:2], dtype=bool)
    truth[:, x0:x1] = True
    return out, truth


def make(key: str, out: Path) -> dict[str, Made]:
    name, mpp_given = SOURCES[key]
    rgb, mpp = read_level0(name, mpp_given)
    made: dict[str, Made] = {}
    seed = sum(map(ord, key))
    for kind, (img, truth) in {"ink": draw_ink(rgb, mpp, seed), "inkglass": draw_ink(rgb, mpp, seed, glass_only=True),
                               "blur": draw_blur(rgb, mpp), "fold": draw_fold(rgb, mpp)}.items():
        slide = write_tiff(img, mpp, out / f"{key}-{kind}.tif")
        made[kind] = Made(slide, write_truth(truth, out / f"{key}-{kind}.truth.png"), mpp)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".cache/qc_slides"))
    ap.add_argument("--slides", default=",".join(SOURCES), help="comma-separated keys of SOURCES")
    args = ap.parse_args()
    listing = {}
    for key in args.slides.split(","):
        listing[key] = {k: {"slide": str(m.slide), "truth": str(m.truth), "mpp": m.mpp}
                        for k, m in make(key, args.out).items()}
        print(key, "->", ", ".join(str(m["slide"]) for m in listing[key].values()))
    (args.out / "index.json").write_text(json.dumps(listing, indent=1))


if __name__ == "__main__":
    main()
