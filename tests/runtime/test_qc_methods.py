"""Quality-control methods on small synthetic images: ink, folds, blur, the stain check, the policy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from slidefuse.errors import UsageError
from slidefuse.runtime.qc.base import QCInput, QCMap
from slidefuse.runtime.qc.blur import BlurDetector
from slidefuse.runtime.qc.fold import detect_folds
from slidefuse.runtime.qc.ink import detect_ink
from slidefuse.runtime.qc.policy import actions, check_mode
from slidefuse.runtime.qc.stain import HE, IHC, UNKNOWN, estimate_stain
from slidefuse.runtime.slide.reader import InMemorySlide

MPP = 4.0  # um/px of the synthetic thumbnails


def he_tissue(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [h, w, 3] glass with an H&E-like textured ellipse (pink stroma, purple nuclei), and its mask."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 242, dtype=np.float32)
    yy, xx = np.mgrid[:h, :w]
    tissue = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    pink = np.asarray([225, 140, 190], np.float32)
    purple = np.asarray([120, 70, 160], np.float32)
    nuclei = ndimage.gaussian_filter(rng.random((h, w)), 1.0) > 0.6  # about a fifth of the tissue, as in stroma
    colour = np.where(nuclei[..., None], purple, pink) + rng.normal(0, 8, (h, w, 3))
    img[tissue] = colour[tissue]
    return np.clip(img, 0, 255).astype(np.uint8), tissue


def stroke(img: np.ndarray, colour: tuple[int, int, int], rows: slice, alpha: float = 0.8) -> np.ndarray:
    """`img` with a horizontal marker band over `rows` (multiplicative, like a coloured film); the band's mask."""
    out = img.astype(np.float32)
    band = np.zeros(img.shape[:2], dtype=bool)
    band[rows] = True
    out[band] *= 1 - alpha + alpha * np.asarray(colour, np.float32) / 255
    img[...] = np.clip(out, 0, 255).astype(np.uint8)
    return band


@pytest.mark.parametrize("colour", [(30, 60, 200), (20, 140, 60), (205, 30, 40), (35, 30, 40)],
                         ids=["blue", "green", "red", "black"])
def test_each_ink_colour_is_found_over_glass_and_tissue(colour: tuple[int, int, int]) -> None:
    img, tissue = he_tissue(300, 400)
    band = stroke(img, colour, slice(130, 160))
    found = detect_ink(img, MPP)
    assert (found & band).sum() / band.sum() >= 0.95
    assert (found & ~band).sum() / max(found.sum(), 1) <= 0.1  # precision >= 0.9
    assert (found & band & tissue).any() and (found & band & ~tissue).any()


def test_clean_he_tissue_is_not_ink() -> None:
    img, tissue = he_tissue(300, 400, seed=3)
    assert (detect_ink(img, MPP) & tissue).sum() / tissue.sum() <= 0.01


def test_a_fine_thumbnail_is_block_averaged_and_answered_at_its_own_size() -> None:
    img, _ = he_tissue(300, 400)
    band = stroke(img, (30, 60, 200), slice(130, 160))
    fine = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)  # the same slide at 1 um/px
    found = detect_ink(fine, 1.0)
    assert found.shape == fine.shape[:2]
    big_band = np.repeat(np.repeat(band, 4, axis=0), 4, axis=1)
    assert (found & big_band).sum() / big_band.sum() >= 0.95


def test_a_doubled_strip_of_tissue_is_a_fold_and_the_rest_is_not() -> None:
    img, tissue = he_tissue(300, 400, seed=1)
    folded = img.copy()
    strip = np.zeros(tissue.shape, dtype=bool)
    strip[:, 180:240] = True
    doubled = img[:, 180:240].astype(np.float32) * img[:, 200:260].astype(np.float32) / 255 * 0.9
    folded[:, 180:240] = np.where(tissue[:, 180:240, None], doubled, img[:, 180:240]).astype(np.uint8)
    found, median = detect_folds(folded, tissue, MPP)
    assert median > 0
    assert (found & strip & tissue).sum() / (strip & tissue).sum() >= 0.8
    assert not (found & ~strip).any()
    assert not detect_folds(img, tissue, MPP)[0].any()


def test_blur_flags_the_blurred_half_and_not_the_sharp_half() -> None:
    rng = np.random.default_rng(0)
    h, w = 1024, 1024  # 2 um/px: about 2 x 2 mm, cells of 128 um = 64 px
    texture = (ndimage.gaussian_filter(rng.random((h, w)), 1.0) > 0.5).astype(np.float32)
    rgb = np.stack([230 - 110 * texture, 140 - 70 * texture, 190 - 30 * texture], axis=-1)
    rgb[:, : w // 2] = ndimage.gaussian_filter(rgb[:, : w // 2], (3, 3, 0))  # 6 um sigma
    img = np.clip(rgb, 0, 255).astype(np.uint8)
    slide = InMemorySlide(img, 2.0)
    thumb_mpp = 8.0
    thumb = img[::4, ::4]
    tissue = np.ones(thumb.shape[:2], dtype=bool)
    m = BlurDetector().run(QCInput(thumb, tissue, thumb_mpp, slide, None, 2.0))
    left, right = m.mask[:, : thumb.shape[1] // 2], m.mask[:, thumb.shape[1] // 2:]
    assert left.mean() >= 0.9 and right.mean() <= 0.05
    assert m.tiles_assessed == 256 and m.tiles_flagged == 128  # 16 x 16 cells of 128 um (16 thumbnail px)
    assert m.score is not None and np.isfinite(m.score).all()


def _flat(colour: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    img = np.empty((50, 50, 3), dtype=np.uint8)
    img[:] = colour
    return img, np.ones((50, 50), dtype=bool)


def test_stain_estimate_tells_h_and_e_from_h_dab() -> None:
    assert estimate_stain(*_flat((220, 130, 190))).stain == HE  # pink eosin
    brown = estimate_stain(*_flat((150, 110, 80)))  # DAB brown
    assert brown.stain == IHC and not brown.matches("H&E") and brown.matches("H-DAB") and brown.matches("other")
    empty = estimate_stain(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))
    assert empty.stain == UNKNOWN and empty.matches("H&E")


def test_policy_modes() -> None:
    assert actions("off") == {}
    assert set(actions("flag").values()) == {"flag"}
    assert set(actions("exclude").values()) == {"exclude"}
    assert actions("default") == {"ink": "exclude", "folds": "flag", "blur": "flag"}
    with pytest.raises(UsageError, match="qc must be one of off, flag, default, exclude"):
        check_mode("some")


def test_a_qc_map_must_be_a_bool_raster() -> None:
    with pytest.raises(ValueError, match="2-D bool"):
        QCMap("x", np.zeros((3, 3), np.uint8), 1.0)
    with pytest.raises(ValueError, match="positive"):
        QCMap("x", np.zeros((3, 3), bool), 0.0)


def test_rgb_to_hed_equals_scikit_images_rgb2hed() -> None:
    """The stain check's colour deconvolution (numpy, so the base install needs no scikit-image) against the
    library it repeats."""
    skcolor = pytest.importorskip("skimage.color")
    from slidefuse.runtime.qc.stain import rgb_to_hed

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4096, 3), dtype=np.uint8)
    pixels[:3] = [[0, 0, 0], [255, 255, 255], [120, 60, 200]]
    np.testing.assert_allclose(rgb_to_hed(pixels), skcolor.rgb2hed(pixels[None])[0], rtol=0, atol=1e-12)
