"""A Triton Inference Server model repository made from a bundle (no torch, no tritonclient needed).

Layout written under the repository folder (other models there are left alone):

    <repo>/<name>/config.pbtxt         platform "onnxruntime_onnx" (or backend "python", see below)
    <repo>/<name>/1/model.onnx         the bundle's fused graph: uint8 tiles [B, T, T, 3] -> float32 [B, C, T, T]
    <repo>/<name>/1/model.py           only for runtime "python": onnxruntime inside Triton's Python backend
    <repo>/<name>-trt/config.pbtxt     platform "tensorrt_plan", only when the bundle has an engine for this GPU
    <repo>/<name>-trt/1/model.plan     that engine (it runs only on this GPU model with the same TensorRT)

Each config has the batch axis as Triton's dynamic batch dimension (`max_batch_size`; dims exclude it), dynamic
batching, an instance group, and the bundle's manifest as model parameters (`slidefuse.manifest`, the JSON;
`slidefuse.bundle_digest`, the sha256 of manifest.json that clients compare with their bundle; and the few
fields a client needs without parsing it). Each model folder is written whole through `atomic_folder`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slidefuse.atomic import atomic_folder
from slidefuse.errors import BackendUnavailable, EngineMismatch, MissingExtra, UsageError
from slidefuse.numbers import is_integer
from slidefuse.paths import check_out_path
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")  # copied as model.py for runtime "python"
TRT_SUFFIX = "-trt"  # name of the TensorRT plan model: <name>-trt
DIGEST_KEY = "slidefuse.bundle_digest"  # model parameter: sha256 of the bundle's manifest.json
Runtime = Literal["onnxruntime", "python"]
Kind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class TritonRepoOptions:
    """How the repository's models are served. Every value is checked here (UsageError naming the field)."""

    name: str = "slidefuse"  # model name clients ask for (the TensorRT plan model is <name>-trt)
    runtime: Runtime = "onnxruntime"  # onnxruntime: Triton's onnxruntime backend; python: onnxruntime in Python
    kind: Kind = "gpu"  # instance group kind of the ONNX model (the plan model is always on the GPU)
    instances: int = 1  # model instances per device
    max_batch: int = 32  # Triton's max_batch_size: the largest batch the server forms or accepts
    queue_delay_us: int = 100  # dynamic batching: how long a request may wait for others to join its batch
    threads: int = 0  # runtime "python" on the CPU: onnxruntime intra-op threads (0 = onnxruntime's default)
    engines: bool = True  # also write the TensorRT plan model when the bundle has an engine for this GPU

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name[0] == ".":
            raise UsageError(f"name {self.name!r}: use letters, digits, '-', '_' or '.', not starting with '.'",
                             field="name")
        for key, low in (("instances", 1), ("max_batch", 1), ("queue_delay_us", 0), ("threads", 0)):
            value = getattr(self, key)
            if not is_integer(value) or value < low:  # numpy integers count; bools do not
                raise UsageError(f"{key} {value!r}: expected an integer >= {low}", field=key)
            object.__setattr__(self, key, int(value))
        if self.runtime not in ("onnxruntime", "python"):
            raise UsageError(f"runtime {self.runtime!r}: choose onnxruntime or python", field="runtime")
        if self.kind not in ("gpu", "cpu"):
            raise UsageError(f"kind {self.kind!r}: choose gpu or cpu", field="kind")


@dataclass(frozen=True)
class RepoModel:
    """One model written into the repository."""

    name: str  # Triton model name
    folder: Path  # <repo>/<name>
    serving: str  # 'platform: "onnxruntime_onnx"', 'backend: "python"' or 'platform: "tensorrt_plan"'
    max_batch: int  # its max_batch_size
    files: tuple[str, ...] = field(default_factory=tuple)  # written files, relative to `folder`


def pbtxt_string(text: str) -> str:
    """`text` as a protobuf text-format string literal (double quotes, C escapes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def model_parameters(bundle: Bundle, graph: str, precision: str, threads: int | None = None) -> dict[str, str]:
    """The bundle's manifest and the facts a client checks, as Triton model parameters (string values)."""
    m = bundle.manifest
    params = {
        DIGEST_KEY: bundle.digest,
        "slidefuse.encoder": m.encoder,
        "slidefuse.tile_size": str(m.tile_size),
        "slidefuse.mpp": repr(m.mpp),
        "slidefuse.classes": ",".join(m.class_names),
        "slidefuse.input": m.input_name,
        "slidefuse.output": m.output_name,
        "slidefuse.graph": graph,
        "slidefuse.precision": precision,
        "slidefuse.manifest": json.dumps(m.to_dict(), separators=(",", ":"), sort_keys=True),
    }
    if threads is not None:
        params["slidefuse.threads"] = str(threads)
    return params


