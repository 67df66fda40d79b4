#!/usr/bin/env python
"""CPU benchmarks in one command, on this machine:

1. engine sweep of the tiny model (512 px) with ort-cpu and torch eager -> results/cpu-engine.json;
2. the CPU paths against each other on the same model, tiles and batch, interleaved in one run per plan (each
   round times every path in turn, so load changes hit all of them alike): ort-cpu fp32, torch eager, ov-cpu fp32,
   ov-cpu bf16 (only when OpenVINO's CPU OPTIMIZATION_CAPABILITIES list BF16; else recorded as skipped with the
   reason), ort-cpu int8 and ov-cpu int8, all with the same thread count; ov-cpu runs in mode=latency, its default
   (one infer request over all threads). Plans: tiny at batch 4 with all cores and with 1 thread, phikon (ViT-B/16)
   at batch 1 and 4. Results: each path's tiles/s and its speed-up against torch eager and ort-cpu fp32, and a
   summary (the fastest path on phikon 512 px against the targets: >= 2.5x torch eager, >= 1.6x ort-cpu fp32)
   -> results/cpu-compare.json, with the CPU's model and ISA (AVX-512, VNNI, BF16, AMX) from machine_info;
3. `bench slide` on the real CMU-1-Small-Region slide with the tiny bundle and ort-cpu -> results/cpu-slide.json.

    python benchmarks/run_cpu.py [--quick] [--models tiny,phikon] [--only-compare] [--skip PARTS] [--out DIR]
        [--int8-op-types Conv,MatMul,Gemm --compare-name cpu-compare-int8conv.json]

--only-compare runs part 2 alone (the same as --skip flops,engine,slide); --models limits part 2 to some models
(`--quick --models tiny --only-compare --out /tmp/x` checks the whole compare path in about 30 s). The time of the
run and of the full run is estimated and printed first (the full run must stay under 25 minutes on 2 cores). Every
path of a plan stays open for the interleaving: the quick phikon run peaked at 15.7 GB RSS (its 1-tile
calibration alone: 4.9 GB).

Bundles are random-weight exports at 512 px and 0.5 um/px, made once into --bundles. The INT8 paths run a copy of
each, `<name>-int8.bundle` beside it (files hard-linked, manifest rewritten, also cached), whose model.int8.onnx is
made by `quantize.write_int8_graph` calibrated on tissue tiles of CMU-1-Small-Region. With random weights those
graphs are for speed only and were not gated (agreement is meaningless; accuracy is measured on trained models in
benchmarks/results/cpu-accuracy.json). All paths of a plan run on that copy, whose model.onnx and
model.safetensors are the original's. On a busy shared machine the figures move with the load: every result
carries the load average (1, 5, 15 min) it ran under.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run_engine_matrix import DEFAULT_BUNDLES, ensure_bundle  # noqa: E402
from benchmarks.slides import find_slide  # noqa: E402
from slidefuse.bench.engine import Contender, EngineBenchConfig, bench_engine, compare_backends  # noqa: E402
from slidefuse.bench.machine import machine_info, peak_rss_mib  # noqa: E402
from slidefuse.bench.slide import SlideBenchConfig, bench_slide  # noqa: E402
from slidefuse.errors import UsageError  # noqa: E402
from slidefuse.runtime.bundle import MANIFEST, Bundle, load_bundle, write_manifest  # noqa: E402
from slidefuse.runtime.cores import usable_cores  # noqa: E402

log = logging.getLogger("run_cpu")

RESULTS = REPO / "benchmarks" / "results"
CMU = find_slide("CMU-1-Small-Region.svs")
MODELS = ("tiny", "phikon")  # the compare part's models (benchmark bundles at 512 px)
PARTS = ("flops", "engine", "compare", "slide")
TILE = 512
INT8_NOTE = ("random weights: agreement is meaningless; accuracy is measured on trained models in "
             "benchmarks/results/cpu-accuracy.json")
# Calibration tiles of the speed-only INT8 graphs. The graph's structure (which nodes are quantised), hence its
# speed, does not depend on the ranges. phikon gets one: a calibration pass holds every activation of a ViT-B at
# 512 px for each of its tiles (measured: 1 tile 4.9 GB peak RSS in 21 s, 4 tiles 15.5 GB in 75 s).
CALIBRATION_TILES = {"tiny": 8, "phikon": 1}
OV_MODE = "latency"  # ov-cpu's default PERFORMANCE_HINT: one infer request over all threads
TARGETS = (("torch-eager", 2.5), ("ort-cpu", 1.6))  # (baseline, minimum speed-up of the fastest phikon path)
SUMMARY_MODEL = "phikon"


@dataclass(frozen=True)
class Plan:
    """One interleaved comparison: every contender on the same bundle, tiles and batch."""

    model: str  # encoder id of the benchmark bundle
    batch: int  # tiles per timed call
    threads: int  # intra-op threads of every contender
    rounds: int  # rounds; each times every contender in turn
    per_round: int  # timed calls per contender per round
    warm_batch: int  # tiles of each contender's one warm-up call


def compare_plans(cores: int, quick: bool, models: tuple[str, ...]) -> list[Plan]:
    """The compare part's plans for `models`. phikon warms up on one tile and keeps 2-3 rounds (a slow path takes
    ~5-20 s a call on 2 busy cores); tiny runs with all cores and with 1 thread each, since 2 OpenMP threads on a
    shared 2-core machine suffer from other tenants' load."""
    plans = [Plan("tiny", 4, cores, 2 if quick else 6, 2, 4), Plan("tiny", 4, 1, 2 if quick else 6, 2, 4),
             Plan("phikon", 1, cores, 1 if quick else 3, 1, 1), Plan("phikon", 4, cores, 1 if quick else 2, 1, 1)]
    return [p for p in plans if p.model in models]


