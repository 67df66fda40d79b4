"""The schema of a bundle's `manifest.json`: types, ranges and file names, checked before a manifest is used.

`check_manifest(data)` returns every problem as one line (`field.path: what is wrong`), so a bad manifest is
refused with all of its problems at once and before any slide is opened. The model below is the one
definition of the schema; `docs/manifest.schema.json` is generated from it (`json_schema()`), and a test keeps
the two equal.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slidefuse.runtime.coords import PLAUSIBLE_MPP

FORMAT_VERSION = 2  # the manifest format this release writes
READABLE_VERSIONS = (2,)  # the manifest formats this release reads
MAX_CLASSES = 256  # masks are uint8 class indices
SHA256 = r"^[0-9a-f]{64}$"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+@=-]*$")  # one path component: no '..', no hidden names


def is_plain_name(rel: str) -> bool:
    """Whether `rel` is a relative POSIX path of plain components inside a bundle (`model.onnx`,
    `engines/x.engine`): not absolute, no `..` or `.`, no backslash, no empty or hidden component."""
    return bool(rel) and len(rel) <= 255 and all(_PART.match(part) for part in rel.split("/"))


def _plain_name(v: str | None) -> str | None:
    if v is not None and not is_plain_name(v):
        raise ValueError(f"{v!r} is not a plain file name inside the bundle (no absolute path, '..' or hidden "
                         "component)")
    return v


Byte = Annotated[int, Field(ge=0, le=255)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ClassEntry(_Strict):
    name: Name  # class name; index 0 is background
    color: tuple[Byte, Byte, Byte]  # RGB 0..255


class EngineEntry(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    file: str  # engine file inside the bundle

    _check_file = field_validator("file")(_plain_name)


class ManifestSchema(_Strict):
    """Every field of `runtime.bundle.Manifest`, plus `integrity` (the manifest's own digest)."""

    encoder: Name
    patch_size: int = Field(ge=1, le=64)
    tile_size: int = Field(ge=8, le=8192)
    mpp: float = Field(ge=PLAUSIBLE_MPP[0], le=PLAUSIBLE_MPP[1], allow_inf_nan=False)
    classes: list[ClassEntry] = Field(min_length=2, max_length=MAX_CLASSES)
    mean: tuple[Unit, Unit, Unit]
    std: tuple[Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)], ...] = Field(min_length=3,
                                                                                           max_length=3)
    model_file: str | None = "model.onnx"  # None: a torch-only bundle
    fp16_model_file: str | None = None
    int8_model_file: str | None = None
    torch_weights: str | None = "model.safetensors"
    decoder_width: int = Field(default=256, ge=0, le=65536)
    input_name: Name = "tiles"
    output_name: Name = "probabilities"
    opset: int = Field(default=17, ge=7, le=40)
    overlap: int = Field(default=64, ge=0, le=4096)
    random_weights: bool = False
    demo: bool = False
    geometry: Literal["aligned", "paper"] | None = None
    color_transform: Literal["none", "icc-to-srgb"] = "none"
    weights: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)
    engines: list[EngineEntry] = Field(default_factory=list)
    tools: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    files: dict[str, Annotated[str, Field(pattern=SHA256)]] = Field(min_length=1)
    format_version: Literal[2]
    integrity: Annotated[str, Field(pattern=SHA256)]

    _check_names = field_validator("model_file", "fp16_model_file", "int8_model_file", "torch_weights")(_plain_name)

    @field_validator("files")
    @classmethod
    def _files_plain(cls, v: dict[str, str]) -> dict[str, str]:
        for rel in v:
            _plain_name(rel)
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[ClassEntry]) -> list[ClassEntry]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ManifestSchema:
        if self.tile_size < self.patch_size:
            raise ValueError(f"tile_size {self.tile_size} is smaller than patch_size {self.patch_size}")
        for ref in (self.model_file, self.fp16_model_file, self.int8_model_file):
            if ref is not None and ref not in self.files:
                raise ValueError(f"{ref!r} is named as a graph but not listed in files")
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    """A field's location as `classes.0.color`; keys that are not plain names are quoted (one line)."""
    return ".".join(str(p) if isinstance(p, int) or p.isidentifier() else repr(p) for p in loc) or "manifest"


def _describe(err: Any) -> str:
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of this manifest format)"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    value = err.get("input")
    quiet = ("missing", "extra_forbidden", "value_error")
    shown = "" if err.get("type") in quiet or isinstance(value, dict | list) else (
        f" (got {value!r:.60})")
    return f"{_where(tuple(err.get('loc', ())))}: {msg}{shown}"


def check_manifest(data: Any) -> list[str]:
    """Problems of a parsed manifest.json as one line each; [] when it is valid.

    An unknown `format_version` is reported alone (the rest of the manifest may follow another format).
    """
    if not isinstance(data, dict):
        return [f"manifest: expected a JSON object, got {type(data).__name__}"]
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        return [f"format_version: {version!r} is not a manifest format this slidefuse reads "
                f"({', '.join(map(str, READABLE_VERSIONS))})"]
    try:  # JSON mode: arrays are accepted as tuples, nothing else is coerced (strict)
        ManifestSchema.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        return [_describe(e) for e in exc.errors(include_url=False)]
    return []


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of manifest.json, as shipped in docs/manifest.schema.json."""
    schema = ManifestSchema.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "slidefuse model bundle manifest"
    schema["description"] = (f"manifest.json of a slidefuse model bundle, format_version {FORMAT_VERSION}. "
                             "Generated from slidefuse.runtime.manifest_schema.")
    return schema


if __name__ == "__main__":  # python -m slidefuse.runtime.manifest_schema > docs/manifest.schema.json
    print(json.dumps(json_schema(), indent=2))
