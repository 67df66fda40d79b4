"""Encoder-only bundles (`slidefuse export ENCODER --task embed`): uint8 tiles in, the publisher's patch
embedding out.

One graph: `tiles` uint8 [B, T, T, 3] (0..255) -> cast and mean/std normalisation -> encoder -> the encoder's
embedding rule (registry `EncoderSpec.embedding`) -> `embeddings` float32 [B, D], dynamic batch. The stages
are the segmentation export's (`onnx_export`: export_onnx, check_graph, simplify_graph, write_fp16_graph, the
parity comparator over the real onnxruntime backend, the staging folder renamed into place); only the model,
the output contract and the gates differ. The gates compare embeddings tile by tile: fp32 graph vs torch
within 1e-5 (absolute) and cosine >= 1 - 1e-5; the fp16 graph vs the fp32 graph by cosine >= 0.999.

The manifest says `task: "embed"`, `embedding: {dim, rule, source}`, no classes, decoder width 0; its
`torch_weights` file holds the encoder's state dict (`encoder.*`).

A segmentation bundle embeds through its encoder part: `export_embedding_bundle(config, source_bundle=...)`
rebuilds the bundle's SegmentationModel from its model.safetensors and exports the encoder alone, at the
bundle's tile size, pixel size and colour handling (`slidefuse export ENCODER --task embed --from-bundle B`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.export.bundle_writer import checkpoint_provenance, staging_folder, tool_versions, utc_now
from slidefuse.export.parity import (
    EMBED_FP32_THRESHOLDS,
    EMBED_REDUCED_THRESHOLDS,
    TorchModelRunner,
    compare,
    gate_backend,
    parity_tiles,
    staged_bundle,
)
from slidefuse.runtime.bundle import Bundle, Manifest, load_bundle, write_manifest
from slidefuse.runtime.manifest_schema import EmbeddingInfo

if TYPE_CHECKING:
    from slidefuse.export.onnx_export import ExportConfig
    from slidefuse.model.embedding import EmbeddingModel

log = logging.getLogger(__name__)


def embedding_info(model: EmbeddingModel) -> EmbeddingInfo:
    """The manifest's `embedding` record of `model`."""
    spec = model.spec
    return EmbeddingInfo(dim=int(model.dim), rule=spec.embedding, source=spec.embedding_source)


def model_for(config: ExportConfig, source_bundle: Bundle | None = None) -> EmbeddingModel:
    """The embedding model to export: the encoder part of `source_bundle`'s segmentation model, or built from
    the registry (publisher checkpoint, or random weights when asked for)."""
    from slidefuse.model.embedding import build_embedding_model, embedding_from_segmentation

    if source_bundle is None:
        return build_embedding_model(config.encoder, tile_size=config.tile_size, encoder_weights=config.encoder_weights,
                                     random_weights=config.random_weights, seed=config.seed)
    from slidefuse.model.assembly import build_model_from_state

    m = source_bundle.manifest
    if m.task != "segment" or m.torch_weights is None:
        raise UsageError(f"{source_bundle.path}: from_bundle needs a segmentation bundle with its torch weights "
                         f"(model.safetensors); this one has task {m.task!r}, torch weights {m.torch_weights!r}",
                         field="from_bundle")
    if m.geometry != "aligned":
        raise UsageError(f"{source_bundle.path}: its tile ({m.tile_size} px, patch {m.patch_size}) has the 'paper' "
                         "geometry; embeddings need a tile the patch grid covers exactly", field="from_bundle")
    seg = build_model_from_state(m.encoder, m.num_classes, m.tile_size, m.decoder_width,
                                 source_bundle.file(m.torch_weights))
    return embedding_from_segmentation(seg)


def from_bundle_config(config: ExportConfig, bundle: Bundle) -> ExportConfig:
    """`config` with the encoder, tile size, pixel size and colour handling of segmentation bundle `bundle`."""
    m = bundle.manifest
    if config.encoder != m.encoder:
        raise UsageError(f"encoder {config.encoder!r} but {bundle.path} holds encoder {m.encoder!r}: name the "
                         "bundle's encoder", field="encoder")
    return dataclasses.replace(config, tile_size=m.tile_size, mpp=m.mpp, color_transform=m.color_transform,
                               random_weights=m.random_weights)


