"""Feature files, written row chunk by row chunk: `features.h5` in TRIDENT's layout and `features.zarr`.

features.h5 (as TRIDENT's `save_h5` / `coords_to_h5` write it, so TRIDENT's and CLAM's readers load it):
  features  float32 [N, D] (float16 with fp16 storage), resizable along N; attrs `name` (slide),
            `savetodir` (the slide's output folder), `encoder` (registry id), plus slidefuse's: `embedding_rule`,
            `bundle_digest`, `slidefuse_version`
  coords    int64 [N, 2]: level-0 (x, y) of each tile's top-left corner, resizable along N; attrs
            `patch_size` (px at the target pixel size), `patch_size_level0`, `level0_magnification`,
            `target_magnification`, `overlap` (px at the target pixel size), `name`, `savetodir`, `level0_width`,
            `level0_height`, plus slidefuse's: `mpp` (target um/px), `level0_mpp`, `stride`
    qc_flags  uint8 [N] (slidefuse's; TRIDENT's and CLAM's readers ignore it): each tile's quality-control flags,
            bit i set when QC's `bit_names[i]` (attr; ink, folds, blur) map covers a tenth of the tile or more
            (`runtime.embed.qc`). The features attrs add `qc_mode`, `qc_excluded_tiles` (tiles QC left out),
            `qc_found`, `qc_stain` (the estimate), `qc_model_stain` and `qc_stain_mismatch`
file attrs: `slidefuse_key` (the skip key, JSON) and `complete` (True once every row is in)
features.zarr holds the same three arrays and attributes (zarr v3 group).

Rows are buffered (`CHUNK_ROWS`) and appended; a whole slide's features are never held in memory. The file is
written under a temporary name beside its final one and renamed into place once complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slidefuse.atomic import fsync_dir, fsync_file, temporary_path

log = logging.getLogger(__name__)

H5_NAME = "features.h5"
ZARR_NAME = "features.zarr"
FILE_NAMES = {"h5": H5_NAME, "zarr": ZARR_NAME}
KEY_ATTR = "slidefuse_key"
CHUNK_ROWS = 1024  # rows buffered before they are appended to the feature file (and the datasets' chunk rows)


@dataclass(frozen=True)
class FeatureAttrs:
    """The attributes of a feature file (see the module docstring)."""

    features: dict[str, Any]
    coords: dict[str, Any]
    key: dict[str, Any]  # the skip key
    qc_flags: dict[str, Any]  # of the qc_flags dataset


class FeatureStore(Protocol):
    """One format's writer: rows appended in order, then `finish()` (renamed into place) or `abort()`."""

    def append(self, features: np.ndarray, coords: np.ndarray, qc_flags: np.ndarray) -> None: ...

    def finish(self) -> Path: ...

    def abort(self) -> None: ...


