#!/usr/bin/env python
"""GPU engine benchmark in one command: the PyTorch backends on phikon (ViT-B/16), uni (ViT-L/16) and
h-optimus-0 (ViT-g/14), random weights, 512 px tiles, batch sweep, several precisions and compile modes.

    python benchmarks/run_gpu.py                      # on a GPU machine: writes benchmarks/results/gpu-<device>.json
    python benchmarks/run_gpu.py --device cpu --smoke # anywhere: the tiny model, a few calls, proves the script runs

Needs torch, timm, safetensors (and numpy); not pyvips, onnx, onnxruntime or TensorRT. Each model is built with
`build_model(..., random_weights=True)` and saved as a torch-only bundle (manifest + model.safetensors, no ONNX
graph) in --work, so the measured code is slidefuse's own `torch` / `torch-compile` backends.

Two measurements per (model, mode, batch):
- `io=host`: `backend.run(uint8 numpy) -> float32 numpy`, the runtime's contract: host-to-device copy through a
  pinned buffer, the model, the float32 probabilities copied back. Returns host memory, so it is synchronised.
- `io=device`: the same model and precision on a uint8 tensor already on the GPU, output left on the GPU,
  `torch.cuda.synchronize()` after every call: compute only, to show what the copies cost.

Modes: eager-fp32 (TF32 off: true fp32), eager-fp16 / eager-bf16 (torch.autocast, fp32 weights),
compiled-bf16 (torch.compile, mode "default", autocast bf16) and compiled-bf16-cudagraphs (mode
"reduce-overhead": CUDA graphs). Each compiled row is compiled for its own batch size (compile time reported,
excluded from the timing). Rows are written to the JSON as they finish; --resume skips rows already there;
an out-of-memory batch is recorded as such and the larger batches of that mode are skipped.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.bench.engine import latency_summary, random_tiles, time_calls  # noqa: E402
from slidefuse.bench.flops import segmentation_model_flops  # noqa: E402
from slidefuse.bench.machine import gpu_peak, machine_info  # noqa: E402

log = logging.getLogger("run_gpu")

MODELS = ("phikon", "uni", "h-optimus-0")
# mode -> (backend, precision, compile_mode)
MODES: dict[str, tuple[str, str, str | None]] = {
    "eager-fp32": ("torch", "fp32", None),
    "eager-fp16": ("torch", "fp16", None),
    "eager-bf16": ("torch", "bf16", None),
    "compiled-bf16": ("torch-compile", "bf16", "default"),
    "compiled-bf16-cudagraphs": ("torch-compile", "bf16", "reduce-overhead"),
}
CLASSES = ("background", "tumour", "stroma")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def torch_bundle(model_id: str, tile: int, work: Path) -> Path:
    """A torch-only bundle (manifest + model.safetensors) of `model_id` with random weights, made once."""
    from slidefuse.export.bundle_writer import make_classes
    from slidefuse.model.assembly import build_model, save_model_state
    from slidefuse.model.registry import get_spec
    from slidefuse.runtime.bundle import MANIFEST, Manifest, write_manifest

    folder = work / f"{model_id}-{tile}.torch-bundle"
    if (folder / MANIFEST).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(model_id, len(CLASSES), tile_size=tile, random_weights=True)
    save_model_state(model, folder / "model.safetensors")
    spec = get_spec(model_id)
    write_manifest(folder, Manifest(
        encoder=model_id, patch_size=spec.patch_size, tile_size=tile, mpp=0.5,
        classes=make_classes(CLASSES, None), mean=spec.mean, std=spec.std, decoder_width=model.decoder_width,
        model_file=None,
        random_weights=True, export={"note": "torch-only bundle for benchmarks/run_gpu.py (no ONNX graph)"}))
    log.info("%s: torch-only bundle in %s (%.0f s)", model_id, folder, time.perf_counter() - t0)
    del model
    gc.collect()
    return folder


def device_forward(backend: Any, torch: Any, device: str, precision: str) -> Any:
    """A call that runs the backend's model (compiled or eager, same autocast) on a uint8 tensor already on the
    device and leaves the output there: compute only, no host copies."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def run(x: Any) -> Any:
        with torch.inference_mode(), torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            return backend._forward(x)  # the backend's own forward (compiled + padded for torch-compile)

    return run


