"""Overhead of the `triton` backend per batch, against `ort-cpu` on the same tiles.

A real tritonserver (PyTriton's binary, `make triton-server`) serves the bundle's graph through onnxruntime in
Triton's Python backend on the CPU, with the same number of intra-op threads as the local `ort-cpu` session, so
the difference per batch is what the server path adds: gRPC (or system shared memory), Triton's scheduler and
dynamic batcher, the Python-backend stub's copies. Tiles are real: read from a slide at the model's pixel size.
Runs are interleaved (ort-cpu, triton with shared memory, triton over gRPC, repeated), so load drift hits all.

    .venv/bin/python benchmarks/bench_triton.py [--slide CMU-1-Small-Region.svs] [--batches 1,8,32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import triton_local  # noqa: E402

from benchmarks.slides import find_slide  # noqa: E402
from slidefuse.deploy.triton_repo import TritonRepoOptions, write_repository  # noqa: E402
from slidefuse.runtime.backends import open_backend  # noqa: E402
from slidefuse.runtime.bundle import Bundle, load_bundle  # noqa: E402

DEMO = ROOT / "slidefuse" / "data" / "default"
CMU = find_slide("CMU-1-Small-Region.svs")


def slide_tiles(slide: Path, bundle: Bundle, count: int) -> np.ndarray:
    """`count` tiles [T, T, 3] uint8 read in a row-major grid from the slide at the model's pixel size."""
    from slidefuse.runtime.slide import open_slide

    t = bundle.manifest.tile_size
    view = open_slide(slide).scaled(bundle.manifest.mpp)
    coords = [(x, y) for y in range(0, max(1, view.height - t + 1), t) for x in range(0, max(1, view.width - t + 1), t)]
    picked = [coords[i % len(coords)] for i in range(count)]
    return np.stack([view.read(x, y, t, t) for x, y in picked])


def _time(backend: Any, tiles: np.ndarray) -> float:
    t0 = time.perf_counter()
    backend.run(tiles)
    return (time.perf_counter() - t0) * 1000.0


def measure(bundle: Bundle, url: str, tiles: np.ndarray, batches: list[int], iters: int, threads: int
            ) -> list[dict[str, Any]]:
    """Per batch: p50/p90 ms of ort-cpu, triton (shm) and triton (gRPC), interleaved; max |diff| vs ort-cpu."""
    rows = []
    with open_backend("ort-cpu", bundle, threads=threads) as ref, \
            open_backend("triton", bundle, url=url, shm="on") as shm, \
            open_backend("triton", bundle, url=url, shm="off") as grpc:
        runners = {"ort-cpu": ref, "triton-shm": shm, "triton-grpc": grpc}
        for b in batches:
            batch = tiles[:b]
            expected = ref.run(batch)
            diffs = {k: float(np.abs(r.run(batch) - expected).max()) for k, r in runners.items() if k != "ort-cpu"}
            samples: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(iters):
                for k, r in runners.items():
                    samples[k].append(_time(r, batch))
            row: dict[str, Any] = {"batch": b, "max_abs_diff_vs_ort_cpu": diffs}
            for k, s in samples.items():
                row[k] = {"p50_ms": float(np.percentile(s, 50)), "p90_ms": float(np.percentile(s, 90))}
            for k in ("triton-shm", "triton-grpc"):
                over = row[k]["p50_ms"] - row["ort-cpu"]["p50_ms"]
                row[k]["overhead_ms"] = over
                row[k]["overhead_ms_per_tile"] = over / b
            rows.append(row)
            print(f"batch {b:>3}: ort-cpu {row['ort-cpu']['p50_ms']:8.2f} ms | triton shm "
                  f"{row['triton-shm']['p50_ms']:8.2f} ms (+{row['triton-shm']['overhead_ms']:.2f}) | triton gRPC "
                  f"{row['triton-grpc']['p50_ms']:8.2f} ms (+{row['triton-grpc']['overhead_ms']:.2f}) | "
                  f"max|diff| {max(diffs.values()):.1e}", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEMO)
    p.add_argument("--slide", type=Path, default=CMU)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads, the same on both sides")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "triton-overhead.json")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    bundle = load_bundle(args.model)
    tiles = slide_tiles(args.slide, bundle, max(batches))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repository(bundle, repo, TritonRepoOptions(runtime="python", kind="cpu", threads=args.threads,
                                                         max_batch=max(batches)))
        server = triton_local.start_server(repo)
        try:
            rows = measure(bundle, server.url, tiles, batches, args.iters, args.threads)
        finally:
            triton_local.stop_server(server)
    doc = {"command": shlex.join([sys.executable, *sys.argv]), "model": str(args.model), "slide": str(args.slide),
           "tile_size": bundle.manifest.tile_size, "threads": args.threads, "iters": args.iters,
           "server": "tritonserver 2.51.0 (nvidia-pytriton 0.7.0), Python backend, onnxruntime CPU",
           "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"load average before {load_before}, after {doc['load_average_after']}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
