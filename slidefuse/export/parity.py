"""Parity: run N runners on the same tiles and compare their probabilities (after Polygraphy's comparator).

A *runner* is a context manager with one `run(tiles)` method: uint8 RGB tiles `[B, T, T, 3]` (HWC, 0..255) ->
float32 class probabilities `[B, C, T, T]` (summing to 1 over C). Every runtime backend
(`slidefuse.runtime.backends`) is a runner as it is; beside them this module adds `TorchModelRunner` (an
in-memory torch SegmentationModel, for the export gate) and `staged_bundle` / `gate_backend` (the real
onnxruntime backend over a graph that is not a finished bundle yet).

`compare(runners, tiles)` opens each runner in turn, runs every tile through it (batches 1, 2, 3, 1, ...
by default, so a graph whose batch axis is not really dynamic fails), closes it, and compares each runner
with the first one (the reference):

- `max_abs_diff`: the largest |p_ref - p| over every tile, class and pixel (probabilities, 0..1);
- `mean_abs_diff`: the mean of the same;
- `argmax_agreement`: the fraction of pixels whose argmax class is the same in both.

It returns a `ParityReport`; `ParityReport.check()` raises `ParityError` when a pair misses its thresholds.
Default thresholds: fp32 vs fp32, max diff <= 1e-3 and agreement >= 0.999; a reduced-precision runner vs fp32,
max diff <= 5e-2 and agreement >= 0.99 (fp16 keeps about 3 significant digits, and a pixel whose two best
classes are within that margin can flip).

Tiles (`parity_tiles`) come from one of two real sources, plus optional random tiles:

- slides the caller names: each is opened with `open_slide`, its tissue found on a thumbnail
  (`runtime.tissue`), a tile grid at the model's pixel size laid over it (`runtime.grid`), and the most
  tissue-covered tiles, spread over the slide, read through the slide's scaled view;
- otherwise the small real tiles shipped in `slidefuse/data/parity_tiles/` (see its README.md): each is
  wrapped as an in-memory slide at its own pixel size, resampled to the model's pixel size by the same scaled
  view, and centre-cropped to the tile size (or, when it is smaller than a tile after resampling, mirrored
  outwards to fill it, so that no tile is mostly blank glass).

Random uint8 tiles are only added when asked for (`n_random`); nothing falls back to them. Every report
records where its tiles came from (`tile_origin`, and one `tile_sources` entry per tile).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slidefuse.errors import ParityError, SlideNotFound, UsageError
from slidefuse.runtime.backends.base import Runner

if TYPE_CHECKING:
    from slidefuse.model.assembly import SegmentationModel
    from slidefuse.model.embedding import EmbeddingModel
    from slidefuse.model.registry import EncoderSpec
    from slidefuse.runtime.backends.base import Backend
    from slidefuse.runtime.bundle import Bundle, ClassInfo
    from slidefuse.runtime.manifest_schema import EmbeddingInfo
    from slidefuse.runtime.slide import SlideReader

log = logging.getLogger(__name__)

PACKAGE_TILES = Path(__file__).resolve().parents[1] / "data" / "parity_tiles"  # shipped tiles + index.json
TileOrigin = Literal["slides", "package-data", "random"]


# ---------------------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class ParityThresholds:
    max_abs_diff: float = 1e-3  # largest allowed |p_ref - p| (probabilities, 0..1)
    min_argmax_agreement: float = 0.999  # smallest allowed fraction of pixels with the same argmax class
    # embeddings ([N, D] outputs) only: smallest allowed per-tile cosine similarity with the reference (None:
    # EMBED_MIN_COSINE); their pixels have no argmax, so `min_argmax_agreement` is not used for them
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise UsageError(f"parity min_cosine {self.min_cosine} is out of range; expected -1..1")
        if not 0 < self.max_abs_diff <= 1:
            raise UsageError(f"parity max_abs_diff {self.max_abs_diff} is out of range; expected 0 < x <= 1")
        if not 0 <= self.min_argmax_agreement <= 1:
            raise UsageError(
                f"parity min_argmax_agreement {self.min_argmax_agreement} is out of range; expected 0..1"
            )


    def to_dict(self) -> dict[str, float]:
        """The thresholds as recorded (`min_cosine` only when set)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def cosine(self) -> float:
        """The smallest allowed per-tile cosine for embeddings."""
        return self.min_cosine if self.min_cosine is not None else EMBED_MIN_COSINE


