"""The parity gate: run a reference and a candidate on the same tiles and compare their probabilities.

A *runner* is any callable `uint8 [B, T, T, 3] (RGB, 0..255) -> float32 [B, C, T, T]` (class probabilities
that sum to 1 over C). `check_parity` feeds both runners the same tiles, in batches of varying size (so a graph
whose batch axis is not really dynamic fails), and compares:

- `max_abs_diff`: the largest |p_ref - p_cand| over every tile, class and pixel (probabilities, 0..1);
- `argmax_agreement`: the fraction of pixels whose argmax class is the same in both.

Default thresholds: fp32 graph vs PyTorch, max diff <= 1e-3 and agreement >= 0.999; fp16 graph vs the fp32
graph, max diff <= 5e-2 and agreement >= 0.99 (fp16 keeps about 3 significant digits, and a pixel whose two best
classes are within that margin can flip). A miss raises `ParityError`.

Tiles: tissue tiles cut from the real slides in `../shared/data/slides` (or `$SLIDEFUSE_SHARED/data/slides`)
when they are present, plus uniform random uint8 tiles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import ParityError, UsageError

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]

# real slides tried in order for tissue tiles (first found wins)
_SLIDE_NAMES = ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "OS-2-vsi.ome.tif")


@dataclass(frozen=True)
class ParityThresholds:
    max_abs_diff: float = 1e-3  # largest allowed |p_ref - p_cand| (probabilities, 0..1)
    min_argmax_agreement: float = 0.999  # smallest allowed fraction of pixels with the same argmax class

    def __post_init__(self) -> None:
        if not 0 < self.max_abs_diff <= 1:
            raise UsageError(f"parity max_abs_diff {self.max_abs_diff} is out of range; expected 0 < x <= 1")
        if not 0 <= self.min_argmax_agreement <= 1:
            raise UsageError(
                f"parity min_argmax_agreement {self.min_argmax_agreement} is out of range; expected 0..1"
            )


FP32_THRESHOLDS = ParityThresholds(1e-3, 0.999)
FP16_THRESHOLDS = ParityThresholds(5e-2, 0.99)


@dataclass(frozen=True)
class ParityTiles:
    tiles: np.ndarray  # uint8 [N, T, T, 3], RGB 0..255
    sources: tuple[str, ...]  # one entry per tile: "CMU-1-Small-Region.svs@x,y" (level-0 px) or "random(seed=S)#i"


def default_slides_dir() -> Path:
    """`$SLIDEFUSE_SHARED/data/slides`, else `../shared/data/slides` beside the repository checkout."""
    env = os.environ.get("SLIDEFUSE_SHARED")
    if env:
        return Path(env) / "data" / "slides"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "slides"


def _tissue_tiles(path: Path, tile: int, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to `n` tiles of `tile` px at level 0 with the most tissue (saturation > 0.1 on a thumbnail)."""
    import pyvips

    img = pyvips.Image.new_from_file(str(path), access="random")
    if img.bands == 4:
        img = img.extract_band(0, n=3)
    if img.width < tile or img.height < tile:
        return [], []
    thumb_img = pyvips.Image.thumbnail(str(path), 256)  # uses the slide's pyramid: cheap on big slides
    if thumb_img.bands == 4:
        thumb_img = thumb_img.extract_band(0, n=3)
    scale = thumb_img.width / img.width
    thumb = np.ndarray(
        buffer=thumb_img.write_to_memory(), dtype=np.uint8, shape=(thumb_img.height, thumb_img.width, 3)
    ).astype(np.float32) / 255.0
    sat = (thumb.max(axis=2) - thumb.min(axis=2)) / np.maximum(thumb.max(axis=2), 1e-6)
    tissue = sat > 0.1
    cands: list[tuple[float, int, int]] = []
    step = tile // 2
    for l0_y in range(0, img.height - tile + 1, step):
        for l0_x in range(0, img.width - tile + 1, step):
            y0, x0 = int(l0_y * scale), int(l0_x * scale)
            y1, x1 = max(y0 + 1, int((l0_y + tile) * scale)), max(x0 + 1, int((l0_x + tile) * scale))
            cands.append((float(tissue[y0:y1, x0:x1].mean()), l0_x, l0_y))
    cands.sort(key=lambda c: (-c[0], c[2], c[1]))
    chosen: list[tuple[int, int]] = []
    for _, l0_x, l0_y in cands:  # prefer tiles that do not overlap the ones already chosen
        if all(abs(l0_x - x) >= tile or abs(l0_y - y) >= tile for x, y in chosen):
            chosen.append((l0_x, l0_y))
        if len(chosen) == n:
            break
    tiles, srcs = [], []
    for l0_x, l0_y in chosen:
        region = img.crop(l0_x, l0_y, tile, tile)
        arr = np.ndarray(buffer=region.write_to_memory(), dtype=np.uint8, shape=(tile, tile, 3)).copy()
        tiles.append(arr)
        srcs.append(f"{path.name}@{l0_x},{l0_y}")
    return tiles, srcs