def time_batch(backend: Any, backend_name: str, model_id: str, mode: str, batch: int, load_s: float,
               args: argparse.Namespace, torch: Any, flops: int, device_name: str) -> list[dict[str, Any]]:
    """Rows (io=host and, on CUDA or with --smoke, io=device) for one open backend and one batch size."""
    _, precision, compile_mode = MODES[mode]
    tile = backend.bundle.manifest.tile_size
    on_cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else None
    info = backend.info()
    tiles = random_tiles(batch, tile)
    rows = []
    for io in (["host", "device"] if on_cuda or args.smoke else ["host"]):
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        if io == "host":
            fn: Callable[[], Any] = functools.partial(backend.run, tiles)
        else:
            x = torch.from_numpy(tiles).to(args.device)
            fn = functools.partial(device_forward(backend, torch, args.device, precision), x)
        first = time.perf_counter()
        fn()
        if sync:
            sync()
        first_s = time.perf_counter() - first
        iters = max(args.min_iters, min(args.iters, int(args.seconds_per_row / max(first_s, 1e-6))))
        seconds = time_calls(fn, iters, max(args.warmup - 1, 0), sync)
        row = latency_summary(seconds, batch, tile)
        peak = gpu_peak(device_name, precision) if on_cuda else None
        tflops = flops * row["tiles_per_s"] / 1e12
        row.update({
            "model": model_id, "mode": mode, "io": io, "backend": backend_name, "precision": precision,
            "compile_mode": compile_mode, "load_s": load_s, "first_call_s": first_s,
            "achieved_tflops": tflops,
            "peak_tflops": peak.tflops if peak else None,
            "fraction_of_peak": tflops / peak.tflops if peak and peak.tflops else None,
            "device_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
            "load_average": machine_info()["load_average"],
            "backend_info": {k: str(v) for k, v in info.to_dict().items()},
        })
        if peak and peak.alt_tflops:
            row.update({f"fraction_of_{k}_peak": tflops / v for k, v in peak.alt_tflops.items()})
        log.info("%-12s %-25s %-6s batch %3d: p50 %8.1f ms  %8.1f tiles/s  %6.1f TFLOP/s%s", model_id, mode,
                 io, batch, row["p50_ms"], row["tiles_per_s"], tflops,
                 f"  {100 * row['fraction_of_peak']:.1f}% of peak" if row["fraction_of_peak"] else "")
        rows.append(row)
        del fn
    return rows


