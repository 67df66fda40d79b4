"""`slidefuse triton`: the repository's layout, and every config.pbtxt parsed with Triton's ModelConfig schema."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.deploy import triton_repo
from slidefuse.deploy.triton_repo import DIGEST_KEY, TritonRepoOptions, write_repository
from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import Bundle
from tests.deploy.conftest import DEMO, parse_config

pytest.importorskip("tritonclient.grpc")


def _params(cfg: object) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("runtime,kind", [("onnxruntime", "gpu"), ("python", "cpu")])
def test_config_parses_with_triton_schema(tmp_path: Path, demo_bundle: Bundle, runtime: str, kind: str) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    (model,) = write_repository(demo_bundle, tmp_path / "repo", TritonRepoOptions(
        runtime=runtime, kind=kind, instances=2, max_batch=16, queue_delay_us=250))  # type: ignore[arg-type]
    cfg = parse_config(model.folder / "config.pbtxt")
    m = demo_bundle.manifest
    assert cfg.name == "slidefuse"
    if runtime == "onnxruntime":
        assert (cfg.platform, cfg.backend) == ("onnxruntime_onnx", "")
    else:
        assert (cfg.platform, cfg.backend) == ("", "python")
        assert (model.folder / "1" / "model.py").read_bytes() == triton_repo.PYTHON_MODEL.read_bytes()
    assert cfg.max_batch_size == 16  # the batch axis is Triton's dynamic batch dimension, not in dims
    (inp,) = cfg.input
    (out,) = cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == (m.input_name, mc.TYPE_UINT8, [m.tile_size, m.tile_size, 3])
    assert (out.name, out.data_type, list(out.dims)) == (m.output_name, mc.TYPE_FP32,
                                                         [m.num_classes, m.tile_size, m.tile_size])
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = cfg.instance_group
    assert group.count == 2
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU)
    params = _params(cfg)
    assert params[DIGEST_KEY] == demo_bundle.digest
    assert json.loads(params["slidefuse.manifest"]) == json.loads(json.dumps(m.to_dict()))
    assert params["slidefuse.classes"].split(",") == m.class_names
    assert (model.folder / "1" / "model.onnx").read_bytes() == demo_bundle.model_path.read_bytes()


def test_the_graph_in_the_repository_has_the_configured_io(tmp_path: Path, demo_bundle: Bundle) -> None:
    """The copied graph's own input/output (as onnxruntime sees them) agree with config.pbtxt, batch dynamic."""
    import onnxruntime as ort

    (model,) = write_repository(demo_bundle, tmp_path / "repo")
    cfg = parse_config(model.folder / "config.pbtxt")
    sess = ort.InferenceSession(str(model.folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (i,), outs = sess.get_inputs(), {o.name: o for o in sess.get_outputs()}
    assert i.name == cfg.input[0].name and i.type == "tensor(uint8)"
    assert not isinstance(i.shape[0], int)  # a symbolic batch axis
    assert [int(d) for d in i.shape[1:]] == list(cfg.input[0].dims)
    assert outs[cfg.output[0].name].type == "tensor(float)"
    x = np.zeros((5, *cfg.input[0].dims), np.uint8)
    assert sess.run([cfg.output[0].name], {i.name: x})[0].shape == (5, *cfg.output[0].dims)


def test_plan_model_when_the_bundle_has_an_engine_for_this_gpu(tmp_path: Path, demo_bundle: Bundle,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With an engine entry that matches this machine's identity, a tensorrt_plan model is added (max batch
    capped by the engine's profile); the identity is stubbed since the test machine has no GPU."""
    from slidefuse.runtime import engines

    folder = tmp_path / "bundle"
    shutil.copytree(DEMO, folder)
    (folder / "engines").mkdir()
    (folder / "engines" / "x.engine").write_bytes(b"serialized engine bytes")
    ident = engines.TrtIdentity("NVIDIA H200", "9.0", "10.13.0.35")
    entry = {"file": "engines/x.engine", "precision": "fp16", "gpu": ident.gpu, "compute_capability": "9.0",
             "trt_version": ident.trt_version, "batch": {"min": 1, "opt": 8, "max": 16}}
    bundle = Bundle(folder, dataclasses.replace(demo_bundle.manifest, engines=(entry,)), demo_bundle.digest)
    monkeypatch.setattr(engines, "current_trt_identity", lambda device=0: ident)
    onnx_model, plan = write_repository(bundle, tmp_path / "repo", TritonRepoOptions(max_batch=32))
    cfg = parse_config(plan.folder / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("slidefuse-trt", "tensorrt_plan", 16)
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert _params(cfg)["slidefuse.precision"] == "fp16"
    assert (plan.folder / "1" / "model.plan").read_bytes() == b"serialized engine bytes"
    assert parse_config(onnx_model.folder / "config.pbtxt").max_batch_size == 32
    # an engine built elsewhere gives no plan model (TensorRT plans run only where they were built)
    monkeypatch.setattr(engines, "current_trt_identity", lambda device=0: engines.TrtIdentity("other", "8.9", "10"))
    assert [m.name for m in write_repository(bundle, tmp_path / "repo2")] == ["slidefuse"]


def test_odd_strings_survive_the_text_format(tmp_path: Path, demo_bundle: Bundle) -> None:
    weird = 'quote " backslash \\ newline \n unicode µm'
    m = dataclasses.replace(demo_bundle.manifest, weights={"note": weird})
    (model,) = write_repository(Bundle(demo_bundle.path, m, demo_bundle.digest), tmp_path / "repo")
    manifest = json.loads(_params(parse_config(model.folder / "config.pbtxt"))["slidefuse.manifest"])
    assert manifest["weights"]["note"] == weird


def test_cli_writes_and_refuses_to_overwrite(tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "repo"
    (out / "kept").mkdir(parents=True)
    res = runner.invoke(cli, ["triton", str(DEMO), "--out", str(out), "--name", "seg", "--kind", "cpu"])
    assert res.exit_code == 0, res.output
    assert "onnxruntime_onnx" in res.output and parse_config(out / "seg" / "config.pbtxt").name == "seg"
    res = runner.invoke(cli, ["triton", str(DEMO), "--out", str(out), "--name", "seg"])
    assert res.exit_code == 2 and "--overwrite" in res.output and "Traceback" not in res.output
    assert runner.invoke(cli, ["triton", str(DEMO), "--out", str(out), "--name", "seg", "--overwrite"]).exit_code == 0
    assert (out / "kept").is_dir()  # other models are left alone


@pytest.mark.parametrize("args,flag", [(["--max-batch", "0"], "--max-batch 0"), (["--instances", "0"], "--instances"),
                                       (["--name", "a/b"], "name 'a/b'")])
def test_cli_bad_values_are_one_line_usage_errors(tmp_path: Path, runner: CliRunner, args: list[str],
                                                  flag: str) -> None:
    res = runner.invoke(cli, ["triton", str(DEMO), "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and flag in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "r").exists()


def test_missing_bundle_names_it(tmp_path: Path, runner: CliRunner) -> None:
    res = runner.invoke(cli, ["triton", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "nope" in res.output and "Traceback" not in res.output


def test_options_are_checked() -> None:
    with pytest.raises(UsageError, match="max_batch"):
        TritonRepoOptions(max_batch=0)
    with pytest.raises(UsageError, match="runtime"):
        TritonRepoOptions(runtime="tensorflow")  # type: ignore[arg-type]
