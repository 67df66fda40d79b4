"""Per-slide outputs of `slidefuse segment`, each written atomically, and the check that they are current.

Files in a slide's output folder (`OUT/<slide stem>/`), one per registered format (see `registry`):

- `mask.tif` (format "tiff"): pyramidal tiled deflate TIFF of uint8 class indices, pixel size in its
  resolution tags (see `mask_tiff`).
- `mask.geojson` (format "geojson"): one QuPath annotation per connected region (see `geojson`).
- `preview.png` (format "preview"): thumbnail with the mask overlaid and a legend (see `preview`).
- `tissue.png`: the tissue mask found on the thumbnail (always written), with the QC regions in its palette.
- `qc.png`: the QC maps as a label image at the thumbnail's scale (when QC ran; see `slidefuse.runtime.qc.draw`).
- `report.json` (format "report"): always written, and written last: it records the bundle digest and
  every file written with its size (a folder's: total bytes and file count), which `outputs_current` checks on
  a rerun.

Every file is written as `<name>.partial` and renamed when complete; `write_outputs` first removes an
existing report.json, so a slide whose rewrite is killed half-way is never taken for complete. Under a
`fence` (`slidefuse.atomic.Fence`: the slide's claim, when processes share OUT) the temporaries carry the
writer's tag and each rename, the removal of report.json and of others' temporaries is checked first.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slidefuse.atomic import (
    TMP_SUFFIX,
    Fence,
    atomic_path,
    clean_temporaries,
    fenced,
    fsync_dir,
    stale_temporaries,
    write_json_atomic,
)
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.outputs.base import (
    OutputContext,
    OutputOptions,
    OutputRecord,
    OutputWriter,
)
from slidefuse.runtime.outputs.preview import TISSUE_FILE, write_tissue_png
from slidefuse.runtime.outputs.probs import needs_probabilities
from slidefuse.runtime.outputs.raster import OutputError
from slidefuse.runtime.outputs.registry import (
    DEFAULT_FORMATS,
    REPORT_FORMAT,
    format_names,
    get_writer,
    parse_formats,
    register_writer,
    unregister_writer,
    writers,
)
from slidefuse.runtime.outputs.report import REPORT, build_report, read_report
from slidefuse.runtime.types import MaskResult, SlideInfo

__all__ = [
    "ALL_FORMATS",
    "DEFAULT_FORMATS",
    "TISSUE_FILE",
    "TMP_SUFFIX",
    "OutputContext",
    "OutputError",
    "OutputOptions",
    "OutputRecord",
    "OutputWriter",
    "atomic_path",
    "clean_temporaries",
    "format_names",
    "get_writer",
    "needs_probabilities",
    "outputs_current",
    "parse_formats",
    "read_report",
    "recorded_size",
    "register_writer",
    "unregister_writer",
    "write_outputs",
    "writers",
]

logger = logging.getLogger(__name__)

ALL_FORMATS = DEFAULT_FORMATS  # the built-in formats {"tiff", "geojson", "report", "preview"}


def _check_classes(result: MaskResult, bundle: Bundle) -> None:
    classes = bundle.manifest.classes
    if int(len(result.class_pixels)) not in (0, len(classes)):
        raise OutputError(
            f"the mask reports {len(result.class_pixels)} class counts but bundle {bundle.path} has "
            f"{len(classes)} classes; the mask was made by another model"
        )


def _prepare_folder(out_dir: Path, scratch: tuple[Path, ...]) -> None:
    """Create `out_dir`, remove what a killed run left (not the stitcher's raw files `scratch`), and remove
    report.json before anything is rewritten: a rewrite killed half-way must not look complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out_dir, keep=scratch)  # fenced: checks first that this writer still may
    report_path = out_dir / REPORT
    if report_path.exists():
        report_path.unlink()
        fsync_dir(out_dir)


def _timed(write: Callable[[], OutputRecord]) -> tuple[OutputRecord, float]:
    t0 = time.perf_counter()
    record = write()
    return record, time.perf_counter() - t0


def _write_tissue(context: OutputContext) -> OutputRecord:
    path = context.out_dir / TISSUE_FILE
    return OutputRecord(path, write_tissue_png(context.result, path))


def _write_qc(context: OutputContext) -> OutputRecord:
    from slidefuse.runtime.qc.draw import QC_FILE, write_qc_png

    path = context.out_dir / QC_FILE
    return OutputRecord(path, write_qc_png(context.result.qc, path))


def _run_writers(
    context: OutputContext, selected: list[OutputWriter]
) -> dict[str, tuple[OutputRecord, float]]:
    """Run `selected` side by side on threads; returns {format: (record, seconds)} in the order given.

    The writers read the raw mask and write different files; libvips, numpy and shapely release the GIL in
    their heavy parts, so running them side by side uses the cores the engine has just left idle. The first
    failure is raised once all have stopped (each write is atomic, so none leaves a partial file).
    """
    pool = ThreadPoolExecutor(max_workers=max(1, len(selected)), thread_name_prefix="slidefuse-out")
    try:
        futures = [(w.name, pool.submit(contextvars.copy_context().run, _timed, functools.partial(w.write, context)))
                   for w in selected]  # each thread in a copy of this context: the same fence
        return {name: fut.result() for name, fut in futures}
    finally:
        _wait_for_writers(pool)