def config_text(name: str, serving: str, bundle: Bundle, *, max_batch: int, kind: Kind, instances: int,
                queue_delay_us: int, params: dict[str, str]) -> str:
    """config.pbtxt of one model: uint8 input [T, T, 3] and float32 output [C, T, T] after the batch axis."""
    m = bundle.manifest
    t, c = m.tile_size, m.num_classes
    lines = [
        f"name: {pbtxt_string(name)}",
        serving,
        f"max_batch_size: {max_batch}",
        f"input [ {{ name: {pbtxt_string(m.input_name)} data_type: TYPE_UINT8 dims: [ {t}, {t}, 3 ] }} ]",
        f"output [ {{ name: {pbtxt_string(m.output_name)} data_type: TYPE_FP32 dims: [ {c}, {t}, {t} ] }} ]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'} }} ]",
        "version_policy { latest { num_versions: 1 } }",
    ]
    for key, value in params.items():
        lines.append(f"parameters {{ key: {pbtxt_string(key)} value {{ string_value: {pbtxt_string(value)} }} }}")
    return "\n".join(lines) + "\n"


def engine_here(bundle: Bundle) -> tuple[dict[str, Any] | None, str]:
    """The manifest entry of an engine built for this machine's GPU and TensorRT, else None; and why."""
    if not bundle.manifest.engines:
        return None, "the bundle has no TensorRT engine"
    from slidefuse.runtime import engines

    try:
        entry = engines.find_engine(bundle.manifest.engines, engines.current_trt_identity(0), None,
                                    bundle=str(bundle.path))
    except (MissingExtra, BackendUnavailable, EngineMismatch) as exc:
        return None, str(exc)
    return entry, f"engine {entry.get('file')} matches this GPU"


def _check_free(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite:
        raise UsageError(f"{folder} already exists; pass overwrite=True to replace that model (other models in the "
                         "repository are left alone)")


def _write_onnx_model(bundle: Bundle, repo: Path, opts: TritonRepoOptions, overwrite: bool) -> RepoModel:
    folder = repo / opts.name
    _check_free(folder, overwrite)
    python = opts.runtime == "python"
    serving = 'backend: "python"' if python else 'platform: "onnxruntime_onnx"'
    params = model_parameters(bundle, bundle.model_path.name, "fp32", opts.threads if python else None)
    text = config_text(opts.name, serving, bundle, max_batch=opts.max_batch, kind=opts.kind,
                       instances=opts.instances, queue_delay_us=opts.queue_delay_us, params=params)
    files = ["config.pbtxt", "1/model.onnx"] + (["1/model.py"] if python else [])
    with atomic_folder(folder) as stage:
        (stage / "1").mkdir()
        (stage / "config.pbtxt").write_text(text, encoding="utf-8")
        shutil.copyfile(bundle.model_path, stage / "1" / "model.onnx")
        if python:
            shutil.copyfile(PYTHON_MODEL, stage / "1" / "model.py")
    return RepoModel(opts.name, folder, serving, opts.max_batch, tuple(files))


def _write_plan_model(bundle: Bundle, repo: Path, opts: TritonRepoOptions, entry: dict[str, Any],
                      overwrite: bool) -> RepoModel:
    name = opts.name + TRT_SUFFIX
    folder = repo / name
    _check_free(folder, overwrite)
    engine_max = int((entry.get("batch") or {}).get("max", opts.max_batch))
    max_batch = min(opts.max_batch, engine_max)
    serving = 'platform: "tensorrt_plan"'
    params = model_parameters(bundle, str(entry["file"]), str(entry.get("precision", "fp16")))
    params["slidefuse.trt_version"] = str(entry.get("trt_version", "?"))
    text = config_text(name, serving, bundle, max_batch=max_batch, kind="gpu", instances=opts.instances,
                       queue_delay_us=opts.queue_delay_us, params=params)
    with atomic_folder(folder) as stage:
        (stage / "1").mkdir()
        (stage / "config.pbtxt").write_text(text, encoding="utf-8")
        shutil.copyfile(bundle.path / str(entry["file"]), stage / "1" / "model.plan")
    return RepoModel(name, folder, serving, max_batch, ("config.pbtxt", "1/model.plan"))


def write_repository(bundle: Bundle, repo: Path, options: TritonRepoOptions | None = None, *,
                     overwrite: bool = False) -> list[RepoModel]:
    """Write the bundle's models into Triton model repository `repo` (created when missing).

    The ONNX model always; the TensorRT plan model too when `options.engines` and the bundle has an engine for
    this GPU and TensorRT (otherwise logged with the reason). UsageError when a model folder exists and
    `overwrite` is False (nothing is written then).
    """
    opts = options or TritonRepoOptions()
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"{repo} is a file; pass a folder for the model repository", field="out")
    check_out_path(repo)
    entry, why = engine_here(bundle) if opts.engines else (None, "engines not asked for")
    _check_free(repo / opts.name, overwrite)
    if entry is not None:
        _check_free(repo / (opts.name + TRT_SUFFIX), overwrite)
    written = [_write_onnx_model(bundle, repo, opts, overwrite)]
    if entry is not None:
        written.append(_write_plan_model(bundle, repo, opts, entry, overwrite))
    else:
        log.info("no TensorRT plan model: %s", why)
    return written
