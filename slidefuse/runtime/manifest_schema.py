"""The bundle manifest, defined once: the `Manifest` dataclass that code uses, with each field's type, default and
constraints (ranges, plain file names, allowed values) stated on the field itself.

The dataclasses stay plain frozen stdlib dataclasses: constructing one checks nothing, so the export side can
build a manifest step by step (`dataclasses.replace`). Pydantic reads the constraints from their annotations:
`check_manifest(data)` validates a parsed manifest.json against `Manifest` (strict, no unknown field) and returns
every problem as one line (`field.path: what is wrong (got value)`), so a bad manifest is refused with all of its
problems at once and before any slide is opened. `docs/manifest.schema.json` is generated from the same
dataclass (`json_schema()`), and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, GetPydanticSchema, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from slidefuse.runtime.coords import PLAUSIBLE_MPP

FORMAT_VERSION = 2  # the manifest format this release writes
READABLE_VERSIONS = (2,)  # the manifest formats this release reads
MAX_CLASSES = 256  # masks are uint8 class indices
STAINS = ("H&E", "H-DAB", "other")  # the stains a bundle may name (`Manifest.stain`)
SHA256 = r"^[0-9a-f]{64}$"
INTEGRITY = "integrity"  # the manifest.json key holding the seal: `bundle.manifest_digest` of the rest
GEOMETRIES = ("aligned", "paper")
COLOR_TRANSFORMS = ("none", "icc-to-srgb")
TASKS = ("segment", "embed")  # what a bundle's graph computes
EMBEDDING_RULES = ("cls", "cls+mean", "attn-pool")  # model.registry.EMBEDDING_RULES (this module imports no model)

_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*"  # one path component: no '..', no hidden names
_PART = re.compile(_COMPONENT)
# The same rule for a whole path, as the JSON Schema states it ((?!\n): Python's `$` also matches before a final
# newline, a JSON Schema validator written in Python would let one through)
_PLAIN_PATH = f"^{_COMPONENT}(/{_COMPONENT})*(?!\\n)$"


def is_plain_name(rel: str) -> bool:
    """Whether `rel` is a relative POSIX path of plain components inside a bundle (`model.onnx`,
    `engines/x.engine`): not absolute, no `..` or `.`, no backslash, no empty or hidden component."""
    return bool(rel) and len(rel) <= 255 and all(_PART.fullmatch(part) for part in rel.split("/"))


def _plain_name(v: str) -> str:
    if not is_plain_name(v):
        raise ValueError(f"{v!r} is not a plain file name inside the bundle (no absolute path, '..' or hidden "
                         "component)")
    return v


def _plain_keys(v: dict[str, str]) -> dict[str, str]:
    for rel in v:
        _plain_name(rel)
    return v


def _one_of(*values: object) -> GetPydanticSchema:
    """Validated (and described in the JSON Schema) as `Literal[values]`, while the dataclass field keeps the plain
    type its callers pass."""
    return GetPydanticSchema(lambda _tp, handler: handler(Literal[values]))


Byte = Annotated[int, Field(ge=0, le=255)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Spread = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
_FILE_NAME_SCHEMA: dict[str, Any] = {"pattern": _PLAIN_PATH, "maxLength": 255}  # what `is_plain_name` accepts
FileName = Annotated[str, AfterValidator(_plain_name), Field(json_schema_extra=_FILE_NAME_SCHEMA)]
Sha256 = Annotated[str, Field(pattern=SHA256)]

_STRICT = ConfigDict(strict=True, extra="forbid")


@with_config(ConfigDict(strict=True, extra="allow"))
class EngineFile(TypedDict):
    """The key every engine entry has; the rest of the entry (gpu, precision, versions, ...) is free."""

    file: FileName  # engine file inside the bundle


# An engine entry is a plain dict for the code, validated as an `EngineFile`.
Engine = Annotated[dict[str, Any], GetPydanticSchema(lambda _tp, handler: handler(EngineFile))]


@with_config(_STRICT)
@dataclass(frozen=True)
class ClassInfo:
    """One output class of a bundle."""

    name: Name  # class name as shown in QuPath and reports; index 0 is background
    color: tuple[Byte, Byte, Byte]  # RGB, 0..255


@with_config(_STRICT)
@dataclass(frozen=True)
class EmbeddingInfo:
    """What an embedding bundle's graph returns (task "embed")."""

    dim: Annotated[int, Field(ge=1, le=65536)]  # embedding width D: the graph returns float32 [B, D]
    rule: Annotated[str, _one_of(*EMBEDDING_RULES)]  # the encoder's patch embedding (see the encoder registry)
    source: Annotated[str, Field(max_length=2000)] = ""  # the model card or code that defines `rule`