# ------------------------------------------------------------------------------------------- time estimate
# Seconds per tile at 512 px of the mean path (the six paths' calls summed, / 6 / batch), measured on 2 busy cores
# (AMD EPYC with AVX-512, load 4-6): phikon 3.2 s at batch 1 and 3.9 s at batch 4 (torch eager 7.2 / 6.4 s),
# tiny 0.07 s; seconds to open one path (ORT session, OpenVINO compile, torch build): phikon ~5 s; seconds to make a
# missing bundle / INT8 copy (phikon's copy: 23 s); and rough figures of the other parts of a full run.
PER_TILE_S = {"tiny": 0.09, "phikon": 4.5}
OPEN_S = {"tiny": 2.0, "phikon": 8.0}
EXPORT_S = {"tiny": 30.0, "phikon": 120.0}
INT8_S = {"tiny": 10.0, "phikon": 40.0}
OTHER_PARTS_S = {"flops": 60.0, "engine": 60.0, "slide": 180.0}  # full-run figures of the other parts


def estimate_s(plans: list[Plan], n_contenders: int, skip: set[str], cached: dict[str, bool]) -> float:
    """An estimate of the run's seconds: every contender's calls at the mean path's speed (scaled to its threads),
    plus opening every contender, plus making bundles and INT8 copies that are not cached yet."""
    total = sum(s for part, s in OTHER_PARTS_S.items() if part not in skip)
    for p in plans:
        tiles = p.warm_batch + p.rounds * p.per_round * p.batch
        total += n_contenders * (tiles * PER_TILE_S[p.model] * max(1.0, 2.0 / p.threads) + OPEN_S[p.model])
    for model in dict.fromkeys(p.model for p in plans):
        total += 0.0 if cached.get(model) else EXPORT_S[model] + INT8_S[model]
    return total


# ------------------------------------------------------------------------------------------- INT8 copies
def int8_copy_path(bundle: Bundle) -> Path:
    """Where the INT8 copy of a cached benchmark bundle lives: `<name>-int8.bundle` beside it."""
    return bundle.path.with_name(f"{bundle.path.name.removesuffix('.bundle')}-int8.bundle")


def cached_int8(bundle: Bundle, n_tiles: int, op_types: tuple[str, ...]) -> Bundle | None:
    """The INT8 copy of `bundle` when it exists and was made from this very bundle (same digest) with `n_tiles`
    calibration tiles and `op_types`, else None."""
    out = int8_copy_path(bundle)
    if not (out / MANIFEST).exists():
        return None
    copy = load_bundle(out)
    record = copy.manifest.export.get("int8", {})
    key = (record.get("source_digest"), record.get("calibration_tiles"), tuple(record.get("op_types", ())))
    if copy.manifest.int8_model_file and key == (bundle.digest, n_tiles, op_types):
        return copy
    log.info("%s: made from another %s or tile count, made again", out, bundle.path.name)
    return None


