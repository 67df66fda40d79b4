#!/usr/bin/env python3
"""One prepared GPU check for a borrowed NVIDIA H100/H200 machine: tests, engine benchmarks, slides end to end.

    make gpu-check RESULTS=/path/to/dir          # on the GPU machine (what `make gpu-check` runs)
    python3 tools/gpu_check.py --results DIR [--budget 480] [--dry-run]

Such a machine has Python 3.12 with torch (CUDA), onnx and CPU onnxruntime, but no pyvips, no TensorRT and no
network. Wheels it lacks travel with the working tree in `.whl/` (made here by `tools/fetch_gpu_wheels.sh`);
this script installs them into a private folder first. Then, each step with its own time limit inside
``--budget`` seconds (8 minutes by default), every output written under ``--results``:

1. ``env.json``: GPU (nvidia-smi), torch/CUDA versions, the wheels installed;
2. ``gpu-tests.xml`` / ``gpu-tests.log``: the ``gpu`` tests (``pytest -m gpu``);
3. ``run_gpu.json``: ``benchmarks/run_gpu.py`` on phikon and uni at 512 px (torch eager fp16/bf16, compiled
   bf16, CUDA graphs), batches 8 and 32;
4. ``slide-torch.json`` / ``slide-null.json``: ``slidefuse bench slide`` end to end on a synthetic 16k x 16k
   JPEG TIFF with the torch backend on CUDA (phikon, random weights) and with the ``null`` engine;
5. ``embed/``: a UNI-sized encoder (ViT-L/16 at 224 px, random weights) exported with ``--task embed``, then
   ``slidefuse embed`` over the same slide on the torch backend (CUDA, fp16): ``embed/slide/features.h5`` and
   ``embed/run.json`` (tiles and seconds);
6. ``summary.json``: each step's status, seconds and where its output is.

``--dry-run`` runs the same steps on the CPU in their smallest form (tiny model, 2k slide, run_gpu --smoke),
so the script is tested where no GPU is. A step that fails is recorded and the next one still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
SITE = Path("/tmp/slidefuse-gpu-site")


def install_wheels(results: Path) -> list[str]:
    """Install the carried wheels (if any) into SITE and put it first on the path of this and child processes."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")])
        sys.path[:0] = [str(SITE), str(REPO)]
    else:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        sys.path.insert(0, str(REPO))
    return [w.name for w in wheels]


def environment(results: Path, wheels: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "wheels": wheels}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, check=False)
        env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        env["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError as exc:
        env["torch"] = f"not importable: {exc}"
    (results / "env.json").write_text(json.dumps(env, indent=2))
    return env


def run_step(name: str, cmd: list[str], results: Path, timeout: float, summary: dict[str, Any]) -> bool:
    """Run one step as a subprocess (output to results/<name>.log) within `timeout` s; record it in summary."""
    t0 = time.perf_counter()
    log = results / f"{name}.log"
    print(f"[gpu-check] {name}: {' '.join(cmd)} (limit {timeout:.0f} s)", flush=True)
    try:
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=max(timeout, 1.0),
                                cwd=REPO, check=False).returncode
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = "timed out"
    seconds = round(time.perf_counter() - t0, 1)
    summary["steps"][name] = {"status": status, "seconds": seconds, "log": log.name, "command": cmd}
    print(f"[gpu-check] {name}: {status} in {seconds} s", flush=True)
    return status == "ok"


def make_slide(path: Path, size: int) -> None:
    """A size x size pyramidal JPEG TIFF of stain-like texture at 0.5 um/px (pyvips only; no real slide here)."""
    import pyvips

    noise = pyvips.Image.gaussnoise(size, size, sigma=40, mean=128)
    r = (noise.gaussblur(3) * 0.5 + 140).cast("uchar")
    g = (noise.rot180().gaussblur(2) * 0.6 + 90).cast("uchar")
    b = (noise.fliphor().gaussblur(4) * 0.4 + 170).cast("uchar")
    rgb = r.bandjoin([g, b]).copy(interpretation="srgb")
    rgb.tiffsave(str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=85,
                 bigtiff=True, xres=2000.0, yres=2000.0, resunit="cm")