EMBED_MIN_COSINE = 0.999  # embeddings: per-tile cosine when a threshold names none
FP32_THRESHOLDS = ParityThresholds(1e-3, 0.999)
FP16_THRESHOLDS = ParityThresholds(5e-2, 0.99)
# Embeddings: fp32 graph vs torch equal to 1e-5 (absolute, and cosine 1 - 1e-5); a reduced-precision graph (fp16,
# bf16, int8) judged by the per-tile cosine similarity alone (>= 0.999; max |de| bounded only by 1)
EMBED_FP32_THRESHOLDS = ParityThresholds(1e-5, 0.0, min_cosine=0.99999)
EMBED_REDUCED_THRESHOLDS = ParityThresholds(1.0, 0.0, min_cosine=0.999)


# ---------------------------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class ParityTiles:
    tiles: np.ndarray  # uint8 [N, T, T, 3], RGB 0..255 (tile frame)
    # one per tile: "slide.svs@model_xy=x,y", "package-data:cmu-1-0.png" or "random(seed=S)#i"
    sources: tuple[str, ...]
    origins: tuple[TileOrigin, ...]  # the kinds of source used, in order, e.g. ("package-data", "random")

    @property
    def origin(self) -> str:
        """The tile sources in one word each, joined by '+': e.g. "slides", "package-data+random"."""
        return "+".join(self.origins)


def _join(parts: Sequence[ParityTiles]) -> ParityTiles:
    parts = [p for p in parts if len(p.tiles)]
    if not parts:
        raise UsageError("parity check with no tiles: expected at least one real or random tile")
    return ParityTiles(np.concatenate([p.tiles for p in parts]), tuple(s for p in parts for s in p.sources),
                       tuple(dict.fromkeys(o for p in parts for o in p.origins)))


def _spread(candidates: Sequence[tuple[int, int]], fractions: Sequence[float], n: int
            ) -> list[tuple[int, int]]:
    """Up to `n` of `candidates` (row-major tile_rc): evenly spread over those at least 75 % tissue (or as
    covered as the best one) when there are `n` of them, else the `n` most tissue-covered; row-major."""
    if not candidates or n < 1:
        return []
    order = sorted(range(len(candidates)), key=lambda i: -fractions[i])  # stable: row-major among equals
    rich = [i for i in order if fractions[i] >= min(0.75, fractions[order[0]])]
    pool = sorted(rich if len(rich) >= n else order[:n])
    picks = np.unique(np.round(np.linspace(0, len(pool) - 1, min(n, len(pool)))).astype(int))
    return [candidates[pool[i]] for i in picks]


def reader_tiles(reader: SlideReader, name: str, tile_size: int, mpp: float, n: int) -> ParityTiles:
    """Up to `n` tissue tiles of `tile_size` px at `mpp` um/px from an open slide: tissue detected on a
    thumbnail, a grid of non-overlapping tiles laid over the slide at `mpp`, the most tissue-covered tiles
    kept (evenly spread over the slide). Returns uint8 `[k, T, T, 3]`, k <= n (0: no tile touches tissue)."""
    from slidefuse.runtime import coords
    from slidefuse.runtime.grid import TileGrid, select_tiles
    from slidefuse.runtime.tissue import TissueParams, detect_tissue, tissue_fraction_in_box

    params = TissueParams()
    thumb_mpp = float(reader.thumbnail_mpp(params.thumb_max_side))
    tissue = detect_tissue(reader.thumbnail(params.thumb_max_side), params, thumb_mpp=thumb_mpp)
    view = reader.scaled(mpp)
    grid = TileGrid(view.width, view.height, tile_size, overlap=0)
    touching = select_tiles(grid, tissue, mpp, thumb_mpp)
    fractions = [tissue_fraction_in_box(tissue, coords.model_box_to_thumb(grid.tile_box(rc), mpp, thumb_mpp))
                 for rc in touching]
    boxes = [grid.tile_box(rc) for rc in _spread(touching, fractions, n)]
    tiles = [view.read(*box) for box in boxes]
    sources = tuple(f"{name}@model_xy={x},{y}" for x, y, _, _ in boxes)
    empty = np.zeros((0, tile_size, tile_size, 3), np.uint8)
    return ParityTiles(np.stack(tiles) if tiles else empty, sources, ("slides",))


