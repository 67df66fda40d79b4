"""`slidefuse embed SLIDE_OR_DIR... --model BUNDLE --out OUT`: patch embeddings into OUT/<slide>/features.h5.

Checks its options, loads (and sha256-verifies) an embedding bundle (`slidefuse export ENCODER --task embed`),
then hands over to `slidefuse.runtime.embed.embed_many`. Each failed slide is printed as one line; the exit
code is 1 when any slide failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("embed")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "-m", "model", type=click.Path(path_type=Path), required=True,
              help="Embedding bundle folder (made by 'slidefuse export ENCODER --task embed').")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder: one sub-folder per slide (features.h5), plus run.json.")
@click.option("--list", "list_file", type=click.Path(path_type=Path), default=None,
              help="A text or CSV file of slide paths (one per line; CSV columns path, mpp, out_name).")
@click.option("--backend", default="auto", show_default=True,
              help="Inference backend by name, or auto: the preferred one that can run the model here.")
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Tiles per engine call.")
@click.option("--stride", type=int, default=None,
              help="Px between tile origins at the model's pixel size (tile/2..tile). Default: the tile size "
                   "(no overlap).")
@click.option("--formats", default="h5", show_default=True,
              help="Feature files, comma-separated: h5 (TRIDENT's layout), zarr (the same arrays).")
@click.option("--fp16", "fp16_features", is_flag=True, help="Store features as float16 (half the size).")
@click.option("--mpp", type=float, default=None,
              help="Pixel size in um/px of the slides that have none; slides with their own keep it.")
@click.option("--override-mpp", "override_mpp", type=float, default=None,
              help="Pixel size in um/px replacing every slide's own.")
@click.option("--workers", type=int, default=None, help="Reader threads. Default: two per usable CPU core.")
@click.option("--threads", type=int, default=None, help="Engine CPU threads (ort-cpu, ov-cpu). Default: all cores.")
@click.option("--option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="A backend option (repeatable), e.g. --option precision=bf16.")
@click.option("--qc", "qc", type=click.Choice(["off", "flag", "default", "exclude"]), default="default",
              show_default=True,
              help="Quality control, as in segment: 'default' leaves out tiles mostly pen ink and marks blur and "
                   "folds; 'exclude' leaves out all three; 'flag' marks all three and leaves out nothing; 'off' runs "
                   "none. Marks: the qc_flags dataset of features.h5 (one bit per method).")
@click.option("--on-stain-mismatch", "on_stain_mismatch", type=click.Choice(["warn", "fail"]), default="warn",
              show_default=True,
              help="A slide whose stain (estimated by colour deconvolution) is not the model's (its bundle's "
                   "stain, H&E by default): 'warn' (log, features.h5 attributes) or 'fail' the slide.")
@click.option("--tissue-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Lowest HSV saturation (0..1) counted as tissue on the thumbnail (default 0.07).")
@click.option("--min-tile-tissue", type=click.FloatRange(0.0, 1.0), default=None,
              help="Embed a tile only when this fraction of it is tissue (default 0: any tissue).")
@click.option("--all-tiles", is_flag=True, help="Embed every tile, tissue or not.")
@click.option("--overwrite", is_flag=True, help="Redo slides whose features are already complete.")
@click.option("--shard", default=None, metavar="I/N", help="Take only slides I, I+N, I+2N, ... of the list (0-based).")
@click.option("--claim-timeout", type=float, default=120.0, show_default=True,
              help="Seconds without a heartbeat after which another process takes a slide's claim over.")
@click.pass_context
def command(ctx: click.Context, inputs: tuple[Path, ...], model: Path, out: Path, list_file: Path | None,
            **flags: Any) -> None:
    """Embed slides (files, folders scanned recursively, or --list FILE) with an embedding bundle: one
    features.h5 per slide ([N, D] float32 features, [N, 2] level-0 top-left coords), loadable by TRIDENT- and
    CLAM-style MIL code.

    \b
    Example:
      slidefuse export phikon --task embed --encoder-weights model.safetensors --mpp 0.5 --out phikon-embed
      slidefuse embed slides/ --model phikon-embed --out features/
    """
    from slidefuse.commands.segment import _backend_options, _check_inputs, _shard, _tissue_params
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.embed import EmbedOptions, embed_many
    from slidefuse.runtime.embed.batch import check_embedding_bundle

    _check_inputs(inputs, list_file, out, flags["all_tiles"], flags["tissue_threshold"], flags["min_tile_tissue"])
    optional = {"workers": flags["workers"]} if flags["workers"] is not None else {}
    options = EmbedOptions(
        backend=flags["backend"],
        backend_options=_backend_options(flags["threads"], None, flags["backend_options"]),
        batch_size=flags["batch_size"], stride=flags["stride"],
        tissue=_tissue_params(flags["tissue_threshold"], flags["min_tile_tissue"]), all_tiles=flags["all_tiles"],
        mpp=flags["mpp"], override_mpp=flags["override_mpp"],
        formats=tuple(f.strip() for f in flags["formats"].split(",") if f.strip()),
        fp16_features=flags["fp16_features"], overwrite=flags["overwrite"], shard=_shard(flags["shard"]),
        claim_timeout=flags["claim_timeout"], qc=flags["qc"], on_stain_mismatch=flags["on_stain_mismatch"],
        **optional,
    )
    bundle = load_bundle(model)
    check_embedding_bundle(bundle)
    results = embed_many(list(inputs), bundle, out, options, list_file=list_file)
    quiet = bool(ctx.find_root().params.get("quiet"))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        click.echo(f"slidefuse: error: {r.error}", err=True)
    if not quiet:
        ok = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        claimed = sum(r.status in ("claimed", "claim_lost") for r in results)
        tiles = sum(r.tiles for r in results)
        click.echo(f"{ok} embedded ({tiles} tiles), {skipped} skipped, {failed and len(failed) or 0} failed"
                   f"{f', {claimed} left to other processes' if claimed else ''} of {len(results)} slide(s); "
                   f"features in {out} (run log {out / 'run.json'})", err=True)
    if failed:
        ctx.exit(1)