def _wait_for_writers(pool: ThreadPoolExecutor) -> None:
    """Shut `pool` down once every writer has stopped. Interrupted (Ctrl-C) while waiting, wait once more
    before the interruption goes on: what runs after it (the interrupted batch's clean-up of temporaries, the
    claim's release) must not race a writer still making its temporary file. A second interruption is not held."""
    try:
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def recorded_size(path: Path) -> dict[str, int]:
    """An output's size as report.json records it: {"bytes": size} for a file; for a folder (e.g. mask.zarr)
    {"bytes": total size of the files in it, "files": their number}, every level down, symlinks not followed."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return {"bytes": path.stat().st_size}
    total = count = 0
    for folder, _, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(folder, name)).st_size
            count += 1
    return {"bytes": total, "files": count}


def _described(record: OutputRecord) -> dict[str, Any]:
    """A record as stored in report.json's "outputs": the writer's description plus file name and size."""
    info = dict(record.info)
    info["file"] = record.path.name
    info.update(recorded_size(record.path))
    return info


def write_outputs(
    result: MaskResult,
    slide: SlideInfo,
    bundle: Bundle,
    out_dir: Path,
    options: OutputOptions | None = None,
    *,
    extra_report: dict[str, Any] | None = None,
    fence: Fence | None = None,
) -> dict[str, Path]:
    """Write a slide's outputs into `out_dir` atomically; returns {format: final path} (plus "tissue").

    result: the stitched mask (raw uint8 class indices at `result.mpp`) and run statistics.
    options: the formats to write and how (None: `OutputOptions()`, every built-in format at the model's
      resolution); report.json is written in any case, last, as the completion record.
    extra_report: JSON-able fields stored under "run" in report.json (e.g. options of the command).
    fence: the writer's fence (see `slidefuse.atomic`); its check runs before every step that others see and
      raises (e.g. `ClaimLost`) to stop the writing, which then leaves none of this writer's temporaries.
      None: the fence already in force, if any.
    """
    with fenced(fence) if fence is not None else contextlib.nullcontext():
        return _write_outputs(result, slide, bundle, Path(out_dir), options, extra_report)


def _write_outputs(result: MaskResult, slide: SlideInfo, bundle: Bundle, out_dir: Path,
                   options: OutputOptions | None, extra_report: dict[str, Any] | None) -> dict[str, Path]:
    options = options if options is not None else OutputOptions()
    _check_classes(result, bundle)
    context = OutputContext(result, slide, bundle, Path(out_dir), options)
    _prepare_folder(context.out_dir, result.scratch_files())
    done = {"tissue": _timed(lambda: _write_tissue(context))}
    if result.qc is not None:
        done["qc"] = _timed(lambda: _write_qc(context))
    done.update(_run_writers(context, [w for w in writers() if w.name in options.formats]))
    described = {fmt: _described(record) for fmt, (record, _) in done.items()}
    seconds = {fmt: s for fmt, (_, s) in done.items()}
    report = build_report(result, slide, bundle, described, output_seconds=seconds, extra=extra_report)
    report["formats"] = sorted(options.formats | {REPORT_FORMAT})
    paths = {fmt: record.path for fmt, (record, _) in done.items()}
    paths[REPORT_FORMAT] = write_json_atomic(context.out_dir / REPORT, report)
    logger.info("outputs of %s complete in %s (%s)", Path(slide.path).name, out_dir, ", ".join(sorted(paths)))
    return paths


def _file_as_recorded(out_dir: Path, info: Any) -> bool:
    """Whether an entry of report.json's "outputs" names a file (or folder) that exists with the recorded size
    (`recorded_size`: a folder recorded as a file, or the reverse, differs)."""
    if not isinstance(info, Mapping) or not isinstance(info.get("file"), str):
        return False
    recorded = {k: info[k] for k in ("bytes", "files") if k in info}
    if not all(type(v) is int for v in recorded.values()):
        return False
    try:
        return recorded_size(out_dir / info["file"]) == recorded
    except OSError:
        return False


def outputs_current(out_dir: Path, report: Mapping[str, Any], options: OutputOptions) -> str | None:
    """None when `out_dir` holds complete outputs of `options.formats` as `report` (its parsed report.json)
    records them and as `options` ask for them now; else why they are not, in words.

    Checks: the report lists every requested format; no temporary of an interrupted write is left
    (`atomic.stale_temporaries`: a `*.partial` file, a staged folder, the raw mask); every output the report
    lists, and every requested one, exists with the recorded size (`recorded_size`: a folder such as mask.zarr by
    its total size and file count); and each requested format's writer finds its file current for these options
    (`OutputWriter.is_current`: e.g. mask.tif written at `mask_mpp`, None = the model's resolution). Which slide,
    bundle and options made the outputs is the skip key's business (`skip.decide`, which calls this function),
    not this one's.
    """
    out_dir = Path(out_dir)
    formats = options.formats
    written = report.get("formats")
    missing = sorted(formats - {f for f in (written if isinstance(written, list) else ()) if isinstance(f, str)})
    if missing:
        return f"formats not written before: {', '.join(missing)}"
    if stale_temporaries(out_dir):
        return "a partial file is left from an interrupted run"
    outputs: Mapping[str, Any] = report["outputs"] if isinstance(report.get("outputs"), dict) else {}
    files = (formats - {REPORT_FORMAT}) | {"tissue"} | set(outputs)
    lost = sorted(fmt for fmt in files if not _file_as_recorded(out_dir, outputs.get(fmt)))
    if lost:
        return f"output files missing or changed: {', '.join(lost)}"
    stale = sorted(fmt for fmt in formats - {REPORT_FORMAT} if not get_writer(fmt).is_current(report, options))
    return f"outputs made with other options: {', '.join(stale)}" if stale else None