def _slide_part(path: Path, tile_size: int, mpp: float, n: int) -> ParityTiles:
    """Up to `n` tissue tiles of one slide (see `reader_tiles`); MissingPixelSize names the slide."""
    from slidefuse.errors import MissingPixelSize
    from slidefuse.runtime.slide import open_slide

    try:
        reader = open_slide(Path(path))
    except MissingPixelSize as exc:
        raise MissingPixelSize(f"{path}: the slide has no pixel size, so its tiles cannot be matched to "
                               "the model's um/px; use a parity slide that records one") from exc
    with reader:
        return reader_tiles(reader, Path(path).name, tile_size, mpp, n)


def slide_tiles(slides: Sequence[Path], tile_size: int, mpp: float, n: int) -> ParityTiles:
    """At least `n` tissue tiles from the named slides when they hold that many: ceil(n / len(slides)) from each
    (see `reader_tiles`), and what a small slide cannot give taken from the others.

    Raises SlideNotFound / SlideReadError for a slide that cannot be opened, MissingPixelSize for one
    without a pixel size, and UsageError for one with no tissue tile.
    """
    quota = {Path(p): math.ceil(n / len(slides)) for p in slides}
    parts: dict[Path, ParityTiles] = {}
    read: dict[Path, int] = {}  # the quota each part was read with
    for _ in range(len(slides)):
        for path, q in quota.items():
            if read.get(path) != q:
                parts[path], read[path] = _slide_part(path, tile_size, mpp, q), q
                if not len(parts[path].tiles):
                    raise UsageError(f"{path}: no {tile_size} px tile at {mpp:g} um/px touches tissue; use a "
                                     "parity slide with tissue on it")
        missing = n - sum(len(p.tiles) for p in parts.values())
        more = [path for path in quota if len(parts[path].tiles) == quota[path]]  # these may hold more
        if missing <= 0 or not more:
            break
        for path in more:
            quota[path] += math.ceil(missing / len(more))
    for path, part in parts.items():
        log.info("parity: %d tiles from %s", len(part.tiles), path)
    return _join([parts[Path(p)] for p in slides])


def package_tile_index() -> list[dict[str, Any]]:
    """The shipped tiles' index: one dict per tile (file, mpp, slide, model_xy, stain), in order."""
    index = PACKAGE_TILES / "index.json"
    if not index.is_file():
        raise SlideNotFound(f"{index}: the package's parity tiles are missing; reinstall slidefuse")
    return list(json.loads(index.read_text())["tiles"])