def measure(bundle_dir: Path, model_id: str, mode: str, batches: list[int], args: argparse.Namespace, torch: Any,
            flops: int, device_name: str) -> Iterator[list[dict[str, Any]]]:
    """Rows per batch size for one model and mode, yielded as each batch size finishes. Eager modes load the
    model once for all batch sizes; compiled modes open (compile) the backend once per batch size, since
    torch-compile is compiled for one batch. An out-of-memory batch yields an `oom` row and ends the mode."""
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.bundle import load_bundle

    backend_name, precision, compile_mode = MODES[mode]
    bundle = load_bundle(bundle_dir)
    on_cuda = args.device.startswith("cuda")
    groups = [[b] for b in batches] if compile_mode is not None else [batches]
    for group in groups:
        opts: dict[str, Any] = {"device": args.device, "precision": precision}
        if compile_mode is not None:
            opts.update(batch=group[0], compile_mode=compile_mode, warmup=args.warmup)
        if on_cuda:
            gc.collect()
            torch.cuda.empty_cache()
        current = group[0]  # the batch size being loaded or timed, for the oom row
        try:
            t0 = time.perf_counter()
            with open_backend(backend_name, bundle, **opts) as backend:
                load_s = time.perf_counter() - t0  # model rebuild (+ compilation and warm-up for torch-compile)
                for batch in group:
                    current = batch
                    yield time_batch(backend, backend_name, model_id, mode, batch, load_s, args, torch, flops,
                                     device_name)
        except torch.cuda.OutOfMemoryError as exc:
            log.warning("%s %s: out of memory (%s); larger batches of this mode skipped", model_id, mode,
                        str(exc).splitlines()[0])
            yield [{"model": model_id, "mode": mode, "batch": current, "status": "oom"}]
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated encoder ids [%(default)s]")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes [%(default)s]")
    p.add_argument("--batches", default="1,8,32,64", help="comma-separated batch sizes [%(default)s]")
    p.add_argument("--tile", type=int, default=512, help="tile side in px [%(default)s]")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [%(default)s]")
    p.add_argument("--iters", type=int, default=30, help="most timed calls per row [%(default)s]")
    p.add_argument("--min-iters", type=int, default=5, help="fewest timed calls per row [%(default)s]")
    p.add_argument("--seconds-per-row", type=float, default=15.0,
                   help="aim for about this many timed seconds per row (fewer calls for slow rows) [%(default)s]")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per row [%(default)s]")
    p.add_argument("--work", type=Path, default=Path("/tmp/slidefuse-gpu-bench"),
                   help="folder for the torch-only bundles [%(default)s]")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output [benchmarks/results/gpu-<device>.json; with --smoke: "
                        "benchmarks/results/run_gpu-smoke-<device>.json]")
    p.add_argument("--resume", action="store_true", help="keep rows already in --out and skip them")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, batches 1,2, 2 calls per row, modes that the device supports: proves the "
                        "script end to end without a GPU (figures are not benchmarks)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        log.error("--device %s: torch %s sees no CUDA device; run on a GPU machine or pass --device cpu --smoke",
                  args.device, torch.__version__)
        return 2
    models = args.models.split(",")
    modes = args.modes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        models, batches = ["tiny"], [1, 2]
        args.iters, args.min_iters, args.warmup = 2, 2, 1
        if not on_cuda:  # fp16 is refused on the CPU by the torch backend; CUDA graphs need CUDA
            modes = [m for m in modes if m not in ("eager-fp16", "compiled-bf16-cudagraphs")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        log.error("--modes: unknown %s; valid modes: %s", ", ".join(unknown), ", ".join(MODES))
        return 2
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if on_cuda else "cpu"
    out = args.out or REPO / "benchmarks" / "results" / (
        f"run_gpu-smoke-{slug(device_name)}.json" if args.smoke else f"gpu-{slug(device_name)}.json")
    doc: dict[str, Any] = {"kind": "gpu-matrix", "smoke": args.smoke, "device": device_name, "rows": []}
    if args.resume and out.exists():
        doc = json.loads(out.read_text())
    done = {(r["model"], r["mode"], r["batch"]) for r in doc["rows"]}
    doc.update({
        "machine": machine_info(),
        "torch_settings": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                           "note": "eager-fp32 runs with TF32 off (the torch backend's default), so its peak is "
                                   "the fp32 CUDA-core figure; fp16/bf16 are autocast with fp32 weights"},
        "settings": {"tile": args.tile, "batches": batches, "modes": modes, "warmup": args.warmup,
                     "iters": args.iters, "min_iters": args.min_iters, "seconds_per_row": args.seconds_per_row,
                     "timing": "io=host: backend.run, host numpy in and out (synchronised by the copy back); "
                               "io=device: tensors stay on the GPU, torch.cuda.synchronize after each call; "
                               "warm-up calls and compilation excluded"},
        "peak_table": {"bf16": gpu_peak(device_name, "bf16").to_dict(),
                       "fp32": gpu_peak(device_name, "fp32").to_dict()} if on_cuda else None,
    })
    doc.setdefault("flops", {})
    out.parent.mkdir(parents=True, exist_ok=True)
    for model_id in models:
        count = segmentation_model_flops(model_id, len(CLASSES), args.tile)
        doc["flops"][model_id] = count.to_dict()
        bundle_dir = torch_bundle(model_id, args.tile, args.work)
        for mode in modes:
            todo = [b for b in batches if (model_id, mode, b) not in done]
            if not todo:
                continue
            for rows in measure(bundle_dir, model_id, mode, todo, args, torch, count.total, device_name):
                doc["rows"] += rows
                doc["machine"]["load_average"] = machine_info()["load_average"]
                out.write_text(json.dumps(doc, indent=2) + "\n")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s (%d rows)", out, len(doc["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
