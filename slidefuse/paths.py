"""Where slidefuse may write: one check, shared by every command that takes `--out` (segment, export, quantize,
triton), that an output folder is neither inside a model bundle nor inside the package's own data folder."""

from __future__ import annotations

from pathlib import Path

from slidefuse.errors import UsageError

PACKAGE_DATA = Path(__file__).resolve().parent / "data"  # the installed package's own data (demo bundle)


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: the absolute path is the best name there is
        return Path(path).absolute()


def enclosing_bundle(path: Path, *, itself: bool = True) -> Path | None:
    """The model bundle (a folder holding manifest.json) that `path` is inside (or is, with `itself`), or None."""
    from slidefuse.runtime.bundle import MANIFEST

    real = _resolved(path)
    for folder in ((real,) if itself else ()) + tuple(real.parents):
        if (folder / MANIFEST).is_file():
            return folder
    return None


def check_out_path(out: Path, *, replacing_bundle: bool = False, field: str = "out") -> None:
    """Refuse an output folder inside the package's data folder (the shipped demonstration model) or inside a
    model bundle: writing there would change the bundle. `replacing_bundle`: `out` itself may be a bundle (an
    export that replaces it); only a bundle around it is refused."""
    real = _resolved(out)
    if real == PACKAGE_DATA or PACKAGE_DATA in real.parents:
        raise UsageError(f"{field}={out}: is inside slidefuse's own data folder ({PACKAGE_DATA}), which holds the "
                         "shipped demonstration model; choose another path", field=field)
    bundle = enclosing_bundle(out, itself=not replacing_bundle)
    if bundle is not None:
        raise UsageError(f"{field}={out}: is inside the model bundle {bundle}; writing there would change the "
                         "bundle: choose a folder outside it", field=field)