def package_tiles(tile_size: int, mpp: float, n: int) -> ParityTiles:
    """The first `n` shipped real tiles as `tile_size` px tiles at `mpp` um/px: each PNG becomes an in-memory
    slide at its own pixel size, is resampled to `mpp` by the slide's scaled view and centre-cropped to
    `tile_size`; when it is smaller than that, it is mirrored outwards (symmetric padding), so the whole tile
    stays tissue-like. Returns uint8 `[n, T, T, 3]`."""
    from PIL import Image

    from slidefuse.runtime.slide import InMemorySlide

    entries = package_tile_index()
    if n > len(entries):
        raise UsageError(f"{n} real parity tiles asked for, but the package ships {len(entries)}; ask for at "
                         f"most {len(entries)} or name parity slides to cut more from")
    tiles, sources = [], []
    for entry in entries[:n]:
        with Image.open(PACKAGE_TILES / entry["file"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        view = InMemorySlide(pixels, float(entry["mpp"]), name=entry["file"]).scaled(mpp)
        w, h = min(tile_size, view.width), min(tile_size, view.height)
        crop = view.read((view.width - w) // 2, (view.height - h) // 2, w, h)
        pad_y, pad_x = tile_size - h, tile_size - w  # > 0 when the resampled tile is smaller than T
        widths = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0))
        tiles.append(np.pad(crop, widths, mode="symmetric"))
        sources.append(f"package-data:{entry['file']}")
    return ParityTiles(np.stack(tiles), tuple(sources), ("package-data",))


def random_tiles(tile_size: int, n: int, seed: int = 0) -> ParityTiles:
    """`n` uniform random uint8 tiles `[n, T, T, 3]` (full 0..255 range: stresses fp16 ranges)."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(n, tile_size, tile_size, 3), dtype=np.uint8)
    return ParityTiles(tiles, tuple(f"random(seed={seed})#{i}" for i in range(n)), ("random",))


def check_tile_counts(n_real: int, n_random: int, slides: Sequence[Path] = ()) -> None:
    """Raise UsageError for impossible tile counts, SlideNotFound for a named slide that does not exist."""
    if n_real < 0 or n_random < 0:
        raise UsageError(f"parity tiles {n_real} real, {n_random} random: expected counts >= 0")
    if n_real + n_random < 1:
        raise UsageError("parity check with no tiles: expected at least one real or random tile")
    if n_real and not slides and n_real > len(package_tile_index()):
        raise UsageError(f"{n_real} real parity tiles asked for, but the package ships "
                         f"{len(package_tile_index())}; ask for fewer or name parity slides")
    for path in slides:
        if not Path(path).is_file():
            raise SlideNotFound(f"{path}: no such parity slide; check the path")


def parity_tiles(tile_size: int, mpp: float, *, n_real: int = 4, n_random: int = 0, seed: int = 0,
                 slides: Sequence[Path] = ()) -> ParityTiles:
    """`n_real` real tiles (from `slides` when given, else the shipped package tiles) at `mpp` um/px, then
    `n_random` seeded random tiles. Returns uint8 `[N, tile_size, tile_size, 3]` with N >= 1."""
    check_tile_counts(n_real, n_random, slides)
    parts = []
    if n_real:
        parts.append(slide_tiles(slides, tile_size, mpp, n_real) if slides
                     else package_tiles(tile_size, mpp, n_real))
    if n_random:
        parts.append(random_tiles(tile_size, n_random, seed))
    return _join(parts)


# ---------------------------------------------------------------------------------------------- runners
class TorchModelRunner:
    """A runner over an in-memory torch SegmentationModel on its own device, fp32, used once: leaving the
    `with` block drops the model, so a model nothing else holds is freed before the next runner starts."""

    def __init__(self, model: SegmentationModel | EmbeddingModel) -> None:
        self._model: Any = model

    def __enter__(self) -> TorchModelRunner:
        if self._model is None:
            raise RuntimeError("TorchModelRunner is used once; build a new one around the model")
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        self._model = None
        gc.collect()

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 [B, T, T, 3] RGB -> the model's float32 output ([B, C, T, T] probabilities, or [B, D]
        embeddings for an EmbeddingModel)."""
        import torch

        if self._model is None:
            raise RuntimeError("TorchModelRunner used outside its 'with' block")
        device = next(self._model.parameters()).device
        with torch.inference_mode():
            out = self._model(torch.from_numpy(np.ascontiguousarray(tiles)).to(device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        device = str(next(self._model.parameters()).device) if self._model is not None else "released"
        return {"backend": "torch-model", "device": device, "precision": "fp32"}


def staged_bundle(folder: Path, spec: EncoderSpec, classes: tuple[ClassInfo, ...], tile_size: int, mpp: float,
                  *, fp16_model_file: str | None = None, embedding: EmbeddingInfo | None = None) -> Bundle:
    """A Bundle over a folder whose graphs are written but whose manifest is not (an export's staging folder),
    so the real backends can run them. Not hashed or verified: only for the export's own parity gate."""
    from slidefuse.runtime.bundle import Bundle, Manifest

    mean, std = tuple(spec.mean), tuple(spec.std)
    manifest = Manifest(encoder=spec.id, patch_size=spec.patch_size, tile_size=tile_size, mpp=float(mpp),
                        classes=classes, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]),
                        fp16_model_file=fp16_model_file, task="segment" if embedding is None else "embed",
                        embedding=embedding, output_name="probabilities" if embedding is None else "embeddings")
    return Bundle(path=Path(folder), manifest=manifest, digest="staged")


def gate_backend(bundle: Bundle, precision: str = "fp32", *, low_memory: bool = False) -> Backend:
    """The `ort-cpu` backend over `bundle` (model.onnx, or model.fp16.onnx for precision fp16). `low_memory`
    turns off weight prepacking and the memory arena, for multi-GB graphs (slower, about half the memory)."""
    from slidefuse.runtime.backends.ort import OrtCpuBackend

    class _LowMemoryOrtCpu(OrtCpuBackend):
        def session_options(self) -> Any:
            so = super().session_options()
            so.enable_cpu_mem_arena = False
            so.add_session_config_entry("session.disable_prepacking", "1")
            return so

    return (_LowMemoryOrtCpu if low_memory else OrtCpuBackend)(bundle, precision=precision)


# ---------------------------------------------------------------------------------------------- comparator
@dataclass(frozen=True)
class RunnerRecord:
    """What one runner was and how long it took (None when its outputs came from the `outputs` cache)."""

    name: str  # the runner's label in `compare`
    info: dict[str, Any]  # the runner's own description (backend, device, providers, precision...)
    precision: str | None  # what the runner says it computes in, when it says
    load_s: float | None  # seconds in __enter__ (sessions, engines, compilation, warm-up)
    run_s: float | None  # seconds to run every tile (after the optional warm-up batch)


@dataclass(frozen=True)
class PairFigures:
    """One runner against the reference."""

    reference: str  # label of the reference runner
    candidate: str  # label of the compared runner
    max_abs_diff: float  # largest |p_ref - p| (0..1); inf when the candidate gave a non-finite value
    mean_abs_diff: float  # mean |p_ref - p|
    argmax_agreement: float  # fraction of pixels with the reference's argmax class (0..1); 1.0 for embeddings
    thresholds: ParityThresholds  # what it was judged against
    passed: bool  # both figures within the thresholds
    min_cosine: float | None = None  # embeddings ([N, D]): the smallest per-tile cosine similarity; else None


@dataclass(frozen=True)
class ParityReport:
    tiles: int  # tiles every runner ran
    tile_origin: str  # "slides", "package-data", "random" or a '+' join of them
    tile_sources: tuple[str, ...]  # one entry per tile (see ParityTiles.sources)
    batch_sizes: tuple[int, ...]  # batch sizes the tiles were run in, in order
    runners: tuple[RunnerRecord, ...]  # in the order given; the first is the reference
    pairs: tuple[PairFigures, ...]  # each other runner against the reference

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.pairs)

    def check(self) -> ParityReport:
        """Return self, or raise ParityError (one line) for the first pair that missed its thresholds."""
        for p in self.pairs:
            if not p.passed:
                th = p.thresholds
                if p.min_cosine is not None:
                    raise ParityError(
                        f"{p.candidate}: embedding parity with {p.reference} failed: smallest per-tile cosine "
                        f"{p.min_cosine:.6f} (limit {th.cosine():g}), max |de| {p.max_abs_diff:.3g} (limit "
                        f"{th.max_abs_diff:g}) on {self.tiles} {self.tile_origin} tiles; it does not compute what "
                        "the reference computes: fix the export, or loosen the thresholds if the difference is "
                        "expected")
                raise ParityError(
                    f"{p.candidate}: parity with {p.reference} failed: max |dp| {p.max_abs_diff:.3g} (limit "
                    f"{th.max_abs_diff:g}), argmax agreement {p.argmax_agreement:.5f} (limit "
                    f"{th.min_argmax_agreement:g}) on {self.tiles} {self.tile_origin} tiles; it does not "
                    "compute what the reference computes: fix the export, or loosen the thresholds if the "
                    "difference is expected"
                )
        return self

    def pair_record(self, pair: int = 0) -> dict[str, Any]:
        """One pair with the tile provenance, as a flat JSON-ready dict (a bundle manifest's parity entry)."""
        p = self.pairs[pair]
        return {"reference": p.reference, "candidate": p.candidate, "max_abs_diff": p.max_abs_diff,
                "mean_abs_diff": p.mean_abs_diff, "argmax_agreement": p.argmax_agreement,
                **({"min_cosine": p.min_cosine} if p.min_cosine is not None else {}), "tiles": self.tiles,
                "tile_origin": self.tile_origin, "tile_sources": list(self.tile_sources),
                "batch_sizes": list(self.batch_sizes), "thresholds": p.thresholds.to_dict(), "passed": p.passed}


