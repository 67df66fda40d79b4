"""`slidefuse segment SLIDE_OR_DIR... --model BUNDLE --out OUT`: segment slides into masks and reports.

The command checks its options, loads (and sha256-verifies) the bundle, then hands over to
`slidefuse.runtime.segment.segment_many`. Each failed slide is printed as one line; the exit code is 1 when any
slide failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "data" / "default"  # the demonstration model


def _default_model() -> Path | None:
    return DEFAULT_BUNDLE if (DEFAULT_BUNDLE / "manifest.json").is_file() else None


class _FormatsOption(click.Option):
    """`--formats`: its help and shown default list the registered output formats, read from the registry
    only when help is shown (command modules import only click)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from slidefuse.runtime.outputs import DEFAULT_FORMATS, format_names

        names = format_names()
        self.help = f"Outputs to write, comma-separated: {', '.join(names)} (or 'all')."
        self.default = ",".join(n for n in names if n in DEFAULT_FORMATS)
        return super().get_help_record(ctx)


@click.command("segment")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "-m", "model", type=click.Path(path_type=Path), default=None,
              help="Model bundle folder (made by 'slidefuse export'). Default: the bundled demonstration "
                   "model, where installed.")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder: one sub-folder per slide, plus run.json.")
@click.option("--backend", default="auto", show_default=True,
              help="Inference backend by name, or auto: the preferred one that can run the model here (the pick, "
                   "and why the others were skipped, are logged). An unknown name lists the valid ones.")
@click.option("--batch", "batch_size", type=int, default=8, show_default=True, help="Tiles per engine call.")
@click.option("--overlap", type=int, default=None,
              help="Tile overlap in px at the model's resolution (0..tile/2). Default: the bundle's.")
@click.option("--mpp", type=float, default=None,
              help="Pixel size in um/px of the slides that have none; slides with their own keep it.")
@click.option("--override-mpp", "override_mpp", type=float, default=None,
              help="Pixel size in um/px replacing every slide's own (a --list CSV's mpp column still wins).")
@click.option("--workers", type=int, default=None, help="Reader threads. Default: two per usable CPU core.")
@click.option("--stitch-threads", type=int, default=None,
              help="Threads that label tile interiors while stitching. Default: one per usable CPU core.")
@click.option("--threads", type=int, default=None, help="Engine CPU threads (ort-cpu). Default: all cores.")
@click.option("--max-memory", "max_memory_gb", type=click.FloatRange(min=0), default=None, metavar="GIB",
              help="CPU backends (ort-cpu, ov-cpu): working-memory budget of the engine in GiB; a --batch that "
                   "would exceed it runs in sub-batches (same masks). Default: 40% of the usable memory; 0: no "
                   "limit.")
@click.option("--formats", cls=_FormatsOption, default=None, show_default=True,
              help="Outputs to write, comma-separated (or 'all'). Default: every built-in format.")
@click.option("--mask-mpp", type=float, default=None, help="Write mask.tif at this coarser pixel size (um/px).")
@click.option("--geojson-frame", type=click.Choice(["qupath", "level0"]), default="qupath", show_default=True,
              help="mask.geojson coordinates: 'qupath' subtracts the slide's openslide.bounds-x/y (QuPath crops "
                   "MIRAX and other slides with bounds to them), 'level0' keeps slide level-0 pixels.")
@click.option("--overwrite", is_flag=True, help="Redo slides whose outputs are already complete.")
@click.option("--on-decode-error", "on_decode_error", type=click.Choice(["fail", "warn"]), default="fail",
              show_default=True,
              help="A tile the image decoder reports as corrupt: 'fail' the slide (one line naming the tile; the "
                   "batch goes on), or 'warn': segment it anyway and count the bad tiles in report.json, the "
                   "preview and run.json.")
@click.option("--qc", "qc", type=click.Choice(["off", "flag", "default", "exclude"]), default="default",
              show_default=True,
              help="Quality control on the thumbnail (pen ink, folds) and per 128 um cell (blur): 'default' "
                   "excludes ink (not run, not tissue, cut out of the mask) and flags blur and folds; 'exclude' "
                   "excludes all three; 'flag' reports all three and excludes nothing; 'off' runs none. Results in "
                   "report.json (qc), qc.png, tissue.png and preview.png.")
@click.option("--on-stain-mismatch", "on_stain_mismatch", type=click.Choice(["warn", "fail"]), default="warn",
              show_default=True,
              help="A slide whose stain (estimated by colour deconvolution) is not the model's (its bundle's "
                   "stain, H&E by default): 'warn' (log, report.json, a banner on preview.png) or 'fail' the slide.")
