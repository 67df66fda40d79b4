"""The CPU backends' memory budget: batches larger than the budget allows run in sub-batches, same outputs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.backends import available_backends, memory, open_backend
from slidefuse.runtime.bundle import load_bundle


def test_tile_estimate_matches_the_phikon_measurement() -> None:
    # measured (benchmarks/results/engine-memory.json): 0.67 GiB more peak RSS per 512 px tile, decoder width 256
    m = dataclasses.replace(load_bundle(Path(__file__).resolve().parents[2] / "slidefuse/data/default").manifest,
                            tile_size=512, decoder_width=256)
    per_tile = memory.tile_bytes(m) / 2**30
    assert 0.67 <= per_tile <= 0.67 * 1.25  # conservative, but not wildly
    n, reason = memory.tiles_per_call(m, 4.0)
    assert n == 5 and "max_memory_gb=4" in reason
    assert memory.tiles_per_call(m, 0.3)[0] == 1  # never below one tile
    assert memory.tiles_per_call(m, 0) == (None, "max_memory_gb=0: no limit")


def test_default_budget_is_a_fraction_of_usable_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "usable_memory_bytes", lambda: 10 * 2**30)
    budget, source = memory.budget_bytes(None)
    assert budget == int(10 * 2**30 * memory.DEFAULT_FRACTION) and "10.0 GiB usable" in source
    monkeypatch.setattr(memory, "usable_memory_bytes", lambda: None)
    assert memory.budget_bytes(None)[0] is None


def test_usable_memory_is_at_most_physical_ram() -> None:
    import os

    usable = memory.usable_memory_bytes()
    assert usable is not None and 0 < usable <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("backend", ["ort-cpu", "ov-cpu"])
def test_sub_batches_give_the_same_output(bundle_dir: Path, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    if available_backends()[backend] is not None:
        pytest.skip(f"{backend} is not available here")
    bundle = load_bundle(bundle_dir)
    tiles = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    per_tile_gb = memory.tile_bytes(bundle.manifest) / 2**30
    with open_backend(backend, bundle, max_memory_gb=0) as whole:
        ref = whole.run(tiles)
        assert whole.info().to_dict()["max_batch"] is None
    with caplog.at_level(logging.INFO, logger="slidefuse"), \
            open_backend(backend, bundle, max_memory_gb=per_tile_gb * 3.5) as split:
        calls: list[int] = []
        run_one = split._run_one  # type: ignore[attr-defined]
        split._run_one = lambda t: calls.append(len(t)) or run_one(t)  # type: ignore[attr-defined]
        out = split.run(tiles)
        assert split.info().to_dict()["max_batch"] == 3
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(out, ref)
    assert "at most 3 tiles per engine call" in caplog.text


def test_budget_must_not_be_negative(bundle_dir: Path) -> None:
    with pytest.raises(UsageError, match="max_memory_gb"):
        open_backend("ort-cpu", load_bundle(bundle_dir), max_memory_gb=-1)


def test_arena_and_memory_pattern_options_reach_the_session(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with open_backend("ort-cpu", bundle) as b:  # defaults: arena on, memory pattern off (see OrtOptions)
        so = b._session.get_session_options()  # type: ignore[attr-defined]
        assert so.enable_cpu_mem_arena is True and so.enable_mem_pattern is False
    with open_backend("ort-cpu", bundle, arena=False, mem_pattern=True) as b:
        so = b._session.get_session_options()  # type: ignore[attr-defined]
        assert so.enable_cpu_mem_arena is False and so.enable_mem_pattern is True
        assert b.info().to_dict()["arena"] is False and b.info().to_dict()["mem_pattern"] is True