ThresholdRule = Callable[[RunnerRecord], ParityThresholds]  # thresholds per candidate (e.g. by precision)


def batch_sizes(n: int, batch: int | None = None) -> list[int]:
    """Batch sizes summing to `n`: `batch` each (the last one smaller), or 1, 2, 3, 1, 2, 3, ... when None
    (exercises the dynamic batch axis)."""
    if batch is not None and batch < 1:
        raise UsageError(f"batch {batch}: expected a positive batch size")
    sizes: list[int] = []
    while sum(sizes) < n:
        step = batch if batch is not None else len(sizes) % 3 + 1
        sizes.append(min(step, n - sum(sizes)))
    return sizes


def _info(runner: Any) -> dict[str, Any]:
    """The runner's `info()` as a plain dict ({} when it has none); a record with `to_dict()` is converted."""
    info = runner.info() if callable(getattr(runner, "info", None)) else {}
    to_dict = getattr(info, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(info)


def _run_one(name: str, runner: Runner, tiles: np.ndarray, sizes: Sequence[int], warmup: bool
             ) -> tuple[np.ndarray, RunnerRecord]:
    """Open `runner`, run `tiles` in batches of `sizes`, close it; returns (float32 [N, C, T, T], record)."""
    t0 = time.perf_counter()
    with runner:
        load_s = time.perf_counter() - t0
        if warmup:
            runner.run(tiles[:sizes[0]])
        t0 = time.perf_counter()
        outs, start = [], 0
        for b in sizes:
            outs.append(np.asarray(runner.run(tiles[start:start + b]), dtype=np.float32))
            start += b
        run_s = time.perf_counter() - t0
        info = _info(runner)
    prec = info.get("precision")
    record = RunnerRecord(name, info, prec if isinstance(prec, str) else None, load_s, run_s)
    return np.concatenate(outs), record


def _figures(ref_name: str, ref: np.ndarray, cand_name: str, cand: np.ndarray, th: ParityThresholds
             ) -> PairFigures:
    if ref.shape != cand.shape:
        raise ParityError(f"{cand_name}: output shape {list(cand.shape)} differs from {ref_name}'s "
                          f"{list(ref.shape)}; expected float32 [N, C, T, T] probabilities (or [N, D] embeddings) "
                          "from both")
    finite = bool(np.isfinite(cand).all())
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    max_d = float(diff.max()) if finite else math.inf
    mean_d = float(diff.mean()) if finite else math.inf
    if ref.ndim == 2:  # embeddings [N, D]
        cos = float(cosine_rows(ref, cand).min()) if finite else -1.0
        ok = max_d <= th.max_abs_diff and cos >= th.cosine()
        return PairFigures(ref_name, cand_name, max_d, mean_d, 1.0, th, ok, min_cosine=cos)
    agree = float((ref.argmax(1) == cand.argmax(1)).mean())
    ok = max_d <= th.max_abs_diff and agree >= th.min_argmax_agreement
    return PairFigures(ref_name, cand_name, max_d, mean_d, agree, th, ok)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [N]: cosine similarity of each row of `a` [N, D] with the same row of `b` (1.0 for two zero rows)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    dot = (a64 * b64).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-300))


