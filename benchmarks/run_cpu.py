#!/usr/bin/env python
"""CPU benchmarks in one command, on this machine:

1. engine sweep of the tiny model (512 px) with ort-cpu and torch eager -> results/cpu-engine.json;
2. ort-cpu against torch eager on the same model, tiles and batch, interleaved in one run (tiny at batch 4,
   phikon = ViT-B/16 at batch 1 and 4), as throughput ratios -> results/cpu-compare.json;
3. `bench slide` on the real CMU-1-Small-Region slide with the tiny bundle and ort-cpu
   -> results/cpu-slide.json.

    python benchmarks/run_cpu.py [--quick]

Bundles are random-weight exports at 512 px and 0.5 um/px, made once into --bundles. On a busy shared
machine the figures move with the load: every result carries the load average (1, 5, 15 min) it ran under.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run_engine_matrix import DEFAULT_BUNDLES, ensure_bundle  # noqa: E402
from slidefuse.bench.engine import Contender, EngineBenchConfig, bench_engine, compare_backends  # noqa: E402
from slidefuse.bench.machine import cpu_cores, machine_info  # noqa: E402
from slidefuse.bench.slide import SlideBenchConfig, bench_slide  # noqa: E402

log = logging.getLogger("run_cpu")

RESULTS = REPO / "benchmarks" / "results"
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def contenders(threads: int) -> tuple[Contender, Contender]:
    """ort-cpu and torch eager with the same number of intra-op threads."""
    return (Contender("ort-cpu", {"threads": threads}, "ort-cpu"),
            Contender("torch", {"device": "cpu", "threads": threads}, "torch-eager"))


def write(doc: dict[str, Any], name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s", out / name)


def flops_table(tile: int = 512, num_classes: int = 3) -> dict[str, Any]:
    """FLOPs per `tile` px tile of every registered encoder + the shared decoder, counted with torch's
    FlopCounterMode on the meta device, and the tiles/s an H100's dense bf16 peak would allow."""
    from slidefuse.bench.flops import segmentation_model_flops
    from slidefuse.bench.machine import gpu_peak
    from slidefuse.export.registry import list_specs

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES, help="bundle cache folder [%(default)s]")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder [%(default)s]")
    p.add_argument("--slide", type=Path, default=CMU, help="slide for the slide benchmark [%(default)s]")
    p.add_argument("--quick", action="store_true", help="fewer calls and rounds (checks that it runs)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: flops,engine,compare,slide")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips' own chatter
    skip = set(filter(None, args.skip.split(",")))
    command = "python benchmarks/run_cpu.py" + (" --quick" if args.quick else "")
    cores = cpu_cores()
    tiny = ensure_bundle("tiny", 512, args.bundles)
    phikon = ensure_bundle("phikon", 512, args.bundles)

    if "flops" not in skip:
        write(flops_table(), "flops.json", args.out)

    if "engine" not in skip:
        iters, warmup = (2, 1) if args.quick else (8, 2)
        docs = [bench_engine(tiny, c.backend, EngineBenchConfig(batches=(1, 4, 8), iters=iters, warmup=warmup,
                                                                backend_options=dict(c.options)))
                for c in contenders(cores)]
        write({"kind": "cpu-engine", "command": command, "runs": docs}, "cpu-engine.json", args.out)

    if "compare" not in skip:
        # (bundle, batch, threads, rounds, calls per round, warm-up batch): phikon warms up on one tile (it takes
        # ~20 s a call on 2 busy cores); tiny also with one thread each, since 2 OpenMP threads on a shared
        # 2-core machine suffer from other tenants' load
        plans = [(tiny, 4, cores, 2 if args.quick else 6, 2, 4), (tiny, 4, 1, 2 if args.quick else 6, 2, 4),
                 (phikon, 1, cores, 1 if args.quick else 3, 1, 1), (phikon, 4, cores, 1 if args.quick else 2, 1, 1)]
        comparisons = []
        for bundle, batch, threads, rounds, per_round, warm_batch in plans:
            log.info("comparing ort-cpu and torch eager on %s, batch %d, %d thread(s), %d rounds",
                     bundle.manifest.encoder, batch, threads, rounds)
            doc = compare_backends(bundle, contenders(threads), batch, rounds=rounds, iters_per_round=per_round,
                                   warmup=1, warmup_batch=warm_batch)
            doc["threads"] = threads
            comparisons.append(doc)
        write({"kind": "cpu-compare", "command": command, "machine": machine_info(), "comparisons": comparisons},
              "cpu-compare.json", args.out)

    if "slide" not in skip:
        if not args.slide.exists():
            log.warning("%s is absent: slide benchmark skipped", args.slide)
        else:
            doc = bench_slide(args.slide, tiny, "ort-cpu",
                              SlideBenchConfig(batch_size=8, repeats=1 if args.quick else 2, warmup=1))
            doc["command"] = command
            write(doc, "cpu-slide.json", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
