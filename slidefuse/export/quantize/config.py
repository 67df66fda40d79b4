"""`slidefuse quantize`'s configuration: the int8 graph's file name, the calibration methods and quantisable
operator types, the defaults (chosen by measurement, see the comments), the gate's thresholds, and
`QuantizeConfig`, the command's options, checked once by `QuantizeConfig.check`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidefuse.errors import SlideNotFound, UsageError
from slidefuse.export.parity import ParityThresholds

INT8_FILE = "model.int8.onnx"
METHODS = ("minmax", "percentile", "entropy")  # calibration methods (onnxruntime's CalibrationMethod)
QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")  # op types that may be given in `op_types`
# Defaults chosen by measurement. Calibration: Percentile (demo bundle, held-out tiles over three splits:
# agreement mean 0.9983 vs MinMax 0.9979 and Entropy 0.9950, worst max |dp| 0.076 / 0.079 / 0.37: Entropy clips
# too hard); the head in float (0.9983 vs 0.9975 on the demo, 0.9990 vs 0.9924 on the colour test model, whose
# quantised logits flipped near-tied pixels); no quant_pre_process (the same figures, a slightly larger file).
# Op types: MatMul and Gemm only (the ViT encoder in int8, the convolutional decoder in float). Measured on whole
# stitched slides with a phikon decoder trained by `slidefuse train` (224 px at 1 um/px, calibrated on
# CMU-1-Small-Region + OS-2): argmax agreement with fp32 on tissue 0.9980 / 0.9976 (CMU / OS-2) with MatMul+Gemm,
# but 0.9950 / 0.9935 with the decoder's Conv quantised as well (ov-cpu: 0.9944 / 0.9936), below the 0.995 the
# CPU paths must keep. Quantising Conv too is about 1.7x faster on phikon at 512 px (the decoder's full-resolution
# convolutions are half its FLOPs): choose it with `--op-types Conv,MatMul,Gemm` where the gate accepts it.
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")
DEFAULT_METHOD = "percentile"
# The gate judges mainly by argmax agreement. max |dp| bounds the worst pixel: a pixel whose two best classes are
# nearly tied moves by up to about their gap when 8-bit activations tip it; good calibrations stay under 0.1 on
# the demo model, a broken graph (saturated ranges) reaches ~1. 0.35 leaves room for larger models' rare pixels.
# min agreement 0.998 on the gate's tiles: whole stitched slides' tissue agreement ran up to 0.003 below the
# gate's (all pixels of tissue tiles, glass included) in benchmarks/results/cpu-accuracy.json, and the paths must
# keep 0.995 on tissue.
INT8_THRESHOLDS = ParityThresholds(max_abs_diff=0.35, min_argmax_agreement=0.998)


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything `quantize_bundle` needs."""

    bundle: Path  # the bundle to add model.int8.onnx to (or to copy, with `out`)
    slides: tuple[Path, ...]  # slides to cut calibration and gate tiles from
    calibration_tiles: int = 32  # tiles that calibrate the activation ranges
    gate_tiles: int = 16  # held-out tiles of the parity gate (never calibration tiles)
    method: str = DEFAULT_METHOD  # "minmax", "percentile" or "entropy"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES  # operator types to quantise
    thresholds: ParityThresholds = INT8_THRESHOLDS  # the gate: model.int8.onnx vs model.onnx
    seed: int = 0  # seed of the calibration / gate split
    force: bool = False  # replace an existing int8 graph
    out: Path | None = None  # copy the bundle here first and quantise the copy (a new folder)
    preprocess: bool = False  # run onnxruntime's quant_pre_process (shape inference + optimisation) first
    float_head: bool = True  # keep the compute node that makes the logits (the classification head) in float

    def check(self) -> None:
        """UsageError for bad counts, methods or op types; SlideNotFound for a slide that is not a file."""
        if not self.slides:
            raise UsageError("slides: name at least one slide to cut calibration tiles from", field="slides")
        if self.calibration_tiles < 1:
            raise UsageError(f"calibration_tiles={self.calibration_tiles}: expected at least 1, e.g. 32",
                             field="calibration_tiles")
        if self.gate_tiles < 1:
            raise UsageError(f"gate_tiles={self.gate_tiles}: expected at least 1, e.g. 16", field="gate_tiles")
        if self.method not in METHODS:
            raise UsageError(f"method={self.method!r}: expected one of {', '.join(METHODS)}", field="method")
        bad = [t for t in self.op_types if t not in QUANTIZABLE_OPS]
        if not self.op_types or bad:
            raise UsageError(f"op_types={list(self.op_types)}: expected some of {', '.join(QUANTIZABLE_OPS)}",
                             field="op_types")
        for path in self.slides:
            if not Path(path).is_file():
                raise SlideNotFound(f"{path}: no such slide; check the path in slides")
