"""The viewer's starlette application: read-only, and it serves nothing but the static files shipped with the
package, the pages, tiles rendered from the slides and files that OUT's run log records, and those files.

URLs name slides by their position in the run log and files by their recorded name; a request for anything
else (an unknown slide, layer, tile, or file name, `..`, an absolute path) is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import require
from slidefuse.view.cache import TileCache
from slidefuse.view.catalogue import Catalogue, SlideEntry, load_catalogue
from slidefuse.view.layers import SlideLayers, qc_file
from slidefuse.view.pages import cohort_page, slide_page
from slidefuse.view.tiles import encode

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
THUMB_SIDE = 160  # cohort thumbnails' longest side, px
# Tiles are rendered on this many threads of the viewer's own: libvips keeps per-thread buffers for each image
# it reads, so a fixed, small set of threads keeps the server's memory bounded however long one browses.
RENDER_THREADS = 4
MEDIA = {"jpeg": "image/jpeg", "png": "image/png"}
FILE_TYPES = {".json": "application/json", ".geojson": "application/geo+json", ".png": "image/png",
              ".csv": "text/csv", ".tif": "image/tiff"}


class Viewer:
    """What the routes share: the catalogue, each slide's layers (opened on first use) and the tile cache."""

    def __init__(self, out: Path, cache: TileCache) -> None:
        self.catalogue: Catalogue = load_catalogue(out)
        self.cache = cache
        self.pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="slidefuse-view")
        self._layers: dict[int, SlideLayers] = {}
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the render threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def entry(self, index: int) -> SlideEntry | None:
        return self.catalogue.get(index)

    def refresh(self) -> None:
        """Re-read the run log and reports (a batch may still be running); a slide whose entry changed gets its
        layers opened afresh."""
        new = load_catalogue(self.catalogue.root)
        with self._lock:
            for i, layers in list(self._layers.items()):
                if new.get(i) != layers.entry:
                    layers.close()
                    del self._layers[i]
            self.catalogue = new

    def layers(self, index: int) -> SlideLayers | None:
        entry = self.entry(index)
        if entry is None:
            return None
        with self._lock:
            if index not in self._layers:
                self._layers[index] = SlideLayers(entry)
            return self._layers[index]

    def key(self, layers: SlideLayers, what: str) -> str:
        """A cache key that changes when the slide or the run's outputs change."""
        parts = [str(layers.entry.slide_path)]
        for p in (layers.entry.slide_path, layers.mask_path, layers.probs_path):
            try:
                parts.append(f"{p.stat().st_mtime_ns}:{p.stat().st_size}" if p is not None else "-")
            except OSError:
                parts.append("gone")
        return "|".join(parts + [what])

    def slide_config(self, layers: SlideLayers) -> dict[str, Any]:
        """The JSON that static/slide.js reads: geometry, pixel size, URLs and what layers exist."""
        e, dz = layers.entry, layers.geometry()
        slide = (e.report or {}).get("slide") or {}
        return {
            "index": e.index,
            "width": dz.width if dz else None, "height": dz.height if dz else None,
            "mpp": slide.get("mpp") if isinstance(slide, dict) else None,
            "slide": layers.slide is not None and dz is not None,
            "mask": layers.mask_path is not None,
            "probs": layers.probs_path is not None,
            "qc": qc_file(e) is not None,
            "classes": [{"index": c.index, "name": c.name, "colour": c.colour} for c in layers.classes],
        }

    def tile(self, layers: SlideLayers, layer: str, fmt: str, at: tuple[int, int, int],
             query: Mapping[str, str]) -> bytes | None:
        """A tile's bytes (from the cache, else rendered), or None when there is no such layer or tile.

        layer: "slide" (fmt jpeg), "mask" (png; query `classes`: the classes shown, comma-separated, `mode`: fill
        or outline) or "probs<k>" (png; class k's probability); at: (level, col, row) of the Deep Zoom pyramid.
        """
        make = self._renderer(layers, layer, fmt, at, query)
        if make is None:
            return None
        key, render = make

        def rendered() -> bytes | None:
            px = render()
            return None if px is None else encode(px, fmt)

        return self.cache.get(self.key(layers, f"{key}/{at[0]}/{at[1]}_{at[2]}"), rendered)

    def _renderer(self, layers: SlideLayers, layer: str, fmt: str, at: tuple[int, int, int],
                  query: Mapping[str, str]) -> tuple[str, Callable[[], np.ndarray | None]] | None:
        """(cache key prefix, pixel renderer) of a tile request, or None when the request names no layer."""
        if layer == "slide" and fmt == "jpeg" and layers.slide is not None:
            sl = layers.slide
            return "slide", lambda: sl.tile(*at)
        if layer == "mask" and fmt == "png":
            shown, mode = _ints(query.get("classes", "")), query.get("mode", "fill")
            if shown is None or mode not in ("fill", "outline"):
                return None
            classes = sorted(set(shown))
            return (f"mask/{','.join(map(str, classes))}/{mode}",
                    lambda: layers.mask_tile(*at, classes, mode == "outline"))
        if layer.startswith("probs") and layer[5:].isdigit() and fmt == "png":
            cls = int(layer[5:])
            return f"probs/{cls}", lambda: layers.probs_tile(cls, *at)
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for layers in self._layers.values():
                layers.close()