def compare(runners: Mapping[str, Runner], tiles: ParityTiles, *,
            thresholds: ParityThresholds | ThresholdRule = FP32_THRESHOLDS, batch: int | None = None,
            warmup: bool = False, outputs: dict[str, np.ndarray] | None = None) -> ParityReport:
    """Run every runner (label -> runner; the first is the reference) on `tiles` and compare each other one
    with the reference. Runners are opened, run and closed one at a time, in order.

    `thresholds`: one for every pair, or a rule choosing them from the candidate's record (e.g. its
    precision). `batch`: fixed batch size (None: 1, 2, 3, ...). `warmup`: run one untimed batch first.
    `outputs`: a cache label -> float32 [N, C, T, T] shared between calls on the same tiles: a label found
    there is not run again, and each new runner's outputs are stored there. Does not raise on a miss: call
    `.check()` for that.
    """
    if not runners:
        raise UsageError("compare needs at least one runner")
    n = len(tiles.tiles)
    sizes = batch_sizes(n, batch)
    cache = outputs if outputs is not None else {}
    records: list[RunnerRecord] = []
    for name, runner in runners.items():
        if name in cache:
            records.append(RunnerRecord(name, {}, None, None, None))
            continue
        cache[name], rec = _run_one(name, runner, tiles.tiles, sizes, warmup)
        records.append(rec)
    ref = records[0].name
    pairs = []
    for rec in records[1:]:
        th = thresholds if isinstance(thresholds, ParityThresholds) else thresholds(rec)
        p = _figures(ref, cache[ref], rec.name, cache[rec.name], th)
        agreement = (f"smallest cosine {p.min_cosine:.7f}" if p.min_cosine is not None
                     else f"argmax agreement {p.argmax_agreement:.5f}")
        log.info("parity %s vs %s: max|d| %.3g, %s on %d %s tiles (%s)", p.candidate, p.reference,
                 p.max_abs_diff, agreement, n, tiles.origin, "pass" if p.passed else "FAIL")
        pairs.append(p)
    return ParityReport(n, tiles.origin, tiles.sources, tuple(sizes), tuple(records), tuple(pairs))