def ensure_int8_bundle(bundle: Bundle, slide: Path, n_tiles: int, op_types: tuple[str, ...] | None = None) -> Bundle:
    """`<name>-int8.bundle` beside `bundle`: its files hard-linked (they are never changed in place), plus
    model.int8.onnx from `write_int8_graph` calibrated on `n_tiles` tissue tiles of `slide` at the bundle's tile
    size and mpp, installed as `int8_model_file` by `write_manifest`. Not gated (random weights: speed only);
    `export["int8"]` says so. Reused while the source bundle's digest is unchanged."""
    from slidefuse.atomic import atomic_folder
    from slidefuse.export.parity import slide_tiles
    from slidefuse.export.quantize import DEFAULT_METHOD, DEFAULT_OP_TYPES, INT8_FILE, write_int8_graph

    op_types = tuple(op_types or DEFAULT_OP_TYPES)
    cached = cached_int8(bundle, n_tiles, op_types)
    if cached is not None:
        return cached
    if not slide.is_file():
        raise UsageError(f"--slide {slide}: no such slide; the INT8 graphs are calibrated on its tissue tiles")
    t0 = time.perf_counter()
    m = bundle.manifest
    pool = slide_tiles([slide], m.tile_size, m.mpp, n_tiles)
    out = int8_copy_path(bundle)
    log.info("making %s: %s calibrated on %d tiles of %s (speed only, not gated)", out, INT8_FILE, n_tiles,
             slide.name)
    with atomic_folder(out) as stage:
        for rel in m.files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(bundle.path / rel, stage / rel)
        summary = write_int8_graph(bundle.model_path, stage / INT8_FILE, m.input_name, pool.tiles[:n_tiles],
                                   op_types=op_types)
        record = {"tool": "slidefuse.export.quantize.write_int8_graph", "method": DEFAULT_METHOD,
                  "op_types": list(op_types), "slide": slide.name, "calibration_tiles": n_tiles,
                  "calibration_tile_sources": list(pool.sources[:n_tiles]),
                  "quantize_linear_nodes": summary["quantize_linear"], "excluded_nodes": len(summary["excluded_nodes"]),
                  "source_bundle": str(bundle.path), "source_digest": bundle.digest, "gated": False,
                  "note": INT8_NOTE, "seconds": round(time.perf_counter() - t0, 1)}
        write_manifest(stage, dataclasses.replace(m, int8_model_file=INT8_FILE, export={**m.export, "int8": record}))
    log.info("made %s in %.0f s", out, time.perf_counter() - t0)
    return load_bundle(out)


# ------------------------------------------------------------------------------------------- contenders
def baseline_contenders(threads: int) -> tuple[Contender, Contender]:
    """ort-cpu fp32 and torch eager with the same number of intra-op threads."""
    return (Contender("ort-cpu", {"threads": threads}, "ort-cpu"),
            Contender("torch", {"device": "cpu", "threads": threads}, "torch-eager"))


def ov_skip_reason(precision: str) -> str | None:
    """Why ov-cpu cannot run `precision` here (OpenVINO missing; bf16 on a CPU OpenVINO gives no BF16), or None."""
    from slidefuse.runtime.backends.registry import availability

    reason = availability("ov-cpu")
    if reason is not None or precision != "bf16":
        return reason
    from slidefuse.runtime.backends.openvino import cpu_capabilities

    caps = cpu_capabilities()
    return None if "BF16" in caps else (f"OpenVINO's CPU OPTIMIZATION_CAPABILITIES ({', '.join(caps)}) lack BF16: "
                                        "it would emulate bf16")


def contenders(threads: int) -> tuple[list[Contender], dict[str, str]]:
    """Every CPU path with `threads` intra-op threads, and {key: reason} for the ov-cpu ones that cannot run here
    (ort-cpu and torch eager are the baselines: a missing one fails the run)."""
    ov = {"threads": threads, "mode": OV_MODE}
    wanted = [*baseline_contenders(threads),
              Contender("ov-cpu", {**ov, "precision": "fp32"}, "ov-cpu"),
              Contender("ov-cpu", {**ov, "precision": "bf16"}, "ov-cpu-bf16"),
              Contender("ort-cpu", {"threads": threads, "precision": "int8"}, "ort-cpu-int8"),
              Contender("ov-cpu", {**ov, "precision": "int8"}, "ov-cpu-int8")]
    skipped = {c.key: r for c in wanted if c.backend == "ov-cpu"
               and (r := ov_skip_reason(str(c.options["precision"]))) is not None}
    for key, reason in skipped.items():
        log.warning("%s skipped: %s", key, reason)
    return [c for c in wanted if c.key not in skipped], skipped


