"""Model bundles: a folder with `manifest.json`, `model.onnx` and friends, checked as one unit.

The manifest lists the sha256 of every file in the bundle and, in `integrity`, the sha256 of its own canonical
content (every field but `integrity`; see `manifest_digest`). `load_bundle` refuses a manifest that breaks its
schema (`manifest_schema`), that names a file outside the bundle, or whose content differs from its integrity
record (an edited field: `random_weights`, `demo`, the classes, a file name, ...), and then verifies every
file's sha256. The integrity record is therefore the bundle's identity (`Bundle.digest`): it covers the
manifest and, through the hashes it lists, every file. This module needs no torch: the export side writes
manifests with `write_manifest`. `Manifest` and `ClassInfo` (defined, with their fields' constraints, in
`manifest_schema`) are imported from here.

The manifest's JSON is parsed strictly: at most `MAX_MANIFEST_BYTES`, nested at most `MAX_DEPTH` deep (checked on
the raw text, before parsing), and no key twice in one object (two parsers could read two different manifests
with the same digest). The `signatures/` folder holds signatures over the digest (`slidefuse.runtime.signing`) and
is not covered by it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefuse.atomic import TMP_SUFFIX, write_text_atomic
from slidefuse.errors import BundleError, BundleNotFound, IntegrityError, one_line
from slidefuse.runtime.manifest_schema import FORMAT_VERSION, INTEGRITY, Manifest, check_manifest
from slidefuse.runtime.manifest_schema import ClassInfo as ClassInfo  # re-exported: imported from here

MANIFEST = "manifest.json"
SIGNATURES = "signatures"  # folder of signatures over the digest: not hashed, not part of the digest
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few kB; 4 MB is far beyond any real one
MAX_DEPTH = 64  # deepest nesting of JSON arrays and objects in a manifest (a real one nests 4 deep)


@dataclass(frozen=True)
class SignatureState:
    """What a bundle's signatures say (`slidefuse.runtime.signing.check_signatures`): the best one found (valid
    and trusted first), or none."""

    key_id: str | None  # the signer's key id; None: the bundle is unsigned
    valid: bool  # the signature verifies over the bundle's current digest
    trusted: bool  # the signer's key is in the trust set

    @property
    def ok(self) -> bool:
        return self.key_id is not None and self.valid and self.trusted

    def record(self) -> str | dict[str, Any]:
        """report.json's `bundle.signature`: "unsigned", or {"key_id", "trusted", "valid"}."""
        if self.key_id is None:
            return "unsigned"
        return {"key_id": self.key_id, "trusted": self.trusted, "valid": self.valid}

    def problem(self) -> str:
        """Why this state is not a valid signature by a trusted key (for a warning or an error)."""
        if self.key_id is None:
            return "not signed: nothing shows who made it, or that it is unchanged since"
        if not self.valid:
            return f"its signature (key {self.key_id}) does not verify: the bundle changed after it was signed"
        return f"signed by key {self.key_id}, which is not trusted here"

    def describe(self) -> str:
        if self.key_id is None:
            return "unsigned"
        validity = "valid" if self.valid else "INVALID (the bundle changed after it was signed)"
        return f"key {self.key_id}: {validity}, {'trusted' if self.trusted else 'not trusted'}"


UNSIGNED = SignatureState(key_id=None, valid=False, trusted=False)


