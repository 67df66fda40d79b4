"""`slidefuse build BUNDLE --precision ... --batch MIN:OPT:MAX`: a TensorRT engine for this GPU into the bundle."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "bf16", "fp8", "int8"]), default="fp16", show_default=True,
              help="Engine precision. fp8/int8 need calibrated Q/DQ graphs and are refused for now.")
@click.option("--batch", default="1:8:32", show_default=True, help="Optimisation profile MIN:OPT:MAX batch sizes.")
@click.option("--workspace", "workspace_gb", type=float, default=None,
              help="Builder workspace limit in GiB [TensorRT's default].")
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device index.")
def command(bundle: Path, precision: str, batch: str, workspace_gb: float | None, device: int) -> None:
    """Build a TensorRT engine for this GPU from BUNDLE's graph; store it under engines/ and in the manifest.

    \b
    Needs TensorRT (pip install 'slidefuse[trt]') and an NVIDIA GPU. The engine is named after the GPU, its
    compute capability, the TensorRT version and the precision; other machines refuse it and say how to rebuild.
    """
    from slidefuse.export.trt_build import BatchProfile, build_engine, check_precision

    check_precision(precision)
    profile = BatchProfile.parse(batch)
    entry = build_engine(bundle, precision, profile, workspace_gb, device)
    click.echo(f"engine {bundle / entry['file']} ({entry['gpu']}, sm {entry['compute_capability']}, "
               f"TensorRT {entry['trt_version']}, {precision}, batch {batch}, {entry['build_seconds']:.0f} s)")