# ------------------------------------------------------------------------------------------- ratios, summary
def speedups(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every contender's tiles/s over torch eager's and over ort-cpu fp32's, in the same interleaved run."""
    return {f"vs_{base.replace('-', '_')}": {k: r["tiles_per_s"] / results[base]["tiles_per_s"]
                                              for k, r in results.items()}
            for base in ("torch-eager", "ort-cpu")}


def summary(comparisons: list[dict[str, Any]], model: str = SUMMARY_MODEL, tile: int = TILE) -> dict[str, Any]:
    """The fastest path on `model` at `tile` px over its plans and its speed-up against each TARGETS baseline,
    taken as the smaller of: the baseline in the same run (same batch) and the baseline at its own best batch."""
    comps = [c for c in comparisons if c["model"]["encoder"] == model and c["model"]["tile_size"] == tile]
    if not comps:
        return {"model": model, "tile": tile, "measured": False, "reason": f"{model} was not in --models"}
    c, key = max(((c, k) for c in comps for k in c["results"]), key=lambda ck: ck[0]["results"][ck[1]]["tiles_per_s"])
    tps = c["results"][key]["tiles_per_s"]
    out: dict[str, Any] = {"model": model, "tile": tile, "measured": True, "fastest": key, "batch": c["batch"],
                           "threads": c["threads"], "tiles_per_s": tps, "targets": []}
    for base, minimum in TARGETS:
        same = tps / c["results"][base]["tiles_per_s"]
        best_base = max(x["results"][base]["tiles_per_s"] for x in comps)
        value = min(same, tps / best_base)
        out["targets"].append({"against": base, "min_speedup": minimum, "speedup": value, "same_run": same,
                               "vs_baseline_best_batch": tps / best_base, "pass": value >= minimum})
    out["pass"] = all(t["pass"] for t in out["targets"])
    out["rule"] = ("speed-up = the smaller of: against the baseline in the same interleaved run (same batch) and "
                   "against the baseline at its own best batch")
    return out


# ------------------------------------------------------------------------------------------- parts
def write(doc: dict[str, Any], name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s", out / name)


def flops_table(tile: int = TILE, num_classes: int = 3) -> dict[str, Any]:
    """FLOPs per `tile` px tile of every registered encoder + the shared decoder, counted with torch's
    FlopCounterMode on the meta device, and the tiles/s an H100's dense bf16 peak would allow."""
    from slidefuse.bench.flops import segmentation_model_flops
    from slidefuse.bench.machine import gpu_peak
    from slidefuse.model.registry import list_specs

    peak = gpu_peak("H100", "bf16")
    rows = []
    for spec in list_specs(include_test=True):
        count = segmentation_model_flops(spec.id, num_classes, tile)
        rows.append({"id": spec.id, "architecture": spec.architecture, "patch_size": spec.patch_size,
                     "flops_per_tile": count.total, "gflop_per_tile": count.total / 1e9,
                     "encoder_gflop": (count.encoder or 0) / 1e9, "decoder_gflop": (count.decoder or 0) / 1e9,
                     "method": count.method, "by_op": count.by_op,
                     "h100_bf16_peak_tiles_per_s": (peak.tflops or 0) * 1e12 / count.total})
        log.info("%-14s %8.1f GFLOP/tile (encoder %.1f, decoder %.1f)", spec.id, count.total / 1e9,
                 (count.encoder or 0) / 1e9, (count.decoder or 0) / 1e9)
    return {"kind": "flops", "tile": tile, "num_classes": num_classes, "peak": peak.to_dict(), "rows": rows}


def compare_part(plans: list[Plan], bundles: Path, slide: Path, command: str,
                 op_types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One interleaved `compare_backends` call per plan, on the INT8 copy of the plan's bundle."""
    t0 = time.perf_counter()
    copies = {m: ensure_int8_bundle(ensure_bundle(m, TILE, bundles), slide, CALIBRATION_TILES[m], op_types)
              for m in dict.fromkeys(p.model for p in plans)}
    comparisons = []
    for plan in plans:
        wanted, skipped = contenders(plan.threads)
        log.info("comparing %s on %s, batch %d, %d thread(s), %d rounds", ", ".join(c.key for c in wanted),
                 plan.model, plan.batch, plan.threads, plan.rounds)
        doc = compare_backends(copies[plan.model], wanted, plan.batch, rounds=plan.rounds,
                               iters_per_round=plan.per_round, warmup=1, warmup_batch=plan.warm_batch)
        doc.update(threads=plan.threads, skipped=skipped, speedup=speedups(doc["results"]),
                   process_peak_rss_mib=round(peak_rss_mib()))  # every path stays open for the interleaving
        log.info("process peak RSS so far: %.0f MiB", doc["process_peak_rss_mib"])
        comparisons.append(doc)
    return {"kind": "cpu-compare", "command": command, "machine": machine_info(),
            "ov_cpu_mode": f"{OV_MODE} mode (ov-cpu's default: one infer request over all threads)",
            "int8": {m: {"bundle": str(b.path), "gated": False, "note": INT8_NOTE, **b.manifest.export["int8"]}
                     for m, b in copies.items()},
            "comparisons": comparisons, "summary": summary(comparisons),
            "seconds": round(time.perf_counter() - t0, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES, help="bundle cache folder [%(default)s]")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder [%(default)s]")
    p.add_argument("--slide", type=Path, default=CMU, help="slide for the slide benchmark and the INT8 "
                   "calibration [%(default)s]")
    p.add_argument("--quick", action="store_true", help="fewer calls and rounds (checks that it runs)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    p.add_argument("--only-compare", action="store_true", help="run the compare part alone "
                   "(= --skip flops,engine,slide)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models of the compare part "
                   "[%(default)s]")
    p.add_argument("--int8-op-types", default=None, help="op types of the INT8 graphs (slidefuse quantize "
                   "--op-types) [quantize's default, MatMul,Gemm]; e.g. Conv,MatMul,Gemm")
    p.add_argument("--compare-name", default="cpu-compare.json", help="file name of the compare part's results "
                   "[%(default)s]")
    args = p.parse_args(argv)
    if args.int8_op_types:
        args.int8_op_types = tuple(t.strip() for t in args.int8_op_types.split(",") if t.strip())
    args.skip = set(filter(None, args.skip.split(","))) | ({"flops", "engine", "slide"} if args.only_compare else set())
    args.models = tuple(filter(None, args.models.split(",")))
    if bad := sorted(args.skip - set(PARTS)):
        p.error(f"--skip {','.join(bad)}: expected some of {', '.join(PARTS)}")
    if not args.models or (bad := sorted(set(args.models) - set(MODELS))):
        p.error(f"--models {','.join(args.models)}: expected some of {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips' own chatter
    skip: set[str] = args.skip
    command = "python " + " ".join(["benchmarks/run_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    cores = usable_cores()
    plans = compare_plans(cores, args.quick, args.models) if "compare" not in skip else []
    cached = {m: (args.bundles / f"{m}-{TILE}-int8.bundle" / MANIFEST).exists() for m in MODELS}
    est = estimate_s(plans, 6, skip, cached)
    full = estimate_s(compare_plans(cores, False, MODELS), 6, set(), cached)
    print(f"estimated time (from figures measured on 2 busy cores): this run {est / 60:.1f} min, the full run "
          f"(python benchmarks/run_cpu.py) {full / 60:.1f} min", flush=True)

    if "flops" not in skip:
        write(flops_table(), "flops.json", args.out)
    if "engine" not in skip:
        tiny = ensure_bundle("tiny", TILE, args.bundles)
        iters, warmup = (2, 1) if args.quick else (8, 2)
        docs = [bench_engine(tiny, c.backend, EngineBenchConfig(batches=(1, 4, 8), iters=iters, warmup=warmup,
                                                                backend_options=dict(c.options)))
                for c in baseline_contenders(cores)]
        write({"kind": "cpu-engine", "command": command, "runs": docs}, "cpu-engine.json", args.out)
    if "compare" not in skip:
        doc = compare_part(plans, args.bundles, args.slide, command, args.int8_op_types)
        doc["estimated_s"] = round(est)
        write(doc, args.compare_name, args.out)
        log.info("summary: %s", json.dumps(doc["summary"]))
    if "slide" not in skip:
        if not args.slide.exists():
            log.warning("%s is absent: slide benchmark skipped", args.slide)
        else:
            doc = bench_slide(args.slide, ensure_bundle("tiny", TILE, args.bundles), "ort-cpu",
                              SlideBenchConfig(batch_size=8, repeats=1 if args.quick else 2, warmup=1))
            doc["command"] = command
            write(doc, "cpu-slide.json", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
