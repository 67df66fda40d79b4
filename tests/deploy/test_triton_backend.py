"""The `triton` backend without a server: registration, options, and the error when no server answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import BackendUnavailable, UsageError
from slidefuse.runtime.backends import open_backend
from slidefuse.runtime.backends.registry import backend_names, get_backend
from slidefuse.runtime.backends.triton import URL_ENV, TritonBackend, TritonOptions
from slidefuse.runtime.bundle import Bundle
from tests.deploy.conftest import DEMO, triton_local

pytest.importorskip("tritonclient.grpc")


def test_registered_and_never_picked_by_auto() -> None:
    assert "triton" in backend_names() and get_backend("triton") is TritonBackend
    assert TritonBackend.placements == () and TritonBackend.availability() is None


def test_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert TritonOptions().url == "localhost:8001" and TritonOptions().local
    monkeypatch.setenv(URL_ENV, "gpu-node:9001")
    assert TritonOptions().url == "gpu-node:9001" and not TritonOptions().local
    with pytest.raises(UsageError, match="HOST:PORT"):
        TritonOptions(url="localhost")
    with pytest.raises(UsageError, match="shm"):
        TritonOptions(shm="maybe")  # type: ignore[arg-type]


def test_unknown_option_lists_valid_ones(demo_bundle: Bundle) -> None:
    with pytest.raises(UsageError, match="valid options: check_digest, model, shm, timeout_s, url, version"):
        open_backend("triton", demo_bundle, threads=2)


def test_no_server_is_a_one_line_unavailable_error(demo_bundle: Bundle) -> None:
    url = f"localhost:{triton_local().free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=f"no Triton server {url} answers.*available backends: ort-cpu"):
        with open_backend("triton", demo_bundle, url=url):
            pass
    assert time.perf_counter() - t0 < 30


def test_segment_without_server_fails_cleanly(tmp_path: Path, runner: CliRunner, cmu_slide: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, f"127.0.0.1:{triton_local().free_port()}")
    res = runner.invoke(cli, ["segment", str(cmu_slide), "--model", str(DEMO), "--backend", "triton",
                              "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "no Triton server 127.0.0.1:" in res.output and "Traceback" not in res.output


def test_outputs_that_are_not_probabilities_are_refused() -> None:
    """An empty or zero-filled response (a server that never wrote the shared-memory region) is an error."""
    import numpy as np

    from slidefuse.runtime.backends.triton import check_probabilities

    def error(what: str) -> BackendUnavailable:
        return BackendUnavailable(what)

    logits = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    check_probabilities(probs, error)
    with pytest.raises(BackendUnavailable, match="off 1 by up to 1"):
        check_probabilities(np.zeros_like(probs), error)
    probs[1, :, 0, 3] = np.nan
    with pytest.raises(BackendUnavailable, match="class sums"):
        check_probabilities(probs, error)
