"""`embed_many`: embed a batch of slides into OUT/<slide>/features.h5 with the segment command's machinery:
slide discovery and list files (`segment.inputs`), output folder names, per-slide claims shared by concurrent
processes (`segment.claims`), the run log OUT/run.json (`segment.runlog`), static shards, and a skip key
(the slide's identity, the bundle's digest and the options that change the features) stored in each
feature file, so a rerun skips the slides whose features are complete and current.

A slide another live process holds is left to it (status "claimed"); a stale claim is taken over. Unlike
`segment`, this runner does not wait at the end of the list for the slides others hold, and has no Ray driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slidefuse.errors import ClaimLost, SlidefuseError, one_line
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.embed.features import FILE_NAMES, read_key, require_formats
from slidefuse.runtime.embed.options import EmbedOptions, EmbedSlideResult
from slidefuse.runtime.embed.slide import embed_plan, plan_embedding
from slidefuse.runtime.segment.claims import ClaimPolicy, ClaimSet, new_run_id
from slidefuse.runtime.segment.inputs import collect_slides, list_overrides, output_dirs
from slidefuse.runtime.segment.runlog import RunLog
from slidefuse.runtime.segment.skip import qc_key, slide_identity
from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)

KEY_VERSION = 1


def embed_key(bundle: Bundle, options: EmbedOptions, slide: Path) -> dict[str, Any]:
    """Everything that decides a slide's features, as JSON."""
    return {
        "version": KEY_VERSION,
        "slide": slide_identity(slide).to_dict(),
        "bundle": bundle.digest,
        "options": {"mpp": options.mpp, "override_mpp": options.override_mpp,
                    "stride": options.check_stride(bundle.manifest.tile_size), "tissue": options.tissue.to_dict(),
                    "all_tiles": options.all_tiles, "fp16_features": options.fp16_features,
                    "qc": qc_key(options.qc)},
    }


def is_current(out_dir: Path, key: dict[str, Any], formats: Sequence[str]) -> bool:
    """Whether every requested feature file in `out_dir` is complete and was made with `key`."""
    return all(read_key(out_dir / FILE_NAMES[f]) == key for f in formats)


def check_embedding_bundle(bundle: Bundle) -> None:
    """Raise UsageError unless `bundle` is an embedding bundle."""
    from slidefuse.errors import UsageError

    if bundle.manifest.embedding is None:
        raise UsageError(f"{bundle.path} is a segmentation bundle (task {bundle.manifest.task!r}); embed needs an "
                         "embedding bundle: export the encoder with task 'embed' (from_bundle=<this bundle> uses "
                         "this bundle's encoder)", field="model")


def _shard(slides: list[Path], dirs: list[Path], shard: tuple[int, int] | None) -> list[tuple[Path, Path]]:
    pairs = list(zip(slides, dirs, strict=True))
    return pairs if shard is None else pairs[shard[0]::shard[1]]


def embed_many(inputs: Sequence[Path], bundle: Bundle, out_root: Path, options: EmbedOptions, *,
               list_file: Path | None = None,
               on_result: Callable[[EmbedSlideResult], None] | None = None) -> list[EmbedSlideResult]:
    """Embed every slide of `inputs` (files, folders) and `list_file`; returns one result per slide of this
    shard, in order. One slide's failure is recorded and the batch goes on."""
    from slidefuse.runtime.backends.auto import open_backend

    check_embedding_bundle(bundle)
    require_formats(options.formats)
    options.check_stride(bundle.manifest.tile_size)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    slides = collect_slides(list(inputs), list_file, exclude=out_root)
    names = {p: e.out_name for p, e in list_overrides(list_file).items() if e.out_name}
    pairs = _shard(slides, output_dirs(slides, out_root, names), options.shard)
    run_id = new_run_id()
    run_log = RunLog(out_root, run_id=run_id)
    results: list[EmbedSlideResult] = []
    with ClaimSet(run_id, ClaimPolicy(timeout=options.claim_timeout)) as claims, \
            open_backend(options.backend, bundle, **dict(options.backend_options)) as backend:
        for slide, out_dir in pairs:
            res = _one(slide, out_dir, bundle, backend, options, claims)
            if res.status != Status.CLAIMED:  # a slide another process holds is that process's to record
                run_log.record(slide, res.status, error=res.error, out_dir=out_dir, outputs=res.outputs,
                               seconds=res.seconds, tiles=res.tiles, task="embed")
            results.append(res)
            if on_result is not None:
                on_result(res)
    return results


def _one(slide: Path, out_dir: Path, bundle: Bundle, backend: Any, options: EmbedOptions,
         claims: ClaimSet) -> EmbedSlideResult:
    t0 = time.perf_counter()
    dim = bundle.manifest.embedding.dim if bundle.manifest.embedding else 0
    try:
        key = embed_key(bundle, options, slide)
    except SlidefuseError as exc:
        return EmbedSlideResult(slide, Status.FAILED, out_dir, error=one_line(exc), dim=dim)
    files = {f: out_dir / FILE_NAMES[f] for f in options.formats}
    if not options.overwrite and is_current(out_dir, key, options.formats):
        log.info("%s: features complete and current; skipped", slide)
        return EmbedSlideResult(slide, Status.SKIPPED, out_dir, files, dim=dim)
    if not claims.try_claim(out_dir):
        return EmbedSlideResult(slide, Status.CLAIMED, out_dir, dim=dim, error="claimed by another process")
    try:
        plan = plan_embedding(slide, bundle, options)
        run = embed_plan(plan, bundle, backend, options, out_dir, key, out_dir.name)
        claims.check(out_dir)
        return EmbedSlideResult(slide, Status.OK, out_dir, run.outputs, run.tiles, dim, time.perf_counter() - t0)
    except ClaimLost as exc:
        return EmbedSlideResult(slide, Status.CLAIM_LOST, out_dir, dim=dim, error=one_line(exc))
    except (SlidefuseError, OSError, ValueError, RuntimeError) as exc:
        log.error("%s: %s", slide, one_line(exc))
        return EmbedSlideResult(slide, Status.FAILED, out_dir, dim=dim, seconds=time.perf_counter() - t0,
                                error=one_line(exc))
    finally:
        claims.release(out_dir)