@click.option("--tissue-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Lowest HSV saturation (0..1) counted as tissue on the thumbnail (default 0.07).")
@click.option("--min-tile-tissue", type=click.FloatRange(0.0, 1.0), default=None,
              help="Run a tile only when this fraction of it is tissue (default 0: any tissue).")
@click.option("--all-tiles", is_flag=True, help="Run every tile, tissue or not.")
@click.option("--overlap-slides/--one-slide-at-a-time", "overlap_slides", default=True, show_default=True,
              help="With several slides, plan the next slide and write the previous one's outputs on a "
                   "background thread while a slide's tiles run, so the engine does not wait for them.")
@click.option("--max-tiles", type=int, default=None,
              help="Refuse a slide whose tile grid at the model's pixel size has more tiles (default 10000000).")
@click.option("--force-mpp", is_flag=True,
              help="Use slide pixel sizes outside the plausible 0.05..20 um/px (from the file, --mpp or "
                   "--override-mpp).")
@click.option("--list", "list_file", type=click.Path(path_type=Path), default=None,
              help="Slide list: a text file with one slide path per line ('#' comments), or a CSV with a header "
                   "naming 'path' and optionally 'mpp' (that slide's um/px), 'out_name' (its folder under "
                   "--out) and 'roi' (its regions file, as --roi). Relative paths are relative to the list.")