def plan(args: argparse.Namespace, results: Path, work: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) of every step after the environment."""
    py = sys.executable
    cli = [py, "-c", "from slidefuse.cli import main; main()"]
    dry = args.dry_run
    slide, bundle = work / "slide.tif", work / ("tiny.bundle" if dry else "phikon.bundle")
    encoder, tile = ("tiny", 128) if dry else ("phikon", 512)
    device = "cpu" if dry else "cuda"
    gpu_tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/runtime/test_backends_gpu.py",
                 "tests/export/test_trt_build.py", f"--junitxml={results / 'gpu-tests.xml'}"]
    if dry:
        gpu_tests += ["-m", "gpu and not slow", "--co"]  # collect only: proves the selection imports on the CPU
    run_gpu = [py, "benchmarks/run_gpu.py", "--out", str(results / "run_gpu.json"), "--work", str(work / "gpu")]
    run_gpu += (["--device", "cpu", "--smoke"] if dry else
                ["--models", "phikon,uni", "--modes", "eager-fp16,eager-bf16,compiled-bf16,compiled-bf16-cudagraphs",
                 "--batches", "8,32", "--seconds-per-row", "6"])
    export = [*cli, "-q", "export", encoder, "--random-weights", "--classes", "background,tumour,stroma", "--mpp",
              "0.5", "--tile", str(tile), "--out", str(bundle), "--force", "--no-simplify", "--parity-tiles", "1:1"]
    bench = [*cli, "-q", "bench", "slide", str(slide), "--model", str(bundle), "--batch", "8" if dry else "32",
             "--all-tiles"]
    torch_opts = ["--backend", "torch", "--option", f"device={device}"] + ([] if dry else ["--precision", "bf16"])
    return [
        ("gpu-tests", gpu_tests, 0.12),
        ("run_gpu", run_gpu, 0.30),
        ("export", export, 0.12),
        ("slide-torch", [*bench, *torch_opts, "--json", str(results / "slide-torch.json")], 0.20),
        ("slide-null", [*bench, "--backend", "null", "--json", str(results / "slide-null.json")], 0.06),
        *embed_steps(cli, results, work, dry),
    ]


def embed_steps(cli: list[str], results: Path, work: Path, dry: bool) -> list[tuple[str, list[str], float]]:
    """Embeddings: a UNI-sized encoder (ViT-L/16, random weights) exported with --task embed at 224 px, then
    `slidefuse embed` over the synthetic slide on the torch backend (CUDA, fp16); the tiny encoder on the CPU in
    the dry run. The features land in RESULTS/embed/slide/features.h5, the run in RESULTS/embed/run.json."""
    encoder, device = ("tiny", "cpu") if dry else ("uni", "cuda")
    bundle = work / f"{encoder}-embed.bundle"
    export = [*cli, "-q", "export", encoder, "--task", "embed", "--random-weights", "--mpp", "0.5", "--tile", "224",
              "--out", str(bundle), "--force", "--no-simplify", "--parity-tiles", "1:1"]
    embed = [*cli, "-q", "embed", str(work / "slide.tif"), "--model", str(bundle), "--out", str(results / "embed"),
             "--overwrite", "--batch", "8" if dry else "64", "--backend", "torch", "--option", f"device={device}",
             *([] if dry else ["--option", "precision=fp16"])]
    return [("export-embed", export, 0.08), ("embed-torch", embed, 0.10)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="folder for every output (created)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check [%(default)s]")
    ap.add_argument("--slide-px", type=int, default=16000, help="side of the synthetic slide [%(default)s]")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, smallest form")
    args = ap.parse_args()
    t_start = time.perf_counter()
    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/slidefuse-gpu-check")
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget, "steps": {}}
    summary["env"] = environment(results, install_wheels(results))
    if not args.dry_run and not summary["env"].get("cuda_available"):
        print("[gpu-check] no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
    size = 2048 if args.dry_run else args.slide_px
    t0 = time.perf_counter()
    make_slide(work / "slide.tif", size)
    summary["steps"]["make-slide"] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), "px": size}
    for name, cmd, share in plan(args, results, work):
        left = args.budget - (time.perf_counter() - t_start)
        if left < 10:
            summary["steps"][name] = {"status": "skipped: budget spent", "seconds": 0.0}
            continue
        run_step(name, cmd, results, min(share * args.budget, left), summary)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    failed = [n for n, s in summary["steps"].items() if s["status"] != "ok"]
    print(f"[gpu-check] done in {summary['seconds']} s; {len(failed)} step(s) not ok: {', '.join(failed) or '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