def parity_tiles(
    tile_size: int, n_real: int = 4, n_random: int = 2, seed: int = 0, slides_dir: Path | None = None
) -> ParityTiles:
    """Tiles for the parity gate: up to `n_real` tissue tiles from a real slide, then `n_random` random ones.

    Real tiles are skipped (with a log line) when the slides or pyvips are absent. Returns uint8
    `[N, tile_size, tile_size, 3]`; N >= 1 is guaranteed by adding a random tile when needed.
    """
    tiles: list[np.ndarray] = []
    srcs: list[str] = []
    if n_real > 0:
        folder = slides_dir or default_slides_dir()
        path = next((folder / s for s in _SLIDE_NAMES if (folder / s).exists()), None)
        if path is None:
            log.warning("parity: no real slide under %s; using random tiles only", folder)
        else:
            try:
                tiles, srcs = _tissue_tiles(path, tile_size, n_real)
            except (ImportError, OSError) as exc:  # pyvips missing / unreadable slide: random tiles only
                log.warning("parity: could not read tissue tiles from %s (%s); using random tiles only", path, exc)
    n_random = max(n_random, 1 - len(tiles))
    rng = np.random.default_rng(seed)
    for i in range(n_random):
        tiles.append(rng.integers(0, 256, size=(tile_size, tile_size, 3), dtype=np.uint8))
        srcs.append(f"random(seed={seed})#{i}")
    return ParityTiles(np.stack(tiles), tuple(srcs))


def _batches(n: int) -> list[int]:
    """Batch sizes 1, 2, 3, 1, 2, 3, ... summing to n: exercises the dynamic batch axis."""
    sizes: list[int] = []
    i = 0
    while sum(sizes) < n:
        sizes.append(min(i % 3 + 1, n - sum(sizes)))
        i += 1
    return sizes


def run_batched(run: Runner, tiles: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Run `run` over `tiles` in consecutive batches of `sizes`; float32 [N, C, T, T]."""
    outs, start = [], 0
    for b in sizes:
        out = np.asarray(run(tiles[start:start + b]), dtype=np.float32)
        outs.append(out)
        start += b
    return np.concatenate(outs)


def compare(
    reference: np.ndarray, candidate: np.ndarray
) -> dict[str, float]:
    """max/mean |difference| and argmax agreement of two float32 `[N, C, T, T]` probability arrays."""
    if reference.shape != candidate.shape:
        raise ParityError(f"parity: candidate output shape {list(candidate.shape)} differs from the reference's "
                          f"{list(reference.shape)}; the exported graph has the wrong output layout")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    return {
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "argmax_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def check_parity(
    reference: Runner,
    candidate: Runner,
    tiles: ParityTiles,
    thresholds: ParityThresholds,
    *,
    reference_name: str,
    candidate_name: str,
    reference_out: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run both runners on `tiles`, compare, and raise ParityError when a threshold is missed.

    Returns (report for the manifest, reference outputs, candidate outputs), both float32 [N, C, T, T]
    probabilities, for reuse (e.g. the fp32 graph's outputs as the fp16 graph's reference). Pass
    `reference_out` to skip running the reference again.
    """
    n = len(tiles.tiles)
    ref = reference_out if reference_out is not None else run_batched(reference, tiles.tiles, [min(2, n)] * n)
    ref = ref[:n]
    sizes = _batches(n)
    cand = run_batched(candidate, tiles.tiles, sizes)
    figures = compare(ref, cand)
    report: dict[str, Any] = {
        "reference": reference_name,
        "candidate": candidate_name,
        **figures,
        "tiles": n,
        "tile_sources": list(tiles.sources),
        "batch_sizes": sizes,
        "thresholds": asdict(thresholds),
    }
    ok = (figures["max_abs_diff"] <= thresholds.max_abs_diff
          and figures["argmax_agreement"] >= thresholds.min_argmax_agreement)
    log.info("parity %s vs %s: max|dp| %.3g, argmax agreement %.5f on %d tiles (%s)", candidate_name,
             reference_name, figures["max_abs_diff"], figures["argmax_agreement"], n, "pass" if ok else "FAIL")
    if not ok:
        raise ParityError(
            f"{candidate_name}: parity with {reference_name} failed: max |dp| {figures['max_abs_diff']:.3g} "
            f"(limit {thresholds.max_abs_diff:g}), argmax agreement {figures['argmax_agreement']:.5f} "
            f"(limit {thresholds.min_argmax_agreement:g}) on {n} tiles; the graph does not compute what the "
            "reference computes: fix the export, or loosen the thresholds if the difference is expected"
        )
    report["passed"] = True
    return report, ref, cand


def ort_runner(path: Path, threads: int | None = None, low_memory: bool = False) -> Runner:
    """A runner over an ONNX file in onnxruntime on the CPU (input 'tiles', first output).

    `low_memory` turns off weight prepacking and the memory arena (for multi-GB graphs: slower, smaller).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    if low_memory:
        so.enable_cpu_mem_arena = False
        so.add_session_config_entry("session.disable_prepacking", "1")
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(tiles: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: np.ascontiguousarray(tiles)})[0], dtype=np.float32)

    return run


def torch_runner(model: Any) -> Runner:
    """A runner over a torch SegmentationModel (uint8 [B,T,T,3] -> float32 [B,C,T,T]) on its own device."""
    import torch

    device = next(model.parameters()).device

    def run(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(tiles)).to(device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    return run
