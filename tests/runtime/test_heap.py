"""release_memory: freed heap pages go back to the OS (glibc), libvips' cache limit is kept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slidefuse.runtime.heap import release_memory


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux's")
def test_release_memory_returns_freed_heap_pages_to_the_os() -> None:
    import pyvips

    limit = pyvips.cache_get_max()
    chunks = [bytearray(2048) for _ in range(40_000)]  # 80 MB of malloc'd (not mmap'd) blocks
    pin = bytearray(2048)  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    del chunks
    before = _rss_kib()
    assert release_memory() is True
    after = _rss_kib()
    assert before - after > 40_000, (before, after)  # most of the 80 MB is back with the OS
    assert pyvips.cache_get_max() == limit
    del pin
