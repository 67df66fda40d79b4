"""Fixtures of the deployment tests: the demonstration bundle, Triton's config schema, a local tritonserver."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from slidefuse.runtime.bundle import Bundle, load_bundle

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "slidefuse" / "data" / "default"


@pytest.fixture(scope="session")
def demo_bundle() -> Bundle:
    return load_bundle(DEMO)


def parse_config(path: Path) -> Any:
    """config.pbtxt parsed with Triton's own ModelConfig protobuf schema (shipped in tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def triton_local() -> ModuleType:
    """tools/triton_local.py as a module (the launcher of PyTriton's tritonserver)."""
    name = "slidefuse_tools_triton_local"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "triton_local.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory, demo_bundle: Bundle) -> Iterator[tuple[str, Path]]:
    """A real tritonserver (PyTriton's binary, Python backend) on a repository of the demonstration bundle:
    'slidefuse' (max_batch_size 32), 'small' (max_batch_size 3) and 'other' (another bundle's digest).
    Yields (gRPC url, repository). Skips when `make triton-server` has not made the server environment."""
    from slidefuse.deploy.triton_repo import DIGEST_KEY, TritonRepoOptions, write_repository

    tl = triton_local()
    if tl.pytriton_dir(tl.server_env()) is None:
        pytest.skip(f"no tritonserver environment in {tl.server_env()}: run 'make triton-server'")
    repo = tmp_path_factory.mktemp("triton") / "repo"
    for name, max_batch in (("slidefuse", 32), ("small", 3), ("other", 32)):
        write_repository(demo_bundle, repo, TritonRepoOptions(name=name, runtime="python", kind="cpu",
                                                             max_batch=max_batch, threads=1))
    config = repo / "other" / "config.pbtxt"
    config.write_text(config.read_text().replace(demo_bundle.digest, "0" * 64))
    assert DIGEST_KEY in config.read_text()
    server = tl.start_server(repo)
    try:
        yield server.url, repo
    finally:
        tl.stop_server(server)