@dataclass(frozen=True)
class Bundle:
    path: Path  # bundle folder
    manifest: Manifest
    digest: str  # the manifest's integrity record (covers every field and file): identifies the bundle
    signature: SignatureState | None = None  # its signatures, once checked against a trust set (load_model)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def model_path(self) -> Path:
        if self.manifest.model_file is None:
            raise BundleError(f"{self.path}: a torch-only bundle (no ONNX graph); run it with backend=torch, "
                              "or export it with 'slidefuse export' for the other backends")
        return self.path / self.manifest.model_file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` except the manifest and the signatures, keyed by POSIX
    relative path."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel.split("/")[0] == SIGNATURES or p.name == MANIFEST or p.name.endswith((".tmp", TMP_SUFFIX)):
            continue
        if p.is_file():
            out[rel] = sha256_file(p)
    return out


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (keys sorted, no whitespace) without its `integrity` field."""
    body = {k: v for k, v in data.items() if k != INTEGRITY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Hash every file in `folder`, store the hashes and the integrity record in the manifest (at the current
    format version) and write it atomically."""
    manifest = dataclasses.replace(manifest, files=hash_files(folder), format_version=FORMAT_VERSION)
    data = manifest.to_dict()
    data[INTEGRITY] = manifest_digest(data)
    write_text_atomic(folder / MANIFEST, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return manifest


def upgrade_manifest(folder: Path) -> Manifest:
    """Re-seal an intact format-1 bundle (no integrity record) at the current format: every file listed must
    match its sha256 first. Returns the new manifest; a bundle already at the current format is left as is."""
    folder = Path(folder)
    data = _load_json(folder / MANIFEST)
    if isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION:
        return read_manifest(folder)
    if not isinstance(data, dict) or data.get("format_version") != 1:
        raise BundleError(f"{folder / MANIFEST}: not a format-1 manifest; nothing to upgrade")
    old = Manifest.from_dict(data)
    verify_files(folder, old)
    return write_manifest(folder, old)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not count); stops
    counting past MAX_DEPTH."""
    depth = deepest = 0
    for m in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', text):
        c = m[0]
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        elif c in "]}":
            depth -= 1
    return deepest


def _load_json(mpath: Path) -> Any:
    """manifest.json parsed strictly: bounded size and depth, no duplicate keys (one line each)."""
    fix = "re-export the bundle with 'slidefuse export'"
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: larger than {MAX_MANIFEST_BYTES // 2**20} MB, not a manifest; {fix}")
        text = raw.decode("utf-8")
        if _depth(text) > MAX_DEPTH:
            raise BundleError(f"{mpath}: nested more than {MAX_DEPTH} deep, not a manifest; {fix}")
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except BundleError:
        raise
    except _DuplicateKey as exc:
        raise BundleError(f"{mpath}: the key {str(exc.args[0])[:80]!r} appears twice in one object, so "
                          f"readers could disagree on its value; {fix}") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest ({one_line(exc, max_chars=200)}); {fix}") from exc


def _checked(mpath: Path, data: Any) -> tuple[Manifest, str]:
    """(the manifest in `data`, its integrity digest) after its schema and integrity record are checked."""
    problems = check_manifest(data)
    if problems:
        fix = ("re-export the bundle with 'slidefuse export'" if not (isinstance(data, dict)
               and data.get("format_version") == 1) else
               "it was made by an older slidefuse without an integrity record: re-export it with 'slidefuse export'")
        raise BundleError(f"{mpath}: invalid manifest: {'; '.join(problems)}; {fix}")
    if manifest_digest(data) != data[INTEGRITY]:
        raise IntegrityError(f"{mpath}: its content differs from its integrity record: a field was edited after "
                             "the bundle was made; re-export the bundle (or restore its manifest.json)")
    return Manifest.from_dict(data), str(data[INTEGRITY])


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a bundle folder (or a manifest.json path), refused unless it passes its schema and
    matches its integrity record. Does not hash the bundle's files (see `verify_files`)."""
    return _read_sealed(Path(folder))[0]


def _read_sealed(folder: Path) -> tuple[Manifest, str]:
    if not folder.exists():
        raise BundleNotFound(f"{folder}: no such model bundle; make one with 'slidefuse export' or check the path")
    mpath = folder / MANIFEST if folder.is_dir() else folder
    if folder.is_dir() and not mpath.exists():
        raise BundleNotFound(
            f"{folder}: not a model bundle (no {MANIFEST}); pass a folder made by 'slidefuse export'"
        )
    return _checked(mpath, _load_json(mpath))


def bundle_names(manifest: Manifest) -> list[str]:
    """Every file name the manifest refers to: listed files, graphs, torch weights and engines."""
    named = [manifest.model_file, manifest.fp16_model_file, manifest.int8_model_file, manifest.torch_weights]
    named += [str(e.get("file")) for e in manifest.engines]
    return [*manifest.files, *(n for n in named if n is not None)]


def check_paths(folder: Path, manifest: Manifest) -> Manifest:
    """Refuse a file reference that leaves the bundle (through a symlink too) or names an unlisted file.

    A `torch_weights` name that is not among the hashed files is dropped (the bundle has no torch weights),
    so nothing outside the hashes is ever loaded. Returns the manifest to use.
    """
    root = _resolve(folder)
    for rel in [MANIFEST, *bundle_names(manifest)]:
        target = _resolve(folder / rel)
        if target != root and root not in target.parents:
            raise IntegrityError(f"{folder / rel}: leads outside the bundle ({target}); a bundle's files must be "
                                 "inside its folder: re-export the bundle")
    unlisted = [e.get("file") for e in manifest.engines if e.get("file") not in manifest.files]
    if unlisted:
        raise IntegrityError(f"{folder / MANIFEST}: engine {unlisted[0]} is not among the hashed files; "
                             "rebuild it with 'slidefuse build'")
    if manifest.torch_weights is not None and manifest.torch_weights not in manifest.files:
        manifest = dataclasses.replace(manifest, torch_weights=None)
    return manifest


def _resolve(path: Path) -> Path:
    """`path` with its symlinks resolved; a symlink loop is an IntegrityError (one line)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: Python 3.11's "Symlink loop from ..."
        raise IntegrityError(f"{path}: a symlink loop ({one_line(exc, max_chars=120)}); a bundle's files must be "
                             "plain files: re-export the bundle or restore the file") from exc


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Raise IntegrityError when a file listed in the manifest is missing or its sha256 differs."""
    if not manifest.files:
        raise IntegrityError(f"{folder / MANIFEST}: lists no file hashes; re-export the bundle")
    for rel, expected in manifest.files.items():
        p = folder / rel
        if not p.is_file():
            raise IntegrityError(f"{p}: missing from the bundle; re-export it or restore the file")
        got = sha256_file(p)
        if got != expected:
            raise IntegrityError(
                f"{p}: sha256 {got[:12]}… differs from the manifest's {expected[:12]}…; "
                "the file was changed or corrupted: re-export the bundle"
            )


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) verify the sha256 of every file it lists."""
    folder = Path(path)
    if not folder.exists():
        raise BundleNotFound(f"{folder}: no such model bundle; make one with 'slidefuse export' or check the path")
    if not folder.is_dir():
        raise BundleError(f"{folder}: a bundle is a folder with {MANIFEST}; pass the folder")
    manifest, digest = _read_sealed(folder)
    manifest = check_paths(folder, manifest)
    if verify:
        verify_files(folder, manifest)
    return Bundle(path=folder, manifest=manifest, digest=digest)


def _parity_line(name: str, rep: dict[str, Any]) -> str:
    if not isinstance(rep, dict) or "max_abs_diff" not in rep:
        reason = rep.get("reason", "") if isinstance(rep, dict) else rep
        return f"parity     {name}: not measured ({reason})"
    th = rep.get("thresholds", {})
    limits = (f" (limits {th['max_abs_diff']:g} / {th['min_argmax_agreement']:g})"
              if {"max_abs_diff", "min_argmax_agreement"} <= set(th) else "")
    passed = rep.get("passed")
    verdict = ": passed" if passed is True else ": FAILED" if passed is False else ""
    if "min_cosine" in rep:  # an embedding bundle's gate
        return (f"parity     {name}: {rep.get('candidate', '?')} vs {rep.get('reference', '?')}: "
                f"smallest cosine {rep['min_cosine']:.6f}, max |de| {rep['max_abs_diff']:.3g} "
                f"on {rep.get('tiles', '?')} tiles{verdict}")
    return (f"parity     {name}: {rep.get('candidate', '?')} vs {rep.get('reference', '?')}: "
            f"max |dp| {rep['max_abs_diff']:.3g}, argmax agreement {rep['argmax_agreement']:.5f} "
            f"on {rep.get('tiles', '?')} tiles{limits}{verdict}")


def _engine_line(e: dict[str, Any]) -> str:
    b = e.get("batch") or {}
    batch = f"batch {b.get('min')}:{b.get('opt')}:{b.get('max')}" if b else ""
    return (f"engine     {e.get('file')}  {e.get('precision')}  {e.get('gpu')} (sm {e.get('compute_capability')}), "
            f"TensorRT {e.get('trt_version')}  {batch}").rstrip()


def _weights_line(m: Manifest) -> str:
    if m.random_weights:
        return "RANDOM (tests/benchmarks only)"
    parts = []
    for part in ("encoder", "decoder"):
        w = m.weights.get(part)
        if isinstance(w, dict):
            parts.append(f"{part} {w.get('file')} (sha256 {str(w.get('sha256', ''))[:12]})")
    return ", ".join(parts) or "n/a"


def model_card(bundle: Bundle, verified: bool = True) -> str:
    """A human-readable summary of a bundle: encoder, classes and colours, tile, mpp, parity, engines."""
    m = bundle.manifest
    lines = [
        f"bundle     {bundle.path}",
        f"integrity  manifest sealed (sha256 {bundle.digest[:12]}…), "
        f"{'all ' + str(len(m.files)) + ' files match their sha256' if verified else 'files not checked'}",
        f"encoder    {m.encoder} (patch {m.patch_size})",
        f"tile       {m.tile_size} px at {m.mpp:g} um/px, overlap {m.overlap} px",
        f"normalise  mean {tuple(round(x, 4) for x in m.mean)}, std {tuple(round(x, 4) for x in m.std)} (in graph)",
        f"weights    {_weights_line(m)}",
        "classes" if m.embedding is None else f"embedding  {m.embedding.rule}, {m.embedding.dim}-d (task 'embed')",
    ]
    for i, c in enumerate(m.classes):
        lines.append(f"  {i}: {c.name:<16} #{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}")
    extra = "".join(f", {g}" for g in (m.fp16_model_file, m.int8_model_file) if g)
    lines.append(f"graphs     {m.model_file}{extra}"
                 + f" (opset {m.opset}; input '{m.input_name}' uint8 [B,{m.tile_size},{m.tile_size},3], "
                 f"output '{m.output_name}' float32 [{','.join(['B', *map(str, m.output_shape(1)[1:])])}])")
    for k, v in m.parity.items():
        lines.append(_parity_line(k, v))
    if m.engines:
        lines.extend(_engine_line(e) for e in m.engines)
    else:
        lines.append("engines    none (build one with 'slidefuse build')")
    if m.tools:
        lines.append("made with  " + ", ".join(f"{k} {v}" for k, v in m.tools.items())
                     + (f" at {m.created}" if m.created else ""))
    if m.demo:
        lines.append("note       demonstration model: not for diagnostic use")
    return "\n".join(lines)
