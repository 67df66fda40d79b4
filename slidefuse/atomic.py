"""Atomic writes of files and folders: write under a temporary name beside the target, fsync, then rename.

A temporary file is `<final name>.partial` next to its final name, so a rename never crosses file systems
and a killed run leaves only temporaries (`is_temporary`) behind, which `clean_temporaries` removes. A file under
its final name is therefore always complete: either the previous version or the new one, never a truncated mix.
A folder is staged as `.<name>.partial-<pid>` beside its target and swapped in whole (`atomic_folder`).

Every file written in slidefuse (slide outputs, run logs, bundle manifests, TensorRT engines, training
checkpoints) goes through this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".partial"  # suffix of files being written; never a final name


def temporary_path(final: Path) -> Path:
    """The temporary name under which `final` is written: same folder, `.partial` appended."""
    final = Path(final)
    return final.with_name(final.name + TMP_SUFFIX)


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

    The staging folder is `.<name>.partial-<pid>` in `final`'s parent. `before_swap`, when given, runs after
    the caller's block and before the swap (e.g. to check again that `final` may be replaced); an error it
    raises removes the staging folder and leaves `final` as it was. An existing `final` is renamed aside,
    the staging folder renamed to `final`, and the old one deleted; the parent folder is fsynced after.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}{TMP_SUFFIX}-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
        if before_swap is not None:
            before_swap()
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


def is_temporary(name: str) -> bool:
    """Whether `name`, in an output folder, is a temporary that a complete write never leaves: a file being written
    (`<name>.partial`, also with an owner after `.partial`), a folder being staged (`.<name>.partial-<id>`), one set
    aside by `atomic_folder` (`.<name>.old-<id>`) or a scratch file (`*.tmp`, e.g. the stitcher's raw mask)."""
    return TMP_SUFFIX in name or name.endswith(".tmp") or (name.startswith(".") and ".old-" in name)


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
    """Remove what interrupted writes left directly inside `folder` (`stale_temporaries`, folders included),
    except `keep`; returns what was removed. Call it only while holding the folder (its slide's claim)."""
    removed = []
    for p in stale_temporaries(folder, keep=keep):
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
