"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import contextlib
from pathlib import Path

# h5py before anything loads libvips (features.h5 tests): libvips may link another HDF5 version, and the first
# one loaded would serve h5py's calls (see slidefuse/runtime/embed/__init__.py)
with contextlib.suppress(ImportError, ValueError):
    import h5py  # noqa: F401

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]

# Real slides: one lookup shared with the benchmarks (benchmarks/slides.py: $SLIDEFUSE_TEST_SLIDES, then
# ../shared/data/slides beside the clone, then .cache/demo, where `make test` puts CMU-1-Small-Region.svs). A test
# whose slide is in none of them skips with a reason that says where the file comes from (docs/verification.md).
from benchmarks.slides import find_slide, missing_slide_reason  # noqa: E402


def need_slide(name: str) -> Path:
    """The real slide `name`, or skip the calling test with a reason saying how to provide it."""
    path = find_slide(name)
    if not path.is_file():
        pytest.skip(missing_slide_reason(name))
    return path


CMU = find_slide("CMU-1-Small-Region.svs")  # Aperio SVS, JPEG, 2220x2967, 0.499 um/px
TCGA = find_slide("TCGA-CR-7395-01A-01-TS1.svs")  # Aperio SVS, JPEG 2000, two levels, no pixel size
OME = find_slide("OS-2-vsi.ome.tif")  # OME-TIFF, 1445x1445, ~0.35 um/px


@pytest.fixture
def cmu_slide() -> Path:
    return need_slide(CMU.name)


@pytest.fixture
def tcga_slide() -> Path:
    return need_slide(TCGA.name)


@pytest.fixture
def ome_slide() -> Path:
    return need_slide(OME.name)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests, with a reason, when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch absent or broken: no GPU tests
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def phikon_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """phikon (ViT-B/16) at 512 px with random weights and its fp16 graph, exported once per session for the
    slow tests (an export of this size takes minutes on a 2-core CPU)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("phikon") / "phikon.bundle"
    export_bundle(ExportConfig(
        encoder="phikon", classes=("background", "tumour", "stroma"), mpp=0.5, out=out, tile_size=512,
        random_weights=True, fp16=True, parity_real_tiles=2, parity_random_tiles=1,
    ))
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pure-ONNX colour-classifier bundle (64 px tiles at 2 um/px, overlap 16), one per test module."""
    from runtime.onnx_models import make_bundle

    folder = tmp_path_factory.mktemp("bundles") / "colour"
    make_bundle(folder, tile_size=64, mpp=2.0, overlap=16)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled-model caches (OpenVINO's CACHE_DIR) go to a session folder, not the user's ~/.cache/slidefuse."""
    import os

    from slidefuse.runtime.cache import ENV_VAR

    if not os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = str(tmp_path_factory.mktemp("model-cache"))
