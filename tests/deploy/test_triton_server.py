"""The `triton` backend against a real tritonserver (PyTriton's binary, onnxruntime in its Python backend).

`slow`: each module starts a server (seconds) and segments the real CMU-1-Small-Region slide. `make test-slow`
makes the server environment first (`make triton-server`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import BackendUnavailable, BundleError
from slidefuse.runtime.backends import open_backend
from slidefuse.runtime.backends.triton import URL_ENV
from slidefuse.runtime.bundle import Bundle
from tests.deploy.conftest import DEMO

pytestmark = pytest.mark.slow
pytest.importorskip("tritonclient.grpc")
tifffile = pytest.importorskip("tifffile")


def _mask(folder: Path) -> np.ndarray:
    """Full-resolution class indices of mask.tif, read with tifffile (not slidefuse's writer's library)."""
    return np.asarray(tifffile.imread(folder / "mask.tif", level=0))


def _segment(runner: CliRunner, slide: Path, out: Path, backend: str) -> Path:
    res = runner.invoke(cli, ["segment", str(slide), "--model", str(DEMO), "--backend", backend, "--out", str(out),
                              "--batch", "8"])
    assert res.exit_code == 0, res.output
    return out / slide.stem


def test_segment_through_triton_gives_the_ort_cpu_masks(triton_server: tuple[str, Path], cmu_slide: Path,
                                                       tmp_path: Path, runner: CliRunner,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    url, _ = triton_server
    monkeypatch.setenv(URL_ENV, url)
    served = _segment(runner, cmu_slide, tmp_path / "triton", "triton")
    local = _segment(runner, cmu_slide, tmp_path / "cpu", "ort-cpu")
    a, b = _mask(served), _mask(local)
    assert a.shape == b.shape and a.size > 100_000
    assert np.array_equal(a, b)
    assert len(np.unique(a)) >= 2  # the demonstration model finds more than one class on this slide
    backend = json.loads((served / "report.json").read_text())["backend"]
    assert backend["backend"] == "triton" and backend["url"] == url and backend["shared_memory"] is True
    assert backend["platform"] == "python" and backend["triton_server"]


@pytest.mark.parametrize("shm", ["on", "off"])
def test_probabilities_match_ort_cpu_in_chunks(triton_server: tuple[str, Path], demo_bundle: Bundle,
                                               shm: str) -> None:
    """A batch of 7 to a model with max_batch_size 3 goes as 3 + 3 + 1, through shared memory or gRPC."""
    url, _ = triton_server
    t = demo_bundle.manifest.tile_size
    tiles = np.random.default_rng(1).integers(0, 256, (7, t, t, 3), dtype=np.uint8)
    with open_backend("ort-cpu", demo_bundle) as ref:
        expected = ref.run(tiles)
    with open_backend("triton", demo_bundle, url=url, model="small", shm=shm) as b:
        assert b.max_batch == 3 and b.info().settings["shared_memory"] is (shm == "on")
        got = b.run(tiles)
        again = b.run(tiles[:2])
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert float(np.abs(got - expected).max()) < 1e-5
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.allclose(again, expected[:2], atol=1e-5)


def test_model_made_from_another_bundle_is_refused(triton_server: tuple[str, Path], demo_bundle: Bundle) -> None:
    url, _ = triton_server
    with pytest.raises(BundleError, match="was made from bundle 0000000000000000.*check_digest=false"):
        with open_backend("triton", demo_bundle, url=url, model="other"):
            pass
    with open_backend("triton", demo_bundle, url=url, model="other", check_digest=False) as b:
        assert b.run(np.zeros((1, 128, 128, 3), np.uint8)).shape == (1, 3, 128, 128)


def test_missing_model_is_named(triton_server: tuple[str, Path], demo_bundle: Bundle) -> None:
    url, _ = triton_server
    with pytest.raises(BackendUnavailable, match="has no ready model 'nope'.*repository with `slidefuse triton`"):
        with open_backend("triton", demo_bundle, url=url, model="nope"):
            pass
