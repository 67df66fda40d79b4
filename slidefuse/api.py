"""The Python API: load a model bundle once, segment slides or arrays, get masks back.

```python
import slidefuse

with slidefuse.load_model("uni.bundle", backend="auto") as model:
    result = model.segment("slide.svs", out="results/")
    mask = result.mask_array()          # uint8 [H, W] class indices, memory-mapped, at result.mpp um/px
    print(result.class_areas_mm2)       # {"tumour": 1.23, ...}
```

Frames. A mask pixel (x, y) covers level-0 slide pixels `[x * l0_per_px[0], (x + 1) * l0_per_px[0])` (and
likewise in y): the mask spans the whole slide at the model's pixel size (`result.mpp`, um/px). For an array
input, "level 0" is the array itself.

The command line (`slidefuse segment`) is a thin layer over this module; everything it does is reachable
from here: `Model.segment_batch` runs a batch (what the CLI calls), `Model.segment_many` and
`slidefuse.segment_many` yield each slide's result as soon as its outputs are written.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from slidefuse.errors import SlidefuseError, UsageError
from slidefuse.runtime.progress import Progress, ProgressCallback, as_progress
from slidefuse.runtime.types import Status

if TYPE_CHECKING:
    import pyvips

    from slidefuse.runtime.backends.base import Backend
    from slidefuse.runtime.bundle import Bundle
    from slidefuse.runtime.qc.draw import QCMaps
    from slidefuse.runtime.segment.options import SegmentOptions, SlideResult

SlidePath = Union[str, "os.PathLike[str]"]
MASK_FORMAT = "tiff"  # mask.tif: the output the result's mask is read from (a default format)


class ResultError(SlidefuseError, RuntimeError):
    """A result that has no mask or report (the slide failed, or mask.tif was not written)."""


@dataclass(frozen=True)
class SegmentationResult:
    """One slide's segmentation: where its outputs are, its report, and its mask on demand.

    The mask is never held in memory by the result: `mask()` opens mask.tif lazily (pyvips) and
    `mask_array()` memory-maps it as a uint8 [H, W] array of class indices (0 = background).
    """

    slide: Path  # the slide file, as given (for an array: its name)
    status: Status  # OK, SKIPPED (outputs already complete for this model), FAILED, CLAIMED (another process),
    # or CLAIM_LOST (started here, then taken over by another process, which does it)
    out_dir: Path | None  # the slide's output folder (OUT/<slide stem>)
    outputs: Mapping[str, Path]  # format -> file written in this run (empty when skipped or failed)
    error: str | None = None  # one-line reason when failed (or its claim lost)
    seconds: float = 0.0  # wall time spent on the slide
    decode_errors: int | None = None  # tiles the decoders reported as corrupt (None: the slide was not read)
    holder: str | None = None  # CLAIMED, CLAIM_LOST: host:pid of the process that held the slide, when known

    @property
    def ok(self) -> bool:
        """True unless the slide failed."""
        return self.status != Status.FAILED

    def _need_ok(self, what: str) -> Path:
        if self.status == Status.FAILED or self.out_dir is None:
            raise ResultError(f"{self.slide}: no {what}: the slide failed ({self.error})")
        return self.out_dir

    @cached_property
    def report(self) -> dict[str, Any]:
        """report.json: slide metadata, model card, backend, areas, tissue, timings, outputs."""
        from slidefuse.runtime.outputs import read_report

        out_dir = self._need_ok("report")
        report = read_report(out_dir)
        if report is None:
            raise ResultError(f"{out_dir / 'report.json'}: missing or unreadable; rerun with overwrite=True")
        return report

    @property
    def class_areas_mm2(self) -> dict[str, float]:
        """Area of each class in mm^2 (class 0, the background, included), from the report."""
        return {name: float(a["area_mm2"]) for name, a in self.report["areas"].items()}

    @property
    def mask_path(self) -> Path:
        """mask.tif: the pyramidal TIFF of class indices."""
        info = self.report.get("outputs", {}).get(MASK_FORMAT)
        if not info:
            raise ResultError(f"{self.out_dir}: mask.tif was not written (formats {self.report.get('formats')})")
        return self._need_ok("mask") / str(info["file"])

    @property
    def mpp(self) -> tuple[float, float]:
        """Pixel size of the mask as written in mask.tif, um/px (x, y)."""
        info = self.report["outputs"][MASK_FORMAT]
        return float(info["mpp_x"]), float(info["mpp_y"])

    @property
    def l0_per_px(self) -> tuple[float, float]:
        """Level-0 slide pixels per mask pixel (x, y): mask px * l0_per_px = level-0 px."""
        info = self.report["outputs"][MASK_FORMAT]
        return float(info["l0_per_px_x"]), float(info["l0_per_px_y"])

    def qc(self) -> QCMaps:
        """The slide's quality control: bool maps ("tissue", "ink", "folds", "blur") at the thumbnail's pixel
        size (`.mpp`), read from qc.png, and report.json's "qc" section (`.section`: areas, fractions, flags,
        methods and thresholds, the stain check)."""
        from slidefuse.runtime.qc.draw import read_qc_png

        info = self.report.get("outputs", {}).get("qc")
        if not info:
            raise ResultError(f"{self.out_dir}: no qc.png (made by a slidefuse without quality control); rerun "
                              "with overwrite=True")
        return read_qc_png(self._need_ok("qc") / str(info["file"]), self.report.get("qc", {}), float(info["mpp"]))

    def mask(self) -> pyvips.Image:
        """The mask as a lazy 1-band uchar pyvips image (level 0 of mask.tif, W x H, class indices): tiles are
        decoded when pixels are asked for, in any order (e.g. `result.mask().crop(x, y, w, h).numpy()`)."""
        import pyvips

        return pyvips.Image.new_from_file(str(self.mask_path))

    def probabilities(self) -> pyvips.Image:
        """The class probabilities as a lazy C-band uchar pyvips image (full resolution of probs.ome.tif, W x H,
        the mask's frame and pixel size): band k is round(p_k * 255) for class k (0 where no tile ran). Tiles
        are decoded when pixels are asked for (e.g. `result.probabilities().crop(x, y, w, h).numpy()`)."""
        import pyvips

        info = self.report.get("outputs", {}).get("probs")
        if not info:
            raise ResultError(f"{self.out_dir}: probs.ome.tif was not written (formats {self.report.get('formats')});"
                              " segment with formats including 'probs'")
        path = self._need_ok("probabilities") / str(info["file"])
        planes = pyvips.Image.tiffload(str(path), n=-1)  # the C full-resolution planes, one above the other
        height = int(info["height"])
        if planes.height % height:
            raise ResultError(f"{path}: {planes.height} rows are not whole planes of {height}; the file is damaged, "
                              "rerun with overwrite=True")
        bands = [planes.crop(0, k * height, planes.width, height) for k in range(planes.height // height)]
        return bands[0].bandjoin(bands[1:]) if len(bands) > 1 else bands[0]

    def mask_array(self, scratch_dir: SlidePath | None = None) -> np.ndarray:
        """The mask as a read-only memory-mapped uint8 [H, W] array of class indices at `mpp`.

        mask.tif is decoded band by band by libvips into a scratch file (in `scratch_dir`, default the
        slide's output folder), which is mapped and then unlinked: nothing is left on disk once the array
        is dropped, and memory holds only the pages that are read.
        """
        import pyvips

        image = pyvips.Image.new_from_file(str(self.mask_path), access="sequential")
        folder = Path(scratch_dir) if scratch_dir is not None else self._need_ok("mask")
        fd, name = tempfile.mkstemp(prefix=".mask-", suffix=".u8", dir=folder)
        os.close(fd)
        try:
            image.rawsave(name)
            return np.memmap(name, dtype=np.uint8, mode="r", shape=(image.height, image.width))
        finally:
            os.unlink(name)  # the mapping keeps the pages (POSIX)


def _result(res: SlideResult) -> SegmentationResult:
    return SegmentationResult(res.slide, res.status, res.out_dir, dict(res.outputs), res.error, res.seconds,
                              res.decode_errors, res.holder)


def _parsed(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with "formats" ("tiff,geojson", a collection or "all") parsed: the one parse of a run's
    formats (SegmentOptions and the output writers take the parsed set)."""
    from slidefuse.runtime.outputs import parse_formats

    kw = dict(options)
    if "formats" in kw:
        kw["formats"] = parse_formats(kw["formats"])
    return kw


def _options(backend: str, options: Mapping[str, Any]) -> SegmentOptions:
    """SegmentOptions from keyword options (its fields but `backend`; validated there)."""
    from slidefuse.runtime.segment import SegmentOptions

    names = {f.name for f in dataclasses.fields(SegmentOptions) if f.init} - {"backend"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    given = {k: v for k, v in options.items() if k != "formats" or v}  # no formats: the default ones
    return SegmentOptions(backend=backend, **_parsed(given))


class Model:
    """A loaded model bundle and its backend. Use it as a context manager (or call `close()`): the backend
    is opened on first use and held until then, so many slides pay its start-up once."""

    def __init__(self, bundle: Bundle, options: SegmentOptions) -> None:
        self.bundle = bundle  # the sha256-verified bundle (manifest: classes, mpp, tile size)
        self.options = options  # defaults of every run (per call: mpp, formats, overwrite)
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._running: set[_Running] = set()  # `segment_many` batches on their threads (stopped by `close`)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; index i of a mask is class `classes[i]` (0 = background)."""
        return tuple(self.bundle.manifest.class_names)

    @property
    def backend(self) -> Backend:
        """The open backend (opened now if needed)."""
        from slidefuse.runtime.backends import open_backend

        with self._lock:
            if self._backend is None:
                opened = open_backend(self.options.backend, self.bundle, **dict(self.options.backend_options))
                self._backend = opened.__enter__()
            return self._backend

    def close(self) -> None:
        """Stop the `segment_many` batches still running (as closing their iterators would), then close the
        backend (the model can be used again: it reopens)."""
        for running in list(self._running):
            running.stop_and_wait()
        with self._lock:
            if self._backend is not None:
                self._backend.__exit__(None, None, None)
                self._backend = None

    def _run_options(self, **override: Any) -> SegmentOptions:
        given = {k: v for k, v in override.items() if v is not None}
        return dataclasses.replace(self.options, **_parsed(given)) if given else self.options

    def segment(
        self,
        slide: SlidePath | np.ndarray,
        *,
        mpp: float | None = None,
        out: SlidePath | None = None,
        formats: str | Iterable[str] | None = None,
        name: str | None = None,
        overwrite: bool | None = None,
        progress: ProgressCallback | Progress | None = None,
        roi: SlidePath | None = None,
    ) -> SegmentationResult:
        """Segment one slide file or one RGB array, write its outputs and return the result.

        slide: a slide file (any format `slidefuse info` reads, or a DICOM WSI folder) or a uint8 [H, W, 3] RGB
          array of at least 2 x 2 px (then `mpp`, its pixel size in um/px, is required; `name` names its output
          folder, default "array": a plain folder name, checked as a slide list's out_name is). An array has no
          file to recognise its outputs by, so it is never skipped: its folder must hold no outputs yet, unless
          `overwrite` (then they are replaced).
        mpp: the slide's pixel size in um/px, overriding the file's (for slides without one); a number (numpy
          scalars too; not a bool).
        out: output root, not inside a model bundle; the slide's files go to `out/<slide stem>/`. None: a new
          temporary folder (kept).
        formats: outputs to write ("tiff,geojson", a list, or "all"; default: the model's, every built-in
          format); `mask()` and `mask_array()` read mask.tif ("tiff"), `probabilities()` reads probs.ome.tif
          ("probs", not a default); report.json is always written.
        progress: a callable receiving `ProgressEvent`s.
        roi: the slide's regions of interest: a QuPath GeoJSON export (Polygon and MultiPolygon features, in the
          frame mask.geojson uses) or a mask image (nonzero = inside); see docs/regions.md. Only tiles touching a
          region run, the mask is 0 outside them, and report.json's "regions" gives the areas per region and class.
        A slide that fails raises its error (a `SlidefuseError` naming the slide); a slide whose outputs are
        complete for this model is skipped (status "skipped") unless `overwrite`.
        """
        from slidefuse.api_checks import check_array, check_name, check_roi
        from slidefuse.runtime.segment.inputs import is_dicom_folder

        if roi is not None:
            check_roi(roi)
        options = self._run_options(mpp=mpp, formats=formats, overwrite=overwrite, roi=roi)
        if name is not None:
            check_name(name)
        if isinstance(slide, np.ndarray):
            check_array(slide)
        out_root = self._out_root(out)
        if isinstance(slide, np.ndarray):
            return self._segment_array(slide, out_root, options, name or "array", as_progress(progress))
        path = Path(slide)
        if path.is_dir() and not is_dicom_folder(path):
            raise UsageError(f"{path} is a folder; segment() takes one slide: use segment_many() for folders")
        results = self._batch([path], None, out_root, options, as_progress(progress), None)
        if results[0].status == Status.FAILED:
            raise ResultError(str(results[0].error))
        return results[0]

    def _segment_array(self, array: np.ndarray, out_root: Path, options: SegmentOptions, name: str,
                       progress: Progress) -> SegmentationResult:
        from slidefuse.api_checks import check_free
        from slidefuse.runtime.segment import stages
        from slidefuse.runtime.slide import InMemorySlide

        if options.mpp is None:
            raise UsageError("an array has no pixel size: pass mpp=<microns per pixel>", field="mpp")
        out_dir = out_root / name
        check_free(out_dir, options.overwrite)
        made_here = not os.path.lexists(out_dir)
        reader = InMemorySlide(array, options.mpp, name=name)
        progress.start_slide(1, 1, name)
        try:
            plan = stages.plan_slide(Path(name), self.bundle, options, out_dir, reader=reader)
            done = stages.infer_slide(plan, self.bundle, options, self.backend, progress)
            res = stages.finish_slide(done, self.bundle, options)
        except BaseException:
            progress.end_slide("failed")
            if made_here:  # no outputs without a report: the folder this call made goes with the failure
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        progress.end_slide(res.status)
        return _result(res)

    def _out_root(self, out: SlidePath | None) -> Path:
        """The output root `out` (checked: not inside a bundle), or a new temporary folder when None."""
        from slidefuse.api_checks import check_out

        if out is None:
            return Path(tempfile.mkdtemp(prefix="slidefuse-"))
        check_out(Path(out), self.bundle.path)
        return Path(out)

    def _batch(self, slides: list[Path], list_file: Path | None, out_root: Path, options: SegmentOptions,
               progress: Progress, on_result: Callable[[SegmentationResult], None] | None,
               backend: Backend | None = None, stop: threading.Event | None = None) -> list[SegmentationResult]:
        from slidefuse.runtime.segment import segment_many as run_slides

        def told(res: SlideResult) -> None:
            if on_result is not None:
                on_result(_result(res))

        done = run_slides(slides, self.bundle, out_root, options, list_file=list_file, progress=progress,
                          backend=backend or self.backend, on_result=told, stop=stop)
        return [_result(r) for r in done]

    def embed(self, slide: SlidePath | np.ndarray, *, mpp: float | None = None) -> EmbeddingResult:
        """The patch embeddings of one slide file or uint8 [H, W, 3] RGB array (then `mpp` is required), held in
        memory (nothing is written; `slidefuse embed` writes features.h5). Needs an embedding bundle."""
        return _embed(self, slide, mpp)

    def segment_batch(
        self,
        slides: Iterable[SlidePath],
        *,
        out: SlidePath,
        list_file: SlidePath | None = None,
        progress: ProgressCallback | Progress | None = None,
        on_result: Callable[[SegmentationResult], None] | None = None,
        **override: Any,
    ) -> list[SegmentationResult]:
        """Segment slide files and folders (scanned recursively) and `list_file`; returns every result in
        input order, failures included (status "failed", `error`), after `on_result` was told of each one
        as it finished. Records every slide in `out/run.json`. `override`: options for this batch only
        (mpp, formats, overwrite, overlap_slides, ...). Slides are overlapped as in the CLI."""
        options = self._run_options(**override)
        return self._batch([Path(s) for s in slides], Path(list_file) if list_file is not None else None,
                           self._out_root(out), options, as_progress(progress), on_result)

    def segment_many(
        self,
        slides: Iterable[SlidePath],
        *,
        out: SlidePath,
        list_file: SlidePath | None = None,
        progress: ProgressCallback | Progress | None = None,
        **override: Any,
    ) -> Iterator[SegmentationResult]:
        """Like `segment_batch`, but yields each slide's result as soon as its outputs are written (in slide
        order). The batch runs on one worker thread, the only one that touches the backend meanwhile.
        Stopping the iteration early (`close()`, `break`, leaving a `with` block around it) stops the batch
        within a batch of tiles: the slide being inferred is dropped, outputs being written are finished, and
        no temporary file or empty folder of this batch is left."""
        paths, listed = [Path(s) for s in slides], Path(list_file) if list_file is not None else None
        options, hooks, out_root = self._run_options(**override), as_progress(progress), self._out_root(out)

        def run(on_result: Callable[[SegmentationResult], None], stop: threading.Event) -> object:
            return self._batch(paths, listed, out_root, options, hooks, on_result, stop=stop)

        yield from _yield_from_thread(run, self._running)


class _Stop(Exception):
    """Raised inside the batch's result hook when the consumer stopped iterating."""


@dataclass(frozen=True, eq=False)
class _Running:
    """A batch running on its thread for a `segment_many` iterator."""

    stop: threading.Event  # set to stop the batch (within one batch of tiles: BatchStopped)
    thread: threading.Thread

    def stop_and_wait(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


def _yield_from_thread(run: Callable[[Callable[[SegmentationResult], None], threading.Event], object],
                       running: set[_Running]) -> Iterator[SegmentationResult]:
    """Call `run(on_result, stop)` on a thread and yield the results it reports as they are recorded; `stop`
    is set when the consumer stops iterating, or when the model is closed (the batch then stops:
    BatchStopped). The batch is in `running` while its thread runs."""
    from slidefuse.runtime.segment.scheduler import BatchStopped

    q: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def told(res: SegmentationResult) -> None:
        q.put(("result", res))
        if stop.is_set():
            raise _Stop()

    def work() -> None:
        try:
            run(told, stop)
        except (_Stop, BatchStopped):
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))
        q.put(("end", None))

    thread = threading.Thread(target=work, name="slidefuse-api-batch", daemon=True)
    batch = _Running(stop, thread)
    running.add(batch)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        batch.stop_and_wait()
        running.discard(batch)


def check_options(backend: str = "auto", *, require_signature: bool = False, trust: Iterable[SlidePath] = (),
                  **options: Any) -> SegmentOptions:
    """The options `load_model(bundle, backend, require_signature=..., trust=..., **options)` would run with,
    checked without loading anything: a UsageError (or UnknownName) for any option it would refuse. (The trusted
    keys are read when the bundle's signatures are checked.)"""
    if not isinstance(require_signature, bool):
        raise UsageError(f"require_signature={require_signature!r}: expected True or False",
                         field="require_signature")
    return _options(backend, options)


def load_model(bundle: SlidePath | Bundle, backend: str = "auto", *, require_signature: bool = False,
               trust: Iterable[SlidePath] = (), **options: Any) -> Model:
    """Load (and sha256-verify) a model bundle and check its signatures; returns a `Model` (a context manager).

    backend: a backend name ("ort-cpu", "trt", ...) or "auto" (the best one available here for the bundle).
    require_signature: refuse (SignatureError) a bundle without a valid signature by a trusted key; without it,
      such a bundle is used with one warning, and report.json records its signature state.
    trust: public keys trusted besides those of SLIDEFUSE_TRUSTED_KEYS and the config file (docs/trust.md): each
      a KEYFILE.pub path, a file of keys, or a public-key line.
    options: defaults of every run: batch_size, overlap, workers, tissue (`TissueParams`), all_tiles, mpp,
      formats, mask_mpp, overwrite, overlap_slides, backend_options (e.g. {"threads": 2}), qc ("default", "flag",
      "exclude", "off": docs/quality-control.md), on_stain_mismatch ("warn", "fail"). Checked now.
    """
    from slidefuse.runtime.bundle import Bundle, load_bundle

    if not isinstance(require_signature, bool):
        raise UsageError(f"require_signature={require_signature!r}: expected True or False",
                         field="require_signature")
    if isinstance(trust, str | os.PathLike):
        trust = (trust,)
    options_checked = _options(backend, options)  # usage errors before the bundle loads
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
    return Model(_signed(loaded, require_signature, tuple(trust)), options_checked)


def _signed(bundle: Bundle, require: bool, trust: tuple[SlidePath, ...]) -> Bundle:
    """The bundle with its signature state; refused when `require` and it is not validly signed by a trusted
    key, else one warning when it is not."""
    import logging

    from slidefuse.runtime.signing import check_signatures, require_signed, trusted_keys

    state = check_signatures(bundle, trusted_keys(trust))
    if require:
        require_signed(bundle, state)
    elif not state.ok:
        logging.getLogger(__name__).warning("model %s: signature check: %s (see docs/trust.md)", bundle.path,
                                            state.problem())
    return dataclasses.replace(bundle, signature=state)


def segment_many(
    slides: Iterable[SlidePath],
    model: Model | SlidePath,
    *,
    out: SlidePath,
    list_file: SlidePath | None = None,
    backend: str = "auto",
    progress: ProgressCallback | Progress | None = None,
    **options: Any,
) -> Iterator[SegmentationResult]:
    """Segment slides and folders with `model` (a `Model`, or a bundle path loaded here with `backend` and
    `options`) and yield each slide's `SegmentationResult` as soon as its outputs are written."""
    if isinstance(model, Model):
        yield from model.segment_many(slides, out=out, list_file=list_file, progress=progress, **options)
        return
    with load_model(model, backend=backend, **options) as loaded:
        yield from loaded.segment_many(slides, out=out, list_file=list_file, progress=progress)


# ---------------------------------------------------------------------------------------------- embeddings
@dataclass(frozen=True)
class EmbeddingResult:
    """One slide's patch embeddings (`Model.embed`), in row-major tile order."""

    features: np.ndarray  # float32 [N, D]: the encoder's published patch embedding of each tile
    coords: np.ndarray  # int64 [N, 2]: level-0 (x, y) of each tile's top-left corner (array: its own pixels)
    mpp: float  # um/px the tiles were cut at (the bundle's)
    tile_size: int  # tile side in px at `mpp`
    encoder: str  # encoder registry id
    qc_flags: np.ndarray | None = None  # uint8 [N]: each tile's QC bits (`runtime.embed.qc.FLAG_BITS`: ink, folds,
    # blur); tiles mostly excluded by the model's qc policy are not in the result


class _Rows:
    """An in-memory TileSink: the embeddings and their level-0 corners."""

    def __init__(self, l0_xy: Callable[[tuple[int, int]], tuple[int, int]]) -> None:
        self.l0_xy = l0_xy
        self.rows: list[np.ndarray] = []
        self.tiles: list[tuple[int, int]] = []
        self.xy: list[tuple[int, int]] = []

    def add(self, tile_rc: tuple[int, int], result: np.ndarray, /) -> None:
        self.rows.append(np.asarray(result, dtype=np.float32))
        self.xy.append(self.l0_xy(tile_rc))
        self.tiles.append(tile_rc)


def _embed(model: Model, slide: SlidePath | np.ndarray, mpp: float | None) -> EmbeddingResult:
    import slidefuse.runtime.embed  # noqa: F401  (h5py before libvips; see runtime/embed/__init__.py)
    from slidefuse.runtime.embed.batch import check_embedding_bundle
    from slidefuse.runtime.embed.options import EmbedOptions
    from slidefuse.runtime.embed.slide import plan_embedding
    from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline

    bundle = model.bundle
    check_embedding_bundle(bundle)
    o = model.options
    options = EmbedOptions(batch_size=o.batch_size, workers=o.workers, tissue=o.tissue, all_tiles=o.all_tiles,
                           mpp=o.mpp, override_mpp=mpp if not isinstance(slide, np.ndarray) else None, qc=o.qc,
                           on_stain_mismatch=o.on_stain_mismatch)
    reader = None
    if isinstance(slide, np.ndarray):
        from slidefuse.runtime.slide import InMemorySlide

        if mpp is None:
            raise UsageError("an array has no pixel size: pass mpp=<um/px>", field="mpp")
        reader = InMemorySlide(slide, float(mpp), "array")
    path = Path("array") if isinstance(slide, np.ndarray) else Path(slide)
    plan = plan_embedding(path, bundle, options, reader=reader)
    rows = _Rows(plan.l0_xy)
    try:
        run_pipeline(plan.view, plan.grid, plan.tiles, model.backend, rows,
                     PipelineOptions(batch_size=options.batch_size, workers=options.workers))
    finally:
        plan.close()
    m = bundle.manifest
    dim = m.embedding.dim if m.embedding is not None else 0
    features = np.stack(rows.rows) if rows.rows else np.zeros((0, dim), np.float32)
    coords = np.asarray(rows.xy, dtype=np.int64).reshape(-1, 2)
    qc_flags = np.asarray([plan.tile_qc.flags(rc) for rc in rows.tiles], dtype=np.uint8)
    return EmbeddingResult(features, coords, float(m.mpp), int(m.tile_size), m.encoder, qc_flags)
