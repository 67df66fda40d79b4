"""Fused ONNX export of a SegmentationModel into a verified model bundle.

One graph holds the whole model: uint8 RGB tiles `tiles [B, T, T, 3]` (0..255) -> cast and mean/std
normalisation -> encoder -> decoder -> softmax -> float32 `probabilities [B, C, T, T]`, with a dynamic batch
axis. Stages, in order (`export_bundle` calls them):

1. `export_onnx`: torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, needs onnxscript). The legacy
   TorchScript exporter is not used: on a timm ViT it traced the batch size into reshapes, so its graph was wrong
   for any other batch size (max |dp| ~0.05 at batch 1 and 3 for a graph traced at batch 2).
2. `check_graph`: the ONNX checker with strict shape inference, the input/output contract, opset >= 17 and
   LayerNorm kept as one LayerNormalization operator.
3. `simplify_graph`: onnxslim (constant folding, dead-node removal); kept only when the result checks out;
   skipped above SIMPLIFY_MAX_BYTES of weights and for external-data graphs (memory).
4. the parity gate (`parity.py`) against the PyTorch model; optionally the fp16 graph (`fp16.py`) and its
   parity against the fp32 graph.
5. `model.safetensors`, the manifest with the sha256 of every file, and an atomic rename into place.

Models whose weights exceed `EXTERNAL_DATA_BYTES` are saved with ONNX's external-data format
(`model.onnx` + one `*.data` file); the manifest hashes the data file too.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.atomic import atomic_path
from slidefuse.errors import SlidefuseError, UsageError, one_line
from slidefuse.export.bundle_writer import (
    checkpoint_provenance,
    make_classes,
    staging_folder,
    tool_versions,
    utc_now,
)
from slidefuse.export.parity import (
    FP16_THRESHOLDS,
    FP32_THRESHOLDS,
    ParityThresholds,
    TorchModelRunner,
    check_tile_counts,
    compare,
    gate_backend,
    parity_tiles,
    staged_bundle,
)
from slidefuse.runtime.bundle import Bundle, Manifest, load_bundle, write_manifest
from slidefuse.runtime.cpuinfo import this_cpu
from slidefuse.runtime.manifest_schema import STAINS

if TYPE_CHECKING:
    import onnx

    from slidefuse.model.assembly import SegmentationModel
    from slidefuse.model.embedding import EmbeddingModel

log = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization exists from opset 17
DEFAULT_OPSET = 18  # the dynamo exporter's native opset (17 goes through the ONNX version converter)
EXTERNAL_DATA_BYTES = 1_800_000_000  # above this many bytes of weights, use the external-data format
# onnxslim holds about four copies of the weights (measured: +1.4 GB peak for phikon's 356 MB) for a modest gain
# (phikon: 523 -> 439 nodes, bias Adds and Slice/Concat chains folded); above this size it is skipped.
SIMPLIFY_MAX_BYTES = 1_000_000_000
INPUT_NAME = "tiles"
OUTPUT_NAME = "probabilities"
EMBED_OUTPUT_NAME = "embeddings"  # the output of an embedding graph (task "embed"): float32 [B, D]
MAX_BATCH = 4096  # upper bound of the dynamic batch axis given to the exporter


class ExportError(SlidefuseError, RuntimeError):
    """An export whose graph fails the ONNX checker or the bundle's input/output contract."""