def _ints(text: str) -> list[int] | None:
    try:
        return [int(t) for t in text.split(",") if t != ""]
    except ValueError:
        return None


NOT_FOUND = 404
TILE_HEADERS = {"Cache-Control": "max-age=3600"}


def _not_found() -> Any:
    from starlette.responses import Response

    return Response("not found", status_code=NOT_FOUND, media_type="text/plain")


def _page_routes(viewer: Viewer) -> list[Any]:
    """The cohort and slide pages and the recorded files."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, Response
    from starlette.routing import Route

    def cohort(request: Request) -> Response:
        viewer.refresh()
        return HTMLResponse(cohort_page(viewer.catalogue))

    def slide(request: Request) -> Response:
        layers = viewer.layers(request.path_params["i"])
        if layers is None:
            return _not_found()
        return HTMLResponse(slide_page(layers.entry, viewer.slide_config(layers)))

    def recorded_file(request: Request) -> Response:
        entry = viewer.entry(request.path_params["i"])
        path = entry.file(request.path_params["name"]) if entry is not None else None
        if path is None:
            return _not_found()
        return FileResponse(path, media_type=FILE_TYPES.get(path.suffix, "application/octet-stream"))

    def summary(request: Request) -> Response:
        s = viewer.catalogue.summary
        return _not_found() if s is None else FileResponse(s, media_type="text/csv")

    return [Route("/", cohort), Route("/summary.csv", summary), Route("/slide/{i:int}", slide),
            Route("/slide/{i:int}/file/{name:str}", recorded_file)]


def _image_routes(viewer: Viewer) -> list[Any]:
    """Thumbnails, the .dzi descriptor, tiles of every layer and the QC image."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def thumb(request: Request) -> Response:
        layers = viewer.layers(request.path_params["i"])
        if layers is None or layers.slide is None:
            return _not_found()
        sl = layers.slide

        def make() -> bytes:
            return encode(sl.reader().thumbnail(THUMB_SIDE), "jpeg")

        data = await viewer.run(viewer.cache.get, viewer.key(layers, "thumb"), make)
        return Response(data, media_type="image/jpeg", headers=TILE_HEADERS)

    def dzi(request: Request) -> Response:
        layers = viewer.layers(request.path_params["i"])
        dz = layers.geometry() if layers is not None and layers.slide is not None else None
        return _not_found() if dz is None else Response(dz.descriptor("jpeg"), media_type="application/xml")

    async def tile(request: Request) -> Response:
        p = request.path_params
        layers = viewer.layers(p["i"])
        if layers is None or p["fmt"] not in MEDIA:
            return _not_found()
        data = await viewer.run(viewer.tile, layers, p["layer"], p["fmt"], (p["level"], p["col"], p["row"]),
                                dict(request.query_params))
        return _not_found() if data is None else Response(data, media_type=MEDIA[p["fmt"]], headers=TILE_HEADERS)

    async def qc(request: Request) -> Response:
        layers = viewer.layers(request.path_params["i"])
        px = await viewer.run(layers.qc_png) if layers is not None else None
        return _not_found() if px is None else Response(encode(px, "png"), media_type="image/png")

    tile_path = "{layer:str}/{level:int}/{col:int}_{row:int}.{fmt:str}"
    return [Route("/slide/{i:int}/thumb.jpg", thumb), Route("/slide/{i:int}/slide.dzi", dzi),
            Route("/slide/{i:int}/" + tile_path.replace("{layer:str}/", "{layer:str}_files/"), tile),  # the .dzi's
            Route("/slide/{i:int}/tiles/" + tile_path, tile), Route("/slide/{i:int}/qc.png", qc)]


def create_app(out: Path, cache: TileCache) -> Any:
    """The starlette application for output folder `out` (raises UsageError when `out` holds no run log)."""
    require("starlette", "view", "slidefuse view")
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    viewer = Viewer(out, cache)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        viewer.close()

    routes = [*_page_routes(viewer), *_image_routes(viewer), Mount("/static", StaticFiles(directory=str(STATIC)))]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.viewer = viewer
    return app
