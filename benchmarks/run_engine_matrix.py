#!/usr/bin/env python
"""Engine benchmark matrix: encoders x backends x precisions x batch sizes, through `slidefuse bench engine`'s
code (`slidefuse.bench.engine.bench_engine`), into one JSON file with the machine described.

    python benchmarks/run_engine_matrix.py --encoders tiny,phikon --backends ort-cpu,torch --batches 1,4 \
        --out benchmarks/results/cpu-engine-matrix.json

Bundles are exported once (random weights, `export_bundle`) into --bundles and reused; an fp16 graph is added
when an onnxruntime backend is asked for fp16. A combination a backend refuses (fp16 on the CPU, a backend
that is not available here) is recorded with its one-line reason and the matrix goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.bench.engine import EngineBenchConfig, bench_engine  # noqa: E402
from slidefuse.bench.machine import machine_info  # noqa: E402
from slidefuse.errors import SlidefuseError  # noqa: E402
from slidefuse.runtime.bundle import Bundle, load_bundle  # noqa: E402

log = logging.getLogger("run_engine_matrix")

CLASSES = ("background", "tumour", "stroma")
DEFAULT_BUNDLES = Path("/tmp/slidefuse-bench-bundles")


def ensure_bundle(encoder: str, tile: int, folder: Path, fp16: bool = False, mpp: float = 0.5) -> Bundle:
    """The bundle `folder/<encoder>-<tile>[-fp16].bundle`, exported with random weights when it is missing."""
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    out = folder / f"{encoder}-{tile}{'-fp16' if fp16 else ''}.bundle"
    if (out / "manifest.json").exists():
        return load_bundle(out)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.info("exporting %s at %d px into %s (random weights)", encoder, tile, out)
    bundle = export_bundle(ExportConfig(encoder=encoder, classes=CLASSES, mpp=mpp, out=out, tile_size=tile,
                                        random_weights=True, fp16=fp16, parity_real_tiles=1,
                                        parity_random_tiles=1))
    log.info("exported %s in %.0f s", out, time.perf_counter() - t0)
    return bundle


def run_matrix(encoders: list[str], backends: list[str], precisions: list[str], batches: tuple[int, ...],
               tile: int, bundles: Path, iters: int, warmup: int,
               backend_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One engine document per (encoder, backend, precision); refusals recorded with their reason."""
    runs: list[dict[str, Any]] = []
    for encoder in encoders:
        needs_fp16 = "fp16" in precisions and any(b.startswith("ort") for b in backends)
        bundle = ensure_bundle(encoder, tile, bundles, fp16=needs_fp16)
        for backend in backends:
            for precision in precisions:
                config = EngineBenchConfig(batches=batches, iters=iters, warmup=warmup,
                                           precision=None if precision == "fp32" else precision,
                                           backend_options=dict((backend_options or {}).get(backend, {})))
                try:
                    doc = bench_engine(bundle, backend, config)
                except SlidefuseError as exc:
                    log.warning("%s / %s / %s: not measured: %s", encoder, backend, precision, exc)
                    runs.append({"kind": "engine", "encoder": encoder, "backend": backend,
                                 "precision": precision, "skipped": str(exc)})
                    continue
                for r in doc["results"]:
                    log.info("%s %s %s batch %d: p50 %.1f ms, %.2f tiles/s", encoder, backend, precision,
                             r["batch"], r["p50_ms"], r["tiles_per_s"])
                runs.append(doc)
    return {"kind": "engine-matrix", "machine": machine_info(), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", default="tiny", help="comma-separated encoder ids [%(default)s]")
    p.add_argument("--backends", default="ort-cpu", help="comma-separated backend names [%(default)s]")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32,fp16,bf16 [%(default)s]")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes [%(default)s]")
    p.add_argument("--tile", type=int, default=512, help="tile side in px [%(default)s]")
    p.add_argument("--iters", type=int, default=10, help="timed calls per batch size [%(default)s]")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per batch size [%(default)s]")
    p.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES, help="bundle cache folder [%(default)s]")
    p.add_argument("--out", type=Path, required=True, help="JSON output file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips' own chatter
    doc = run_matrix(args.encoders.split(","), args.backends.split(","), args.precisions.split(","),
                     tuple(int(b) for b in args.batches.split(",")), args.tile, args.bundles, args.iters,
                     args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
