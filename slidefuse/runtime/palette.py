"""Class colours: the exporter's default palette (what a bundle records when its maker chose none) and the
display palette that the preview and the viewer draw with.

A bundle always records one colour per class. Its colours are the maker's choice ("user set") unless they are
exactly what `slidefuse export` writes when no `--colors` is given (`default_colors`), or the bundle is the
demonstration bundle (its colours name the stains its classes detect, so they look like the tissue). When they
are not the maker's choice, masks are drawn in `REVIEW_PALETTE`: colours far from haematoxylin and eosin in Lab
space (at least 60 from the mean tissue colour of an H&E slide), so an overlay never looks like stained tissue.
"""

from __future__ import annotations

from collections.abc import Sequence

Colour = tuple[int, int, int]

# Class colours when none are given: background black, then a fixed palette of distinct colours
# (ColorBrewer Set1 followed by Dark2), cycled when there are more classes.
BACKGROUND_COLOR: Colour = (0, 0, 0)
PALETTE: tuple[Colour, ...] = (
    (228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (255, 255, 51),
    (166, 86, 40), (247, 129, 191), (27, 158, 119), (217, 95, 2), (117, 112, 179), (231, 41, 138),
    (102, 166, 30), (230, 171, 2), (153, 153, 153),
)

# Display colours for classes 1, 2, ... on H&E, cycled: green, yellow, cyan, orange, blue, lime, dark green, teal.
REVIEW_PALETTE: tuple[Colour, ...] = (
    (0, 200, 83), (255, 214, 0), (0, 229, 255), (255, 109, 0), (41, 98, 255), (118, 255, 3), (0, 120, 0),
    (0, 150, 136),
)


def default_colors(n: int) -> tuple[Colour, ...]:
    """RGB colours (0..255) for `n` classes: class 0 (background) black, then PALETTE in order."""
    return tuple([BACKGROUND_COLOR] + [PALETTE[(i - 1) % len(PALETTE)] for i in range(1, n)])[:n]


def colours_chosen(colors: Sequence[Sequence[int]], demo: bool) -> bool:
    """True when a bundle's class colours were chosen by its maker (see the module docstring)."""
    return not demo and tuple(tuple(int(v) for v in c) for c in colors) != default_colors(len(colors))


def display_colors(colors: Sequence[Sequence[int]], demo: bool) -> tuple[Colour, ...]:
    """The colour each class is drawn in: the bundle's own when its maker chose them, else REVIEW_PALETTE
    (class 0, background, is never drawn; it keeps the bundle's colour)."""
    own = tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors)
    if colours_chosen(colors, demo):
        return own
    return own[:1] + tuple(REVIEW_PALETTE[(i - 1) % len(REVIEW_PALETTE)] for i in range(1, len(own)))
