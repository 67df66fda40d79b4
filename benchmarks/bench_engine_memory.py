#!/usr/bin/env python
"""Peak host memory (whole process, ru_maxrss) of one CPU backend against batch size and session settings.

    .venv/bin/python benchmarks/bench_engine_memory.py --model BUNDLE [--backend ort-cpu] [--batches 1,2,4,8]
        [--settings default,no-arena,no-pattern,no-arena-no-pattern] [--calls 2]

Each (settings, batch) point runs in a fresh subprocess: open the backend, run `--calls` batches of real-looking
random tiles, print the process's peak RSS. Settings are backend options (`--option`-style pairs) named here:
  default               the backend's defaults (ort-cpu: CPU arena on, memory pattern off, 40% of RAM budget)
  no-arena              enable_cpu_mem_arena off   (ort-cpu option arena=false)
  no-pattern            enable_mem_pattern off     (ort-cpu option mem_pattern=false)
  pattern               enable_mem_pattern on      (ort-cpu option mem_pattern=true: onnxruntime's default)
  no-arena-no-pattern   both off
  max-memory=G          the backend splits each batch so that its estimated peak stays under G GiB
                        (0: no limit, the behaviour before the budget existed; the default is 40% of RAM)
  A+B                   both, e.g. no-arena+max-memory=0
Results: benchmarks/results/engine-memory.json (with the command, machine and bundle).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NAMED = {"default": {}, "no-arena": {"arena": False}, "no-pattern": {"mem_pattern": False},
         "pattern": {"mem_pattern": True}, "no-arena-no-pattern": {"arena": False, "mem_pattern": False}}


def settings_options(name: str) -> dict[str, Any]:
    """Backend options of a settings name; names join with '+', e.g. no-arena+max-memory=0."""
    out: dict[str, Any] = {}
    for part in name.split("+"):
        if part.startswith("max-memory="):
            out["max_memory_gb"] = float(part.split("=", 1)[1])
        else:
            out.update(NAMED[part])
    return out


def child(model: str, backend: str, batch: int, options: dict[str, Any], calls: int) -> int:
    sys.path.insert(0, str(REPO))
    import numpy as np

    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.bundle import load_bundle

    bundle = load_bundle(model)
    t = bundle.manifest.tile_size
    tiles = np.random.default_rng(0).integers(0, 256, (batch, t, t, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    with open_backend(backend, bundle, **options) as b:
        for _ in range(calls):
            out = b.run(tiles)
        info = b.info().to_dict()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"batch": batch, "options": options, "peak_rss_mib": round(peak / 1024, 1),
                      "seconds": round(time.perf_counter() - t0, 2), "out_shape": list(out.shape),
                      "sub_batch": info.get("max_batch")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="bundle folder")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--settings", default="default,no-arena,no-pattern,no-arena-no-pattern")
    ap.add_argument("--calls", type=int, default=2, help="batches run per point (the second shows arena reuse)")
    ap.add_argument("--out", type=Path, default=RESULTS / "engine-memory.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        return child(args.model, args.backend, spec["batch"], spec["options"], args.calls)
    sys.path.insert(0, str(REPO))
    from slidefuse.bench.machine import machine_info
    from slidefuse.runtime.bundle import load_bundle

    m = load_bundle(args.model).manifest
    rows = []
    for name in args.settings.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            spec = json.dumps({"batch": batch, "options": settings_options(name)})
            proc = subprocess.run([sys.executable, __file__, "--model", args.model, "--backend", args.backend,
                                   "--calls", str(args.calls), "--child", spec],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name} batch {batch}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                rows.append({"settings": name, "batch": batch, "error": proc.stderr.strip()[-500:]})
                continue
            row = {"settings": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name:<22} batch {batch:>2}: peak RSS {row['peak_rss_mib']:>8.0f} MiB  ({row['seconds']} s)",
                  flush=True)
    doc = {"kind": "engine-memory", "command": "benchmarks/bench_engine_memory.py " + " ".join(argv or sys.argv[1:]),
           "backend": args.backend, "bundle": {"encoder": m.encoder, "tile_size": m.tile_size,
                                               "decoder_width": m.decoder_width, "classes": m.num_classes},
           "machine": machine_info(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
