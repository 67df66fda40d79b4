"""`slidefuse export ENCODER ...`: fused ONNX graph(s) + parity gate -> a verified model bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from slidefuse.commands.sign import check_key, sign_option, sign_result


def _classes(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))


def _check_task(task: str, classes: str | None, from_bundle: Path | None, mpp: float | None,
                decoder_weights: Path | None) -> None:
    """The options each task needs or refuses, as usage errors naming them."""
    from slidefuse.errors import UsageError

    if task == "segment":
        if classes is None:
            raise UsageError("--task segment needs --classes (background first), e.g. --classes background,tumour")
        if from_bundle is not None:
            raise UsageError("--from-bundle goes with --task embed (it exports a segmentation bundle's encoder)")
    elif classes is not None or decoder_weights is not None:
        raise UsageError("--task embed exports the encoder alone: drop --classes and --decoder-weights")
    if mpp is None and from_bundle is None:
        raise UsageError("--mpp is required: the microns per pixel the model expects its tiles at, e.g. --mpp 0.5")


def _parity_words(rep: dict[str, Any]) -> str:
    """One parity record in words: figures, tiles, verdict and ISA class, or why it was not measured."""
    isa = f" on ISA class {rep['isa']}" if rep.get("isa") else ""
    if rep.get("passed") is None:
        return f"not gated{isa} ({rep.get('reason', 'no reason recorded')})"
    verdict = "passed" if rep.get("passed") else "FAILED (not used on CPUs of this class)"
    return (f"max |dp| {rep['max_abs_diff']:.3g}, argmax agreement {rep['argmax_agreement']:.5f} on {rep['tiles']} "
            f"tiles ({rep.get('tile_origin', '?')}), {verdict}{isa}")


@click.command("export")
@click.argument("encoder")
@click.option("--task", type=click.Choice(["segment", "embed"]), default="segment", show_default=True,
              help="'segment': encoder + decoder, class probabilities out; 'embed': the encoder alone, the "
                   "publisher's patch embedding out (float32 [B, D]; see `slidefuse models`).")
@click.option("--classes", default=None,
              help="Comma-separated class names, background first: background,tumour,stroma (--task segment).")
@click.option("--colors", default=None, help="Comma-separated colours, one per class: '#000000,#e41a1c,...' or "
              "'r:g:b,...'. Default: background black, then a fixed distinct palette.")
@click.option("--mpp", type=float, default=None, help="Microns per pixel the model expects its tiles at (required, "
              "except with --from-bundle).")
@click.option("--tile", "tile_size", type=int, default=None,
              help="Tile side in px [segment: the aligned tile (a multiple of the patch size: 518 for patch 14, 512 "
                   "for 16 and 8), or the tile the decoder was trained on (its NAME.json sidecar); embed: the "
                   "encoder's native size, e.g. 224].")
@click.option("--from-bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="--task embed: export the encoder part of this segmentation bundle (its weights, tile, mpp and "
                   "colour handling).")
@click.option("--color-transform", type=click.Choice(["none", "icc-to-srgb"]), default="none", show_default=True,
              help="What the model sees of a slide's embedded ICC profile: 'none' (the decoded values, as most "
                   "training pipelines saw them) or 'icc-to-srgb' (converted through the profile to sRGB).")
@click.option("--stain", type=click.Choice(["H&E", "H-DAB", "other"]), default="H&E", show_default=True,
              help="The stain the model was trained on: slides whose stain differs get a warning (see segment's "
                   "--on-stain-mismatch); 'other' turns the check off.")
@click.option("--geometry", type=click.Choice(["aligned", "paper"]), default=None,
              help="Tile geometry: 'aligned' (tile a multiple of the patch size, tokens cover it exactly) or "
                   "'paper' (512 px; with patch 14 a 36x36 grid covers 504 px and the output is resized).")
@click.option("--overlap", type=int, default=None, help="Recommended sliding-window overlap in px [tile // 8].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to create.")
@click.option("--encoder-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder checkpoint in its publisher's format.")
@click.option("--decoder-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Trained decoder (or whole-model) state dict.")
@click.option("--random-weights", is_flag=True, help="Random weights for missing parts (tests and benchmarks only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights and parity tiles.")
@click.option("--decoder-width", type=int, default=None, help="Decoder width D [the encoder's default, 256].")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx, with its own parity figures.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in model.onnx.data [automatic: above 1.8 GB].")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--parity-tiles", default="4:2", show_default=True,
              help="REAL:RANDOM tiles in the parity gate: real tissue tiles from --parity-slides (else the four "
                   "small tiles shipped with slidefuse), then seeded random tiles.")
@click.option("--parity-slides", multiple=True, metavar="PATH",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Slide to cut the gate's real tiles from (tissue detection + tile grid at --mpp); repeatable.")
@click.option("--parity-max-diff", type=float, default=1e-3, show_default=True,
              help="fp32 gate: largest allowed |p_onnx - p_torch|.")
@click.option("--parity-min-agreement", type=float, default=0.999, show_default=True,
              help="fp32 gate: smallest allowed per-pixel argmax agreement.")
@click.option("--fp16-max-diff", type=float, default=5e-2, show_default=True,
              help="fp16 gate (vs the fp32 graph): largest allowed |dp|.")
@click.option("--fp16-min-agreement", type=float, default=0.99, show_default=True,
              help="fp16 gate: smallest allowed argmax agreement.")
@click.option("--cpu-gates/--no-cpu-gates", default=True, show_default=True,
              help="Gate every CPU path this machine can run (OpenVINO fp32, and bf16 where the CPU has it) on the "
                   "parity tiles and record each result with this CPU's ISA class, so that the default backend "
                   "(auto) may pick the fastest one. --no-cpu-gates saves their time; auto then runs fp32.")
@sign_option("the bundle")
def command(encoder: str, task: str, classes: str | None, from_bundle: Path | None, colors: str | None,
            mpp: float | None, tile_size: int | None,
            geometry: str | None, overlap: int | None, color_transform: str, stain: str,
            out: Path, encoder_weights: Path | None, decoder_weights: Path | None, random_weights: bool, seed: int,
            decoder_width: int | None, fp16: bool, opset: int, force: bool, external_data: bool | None,
            no_simplify: bool, parity_tiles: str, parity_slides: tuple[Path, ...], parity_max_diff: float,
            parity_min_agreement: float,
            fp16_max_diff: float, fp16_min_agreement: float, cpu_gates: bool, key: Path | None) -> None:
    """Export ENCODER + decoder as one ONNX graph (uint8 tiles in, probabilities out) into a bundle; with
    --task embed, the encoder alone (uint8 tiles in, the publisher's patch embedding out).

    \b
    Every export passes a parity gate (onnxruntime vs PyTorch on real and random tiles) or leaves nothing behind.
    Example:
      slidefuse export phikon --random-weights --classes background,tumour,stroma --mpp 0.5 --out phikon.bundle
      slidefuse export phikon --task embed --encoder-weights model.safetensors --mpp 0.5 --out phikon-embed.bundle
    """
    from slidefuse.errors import UsageError

    _check_task(task, classes, from_bundle, mpp, decoder_weights)

    if decoder_weights is not None and random_weights and encoder_weights is not None:
        raise UsageError("--random-weights with both --encoder-weights and --decoder-weights: nothing is random; "
                         "drop --random-weights")
    try:
        n_real, n_random = (int(x) for x in parity_tiles.split(":"))
    except ValueError:
        raise UsageError(f"--parity-tiles {parity_tiles!r}: expected REAL:RANDOM counts, e.g. 4:2") from None
    check_key(key)
    from slidefuse.export.bundle_writer import parse_color
    from slidefuse.export.onnx_export import ExportConfig, export_bundle
    from slidefuse.export.parity import ParityThresholds
    from slidefuse.model.geometry import resolve_tile
    from slidefuse.model.registry import get_spec

    if task == "segment":
        tile_size, geometry = resolve_tile(get_spec(encoder).patch_size, tile_size, geometry, decoder_weights)
    elif geometry is not None:
        raise UsageError("--geometry goes with --task segment; an embedding bundle takes --tile (default: the "
                         "encoder's native size)")
    else:
        tile_size = tile_size or get_spec(encoder).native_size
    cfg = ExportConfig(
        encoder=encoder, classes=_classes(classes) if classes else (), task=task, out=out, tile_size=tile_size,
        mpp=mpp if mpp is not None else 1.0,  # with --from-bundle (no --mpp), the bundle's replaces it
        colors=tuple(parse_color(c) for c in colors.split(",")) if colors else None, overlap=overlap,
        encoder_weights=encoder_weights, decoder_weights=decoder_weights, random_weights=random_weights,
        seed=seed, decoder_width=decoder_width, opset=opset, fp16=fp16, force=force, external_data=external_data,
        simplify=not no_simplify, parity_real_tiles=n_real, parity_random_tiles=n_random, parity_slides=parity_slides,
        parity=ParityThresholds(parity_max_diff, parity_min_agreement), color_transform=color_transform, stain=stain,
        fp16_parity=ParityThresholds(fp16_max_diff, fp16_min_agreement), cpu_gates=cpu_gates,
    )
    t0 = time.perf_counter()
    if from_bundle is not None:
        from slidefuse.export.embed_export import export_embedding_bundle
        from slidefuse.runtime.bundle import load_bundle

        bundle = export_embedding_bundle(cfg, load_bundle(from_bundle))
    else:
        bundle = export_bundle(cfg)
    m = bundle.manifest
    click.echo(f"bundle {bundle.path} ({time.perf_counter() - t0:.0f} s); tile {m.tile_size} px, {m.geometry}")
    if m.embedding is not None:
        click.echo(f"  embedding: {m.embedding.rule}, float32 [B, {m.embedding.dim}]")
        for name, rep in m.parity.items():
            click.echo(f"  parity {name}: smallest cosine {rep['min_cosine']:.7f}, max |de| {rep['max_abs_diff']:.3g} "
                       f"on {rep['tiles']} tiles ({rep.get('tile_origin', '?')})")
        sign_result(bundle.path, key)
        return
    for name, rep in m.parity.items():
        click.echo(f"  parity {name}: {_parity_words(rep)}")
    sign_result(bundle.path, key)