def export_embedding_bundle(config: ExportConfig, source_bundle: Bundle | None = None) -> Bundle:
    """Export the encoder of `config.encoder` (or of `source_bundle`) as an embedding bundle at `config.out`;
    returns it loaded and sha256-checked. ParityError (leaving nothing behind) when a gate fails."""
    from slidefuse.export.bundle_writer import check_target
    from slidefuse.export.onnx_export import (
        EMBED_OUTPUT_NAME,
        EXTERNAL_DATA_BYTES,
        SIMPLIFY_MAX_BYTES,
        check_graph,
        export_onnx,
    )
    from slidefuse.model.checkpoints import save_state

    if source_bundle is not None:
        config = from_bundle_config(config, source_bundle)
    config.check()
    check_target(config.out, config.force)
    model = model_for(config, source_bundle)
    spec, t, info = model.spec, model.tile_size, embedding_info(model)
    config = dataclasses.replace(config, tile_size=t)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = config.external_data if config.external_data is not None else weight_bytes > EXTERNAL_DATA_BYTES
    t_start = time.perf_counter()
    with staging_folder(config.out, config.force) as stage:
        onnx_path = stage / "model.onnx"
        files = export_onnx(model, onnx_path, opset=config.opset, external_data=external,
                            output_name=EMBED_OUTPUT_NAME)
        graph = check_graph(onnx_path, tile_size=t, num_classes=0, embed_dim=info.dim)
        simplified = False
        if config.simplify and not external and weight_bytes <= SIMPLIFY_MAX_BYTES:
            from slidefuse.export.onnx_export import simplify_graph

            simplified = simplify_graph(onnx_path, tile_size=t, num_classes=0, embed_dim=info.dim)
            graph = check_graph(onnx_path, tile_size=t, num_classes=0, embed_dim=info.dim)
        save_state(model, stage / "model.safetensors")
        tiles = parity_tiles(t, config.mpp, n_real=config.parity_real_tiles, n_random=config.parity_random_tiles,
                             seed=config.seed, slides=config.parity_slides)
        reference = TorchModelRunner(model)
        del model
        outputs: dict[str, np.ndarray] = {}
        fp32_graph = gate_backend(staged_bundle(stage, spec, (), t, config.mpp, embedding=info), low_memory=external)
        parity: dict[str, Any] = {"fp32": compare(
            {"torch fp32 (cpu)": reference, "model.onnx (onnxruntime CPU)": fp32_graph}, tiles,
            thresholds=EMBED_FP32_THRESHOLDS, outputs=outputs).check().pair_record()}
        fp16_file = None
        fp16_graph: dict[str, Any] | None = None
        if config.fp16:
            fp16_graph, parity["fp16"] = _fp16_gate(stage, config, info, fp32_graph, tiles, outputs, external)
            fp16_file = "model.fp16.onnx"
        record = {
            "exporter": "torch.onnx.export(dynamo=True)", "simplified": simplified,
            "external_data": [p.name for p in files if p != onnx_path],
            "graph": {k: v for k, v in graph.items() if k != "ops"},
            "fp16_graph": {k: v for k, v in fp16_graph.items() if k != "ops"} if fp16_graph else None,
            "config": _config_record(config), "weight_bytes": weight_bytes,
            "source_bundle": source_bundle.digest if source_bundle is not None else None,
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        write_manifest(stage, _manifest(config, info, int(graph["opset"]), fp16_file, parity, record,
                                        source_bundle))
    return load_bundle(config.out)


def _config_record(config: ExportConfig) -> dict[str, Any]:
    from slidefuse.export.onnx_export import config_record

    return config_record(config)


def _fp16_gate(stage: Path, config: ExportConfig, info: EmbeddingInfo, fp32_graph: Any, tiles: Any,
               outputs: dict[str, np.ndarray], external: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """model.fp16.onnx beside the fp32 graph, gated against it by per-tile cosine similarity."""
    from slidefuse.export.onnx_export import write_fp16_graph
    from slidefuse.model.registry import get_spec

    t = config.tile_size
    fp16_path = stage / "model.fp16.onnx"
    _, fp16_graph = write_fp16_graph(stage / "model.onnx", fp16_path, tile_size=t, num_classes=0,
                                     embed_dim=info.dim)
    gc.collect()
    staged = staged_bundle(stage, get_spec(config.encoder), (), t, config.mpp, fp16_model_file=fp16_path.name,
                           embedding=info)
    record = compare({"model.onnx (onnxruntime CPU)": fp32_graph,
                      "model.fp16.onnx (onnxruntime CPU)": gate_backend(staged, "fp16", low_memory=external)},
                     tiles, thresholds=EMBED_REDUCED_THRESHOLDS, outputs=outputs).check().pair_record()
    return fp16_graph, record


def _manifest(config: ExportConfig, info: EmbeddingInfo, opset: int, fp16_file: str | None,
              parity: dict[str, Any], record: dict[str, Any], source_bundle: Bundle | None) -> Manifest:
    from slidefuse.export.onnx_export import EMBED_OUTPUT_NAME, INPUT_NAME
    from slidefuse.model.registry import get_spec

    spec = get_spec(config.encoder)
    encoder_weights = checkpoint_provenance(config.encoder_weights)
    if source_bundle is not None:
        encoder_weights = {"bundle": source_bundle.digest, **(source_bundle.manifest.weights.get("encoder") or {})}
    return Manifest(
        encoder=spec.id, patch_size=spec.patch_size, tile_size=config.tile_size, mpp=float(config.mpp), classes=(),
        mean=(spec.mean[0], spec.mean[1], spec.mean[2]), std=(spec.std[0], spec.std[1], spec.std[2]),
        model_file="model.onnx", fp16_model_file=fp16_file, torch_weights="model.safetensors", decoder_width=0,
        input_name=INPUT_NAME, output_name=EMBED_OUTPUT_NAME, opset=opset, overlap=0,
        color_transform=config.color_transform,
        random_weights=config.random_weights and config.encoder_weights is None,
        weights={"encoder": encoder_weights, "decoder": None,
                 "random_seed": config.seed if config.random_weights else None},
        parity=parity, export=record, tools=tool_versions(), created=utc_now(), task="embed", embedding=info,
    )
