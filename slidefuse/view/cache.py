"""The viewer's on-disk tile cache: one file per rendered tile, the total size bounded, the least recently used
files (by mtime, touched on every hit) removed first when a write takes it past the bound."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/slidefuse/view (~/.cache/slidefuse/view when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slidefuse" / "view"


class TileCache:
    """Tiles by key (any string), at most `max_bytes` on disk under `folder`."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = sum(p.stat().st_size for p in self._files())
        self.hits = 0
        self.misses = 0

    def _files(self) -> list[Path]:
        return [p for p in self.folder.glob("*/*.tile") if p.is_file()]

    def _path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / h[:2] / f"{h[2:]}.tile"

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str, make: Callable[[], bytes | None]) -> bytes | None:
        """The cached bytes of `key`, else `make()`'s (stored unless None)."""
        path = self._path(key)
        try:
            cached = path.read_bytes()
            os.utime(path)  # most recently used
            self.hits += 1
            return cached
        except FileNotFoundError:
            pass
        self.misses += 1
        data = make()
        if data is not None:
            self._store(path, data)
        return data

    def _store(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only cache costs speed, not the tile
            logger.warning("tile cache %s not written (%s); tiles are rendered without it", self.folder, exc)
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self._bytes += len(data)
            if self._bytes > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Remove the least recently used files until the cache holds at most 3/4 of its bound."""
        files = []
        for p in self._files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        files.sort()
        total = sum(s for _, s, _ in files)
        for _, size, p in files:
            if total <= self.max_bytes * 3 // 4:
                break
            p.unlink(missing_ok=True)
            total -= size
        self._bytes = total
