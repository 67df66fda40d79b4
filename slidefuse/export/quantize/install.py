"""Putting a gated INT8 graph into its bundle: which bundles may be changed (`check_source`,
`check_writable`), the copy made for `--out` (`copy_bundle`), the gated files renamed into the bundle
(`install_files`, through `slidefuse.atomic`), and the manifest rewritten (`record_in_manifest`, through
`write_manifest`) with the calibration record (`calibration_record`) and every gate's record."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slidefuse.atomic import atomic_path
from slidefuse.errors import BundleError, UsageError
from slidefuse.export.parity import ParityTiles
from slidefuse.export.quantize.config import INT8_FILE, QuantizeConfig
from slidefuse.export.quantize.tiles import slide_record
from slidefuse.runtime.bundle import MANIFEST, Bundle, write_manifest


def _package_data() -> Path:
    import slidefuse

    return Path(slidefuse.__file__).resolve().parent


def check_writable(folder: Path) -> None:
    """Refuse the bundle shipped inside the package and a bundle folder this process cannot write to."""
    root = folder.resolve()
    if root == _package_data() or _package_data() in root.parents:
        raise UsageError(f"{folder}: the demonstration bundle shipped inside the slidefuse package is not "
                         "changed in place; quantise a copy: add out=NEW_FOLDER")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{folder}: the bundle folder is not writable; quantise a copy with out=NEW_FOLDER")


def check_source(bundle: Bundle, config: QuantizeConfig) -> None:
    """Refuse a bundle without an ONNX graph, and one that has an int8 graph already unless `config.force`."""
    m = bundle.manifest
    if m.model_file is None:
        raise BundleError(f"{bundle.path}: a torch-only bundle (no ONNX graph) cannot be quantised; export it "
                          "with 'slidefuse export' first")
    if m.int8_model_file and not config.force:
        raise UsageError(f"{bundle.path}: already has {m.int8_model_file} (parity in its manifest); add force=True "
                         "to replace it")


def copy_bundle(src: Bundle, dest: Path) -> None:
    """Copy the manifest and every file it lists (contents only, not modes: the copy must be writable)."""
    for rel in [MANIFEST, *src.manifest.files]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.path / rel, target)


def graph_bytes(folder: Path, name: str) -> int:
    """Size in bytes of the graph `name` in `folder` with its external data (`name`.data), if any."""
    return sum(p.stat().st_size for p in (folder / name, folder / f"{name}.data") if p.is_file())


def install_files(bundle: Bundle, scratch: Path, names: Sequence[str]) -> None:
    """Move the gated files from `scratch` into the bundle atomically, then drop a replaced graph's stale files."""
    for name in names:
        with atomic_path(bundle.path / name) as tmp:
            shutil.copyfile(scratch / name, tmp)
    old = bundle.manifest.int8_model_file
    for stale in ([old, f"{old}.data"] if old else []):
        if stale not in names and stale in bundle.manifest.files:
            (bundle.path / stale).unlink(missing_ok=True)


def calibration_record(bundle: Bundle, config: QuantizeConfig, summary: dict[str, Any], cal: ParityTiles,
                       gate: ParityTiles, names: list[str], int8_bytes: int, seconds: float) -> dict[str, Any]:
    """The calibration record (= manifest export["int8"]): tool and options, what `write_int8_graph` excluded and
    wrote (`summary`), the slides and tiles it was calibrated and gated on, the files and their sizes."""
    import onnxruntime

    m = bundle.manifest
    return {
        "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
        "format": "QDQ", "weights": "int8, symmetric, one scale per output channel",
        "activations": "uint8, asymmetric, one scale per tensor", "method": config.method,
        "op_types": list(config.op_types), "preprocessed": config.preprocess,
        "excluded_nodes": len(summary["excluded_nodes"]),
        "excluded": ["preprocessing (uint8 cast + normalisation)", "output tail (softmax)"]
        + (["classification head (the logits)"] if config.float_head else []),
        "quantize_linear_nodes": summary["quantize_linear"], "dequantize_linear_nodes": summary["dequantize_linear"],
        "slides": [slide_record(p) for p in config.slides], "seed": config.seed,
        "tile_size": m.tile_size, "mpp": m.mpp,
        "calibration_tiles": len(cal.tiles), "calibration_tile_sources": list(cal.sources),
        "gate_tiles": len(gate.tiles), "files": names,
        "graph_bytes": {"fp32": graph_bytes(bundle.path, bundle.model_path.name), "int8": int8_bytes},
        "seconds": round(seconds, 1),
    }


def record_in_manifest(bundle: Bundle, staged: Bundle, gates: dict[str, Any], record: dict[str, Any]) -> None:
    """Rewrite `bundle`'s manifest: it names the int8 graph, its parity holds `staged`'s records (the bundle's own
    less the accelerated paths' old gates) plus `gates` (manifest key -> record), and export["int8"] `record`."""
    m = bundle.manifest
    write_manifest(bundle.path, dataclasses.replace(m, int8_model_file=INT8_FILE, parity={
        **staged.manifest.parity, **gates}, export={**m.export, "int8": record}))
