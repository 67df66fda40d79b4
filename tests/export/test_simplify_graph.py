"""simplify_graph replaces a graph through slidefuse.atomic: the slim graph takes the original's place only
once it passes the checks, and nothing is left beside it either way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxslim")

from slidefuse.export import onnx_export  # noqa: E402
from slidefuse.export.onnx_export import ExportConfig, ExportError, export_bundle, simplify_graph  # noqa: E402

TILE = 64


@pytest.fixture(scope="module")
def unsimplified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "tiny.bundle"
    export_bundle(ExportConfig(encoder="tiny", classes=("background", "a", "b"), mpp=2.0, out=out,
                                        tile_size=TILE, random_weights=True, simplify=False,
                                        parity_real_tiles=0, parity_random_tiles=1))
    return out / "model.onnx"


def test_a_slim_graph_that_checks_out_replaces_the_original(unsimplified: Path, tmp_path: Path) -> None:
    graph = tmp_path / "model.onnx"
    shutil.copyfile(unsimplified, graph)
    assert simplify_graph(graph, tile_size=TILE, num_classes=3)
    onnx_export.check_graph(graph, tile_size=TILE, num_classes=3)  # the replaced graph is whole and valid
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_rejected_slim_graph_leaves_the_original_untouched(
    unsimplified: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = tmp_path / "model.onnx"
    shutil.copyfile(unsimplified, graph)
    before = graph.read_bytes()

    def reject(path: Path, **kw: object) -> None:
        assert path != graph and path.is_file()  # checked under its temporary name, before any rename
        raise ExportError(f"{path.name}: rejected on purpose")

    monkeypatch.setattr(onnx_export, "check_graph", reject)
    assert not simplify_graph(graph, tile_size=TILE, num_classes=3)
    assert graph.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