class H5Store:
    """features.h5 under a temporary name; resizable, chunked datasets."""

    def __init__(self, final: Path, dim: int, dtype: np.dtype[Any], attrs: FeatureAttrs, chunk_rows: int) -> None:
        import h5py

        self.final, self.tmp = final, temporary_path(final)
        self._f = h5py.File(self.tmp, "w")
        rows = max(1, min(chunk_rows, 4096))
        self._feat = self._f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                                            chunks=(rows, dim))
        self._coords = self._f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64,
                                              chunks=(rows, 2))
        self._flags = self._f.create_dataset("qc_flags", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                             chunks=(rows,))
        _set_attrs(self._feat.attrs, attrs.features)
        _set_attrs(self._coords.attrs, attrs.coords)
        _set_attrs(self._flags.attrs, attrs.qc_flags)
        self._f.attrs[KEY_ATTR] = json.dumps(attrs.key, sort_keys=True)
        self._f.attrs["complete"] = False

    def append(self, features: np.ndarray, coords: np.ndarray, qc_flags: np.ndarray) -> None:
        n0, n = self._feat.shape[0], len(features)
        for ds in (self._feat, self._coords, self._flags):
            ds.resize(n0 + n, axis=0)
        self._feat[n0:] = features
        self._coords[n0:] = coords
        self._flags[n0:] = qc_flags

    def finish(self) -> Path:
        self._f.attrs["complete"] = True
        self._f.close()
        fsync_file(self.tmp)
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class ZarrStore:
    """features.zarr (a zarr v3 group) under a temporary name; arrays appended along N."""

    def __init__(self, final: Path, dim: int, dtype: np.dtype[Any], attrs: FeatureAttrs, chunk_rows: int) -> None:
        import zarr

        self.final, self.tmp = final, temporary_path(final)
        self._g = zarr.open_group(str(self.tmp), mode="w")
        rows = max(1, min(chunk_rows, 4096))
        self._feat = self._g.create_array("features", shape=(0, dim), dtype=dtype, chunks=(rows, dim))
        self._coords = self._g.create_array("coords", shape=(0, 2), dtype=np.int64, chunks=(rows, 2))
        self._feat.attrs.update(_jsonable(attrs.features))
        self._coords.attrs.update(_jsonable(attrs.coords))
        self._flags = self._g.create_array("qc_flags", shape=(0,), dtype=np.uint8, chunks=(rows,))
        self._flags.attrs.update(_jsonable(attrs.qc_flags))
        self._g.attrs.update({KEY_ATTR: json.dumps(attrs.key, sort_keys=True), "complete": False})

    def append(self, features: np.ndarray, coords: np.ndarray, qc_flags: np.ndarray) -> None:
        self._feat.append(features, axis=0)
        self._coords.append(coords, axis=0)
        self._flags.append(qc_flags, axis=0)

    def finish(self) -> Path:
        self._g.attrs["complete"] = True
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def require_formats(formats: tuple[str, ...] | list[str]) -> None:
    """Import the libraries of `formats` now, before any slide is opened: h5py must load its HDF5 library
    before libvips does (libvips may link another HDF5 version, whose symbols would then serve h5py). A
    missing library raises MissingExtra naming the extra to install."""
    from slidefuse.errors import MissingExtra

    for fmt in formats:
        name = "h5py" if fmt == "h5" else "zarr"
        try:
            __import__(name)
        except ImportError as exc:
            raise MissingExtra(name, "embed" if fmt == "h5" else "zarr", f"features.{fmt}") from exc
        except ValueError as exc:  # h5py's import itself fails once libvips' HDF5 serves it
            _h5py_unusable(exc)
        if fmt == "h5":
            _probe_h5py()


def _probe_h5py() -> None:
    """Raise SlidefuseError when h5py cannot write in this process: libvips loaded its own HDF5 library before
    h5py was imported, and h5py's calls reach it."""
    import uuid

    import h5py

    try:
        with h5py.File(f"probe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False) as f:
            f.create_dataset("x", data=np.zeros(1, dtype=np.float32))
    except ValueError as exc:
        _h5py_unusable(exc)


def _h5py_unusable(exc: Exception) -> None:
    from slidefuse.errors import SlidefuseError

    raise SlidefuseError(
        f"h5py cannot write features.h5 in this process ({exc}): the slide reader (libvips) loaded another HDF5 "
        "library first; import slidefuse.runtime.embed (or h5py) before opening any slide, or write "
        "formats=('zarr',)") from exc


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items() if v is not None}


def _set_attrs(target: Any, values: dict[str, Any]) -> None:
    for k, v in values.items():
        if v is not None:  # h5py stores no None: an attribute without a value is left out
            target[k] = v


def open_store(fmt: str, out_dir: Path, dim: int, dtype: np.dtype[Any], attrs: FeatureAttrs,
               chunk_rows: int) -> FeatureStore:
    """The writer of format `fmt` ("h5" or "zarr") for OUT/<slide>/features.<fmt>."""
    cls = H5Store if fmt == "h5" else ZarrStore
    return cls(out_dir / FILE_NAMES[fmt], dim, dtype, attrs, chunk_rows)


def read_key(path: Path) -> dict[str, Any] | None:
    """The skip key of a complete feature file (h5 or zarr); None when absent, incomplete or unreadable."""
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if not bool(f.attrs.get("complete", False)):
                    return None
                text = f.attrs.get(KEY_ATTR)
        else:
            import zarr

            g = zarr.open_group(str(path), mode="r")
            if not bool(g.attrs.get("complete", False)):
                return None
            text = g.attrs.get(KEY_ATTR)
        key = json.loads(str(text)) if text is not None else None
        return key if isinstance(key, dict) else None
    except (OSError, ValueError, KeyError) as exc:
        log.info("%s: not a complete feature file (%s); it is redone", path, exc)
        return None
