"""`slidefuse bench parity`: run backends on the same tiles and compare them with the torch reference."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("parity")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="Model bundle folder (made by 'slidefuse export').")
@click.option("--backends", "--backend", "backends", default=None, metavar="A,B,...",
              help="Comma-separated backends to compare (default: every backend available here).")
@click.option("--reference", default="torch", show_default=True, help="Backend the others are compared with.")
@click.option("--tiles", "n_tiles", default=4, show_default=True, type=click.IntRange(min=0),
              help="Real tissue tiles to compare, at the model's pixel size: from --parity-slides, else from "
                   "the four small H&E and IHC tiles shipped with slidefuse.")
@click.option("--parity-slides", "slides", multiple=True, metavar="PATH",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Slide to cut the real tiles from (tissue detection + tile grid); repeat for several "
                   "slides.")
@click.option("--random-tiles", "n_random", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also compare this many seeded random uint8 tiles (full-range inputs, e.g. for fp16).")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(min=1), help="Tiles per run call.")
@click.option("--precision", type=click.Choice(["fp16", "bf16", "int8"]), default=None,
              help="Run the compared backends in this precision (default: each backend's fp32/engine "
                   "default); the reference stays fp32.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --random-tiles.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows as a JSON list of dicts.")
@click.option("--check", is_flag=True,
              help="Exit with status 1 when a backend fails the thresholds or errors.")
def command(model: Path, backends: str | None, reference: str, n_tiles: int, slides: tuple[Path, ...],
            n_random: int, batch: int, precision: str | None, seed: int, json_path: Path | None,
            check: bool) -> None:
    """Compare backends on the same tiles: max |probability difference| and argmax agreement against the
    reference (torch fp32), plus start-up time and throughput.

    \b
    Examples:
      slidefuse bench parity --model tiny.bundle
      slidefuse bench parity --model tiny.bundle --backends ort-cpu,torch --json parity.json
      slidefuse bench parity --model tiny.bundle --parity-slides slide.svs --tiles 8 --random-tiles 2
    """
    from slidefuse.bench.parity import format_table, run_parity
    from slidefuse.runtime.bundle import load_bundle

    names = [b.strip() for b in backends.split(",") if b.strip()] if backends is not None else None
    if names is not None and not names:
        raise click.BadParameter("expected at least one backend name, e.g. ort-cpu,torch",
                                 param_hint="--backends")
    bundle = load_bundle(model)
    options = {"precision": precision} if precision else {}
    rows = run_parity(bundle, names, reference=reference, n_tiles=n_tiles, n_random=n_random, slides=slides,
                      batch=batch, seed=seed, options=options)
    click.echo(format_table(rows))
    click.echo(f"tiles: {rows[0].tiles} ({rows[0].tile_origin})")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    bad = [r.backend for r in rows if r.status in ("fail", "error")]
    if check and bad:
        click.echo(f"slidefuse: error: parity failed for {', '.join(bad)}", err=True)
        click.get_current_context().exit(1)