@dataclass(frozen=True)
class ExportConfig:
    """Everything `export_bundle` needs. Recorded (paths as file names) in the manifest's `export.config`."""

    encoder: str  # encoder registry id, e.g. "phikon" or "tiny"
    classes: tuple[str, ...]  # class names; index 0 is background
    mpp: float  # microns per pixel the model expects its tiles at
    out: Path  # bundle folder to create
    tile_size: int = 512  # tile side T in px
    colors: tuple[tuple[int, int, int], ...] | None = None  # RGB per class; None = default palette
    overlap: int | None = None  # recommended sliding-window overlap in px; None = tile_size // 8
    encoder_weights: Path | None = None  # publisher-format encoder checkpoint
    decoder_weights: Path | None = None  # decoder (or whole-model) state dict
    random_weights: bool = False  # random weights for missing parts (tests/benchmarks only)
    seed: int = 0  # seed for random weights and random parity tiles
    decoder_width: int | None = None  # decoder width D; None = the encoder's default (256)
    opset: int = DEFAULT_OPSET  # ONNX opset, >= 17
    fp16: bool = False  # also write model.fp16.onnx with its own parity figures
    force: bool = False  # replace an existing bundle at `out`
    external_data: bool | None = None  # None = automatic (weights > EXTERNAL_DATA_BYTES)
    simplify: bool = True  # run onnxslim on graphs stored in one file
    parity_real_tiles: int = 4  # real tissue tiles in the parity gate: from `parity_slides`, else package data
    parity_random_tiles: int = 2  # random uint8 tiles in the parity gate (full-range inputs)
    parity: ParityThresholds = FP32_THRESHOLDS  # fp32 graph vs torch thresholds
    fp16_parity: ParityThresholds = FP16_THRESHOLDS  # fp16 graph vs fp32 graph thresholds
    parity_slides: tuple[Path, ...] = ()  # slides to cut the gate's real tiles from; () = the shipped tiles
    color_transform: str = "none"  # embedded ICC profiles: "none" (as decoded) or "icc-to-srgb"
    task: str = "segment"  # "segment" (encoder + decoder -> probabilities) or "embed" (encoder -> embeddings)
    stain: str = "H&E"  # the stain the model was trained on (manifest_schema.STAINS)
    # gate every CPU path this machine can run (ov-cpu fp32, ov-cpu bf16 where the CPU has it) on the parity tiles
    # and record the results with this CPU's ISA class (export/cpu_gates.py), so that `auto` may pick them
    cpu_gates: bool = True

    def check(self) -> None:
        """Raise UsageError for values out of range (classes and colours are checked by make_classes)."""
        if not self.mpp > 0:
            raise UsageError(f"mpp={self.mpp}: expected a positive pixel size in um/px, e.g. 0.5", field="mpp")
        if self.tile_size < 8:
            raise UsageError(f"tile_size={self.tile_size}: expected a tile side of at least 8 px, e.g. 512",
                             field="tile_size")
        if self.overlap is not None and not 0 <= self.overlap < self.tile_size:
            raise UsageError(f"overlap={self.overlap}: expected 0 <= overlap < tile size {self.tile_size}",
                             field="overlap")
        if self.color_transform not in ("none", "icc-to-srgb"):
            raise UsageError(f"color_transform={self.color_transform!r}: expected 'none' or 'icc-to-srgb'",
                             field="color_transform")
        if self.stain not in STAINS:
            raise UsageError(f"stain={self.stain!r}: expected one of {', '.join(STAINS)}", field="stain")
        if self.opset < MIN_OPSET:
            raise UsageError(f"opset={self.opset}: expected {MIN_OPSET} or newer (LayerNormalization needs 17)",
                             field="opset")
        check_tile_counts(self.parity_real_tiles, self.parity_random_tiles, self.parity_slides)
        if self.task not in ("segment", "embed"):
            raise UsageError(f"task={self.task!r}: expected 'segment' or 'embed'", field="task")
        if self.task == "embed" and (self.classes or self.decoder_weights is not None):
            raise UsageError("task 'embed' exports the encoder alone: it takes no classes and no decoder weights",
                             field="task")


