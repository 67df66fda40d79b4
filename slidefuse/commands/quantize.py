"""`slidefuse quantize BUNDLE --slides SLIDE ...`: add a calibrated, gated INT8 graph (model.int8.onnx)."""

from __future__ import annotations

from pathlib import Path

import click

from slidefuse.commands.sign import check_key, sign_option, sign_result

_METHODS = ("minmax", "percentile", "entropy")  # = slidefuse.export.quantize.METHODS (not imported: no onnx here)


@click.command("quantize")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--slides", "slides", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A slide to cut calibration and gate tiles from (repeatable; tissue tiles at the bundle's mpp "
                   "and tile size). Use slides like those the model will segment.")
@click.option("--calibration-tiles", type=int, default=32, show_default=True,
              help="Tissue tiles that calibrate the activation ranges.")
@click.option("--gate-tiles", type=int, default=16, show_default=True,
              help="Held-out tissue tiles of the parity gate (never calibration tiles).")
@click.option("--method", type=click.Choice(_METHODS), default="percentile", show_default=True,
              help="Calibration method of onnxruntime's static quantisation.")
@click.option("--op-types", default="MatMul,Gemm", show_default=True,
              help="Operator types to quantise, comma-separated, of Conv, MatMul, Gemm, ConvTranspose. The default "
                   "keeps a convolutional decoder in float (accurate); adding Conv is faster where the gate "
                   "accepts it.")
@click.option("--min-agreement", type=float, default=0.998, show_default=True,
              help="Gate (of every accelerated CPU path): smallest fraction of pixels whose class must match "
                   "the fp32 graph's, on the gate's tiles (whole slides' tissue ran up to 0.003 lower).")
@click.option("--max-diff", type=float, default=0.35, show_default=True,
              help="Gate (of every accelerated CPU path): largest |p_fp32 - p| allowed at any pixel and class "
                   "(probabilities, 0..1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration / gate tile split.")
@click.option("--force", is_flag=True, help="Replace the bundle's existing INT8 graph.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Copy the bundle to this new folder and quantise the copy (needed for the shipped demo "
                   "bundle or a read-only one).")
@sign_option("the bundle with its INT8 graph (quantising re-seals it: an earlier signature no longer verifies)")
def command(bundle: Path, slides: tuple[Path, ...], calibration_tiles: int, gate_tiles: int, method: str,
            op_types: str, min_agreement: float, max_diff: float, seed: int, force: bool, out: Path | None,
            key: Path | None) -> None:
    """Add an INT8 graph (model.int8.onnx) to BUNDLE, calibrated on tissue tiles of real slides.

    \b
    Static QDQ quantisation with onnxruntime: int8 weights with one scale per output channel, uint8
    activations; the uint8 -> float preprocessing, the classification head and the softmax stay in float, and
    by default only MatMul/Gemm are quantised (the encoder; a convolutional decoder stays in float).
    The INT8 graph must then match model.onnx on held-out tiles of the same slides (--min-agreement,
    --max-diff); if it does not, nothing is written. Run it with --backend ort-cpu --option precision=int8.

    \b
    When OpenVINO is installed, the other accelerated CPU paths are gated the same way, on the same tiles
    against the same fp32 outputs: ov-cpu int8 (this graph, run by OpenVINO) and ov-cpu bf16 (where the
    CPU has bf16). Each is recorded in the manifest as passed or failed (a failed one does not stop the
    command: the backend then refuses it), one line each. --backend auto picks only paths that passed.
    Needs onnx (pip install 'slidefuse[export]'), not torch; openvino for the OpenVINO gates.

    \b
    Example:
      slidefuse quantize my.bundle --slides slides/a.svs --slides slides/b.svs
      slidefuse segment slides/ --model my.bundle --backend ort-cpu --option precision=int8 --out results/
    """
    from slidefuse.errors import UsageError
    from slidefuse.export.parity import ParityThresholds
    from slidefuse.export.quantize import QuantizeConfig, quantize_bundle

    if not 0 < max_diff <= 1:
        raise UsageError(f"--max-diff {max_diff}: expected a probability difference 0 < x <= 1, e.g. 0.35")
    if not 0 <= min_agreement <= 1:
        raise UsageError(f"--min-agreement {min_agreement}: expected a fraction 0..1, e.g. 0.995")
    check_key(key)
    thresholds = ParityThresholds(max_abs_diff=max_diff, min_argmax_agreement=min_agreement)
    config = QuantizeConfig(bundle=bundle, slides=tuple(slides), calibration_tiles=calibration_tiles,
                            gate_tiles=gate_tiles, method=method, thresholds=thresholds, seed=seed, force=force,
                            out=out, op_types=tuple(t.strip() for t in op_types.split(",") if t.strip()))
    result = quantize_bundle(config)
    p = result.parity
    limit = p["thresholds"].get("min_cosine", 0.999)
    figure = (f"smallest cosine {p['min_cosine']:.5f} (limit {limit:g})" if "min_cosine" in p
              else f"argmax agreement {p['argmax_agreement']:.5f}, max |dp| {p['max_abs_diff']:.3g} (limits "
                   f"{min_agreement:g} / {max_diff:g})")
    click.echo(f"{result.bundle.path / 'model.int8.onnx'}: {figure} on {p['tiles']} held-out tiles; "
               f"{result.int8_bytes / 1e6:.2f} MB vs {result.fp32_bytes / 1e6:.2f} MB fp32; "
               f"{result.seconds:.1f} s")
    for gate in result.paths:
        click.echo(gate.line())
    sign_result(result.bundle.path, key)
