"""Reading whole-slide images: ``open_slide`` -> ``SlideReader`` -> ``ScaledView`` tiles in true colours.

- ``metadata``: the pixel size from an ordered chain of sources, objective, report properties;
- ``tiffdir``: the few TIFF directory tags the colour pipeline needs, read straight from the file;
- ``colour``: stored pixels -> sRGB uint8 (mislabelled JPEG YCbCr, alpha, grey, 16 bits, CMYK, ICC);
- ``reader``: ``SlideReader`` (libvips' openslideload / tiffload) and ``InMemorySlide``;
- ``view``: ``ScaledView``, the slide at a pixel size, read from many threads;
- ``decode``: what the decoders report about corrupt tile data, traced to the stored tile and counted per slide.
"""

from slidefuse.runtime.coords import PLAUSIBLE_MPP
from slidefuse.runtime.slide.colour import COLOUR_TRANSFORMS, ColourTransform
from slidefuse.runtime.slide.reader import (
    SMALL_LEVEL_PIXELS,
    VENDOR_SUFFIXES,
    InMemorySlide,
    SlideReader,
    open_slide,
)
from slidefuse.runtime.slide.view import ScaledView

__all__ = [
    "COLOUR_TRANSFORMS",
    "PLAUSIBLE_MPP",
    "SMALL_LEVEL_PIXELS",
    "VENDOR_SUFFIXES",
    "ColourTransform",
    "InMemorySlide",
    "ScaledView",
    "SlideReader",
    "open_slide",
]