def _unique_names(classes: tuple[ClassInfo, ...]) -> tuple[ClassInfo, ...]:
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return classes


@with_config(_STRICT)
@dataclass(frozen=True)
class Manifest:
    """What a bundle is: its model, classes, graphs, provenance and the sha256 of every file."""

    encoder: Name  # encoder registry id, e.g. "uni"
    patch_size: Annotated[int, Field(ge=1, le=64)]  # encoder patch size P in px
    tile_size: Annotated[int, Field(ge=8, le=8192)]  # model input tile side in px, at `mpp`
    # um/px the model expects
    mpp: Annotated[float, Field(ge=PLAUSIBLE_MPP[0], le=PLAUSIBLE_MPP[1], allow_inf_nan=False)]
    # output classes; index = class id in masks (at least 2 for task "segment"; none for task "embed")
    classes: Annotated[tuple[ClassInfo, ...], Field(max_length=MAX_CLASSES), AfterValidator(_unique_names)]
    mean: tuple[Unit, Unit, Unit]  # normalisation mean (0..1 scale), applied inside the graph
    std: tuple[Spread, Spread, Spread]  # normalisation std (0..1 scale), applied inside the graph
    # fused fp32 graph: uint8 [B,T,T,3] -> float32 probabilities [B,C,T,T]; None: a torch-only bundle (weights, no
    # graph; e.g. benchmarks/run_gpu.py's), run by the torch backends only
    model_file: FileName | None = "model.onnx"
    fp16_model_file: FileName | None = None  # optional fp16 graph with the same contract
    # optional INT8 (QDQ) graph with the same contract, made by `slidefuse quantize`; present only after its gate
    # passed, whose figures and thresholds are `parity["int8"]` and calibration record `export["int8"]`
    int8_model_file: FileName | None = None
    torch_weights: FileName | None = "model.safetensors"  # SegmentationModel state dict, for the torch backends
    # decoder width D (rebuilds the torch model with `num_classes`, `tile_size`)
    decoder_width: Annotated[int, Field(ge=0, le=65536)] = 256
    input_name: Name = "tiles"  # graph input name
    output_name: Name = "probabilities"  # graph output name
    opset: Annotated[int, Field(ge=7, le=40)] = 17  # ONNX opset of the graphs
    overlap: Annotated[int, Field(ge=0, le=4096)] = 64  # recommended tile overlap in px (at `mpp`)
    random_weights: bool = False  # True when the weights are random (tests/benchmarks only)
    demo: bool = False  # True for the bundled demonstration model
    # Tile geometry: "aligned" (tile_size a multiple of patch_size: tokens cover the tile) or "paper" (the paper's
    # 512 px tile with P = 14: a 36 x 36 grid over 504 px, output resized); derived from the tile when absent.
    geometry: Annotated[str, _one_of(*GEOMETRIES)] | None = None
    # What the model sees of a slide's embedded ICC profile: "none" (decoded values as stored, the default:
    # what most training pipelines saw) or "icc-to-srgb" (converted through the profile to sRGB).
    color_transform: Annotated[str, _one_of(*COLOR_TRANSFORMS)] = "none"
    # The stain the model was trained on: "H&E", "H-DAB" (haematoxylin and DAB immunohistochemistry) or "other"
    # (no stain check); a slide whose estimated stain differs gets a warning. Bundles made before the field: H&E.
    stain: Annotated[str, _one_of(*STAINS)] = "H&E"
    weights: dict[str, Any] = field(default_factory=dict)  # provenance: checkpoint names and sha256
    parity: dict[str, Any] = field(default_factory=dict)  # parity-gate figures (fp32 vs torch, fp16 vs fp32)
    export: dict[str, Any] = field(default_factory=dict)  # how the graphs were made: exporter, simplified, ...
    engines: tuple[Engine, ...] = ()  # TensorRT engines: file, gpu, compute capability, trt version, ...
    tools: dict[str, str] = field(default_factory=dict)  # versions of the tools that made the bundle
    created: str = ""  # ISO 8601 UTC time of export
    # relative path -> sha256 of every bundle file (empty until `write_manifest` hashes the folder)
    files: Annotated[dict[str, Sha256], Field(min_length=1, json_schema_extra={"propertyNames": _FILE_NAME_SCHEMA}),
                     AfterValidator(_plain_keys)] = field(default_factory=dict)
    format_version: Annotated[int, _one_of(FORMAT_VERSION)] = FORMAT_VERSION  # manifest schema version
    # "segment": the graph returns class probabilities [B, C, T, T]; "embed": embeddings [B, D] (`embedding`)
    task: Annotated[str, _one_of(*TASKS)] = "segment"
    embedding: EmbeddingInfo | None = None  # task "embed": the embedding's width and rule

    def __post_init__(self) -> None:
        if self.geometry is None:  # bundles made before the field: what the tile size implies
            object.__setattr__(self, "geometry", "aligned" if self.tile_size % self.patch_size == 0 else "paper")

    def output_shape(self, batch: int) -> tuple[int, ...]:
        """The graph's output shape for `batch` tiles: [B, C, T, T] (segment) or [B, D] (embed)."""
        if self.embedding is not None:
            return (batch, self.embedding.dim)
        return (batch, self.num_classes, self.tile_size, self.tile_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = [{"name": c.name, "color": list(c.color)} for c in self.classes]
        if self.embedding is None:  # a segmentation bundle's manifest.json is written as before these fields
            del d["task"], d["embedding"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["classes"] = tuple(ClassInfo(c["name"], tuple(c["color"])) for c in d["classes"])  # type: ignore[misc]
        kw["mean"] = tuple(d["mean"])
        kw["std"] = tuple(d["std"])
        kw["engines"] = tuple(d.get("engines", ()))
        if isinstance(d.get("embedding"), dict):
            kw["embedding"] = EmbeddingInfo(**d["embedding"])
        if kw.get("stain", "H&E") not in STAINS:
            raise ValueError(f"stain {kw['stain']!r} is not one of {', '.join(STAINS)}")
        if kw.get("color_transform", "none") not in COLOR_TRANSFORMS:
            raise ValueError(f"color_transform {kw['color_transform']!r} is not 'none' or 'icc-to-srgb'")
        return cls(**kw)


# What a sealed manifest.json must carry although `Manifest` has a default for it (a manifest being built has no
# file hashes yet) or no field at all (the seal itself, added by `bundle.write_manifest`).
SEALED = ("files", "format_version", INTEGRITY)

_MANIFEST = TypeAdapter(Manifest)
_SEAL = TypeAdapter(Sha256)


def _where(loc: tuple[int | str, ...]) -> str:
    """A field's location as `classes.0.color`; keys that are not plain names are quoted (one line)."""
    return ".".join(str(p) if isinstance(p, int) or p.isidentifier() else repr(p) for p in loc) or "manifest"


def _describe(err: Any, *prefix: str) -> str:
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") in ("extra_forbidden", "unexpected_keyword_argument"):
        msg = "unknown field (not part of this manifest format)"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    value = err.get("input")
    quiet = ("missing", "extra_forbidden", "unexpected_keyword_argument", "value_error")
    shown = "" if err.get("type") in quiet or isinstance(value, dict | list) else (
        f" (got {value!r:.60})")
    return f"{_where((*prefix, *err.get('loc', ())))}: {msg}{shown}"


def _field_problems(adapter: TypeAdapter[Any], value: Any, *prefix: str) -> tuple[Any, list[str]]:
    """(`value` validated in JSON mode: arrays are accepted as tuples, nothing else is coerced; each problem)."""
    try:
        return adapter.validate_json(json.dumps(value), strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        return None, [_describe(e, *prefix) for e in errors if not _follows_from_items(e, errors)]


def _follows_from_items(err: Any, errors: list[Any]) -> bool:
    """Whether `err` is a too-short array whose items have errors of their own (pydantic counts only the valid
    items, so the length error is a consequence, not a problem of its own)."""
    loc = tuple(err["loc"])
    return err["type"] == "too_short" and any(tuple(e["loc"])[:len(loc)] == loc and e is not err for e in errors)


def _consistency(m: Manifest) -> list[str]:
    """Problems between fields of an otherwise valid manifest."""
    problems = []
    if m.tile_size < m.patch_size:
        problems.append(f"manifest: tile_size {m.tile_size} is smaller than patch_size {m.patch_size}")
    if m.task == "segment" and len(m.classes) < 2:
        problems.append(f"classes: a segmentation bundle needs at least 2 classes (got {len(m.classes)})")
    if m.task == "embed" and (m.embedding is None or m.classes):
        problems.append("manifest: an embedding bundle (task 'embed') has an 'embedding' record and no classes")
    if m.task == "segment" and m.embedding is not None:
        problems.append("manifest: 'embedding' is set but task is 'segment'")
    for ref in (m.model_file, m.fp16_model_file, m.int8_model_file):
        if ref is not None and ref not in m.files:
            problems.append(f"manifest: {ref!r} is named as a graph but not listed in files")
    return problems


def check_manifest(data: Any) -> list[str]:
    """Problems of a parsed manifest.json as one line each; [] when it is valid.

    An unknown `format_version` is reported alone (the rest of the manifest may follow another format). The
    relations between fields (graphs listed in `files`, tile not smaller than a patch) are checked once every
    field is valid.
    """
    if not isinstance(data, dict):
        return [f"manifest: expected a JSON object, got {type(data).__name__}"]
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        return [f"format_version: {version!r} is not a manifest format this slidefuse reads "
                f"({', '.join(map(str, READABLE_VERSIONS))})"]
    manifest, problems = _field_problems(_MANIFEST, {k: v for k, v in data.items() if k != INTEGRITY})
    problems += [f"{name}: required field is missing" for name in SEALED if name not in data]
    if INTEGRITY in data:
        problems += _field_problems(_SEAL, data[INTEGRITY], INTEGRITY)[1]
    return problems or _consistency(manifest)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of manifest.json, as shipped in docs/manifest.schema.json."""
    schema = _MANIFEST.json_schema()
    schema["properties"][INTEGRITY] = {**_SEAL.json_schema(), "title": "Integrity"}
    schema["required"] = [*schema["required"], *SEALED]
    # A segmentation bundle (task absent or "segment") has at least two classes; an embedding bundle its record
    schema["allOf"] = [{
        "if": {"properties": {"task": {"const": "embed"}}, "required": ["task"]},
        "then": {"required": ["embedding"], "properties": {"embedding": {"type": "object"}}},
        "else": {"properties": {"classes": {"minItems": 2}}},
    }]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "slidefuse model bundle manifest"
    schema["description"] = (f"manifest.json of a slidefuse model bundle, format_version {FORMAT_VERSION}. "
                             "Generated from slidefuse.runtime.manifest_schema.")
    return schema


if __name__ == "__main__":  # python -m slidefuse.runtime.manifest_schema > docs/manifest.schema.json
    print(json.dumps(json_schema(), indent=2))
