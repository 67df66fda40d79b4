"""Atomic writes of files and folders: write under a temporary name beside the target, fsync, then rename.

A temporary file is `<final name>.partial` next to its final name, so a rename never crosses file systems
and a killed run leaves only temporaries (`is_temporary`) behind, which `clean_temporaries` removes. A file under
its final name is therefore always complete: either the previous version or the new one, never a truncated mix.
A folder is staged as `.<name>.partial-<pid>` beside its target and swapped in whole (`atomic_folder`).

Fenced writes. Where several processes may write into one folder (a slide's output folder shared through a
claim file), the writer runs inside `fenced(Fence(tag, check))`: every temporary name then carries the
writer's tag (`mask.tif.<tag>.partial`, `scratch_path`'s `mask.raw.<tag>.tmp`), so two writers never share
a file, and `check()` runs right before each step that changes what others see (a rename into place, a folder
swap, the removal of temporaries), raising (e.g. `ClaimLost`) when the writer may no longer write there. The
fence is a context variable: it follows the code that sets it, and the threads started through
`contextvars.copy_context()`.

Every file written in slidefuse (slide outputs, run logs, bundle manifests, TensorRT engines, training
checkpoints) goes through this module, which is also the one place that names temporaries.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".partial"  # suffix of files being written; never a final name
SCRATCH_SUFFIX = ".tmp"  # suffix of scratch files read back before the outputs (the raw mask); never final


@dataclass(frozen=True)
class Fence:
    """Who writes, and whether it still may: set around a writer's work with `fenced`."""

    tag: str  # the writer's id in temporary names: letters, digits, '-' (unique per writer, e.g. per claim)
    check: Callable[[], None]  # raises when the writer may no longer write (e.g. ClaimLost); else returns

    def __post_init__(self) -> None:
        if not self.tag or not all(c.isalnum() or c == "-" for c in self.tag):
            raise ValueError(f"fence tag {self.tag!r}: use letters, digits and '-' only")


_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("slidefuse_fence", default=None)


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Write under `fence` for the block (None: unfenced, as outside any block)."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


def current_fence() -> Fence | None:
    """The fence in force here (None outside `fenced`)."""
    return _FENCE.get()


def check_fence() -> None:
    """Raise when the fence in force says this writer may no longer write (nothing when unfenced)."""
    fence = _FENCE.get()
    if fence is not None:
        fence.check()


def _tagged(name: str) -> str:
    fence = _FENCE.get()
    return f"{name}.{fence.tag}" if fence is not None else name


def temporary_path(final: Path) -> Path:
    """The temporary name under which `final` is written: same folder, `.partial` appended (after the
    fence's tag when fenced: `<name>.<tag>.partial`)."""
    final = Path(final)
    return final.with_name(_tagged(final.name) + TMP_SUFFIX)


def scratch_path(folder: Path, stem: str) -> Path:
    """A scratch file `folder/<stem>.tmp` (`<stem>.<tag>.tmp` when fenced), e.g. the stitcher's raw mask:
    written and read back by one writer, removed by it, and by `clean_temporaries` when a run left it."""
    return Path(folder) / (_tagged(stem) + SCRATCH_SUFFIX)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (so a rename after it cannot expose an empty file after a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, unlinks) to disk; a no-op where the OS cannot open folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `final` to; on success rename it to `final`, on error remove it.

    The caller writes the complete file to the yielded path (with any writer: PIL, pyvips, open()).
    With `durable`, the data is fsynced before the rename and the folder after it.
    """
    final = Path(final)
    tmp = temporary_path(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        check_fence()  # first: a writer that lost its place must not blame a file someone else removed
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: the writer did not create the file")
        if durable:
            fsync_file(tmp)
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(final: Path, data: bytes) -> Path:
    """Write `data` to `final` atomically; returns `final`."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text_atomic(final: Path, text: str) -> Path:
    """Write UTF-8 `text` to `final` atomically; returns `final`."""
    return write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (with a trailing newline) to `final` atomically; returns `final`."""
    return write_text_atomic(final, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_folder(final: Path, *, before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; on success it replaces `final` whole, on error it goes.

    The staging folder is `.<name>.partial-<pid>` (`-<tag>` when fenced) in `final`'s parent. `before_swap`,
    when given, runs after the caller's block and before the swap (e.g. to check again that `final` may be
    replaced), and so does the fence's check; an error either raises removes the staging folder and leaves
    `final` as it was. An existing `final` is renamed aside,
    the staging folder renamed to `final`, and the old one deleted; the parent folder is fsynced after.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fence = _FENCE.get()
    stage = final.parent / f".{final.name}{TMP_SUFFIX}-{fence.tag if fence is not None else os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
        if before_swap is not None:
            before_swap()
        check_fence()
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def is_temporary(name: str | os.PathLike[str]) -> bool:
    """Whether `name` (a file or folder name, or a path: its last part), in an output folder, is a temporary that
    a complete write never leaves: a file being written (`<name>.partial`, `<name>.<tag>.partial`), a folder being
    staged (`.<name>.partial-<id>`), one set aside by `atomic_folder` (`.<name>.old-<id>`) or a scratch file
    (`*.tmp`, e.g. the stitcher's raw mask `mask.raw[.<tag>].tmp`)."""
    base = Path(name).name
    return TMP_SUFFIX in base or base.endswith(SCRATCH_SUFFIX) or (base.startswith(".") and ".old-" in base)


def stale_temporaries(folder: Path, *, keep: Iterable[Path] = ()) -> list[Path]:
    """The temporaries (`is_temporary`) directly inside `folder`, files and folders, except those in `keep` (a
    live writer's own); none when `folder` does not exist. Only the process that holds the folder (its slide's
    claim) may treat them as stale: any other writer there was killed, or has lost the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    return sorted(p for p in folder.iterdir() if is_temporary(p.name) and p.resolve() not in kept)


find_temporaries = stale_temporaries  # its former name


def clean_temporaries(folder: Path, *, keep: Iterable[Path] = ()) -> list[Path]:
    """Remove what interrupted writes left directly inside `folder` (`stale_temporaries`, folders included: a
    killed run, or a writer that lost its place); returns what was removed. Kept: the paths in `keep` and, when
    fenced, this writer's own (its tag in the name). Fenced, the fence is checked first: only the folder's
    current writer cleans. Call it only while holding the folder (its slide's claim)."""
    check_fence()
    fence = _FENCE.get()
    removed = []
    for p in stale_temporaries(folder, keep=keep):
        if fence is not None and (f".{fence.tag}." in p.name or p.name.endswith(f"-{fence.tag}")):
            continue  # this writer's own file or staged folder
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            continue
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
        fsync_dir(Path(folder))
    return removed
