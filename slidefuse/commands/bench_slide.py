"""`slidefuse bench slide`: one slide (or a batch of slides) end to end through the runtime, time per stage,
and the ratio of the end-to-end rate to the engine-only rate on the same tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from slidefuse.commands.bench_engine import emit, parse_options


def _over(doc: dict[str, Any]) -> str:
    n = len(doc.get("slides", [])) or 1
    return "" if n == 1 else f" over {n} slides"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The slide benchmark as a few human-readable lines (the JSON holds everything)."""
    s, m, b = doc["summary"], doc["model"], doc["backend"]

    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    picked = b.get("info", {}).get("backend", b["name"])
    name = b["name"] if picked == b["name"] else f"{b['name']} ({picked})"  # auto: the one it picked
    lines = [
        f"slide   {doc['slide']}",
        f"model   {m['encoder']} tile {m['tile_size']} px at {m['mpp']:g} um/px; backend {name} "
        f"({b['device']}, {b['precision']}), batch {doc['settings']['batch_size']}, "
        f"{doc['settings']['workers']} reader threads, qc {doc['settings'].get('qc', 'default')}",
        f"tiles   {s['tiles_run']} run{_over(doc)}; end to end {s['end_to_end_tiles_per_s']:.2f} tiles/s "
        f"({s['end_to_end_megapixels_per_s']:.2f} MP/s), pipeline {s['pipeline_tiles_per_s']:.2f} tiles/s, "
        f"engine only {s['engine_tiles_per_s']:.2f} tiles/s",
        f"ratio   end-to-end / engine {ratio(s['end_to_end_to_engine_ratio'])}, "
        f"pipeline / engine {ratio(s['pipeline_to_engine_ratio'])} "
        f"(median of {doc['settings']['repeats']} run(s))",
        "stages  " + ", ".join(f"{k} {v:.2f} s" for k, v in s["stages_s"].items()),
        f"load average before {doc['machine']['load_average']}, after {doc['load_average_after']} "
        f"({doc['machine']['cores']} cores)",
    ]
    return lines


@click.command("slide")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model", type=click.Path(path_type=Path), required=True, help="Model bundle folder.")
@click.option("--backend", default="auto", show_default=True,
              help="Backend name, or auto (the one 'slidefuse segment' picks by default).")
@click.option("--batch", "batch_size", type=int, default=8, show_default=True, help="Tiles per backend call.")
@click.option("--mpp", type=float, default=None, help="Slide pixel size in um/px, for slides without one.")
@click.option("--workers", type=int, default=4, show_default=True, help="Reader threads.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Precision to ask the backend for [its default, fp32].")
@click.option("--option", "backend_options", multiple=True,
              help="Backend option KEY=VALUE (repeatable), e.g. threads=2.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed backend calls first.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="End-to-end + engine-only pairs, alternated; the summary gives medians.")
@click.option("--engine-max-tiles", "max_engine_tiles", type=int, default=2048, show_default=True,
              help="Tiles kept in memory for the engine-only replay (the first ones of the slide).")
@click.option("--all-tiles", is_flag=True, help="Run every grid tile, not only those touching tissue.")
@click.option("--overlap-slides/--one-slide-at-a-time", "overlap_slides", default=True, show_default=True,
              help="With several slides: plan the next slide and write the previous one's outputs while a "
                   "slide's tiles run (as 'slidefuse segment' does).")
@click.option("--qc", "qc", type=click.Choice(["off", "flag", "default", "exclude"]), default="default",
              show_default=True,
              help="Quality control, as 'slidefuse segment --qc' (its time is the qc stage); run 'default' and "
                   "'off' alternately to measure what QC costs.")
@click.option("--keep-outputs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the segmentation outputs here instead of a temporary folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full results to this JSON file.")
def command(slides: tuple[Path, ...], model: Path, backend: str, batch_size: int, mpp: float | None, workers: int,
            precision: str | None, backend_options: tuple[str, ...], warmup: int, repeats: int, max_engine_tiles: int,
            all_tiles: bool, overlap_slides: bool, qc: str, keep_outputs: Path | None, json_path: Path | None) -> None:
    """Segment SLIDES end to end (into a temporary folder) with time per stage, then run the engine alone on
    the same tiles from memory, and report both rates and their ratio.

    \b
    Several slides run as one batch, as 'slidefuse segment' runs them; stages are summed over the slides.
    Read, decode and resample are one merged stage (libvips does them in one pipeline per region).
    Examples:
      slidefuse bench slide CMU-1-Small-Region.svs --model tiny.bundle --backend ort-cpu --json slide.json
      slidefuse bench slide a.svs b.svs c.svs --model tiny.bundle --json batch.json
    """
    from slidefuse.bench.slide import SlideBenchConfig, bench_slide
    from slidefuse.runtime.backends.registry import check_backend_choice
    from slidefuse.runtime.bundle import load_bundle

    config = SlideBenchConfig(batch_size=batch_size, mpp=mpp, workers=workers, precision=precision,
                              backend_options=parse_options(backend_options), warmup=warmup, repeats=repeats,
                              max_engine_tiles=max_engine_tiles, all_tiles=all_tiles, out_dir=keep_outputs,
                              overlap_slides=overlap_slides, qc=qc)
    config.check()
    check_backend_choice(backend, config.open_options())  # before the model loads: usage errors exit 2 at once
    doc = bench_slide(list(slides), load_bundle(model), backend, config)
    emit(doc, summary_lines(doc), json_path)
