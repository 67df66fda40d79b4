"""Writing model bundles atomically: a staging folder beside the target, renamed into place at the end.

A failed export (parity miss, exporter crash, Ctrl-C) removes its staging folder, so no half-made bundle is
ever left under the target name. An existing bundle is replaced only with `force=True`, and a folder that is
not a bundle is never deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from slidefuse.atomic import atomic_folder
from slidefuse.errors import UsageError
from slidefuse.paths import check_out_path
from slidefuse.runtime.bundle import MANIFEST, ClassInfo, sha256_file
from slidefuse.runtime.palette import BACKGROUND_COLOR, PALETTE, default_colors  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def parse_color(text: str) -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb' or 'r:g:b' (0..255) -> (r, g, b)."""
    s = text.strip()
    try:
        if ":" in s:
            parts = tuple(int(p) for p in s.split(":"))
            if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
                raise ValueError
            return parts[0], parts[1], parts[2]
        h = s.lstrip("#")
        if len(h) != 6:
            raise ValueError
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    except ValueError:
        raise UsageError(f"colour {text!r}: expected '#rrggbb' or 'r:g:b' with values 0..255") from None


def make_classes(names: Sequence[str], colors: Sequence[tuple[int, int, int]] | None) -> tuple[ClassInfo, ...]:
    """Validate class names (non-empty, unique) and pair them with colours (default_colors when None)."""
    names = [n.strip() for n in names]
    if len(names) < 2:
        raise UsageError(f"classes {','.join(names)!r}: expected at least two (background first), "
                         "e.g. classes=background,tumour", field="classes")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UsageError(f"classes {','.join(names)!r}: expected unique, non-empty names")
    cols = tuple(colors) if colors is not None else default_colors(len(names))
    if len(cols) != len(names):
        raise UsageError(f"{len(cols)} colours for {len(names)} classes: give one colour per class, in order")
    return tuple(ClassInfo(n, (int(c[0]), int(c[1]), int(c[2]))) for n, c in zip(names, cols, strict=True))


def checkpoint_provenance(path: Path | None) -> dict[str, Any] | None:
    """{'file': name, 'sha256': ..., 'bytes': ...} of a checkpoint the user named, or None."""
    if path is None:
        return None
    return {"file": Path(path).name, "sha256": sha256_file(Path(path)), "bytes": Path(path).stat().st_size}


def tool_versions() -> dict[str, str]:
    """Versions of the packages that made a bundle (those installed)."""
    out: dict[str, str] = {}
    for dist in ("slidefuse", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "onnxslim", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "slidefuse" not in out:
        from slidefuse import __version__

        out["slidefuse"] = __version__
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


FILE_MODE, FOLDER_MODE = 0o644, 0o755  # a bundle is readable by every user that runs it


def check_target(out: Path, force: bool) -> None:
    """Refuse the package's own data folder and a folder inside a bundle (`paths.check_out_path`), an existing
    target unless `force`, and a non-empty folder that is not a bundle even with `force`."""
    check_out_path(out, replacing_bundle=True)
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"out={out}: exists and is not a folder; choose another path", field="out")
    is_bundle = (out / MANIFEST).exists()
    empty = not any(out.iterdir())
    if not force and not empty:
        raise UsageError(f"out={out}: a {'bundle' if is_bundle else 'folder'} already exists there; "
                         "pass force=True to replace it or choose another path", field="out")
    if force and not is_bundle and not empty:
        raise UsageError(f"out={out}: is a non-empty folder without {MANIFEST}, not a bundle; "
                         "refusing to replace it even with force=True: choose another path", field="out")


def publish_modes(folder: Path) -> None:
    """Give `folder`, its sub-folders and files the modes of a published bundle (0755 / 0644): temporary
    files and folders are created private (0600 / 0700), which would lock other users out of the bundle."""
    os.chmod(folder, FOLDER_MODE)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, FOLDER_MODE if p.is_dir() else FILE_MODE)


@contextlib.contextmanager
def staging_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty sibling folder of `out`; on success rename it to `out`, on any error delete it.

    The caller writes every file (and the manifest) into the yielded folder.
    """
    out = Path(out)
    check_target(out, force)
    # check again before the swap: something may have appeared meanwhile
    def before_swap() -> None:
        check_target(out, force)
        publish_modes(stage)

    with atomic_folder(out, before_swap=before_swap) as stage:
        yield stage
    log.info("bundle written to %s", out)
