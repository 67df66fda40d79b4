"""`slidefuse bench engine`: latency and throughput of one backend over a batch sweep, against the peak."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The engine benchmark as a few human-readable lines (the JSON holds everything)."""
    m, b, peak, flops = doc["model"], doc["backend"], doc["peak"], doc["flops"]
    gflop = f"{flops['gflop_per_tile']:.1f} GFLOP/tile ({flops['method']})" if flops.get("available") \
        else f"FLOPs not counted ({flops.get('reason')})"
    peak_text = (f"{peak['tflops']:.2f} TFLOP/s {peak['precision']}{' (estimate)' if peak['estimate'] else ''}"
                 if peak.get("tflops") else "unknown")
    lines = [
        f"model   {m['encoder']} tile {m['tile_size']} px, {m['num_classes']} classes ({m['bundle']})",
        f"backend {b['name']} on {peak['device']}, {b['precision']}; {gflop}; peak {peak_text}",
        f"{'batch':>5} {'p50 ms':>10} {'p95 ms':>10} {'p99 ms':>10} {'tiles/s':>10} {'MP/s':>9} "
        f"{'TFLOP/s':>9} {'of peak':>8} {'mem MiB':>9}",
    ]
    for r in doc["results"]:
        mem = r["memory"].get("device_max_allocated_mib", r["memory"].get("host_rss_mib"))
        frac = r.get("fraction_of_peak")
        lines.append(f"{r['batch']:>5} {r['p50_ms']:>10.2f} {r['p95_ms']:>10.2f} {r['p99_ms']:>10.2f} "
                     f"{r['tiles_per_s']:>10.2f} {r['megapixels_per_s']:>9.2f} "
                     f"{_fmt(r.get('achieved_tflops'), '.3f'):>9} "
                     f"{'n/a' if frac is None else f'{100 * frac:.1f}%':>8} {_fmt(mem, '.0f'):>9}")
    load = doc["machine"].get("load_average")
    lines.append(f"load average before {load}, after {doc.get('load_average_after')} "
                 f"({doc['machine']['cores']} cores); {doc['settings']['timing']}")
    return lines


def invocation() -> str | None:
    """The command line that ran, when run as `slidefuse` (or `python -m slidefuse`); None otherwise (tests)."""
    if Path(sys.argv[0]).name in ("slidefuse", "__main__.py"):
        return "slidefuse " + shlex.join(sys.argv[1:])
    return None


def emit(doc: dict[str, Any], lines: list[str], json_path: Path | None) -> None:
    """Finish a benchmark command: record the command line in `doc`, print `lines`, save the JSON if asked."""
    doc["command"] = invocation()
    for line in lines:
        click.echo(line)
    if json_path is not None:
        write_json(doc, json_path)
        click.echo(f"wrote {json_path}")


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write a benchmark document as indented JSON (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE backend options; true/false become booleans, integers and floats are converted, the rest stay
    strings."""
    from slidefuse.errors import UsageError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE, e.g. --option threads=2")
        parsed: Any = value
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        for conv in (int, float):
            try:
                parsed = conv(value)
                break
            except ValueError:
                continue
        out[key] = parsed
    return out


@click.command("engine")
@click.option("--model", "model", type=click.Path(path_type=Path), required=True, help="Model bundle folder.")
@click.option("--backend", default="ort-cpu", show_default=True, help="Backend name (see 'slidefuse segment --help').")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="Precision to ask the backend for [its default, fp32].")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed calls per batch size.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls per batch size first.")
@click.option("--option", "backend_options", multiple=True,
              help="Backend option KEY=VALUE (repeatable), e.g. threads=2.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full results (machine, model, backend, FLOPs, peak, rows) to this JSON file.")
def command(model: Path, backend: str, batches: str, precision: str | None, iters: int, warmup: int,
            backend_options: tuple[str, ...], json_path: Path | None) -> None:
    """Latency (p50/p95/p99 ms) and throughput (tiles/s, megapixels/s) of BACKEND on a bundle, per batch size,
    with FLOPs per tile counted from the model and the fraction of the device's peak achieved.

    \b
    Each timed sample is one backend.run call, host uint8 tiles in, host float32 probabilities out (so GPU
    work is synchronised); warm-up calls are excluded. Example:
      slidefuse bench engine --model tiny.bundle --backend ort-cpu --batch 1,8,32 --json engine.json
    """
    from slidefuse.bench.engine import EngineBenchConfig, bench_engine, parse_batches
    from slidefuse.runtime.backends.registry import check_backend_choice
    from slidefuse.runtime.bundle import load_bundle

    config = EngineBenchConfig(batches=parse_batches(batches), iters=iters, warmup=warmup, precision=precision,
                               backend_options=parse_options(backend_options))
    config.check()
    check_backend_choice(backend, config.open_options())  # before the model loads: usage errors exit 2 at once
    doc = bench_engine(load_bundle(model), backend, config)
    emit(doc, summary_lines(doc), json_path)