@click.option("--roi", "roi", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Regions of interest of the one slide given: a QuPath GeoJSON export (File > Export objects as "
                   "GeoJSON; Polygon and MultiPolygon annotations, in the --geojson-frame) or a mask image (nonzero "
                   "= inside). Only tiles touching a region run, the mask is 0 outside them and report.json gives "
                   "the areas per region and class. Several slides: a --list CSV's roi column.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or log lines; only errors (as 'slidefuse -q').")
@click.option("--device", "device_id", type=click.IntRange(min=0), default=None,
              help="GPU index for the backend (its device_id option).")
@click.option("--option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="Backend option (repeatable), e.g. --option precision=fp16; an unknown key lists the valid ones.")
@click.option("--shard", default=None, metavar="I/N",
              help="Take only slides I, I+N, I+2N, ... of the list (e.g. one Slurm array task each).")
@click.option("--claim-timeout", type=float, default=120.0, show_default=True,
              help="Seconds without a heartbeat after which another process takes over a slide's claim "
                   "(OUT/<slide>/.lock). Any number of processes can share one list and OUT.")
@click.option("--no-wait", "no_wait", is_flag=True,
              help="At the end of the list, leave the slides other live processes hold to them at once. Default: "
                   "wait for them, taking over any whose holder stops.")
@click.option("--require-signature", is_flag=True,
              help="Refuse a bundle that is not signed by a trusted key (--trust, SLIDEFUSE_TRUSTED_KEYS or the "
                   "config file; see docs/trust.md). Without it, such a bundle runs with one warning.")
@click.option("--trust", "trust", multiple=True, metavar="PUBKEY",
              help="A public key to trust (repeatable): a KEYFILE.pub made by 'slidefuse keys new', a file of "
                   "such lines, or the line itself.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Spread the slides over a Ray cluster (the 'ray' extra): ADDRESS, or 'auto' (the default) "
                   "to join the running cluster or start a local one. OUT must be on storage every node sees.")
@click.option("--ray-workers", type=int, default=None,
              help="With --ray: worker processes (default: one per GPU, or per --ray-cpus-per-worker CPUs).")
@click.option("--ray-cpus-per-worker", type=int, default=1, show_default=True,
              help="With --ray: CPU cores per worker (and its engine threads on a CPU backend).")
@click.option("--retries", type=int, default=2, show_default=True,
              help="With --ray: times a slide is retried on another worker when its worker dies.")
@click.pass_context
def command(ctx: click.Context, inputs: tuple[Path, ...], model: Path | None, out: Path, list_file: Path | None,
            quiet: bool, **flags: Any) -> None:
    """Segment slides (files, folders scanned recursively, or --list FILE) with a model bundle.

    \b
    Per slide, under OUT/<slide name>/: mask.tif (pyramidal TIFF of class indices), mask.geojson (QuPath
    annotations), report.json (areas, timings), preview.png, tissue.png; OUT/run.json lists every slide and
    OUT/summary.csv tabulates them (one row per slide). Finished slides are skipped on a rerun with the same
    model unless --overwrite.
    """
    import logging

    from slidefuse.runtime.progress import make_progress

    quiet = quiet or bool((ctx.obj or {}).get("quiet"))
    if quiet:
        logging.getLogger("slidefuse").setLevel(logging.WARNING)
    _check_ray_address(flags["ray_address"])
    _check_inputs(inputs, list_file, out, flags["all_tiles"], flags["tissue_threshold"], flags["min_tile_tissue"])
    _check_roi(flags["roi"])
    model_api = _model_api(model, flags)
    if flags["ray_address"] is not None:
        results = _on_ray(inputs, out, list_file, model_api, flags, quiet)
    else:
        with model_api:
            results = model_api.segment_batch(inputs, out=out, list_file=list_file, progress=make_progress(quiet))
    if _summary(results, out, quiet):
        ctx.exit(1)


def _model_api(model: Path | None, f: dict[str, Any]) -> Any:
    """The Python API's model for these flags. SegmentOptions validates every value once (errors name the field,
    which the CLI's error handler turns into the flag), before the bundle loads: a usage error exits 2 at once."""
    from slidefuse.api import check_options, load_model

    options = _api_options(f)
    check_options(**options)
    return load_model(_load_model(model), **options)


def _api_options(f: dict[str, Any]) -> dict[str, Any]:
    """`load_model`'s keyword options (the backend included) for these flags."""
    optional = {k: f[k] for k in ("workers", "stitch_threads", "max_tiles") if f[k] is not None}
    return dict(
        backend=f["backend"],
        backend_options=_backend_options(f["threads"], f["device_id"], f["backend_options"], f["max_memory_gb"]),
        shard=_shard(f["shard"]),
        claim_timeout=f["claim_timeout"],
        wait=not f["no_wait"],
        batch_size=f["batch_size"],
        overlap=f["overlap"],
        tissue=_tissue_params(f["tissue_threshold"], f["min_tile_tissue"]),
        all_tiles=f["all_tiles"],
        mpp=f["mpp"],
        override_mpp=f["override_mpp"],
        formats=f["formats"],  # parsed once, by load_model; None: every built-in format
        mask_mpp=f["mask_mpp"],
        geojson_frame=f["geojson_frame"],
        overwrite=f["overwrite"],
        overlap_slides=f["overlap_slides"],
        force_mpp=f["force_mpp"],
        on_decode_error=f["on_decode_error"],
        roi=f["roi"],
        qc=f["qc"],
        on_stain_mismatch=f["on_stain_mismatch"],
        require_signature=f["require_signature"],
        trust=f["trust"],
        **optional,
    )


def _backend_options(threads: int | None, device: int | None, items: tuple[str, ...],
                     max_memory: float | None = None) -> dict[str, Any]:
    """--threads, --device, --max-memory and --option KEY=VALUE as backend options (a key given twice is
    refused)."""
    from slidefuse.commands.bench_engine import parse_options
    from slidefuse.errors import UsageError

    out = parse_options(items)
    for key, flag, value in (("threads", "--threads", threads), ("device_id", "--device", device),
                             ("max_memory_gb", "--max-memory", max_memory)):
        if value is None:
            continue
        if key in out and out[key] != value:
            raise UsageError(f"{flag} {value} conflicts with --option {key}={out[key]}; give it once")
        out[key] = value
    return out


def _check_ray_address(address: str | None) -> None:
    """`--ray slides/` takes the folder as the address (click's optional value): refuse it, saying so."""
    from slidefuse.errors import UsageError

    if address is not None and Path(address).exists():
        raise UsageError(f"--ray took {address!r}, a path, as the cluster address; write '--ray auto' or put "
                         "--ray after the slides")


def _shard(text: str | None) -> tuple[int, int] | None:
    from slidefuse.runtime.segment.claims import parse_shard

    return None if text is None else parse_shard(text)


def _on_ray(inputs: tuple[Path, ...], out: Path, list_file: Path | None, model_api: Any,
            scale_out: dict[str, Any], quiet: bool) -> list[Any]:
    """--ray: the slides spread over a Ray cluster; a progress line per finished slide (and every 10 s)."""
    from slidefuse.distributed import RayConfig, segment_on_ray

    config = RayConfig(address=scale_out["ray_address"], workers=scale_out["ray_workers"],
                       cpus_per_worker=scale_out["ray_cpus_per_worker"], retries=scale_out["retries"])

    def show(status: Any) -> None:
        if not quiet:
            click.echo(f"slidefuse: {status.line()}", err=True)

    return segment_on_ray(list(inputs), model_api.bundle, out, model_api.options, config, list_file=list_file,
                          on_status=show)


def _check_inputs(inputs: tuple[Path, ...], list_file: Path | None, out: Path, all_tiles: bool,
                  tissue_threshold: float | None, min_tile_tissue: float | None) -> None:
    """Usage errors that only the command line can make: no slides, a missing list, conflicting flags."""
    from slidefuse.errors import SlideNotFound, UsageError

    if not inputs and list_file is None:
        raise UsageError("no slides given; pass slide files or folders, or --list FILE")
    if list_file is not None and not list_file.is_file():
        raise SlideNotFound(f"{list_file}: no such list file (--list); pass a text file with one slide path per line")
    if list_file is None and not any(p.exists() or p.is_symlink() for p in inputs):  # nothing to run: no OUT either
        raise SlideNotFound(f"{', '.join(str(p) for p in inputs)}: no such file or folder; check the "
                            f"path{'s' if len(inputs) > 1 else ''}")
    if all_tiles and (tissue_threshold is not None or min_tile_tissue is not None):
        named = [n for n, v in (("--tissue-threshold", tissue_threshold), ("--min-tile-tissue", min_tile_tissue))
                 if v is not None]
        raise UsageError(f"--all-tiles conflicts with {' and '.join(named)}: with --all-tiles no tile is "
                         "selected by tissue; drop one of them")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the outputs")


def _check_roi(roi: Path | None) -> None:
    """--roi names a file (read, and checked against each slide, when the slide is planned)."""
    from slidefuse.errors import SlideNotFound

    if roi is not None and not roi.is_file():
        raise SlideNotFound(f"{roi}: no such regions file (--roi); pass a QuPath GeoJSON export or a mask image")


def _tissue_params(tissue_threshold: float | None, min_tile_tissue: float | None) -> Any:
    from slidefuse.numbers import finite_float
    from slidefuse.runtime.tissue import TissueParams

    for name, value in (("tissue_threshold", tissue_threshold), ("min_tile_tissue", min_tile_tissue)):
        if value is not None:  # click's range lets nan through
            finite_float(value, field=name, minimum=0.0, maximum=1.0)
    tissue = TissueParams()
    if tissue_threshold is not None:
        tissue = TissueParams(**{**tissue.to_dict(), "min_saturation": tissue_threshold})
    if min_tile_tissue is not None:
        tissue = TissueParams(**{**tissue.to_dict(), "tile_min_fraction": min_tile_tissue})
    return tissue


def _load_model(model: Path | None) -> Any:
    """The bundle named by --model, else the demonstration bundle; warns about random or demo weights."""
    import logging

    from slidefuse.errors import UsageError
    from slidefuse.runtime.bundle import load_bundle

    log = logging.getLogger("slidefuse.commands.segment")
    if model is None:
        model = _default_model()
        if model is None:
            raise UsageError("--model is required (no demonstration model is installed); pass a bundle folder "
                             "made by 'slidefuse export'")
        log.info("no --model given: using the bundled demonstration model %s (not for diagnostic use)", model)
    bundle = load_bundle(model)
    if bundle.manifest.random_weights:
        log.warning("model %s has RANDOM weights: its masks are meaningless (tests and benchmarks only)", model)
    if bundle.manifest.demo:
        log.info("model %s is the demonstration model: not for diagnostic use", model)
    return bundle


def _summary(results: list[Any], out: Path, quiet: bool) -> bool:
    """Print each failure as one line and the totals; True when any slide this process owned at the end failed
    (a slide whose claim another process took over, or left to another, is that process's)."""
    from slidefuse.commands.flags import field_flags, with_flags

    failed = [r for r in results if r.status == "failed"]
    flags = field_flags(command)  # a slide's error names library fields: show this command's flags
    for r in failed:
        click.echo(f"slidefuse: error: {with_flags(r.error or '', flags)}", err=True)
    if not quiet and (len(results) > 1 or not failed):
        ok = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        damaged = [r for r in results if r.decode_errors]
        others = _shared(results)
        if damaged:
            others += (f", {sum(r.decode_errors for r in damaged)} corrupt tile(s) in {len(damaged)} segmented "
                       "slide(s) (see their report.json)")
        click.echo(f"{ok} segmented, {skipped} skipped, {len(failed)} failed{others} of {len(results)} slide(s); "
                   f"outputs in {out} (run log {out / 'run.json'})", err=True)
    return bool(failed)


def _shared(results: list[Any]) -> str:
    """The summary's part about the slides other processes sharing OUT did: how many, and who held them."""
    lost = sum(r.status == "claim_lost" for r in results)
    claimed = [r for r in results if r.status == "claimed"]
    holders = sorted({r.holder for r in claimed if getattr(r, "holder", None)})
    text = f", {lost} taken over by other processes (claim lost)" if lost else ""
    if claimed:
        text += f", {len(claimed)} left to other processes sharing OUT"
        text += f" (held by {', '.join(holders)})" if holders else ""
    return text
