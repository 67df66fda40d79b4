"""`slidefuse triton BUNDLE --out REPO`: a Triton Inference Server model repository made from a bundle."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("triton")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Model repository folder (created; other models in it are left alone).")
@click.option("--name", default="slidefuse", show_default=True,
              help="Model name clients ask for (the TensorRT plan model is NAME-trt).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="onnxruntime: Triton's onnxruntime backend (platform onnxruntime_onnx). python: onnxruntime "
                   "inside Triton's Python backend, for servers without the onnxruntime backend.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance group kind of the ONNX model.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances per device.")
@click.option("--max-batch", type=int, default=32, show_default=True,
              help="Triton max_batch_size: the largest batch the server forms or accepts.")
@click.option("--queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batching: how long a request may wait for others to join its batch (microseconds).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="--runtime python on the CPU: onnxruntime intra-op threads (0 = its default).")
@click.option("--no-engines", is_flag=True, help="Do not add the TensorRT plan model even when an engine fits.")
@click.option("--overwrite", is_flag=True, help="Replace this bundle's model folders if they exist.")
def command(bundle_path: Path, out: Path, name: str, runtime: str, kind: str, instances: int, max_batch: int,
            queue_delay_us: int, threads: int, no_engines: bool, overwrite: bool) -> None:
    """Write BUNDLE as a Triton model repository under --out.

    \b
    <out>/<name>/config.pbtxt + 1/model.onnx: uint8 tiles [B,T,T,3] in, float32 probabilities [B,C,T,T] out,
    a dynamic batch axis, dynamic batching, an instance group, and the bundle's manifest as model parameters.
    <out>/<name>-trt/: the TensorRT plan, when the bundle has an engine built for this GPU and TensorRT.
    Serve it and segment through it:
      tritonserver --model-repository <out>
      slidefuse segment slides/ --model BUNDLE --backend triton --out results/
    """
    from slidefuse.deploy.triton_repo import TritonRepoOptions, write_repository
    from slidefuse.runtime.bundle import load_bundle

    options = TritonRepoOptions(name=name, runtime=runtime, kind=kind, instances=instances,  # type: ignore[arg-type]
                                max_batch=max_batch, queue_delay_us=queue_delay_us, threads=threads,
                                engines=not no_engines)
    bundle = load_bundle(bundle_path)
    for model in write_repository(bundle, out, options, overwrite=overwrite):
        click.echo(f"{model.folder}: {model.serving}, max_batch_size {model.max_batch} "
                   f"({', '.join(model.files)})")
