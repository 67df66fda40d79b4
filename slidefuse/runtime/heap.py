"""Hand memory the process no longer uses back to the operating system between a slide's stages.

After a slide's tiles are inferred and stitched, what those stages freed is still counted in the process's
resident set: glibc keeps freed heap pages for reuse (malloc_trim returns them), and libvips keeps recent
operations, with their tile caches, in its operation cache. Measured on `slidefuse segment` (2 cores, 36k x 36k
JPEG TIFF): about 100 MB dropped before the outputs are written, so a slide's outputs do not stack on the
leftovers of its inference (benchmarks/bench_memory.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def drop_operation_cache() -> None:
    """Empty libvips' operation cache, keeping its limit: later loads build new operations (and decode again)
    instead of reusing a cached one. Safe at any time and from any thread: images in use keep their operations."""
    import pyvips

    limit = pyvips.cache_get_max()
    pyvips.cache_set_max(0)  # libvips drops cached operations beyond the new limit at once
    pyvips.cache_set_max(limit)


def release_memory() -> bool:
    """Empty libvips' operation cache (its limit is kept) and return free heap pages to the OS.

    Safe at any time and from any thread: cached operations are only re-created when asked for again.
    Returns whether the heap could be trimmed (False where the C library has no malloc_trim).
    """
    drop_operation_cache()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