# ---------------------------------------------------------------------------------------------- stages
def export_onnx(model: SegmentationModel | EmbeddingModel, path: Path, *, opset: int, external_data: bool,
                output_name: str = OUTPUT_NAME) -> list[Path]:
    """Export `model` to `path` with a dynamic batch axis; return the files written (graph [+ data file])."""
    import torch

    before = set(path.parent.iterdir())
    t = model.tile_size
    example = torch.randint(0, 256, (2, t, t, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    t0 = time.perf_counter()
    try:
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[output_name], dynamic_shapes=({0: batch},), external_data=external_data,
            optimize=True, verbose=False, report=False,
        )
    except ImportError as exc:
        from slidefuse.errors import MissingExtra

        raise MissingExtra(exc.name or "onnxscript", "export", "the ONNX export (torch dynamo exporter)") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program; expected an ONNXProgram from the dynamo exporter")
    program.save(str(path), external_data=external_data)
    del program
    gc.collect()
    written = sorted(set(path.parent.iterdir()) - before)
    log.info("exported %s in %.1f s (%s)", path.name, time.perf_counter() - t0, ", ".join(p.name for p in written))
    return written


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_graph(path: Path, *, tile_size: int, num_classes: int, min_opset: int = MIN_OPSET,
                embed_dim: int | None = None) -> dict[str, Any]:
    """ONNX checker (with strict shape inference) plus the bundle contract; returns a summary for the manifest.

    Contract: one input 'tiles' uint8 [batch, T, T, 3] with a symbolic batch, one output 'probabilities'
    float32 [batch, C, T, T] (with `embed_dim`: 'embeddings' float32 [batch, D]), default-domain opset >=
    `min_opset`, at least one LayerNormalization operator.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name}: fails the ONNX checker ({one_line(exc, max_chars=300)}); "
                          "the export is broken") from exc
    m = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        raise ExportError(f"{path.name}: opset {opset}, expected >= {min_opset}")
    ops = collections.Counter(n.op_type for n in m.graph.node)
    if ops["LayerNormalization"] == 0:
        raise ExportError(f"{path.name}: no LayerNormalization operator (LayerNorm was decomposed); "
                          f"export with opset >= {MIN_OPSET}")
    out_name = OUTPUT_NAME if embed_dim is None else EMBED_OUTPUT_NAME
    if [i.name for i in m.graph.input] != [INPUT_NAME] or [o.name for o in m.graph.output] != [out_name]:
        raise ExportError(f"{path.name}: inputs {[i.name for i in m.graph.input]} / outputs "
                          f"{[o.name for o in m.graph.output]}, expected ['{INPUT_NAME}'] / ['{out_name}']")
    inp, out = m.graph.input[0], m.graph.output[0]
    din, dout = _dims(inp), _dims(out)
    want_in = [tile_size, tile_size, 3]
    want_out: list[int | str] = [num_classes, tile_size, tile_size] if embed_dim is None else [embed_dim]
    if (inp.type.tensor_type.elem_type != onnx.TensorProto.UINT8 or len(din) != 4 or not isinstance(din[0], str)
            or din[1:] != want_in):
        raise ExportError(f"{path.name}: input {din} of type {inp.type.tensor_type.elem_type}, expected uint8 "
                          f"[batch, {tile_size}, {tile_size}, 3] with a dynamic batch")
    if (out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dout) != 1 + len(want_out)
            or dout[1:] != want_out or dout[0] != din[0]):
        raise ExportError(f"{path.name}: output {dout}, expected float32 {[din[0], *want_out]}")
    return {"opset": opset, "nodes": sum(ops.values()), "layernorm_ops": ops["LayerNormalization"],
            "ops": dict(sorted(ops.items()))}


def simplify_graph(path: Path, *, tile_size: int, num_classes: int, embed_dim: int | None = None) -> bool:
    """Simplify a single-file graph in place with onnxslim; keep the original when slimming fails the checks.

    Returns True when the simplified graph replaced the original.
    """
    import onnx

    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim is not installed; graph not simplified (pip install 'slidefuse[export]')")
        return False
    try:
        slim = onnxslim.slim(onnx.load(str(path)))
        with atomic_path(path) as slim_path:  # replaces the graph only once the slim one passes the checks
            onnx.save(slim, str(slim_path))
            del slim
            check_graph(slim_path, tile_size=tile_size, num_classes=num_classes, embed_dim=embed_dim)
    except (ExportError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        log.warning("onnxslim output rejected (%s); keeping the unsimplified graph", exc)
        return False
    return True


def save_graph(model: onnx.ModelProto, path: Path, external_data: bool) -> list[Path]:
    """Save a graph, in one file or with all weights in `<name>.data` beside it; return the files written."""
    import onnx

    if external_data:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def write_fp16_graph(fp32_path: Path, fp16_path: Path, *, tile_size: int, num_classes: int,
                     precision: str = "fp16", embed_dim: int | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Write the mixed-precision copy of `fp32_path` (see fp16.py) and check it; returns (files, summary)."""
    import onnx

    from slidefuse.export.fp16 import DEFAULT_KEEP_FP32_OPS, convert_to_low_precision

    m32 = onnx.load(str(fp32_path), load_external_data=True)
    weight_bytes = sum(len(i.raw_data) for i in m32.graph.initializer)
    m16 = convert_to_low_precision(m32, precision)
    del m32
    files = save_graph(m16, fp16_path, external_data=weight_bytes // 2 > EXTERNAL_DATA_BYTES)
    summary = check_graph(fp16_path, tile_size=tile_size, num_classes=num_classes, embed_dim=embed_dim)
    tail = "output softmax" if embed_dim is None else "output pooling"
    summary["kept_fp32"] = ["preprocessing (cast + normalisation)", *DEFAULT_KEEP_FP32_OPS, tail]
    return files, summary


# ---------------------------------------------------------------------------------------------- orchestrator
def config_record(config: ExportConfig) -> dict[str, Any]:
    """The config as JSON-ready values; paths reduced to file names (the manifest must not leak local paths)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, Path):
            v = v.name
        elif isinstance(v, ParityThresholds):
            v = v.to_dict()
        elif isinstance(v, tuple):
            v = [x.name if isinstance(x, Path) else list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


def export_bundle(config: ExportConfig, model: SegmentationModel | None = None) -> Bundle:
    """Export a model to a verified bundle at `config.out` and return it (loaded and sha256-checked).

    Builds the model from the registry unless `model` is given (encoder, classes and tile must match `config`).
    Raises ParityError (leaving no bundle behind) when the graph's outputs differ from the model's beyond
    `config.parity`, UsageError for bad options, ExportError for a broken graph."""
    from slidefuse.export.bundle_writer import check_target
    from slidefuse.export.cpu_gates import export_cpu_gates
    from slidefuse.model.assembly import save_model_state

    config.check()
    if config.task == "embed":
        from slidefuse.export.embed_export import export_embedding_bundle

        return export_embedding_bundle(config)
    classes = make_classes(config.classes, config.colors)
    check_target(config.out, config.force)
    owned = model is None
    model = _model_for(config, model, len(classes)).eval()
    spec = model.spec
    decoder_width = int(model.decoder_width)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = config.external_data if config.external_data is not None else weight_bytes > EXTERNAL_DATA_BYTES
    t, c = config.tile_size, len(classes)
    t_start = time.perf_counter()
    with staging_folder(config.out, config.force) as stage:
        onnx_path = stage / "model.onnx"
        files = export_onnx(model, onnx_path, opset=config.opset, external_data=external)
        graph = check_graph(onnx_path, tile_size=t, num_classes=c)
        simplified = False
        if config.simplify and not external and weight_bytes <= SIMPLIFY_MAX_BYTES:
            simplified = simplify_graph(onnx_path, tile_size=t, num_classes=c)
            graph = check_graph(onnx_path, tile_size=t, num_classes=c)
        save_model_state(model, stage / "model.safetensors")
        tiles = parity_tiles(t, config.mpp, n_real=config.parity_real_tiles, n_random=config.parity_random_tiles,
                             seed=config.seed, slides=config.parity_slides)
        reference = TorchModelRunner(model)  # drops the model when its run ends
        if owned:  # free the torch model before onnxruntime loads the graph: halves peak memory on giants
            del model
        outputs: dict[str, np.ndarray] = {}  # runner label -> probabilities, reused by the fp16 comparison
        fp32_graph = gate_backend(staged_bundle(stage, spec, classes, t, config.mpp), low_memory=external)
        parity: dict[str, Any] = {"fp32": {**compare(
            {"torch fp32 (cpu)": reference, "model.onnx (onnxruntime CPU)": fp32_graph}, tiles,
            thresholds=config.parity, outputs=outputs,
        ).check().pair_record(), **this_cpu().record()}}
        if config.cpu_gates:
            parity.update(export_cpu_gates(staged_bundle(stage, spec, classes, t, config.mpp), fp32_graph, tiles,
                                           config.parity, outputs))
        fp16_file: str | None = None
        fp16_graph: dict[str, Any] | None = None
        if config.fp16:
            fp16_graph, parity["fp16"] = _fp16_gate(stage, config, spec, classes, fp32_graph, tiles, outputs,
                                                    external)
            fp16_file = "model.fp16.onnx"
        export_record = {
            "exporter": "torch.onnx.export(dynamo=True)",
            "simplified": simplified,
            "external_data": [p.name for p in files if p != onnx_path],
            "graph": {k: v for k, v in graph.items() if k != "ops"},
            "fp16_graph": {k: v for k, v in fp16_graph.items() if k != "ops"} if fp16_graph else None,
            "config": config_record(config),
            "weight_bytes": weight_bytes,
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        manifest = _manifest(config, spec, classes, decoder_width, int(graph["opset"]), fp16_file, parity,
                             export_record)
        write_manifest(stage, manifest)
    return load_bundle(config.out)


def _model_for(config: ExportConfig, model: SegmentationModel | None, num_classes: int) -> SegmentationModel:
    """The model to export: built from the registry, or the one given after checking it matches `config`."""
    if model is None:
        from slidefuse.model.assembly import build_model

        return build_model(
            config.encoder, num_classes, tile_size=config.tile_size, decoder_width=config.decoder_width,
            encoder_weights=config.encoder_weights, decoder_weights=config.decoder_weights,
            random_weights=config.random_weights, seed=config.seed,
        )
    if (model.spec.id, model.num_classes, model.tile_size) != (config.encoder, num_classes, config.tile_size):
        raise UsageError(f"model ({model.spec.id}, {model.num_classes} classes, tile {model.tile_size}) does not "
                         f"match the config ({config.encoder}, {num_classes} classes, tile {config.tile_size})")
    return model


def _manifest(config: ExportConfig, spec: Any, classes: Any, decoder_width: int, opset: int,
              fp16_file: str | None, parity: dict[str, Any], export_record: dict[str, Any]) -> Manifest:
    """The manifest of an exported bundle (its file list and seal are added by `write_manifest`)."""
    t = config.tile_size
    return Manifest(
        encoder=spec.id, patch_size=spec.patch_size, tile_size=t, mpp=float(config.mpp),
        classes=classes, mean=tuple(spec.mean), std=tuple(spec.std),
        model_file="model.onnx", fp16_model_file=fp16_file, torch_weights="model.safetensors",
        decoder_width=decoder_width, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        opset=opset, overlap=config.overlap if config.overlap is not None else t // 8,
        color_transform=config.color_transform, stain=config.stain,
        random_weights=config.random_weights and (config.encoder_weights is None or config.decoder_weights is None),
        weights={
            "encoder": checkpoint_provenance(config.encoder_weights),
            "decoder": checkpoint_provenance(config.decoder_weights),
            "random_seed": config.seed if config.random_weights else None,
        },
        parity=parity,
        export=export_record,
        tools=tool_versions(),
        created=utc_now(),
    )


def _fp16_gate(stage: Path, config: ExportConfig, spec: Any, classes: Any, fp32_graph: Any, tiles: Any,
               outputs: dict[str, np.ndarray], external: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write `model.fp16.onnx` beside the fp32 graph and gate it against that graph's outputs (cached in
    `outputs`). Returns (the fp16 graph's checks, the parity record); ParityError when it fails."""
    t, c = config.tile_size, len(classes)
    fp16_path = stage / "model.fp16.onnx"
    _, fp16_graph = write_fp16_graph(stage / "model.onnx", fp16_path, tile_size=t, num_classes=c)
    gc.collect()
    fp16_staged = staged_bundle(stage, spec, classes, t, config.mpp, fp16_model_file=fp16_path.name)
    record = compare(
        {"model.onnx (onnxruntime CPU)": fp32_graph,
         "model.fp16.onnx (onnxruntime CPU)": gate_backend(fp16_staged, "fp16", low_memory=external)},
        tiles, thresholds=config.fp16_parity, outputs=outputs,
    ).check().pair_record()
    return fp16_graph, record
