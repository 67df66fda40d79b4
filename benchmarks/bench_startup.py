"""Start-up of the CPU backends: a cold start (nothing cached) against a warm one (a second process, same bundle).

    python benchmarks/bench_startup.py --bundle phikon.bundle            # JSON in benchmarks/results/startup.json
    python benchmarks/bench_startup.py --bundle B --rounds 3 --threads 2

Each measurement is a fresh process (`--child`) that imports slidefuse, loads and verifies the bundle, opens the
backend (OpenVINO: read, reshape, compile or import from the model cache; onnxruntime: session creation with
its graph optimisations) and runs one tile. Reported: `open_s` (the backend's __enter__), `first_tile_s` (one
tile) and `total_s` (process start to the first tile's output, imports and the bundle's sha256 included).

Variants, interleaved round by round (the machine is shared: absolute times are noisy, the order is not):
- ov-cpu fp32 / bf16 `cold`: an emptied model cache folder (`cache_dir` option), so the model compiles and is
  stored; `warm`: the next process on the same folder, which imports the stored blob; `nocache`: option
  cache=false (what every start cost before the cache);
- ort-cpu `default`: the backend as it is (ORT_ENABLE_ALL optimisations at every start);
  `optimized-cold` / `optimized-warm`: onnxruntime's own optimised-model cache, tried here outside the product
  (SessionOptions.optimized_model_filepath written once, then loaded with optimisations off), to decide
  whether the product should use it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One start in this process; returns its figures."""
    import numpy as np

    from slidefuse.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    t = bundle.manifest.tile_size
    tile = np.random.default_rng(0).integers(0, 256, (1, t, t, 3), dtype=np.uint8)
    if args.variant.startswith("ort-optimized"):
        return _ort_optimized(bundle, tile, args)
    from slidefuse.runtime.backends import open_backend

    if args.variant.startswith("ov-cpu"):
        precision = args.variant.split()[1]
        opts: dict[str, Any] = {"precision": precision, "threads": args.threads, "unverified": "allow",
                                "cache_dir": args.cache_dir, "cache": not args.variant.endswith("nocache")}
        backend = open_backend("ov-cpu", bundle, **opts)
    else:
        backend = open_backend("ort-cpu", bundle, threads=args.threads)
    t0 = time.perf_counter()
    with backend as be:
        open_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        be.run(tile)
        first = time.perf_counter() - t1
    return {"open_s": open_s, "first_tile_s": first, "total_s": time.perf_counter() - T_START}


def _ort_optimized(bundle: Any, tile: Any, args: argparse.Namespace) -> dict[str, Any]:
    """onnxruntime's optimised-model cache: write it (cold) or load it with optimisations off (warm)."""
    import onnxruntime as ort

    cached = Path(args.cache_dir) / "model.optimized.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    if args.variant.endswith("cold"):
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(cached)
        source = bundle.model_path
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = cached
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    open_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sess.run(None, {bundle.manifest.input_name: tile})
    first = time.perf_counter() - t1
    return {"open_s": open_s, "first_tile_s": first, "total_s": time.perf_counter() - T_START}


def _run(bundle: Path, variant: str, cache_dir: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--bundle", str(bundle), "--variant", variant, "--cache-dir",
           str(cache_dir), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant}: child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _variants(bf16: bool) -> list[tuple[str, str]]:
    """(variant, cache key): `cold` empties the cache folder of its key first; `warm` reuses it."""
    out = [("ov-cpu fp32 cold", "ov fp32"), ("ov-cpu fp32 warm", "ov fp32"), ("ov-cpu fp32 nocache", "none")]
    if bf16:
        out += [("ov-cpu bf16 cold", "ov bf16"), ("ov-cpu bf16 warm", "ov bf16"), ("ov-cpu bf16 nocache", "none")]
    out += [("ort-cpu default", "none"), ("ort-optimized cold", "ort"), ("ort-optimized warm", "ort")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    from slidefuse.bench.machine import machine_info
    from slidefuse.runtime.backends.openvino import cpu_capabilities
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.cpuinfo import this_cpu

    bundle = load_bundle(args.bundle)
    machine = machine_info()
    print(f"CPU: {machine['cpu']} ({machine['cpu_isa_summary']}; ISA class {this_cpu().isa}), "
          f"{machine['cores']} cores; bundle {bundle.manifest.encoder} {bundle.manifest.tile_size} px")
    variants = _variants("BF16" in cpu_capabilities())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slidefuse-startup-") as tmp:
        for r in range(args.rounds):
            for variant, key in variants:
                cache = Path(tmp) / key.replace(" ", "-")
                if variant.endswith("cold"):
                    shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir(exist_ok=True)
                fig = _run(args.bundle, variant, cache, args.threads)
                rows.append({"round": r, "variant": variant, **{k: round(v, 3) for k, v in fig.items()}})
                print(f"round {r} {variant:22s} open {fig['open_s']:6.2f} s  first tile {fig['first_tile_s']:5.2f} s"
                      f"  total {fig['total_s']:6.2f} s", flush=True)
    summary = {}
    for variant, _ in variants:
        mine = [x for x in rows if x["variant"] == variant]
        summary[variant] = {k: round(sorted(x[k] for x in mine)[len(mine) // 2], 3)
                            for k in ("open_s", "first_tile_s", "total_s")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "isa_class": this_cpu().isa,
                                    "bundle": {"encoder": bundle.manifest.encoder,
                                               "tile_size": bundle.manifest.tile_size},
                                    "threads": args.threads, "rounds": args.rounds, "median": summary, "runs": rows},
                                   indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
