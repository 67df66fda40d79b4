"""Tile geometry of patch-14 bundles: 'aligned' (tile a multiple of P) or the paper's 512 px floor-and-resize;
the export's choice of tile (explicit, by geometry, from the decoder's sidecar, default) and the manifest field
(old manifests without it keep meaning what their tile size implies)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import UsageError
from slidefuse.model.geometry import aligned_tile, geometry_of, resolve_tile, sidecar_tile
from slidefuse.runtime.bundle import Manifest


def test_geometry_of_and_aligned_tile() -> None:
    assert (geometry_of(518, 14), geometry_of(512, 14), geometry_of(512, 16)) == ("aligned", "paper", "aligned")
    assert (aligned_tile(14), aligned_tile(16), aligned_tile(8)) == (518, 512, 512)


def test_resolve_tile_defaults_and_explicit_choices() -> None:
    assert resolve_tile(14, None, None) == (518, "aligned")
    assert resolve_tile(16, None, None) == (512, "aligned")
    assert resolve_tile(14, None, "paper") == (512, "paper")
    assert resolve_tile(14, None, "aligned") == (518, "aligned")
    assert resolve_tile(14, 512, None) == (512, "paper")
    assert resolve_tile(14, 448, "aligned") == (448, "aligned")
    with pytest.raises(UsageError, match=r"tile_size=512 with geometry=aligned.*paper for patch size 14.*518"):
        resolve_tile(14, 512, "aligned")


def _decoder_with_sidecar(folder: Path, tile: int) -> Path:
    dec = folder / "decoder.safetensors"
    dec.write_bytes(b"")
    (folder / "decoder.json").write_text(json.dumps({"encoder": "hibou-b", "tile_size": tile}))
    return dec


def test_a_decoder_trained_the_paper_way_keeps_its_tile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dec = _decoder_with_sidecar(tmp_path, 512)
    assert sidecar_tile(dec) == 512 and sidecar_tile(None) is None
    assert resolve_tile(14, None, None, dec) == (512, "paper")
    with caplog.at_level(logging.WARNING):
        assert resolve_tile(14, None, "aligned", dec) == (518, "aligned")
    assert "trained on 512 px tiles" in caplog.text


def test_old_manifests_mean_what_their_tile_implies() -> None:
    base = {"encoder": "hibou-b", "patch_size": 14, "mpp": 0.5, "classes": [{"name": "bg", "color": [0, 0, 0]}],
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert Manifest.from_dict({**base, "tile_size": 512}).geometry == "paper"
    assert Manifest.from_dict({**base, "tile_size": 518}).geometry == "aligned"
    assert Manifest.from_dict({**base, "tile_size": 518, "geometry": "aligned"}).to_dict()["geometry"] == "aligned"


def test_cli_refuses_a_contradiction_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "tiny-p14-reg", "--random-weights", "--classes", "a,b", "--mpp",
                                      "1", "--tile", "64", "--geometry", "aligned", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0
    assert "--tile 64 with --geometry aligned" in result.output and "Traceback" not in result.output


def test_export_records_the_geometry(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    logging.getLogger("torch.__trace").disabled = True
    out = tmp_path / "p14.bundle"
    result = CliRunner().invoke(cli, ["-q", "export", "tiny-p14-reg", "--random-weights", "--classes", "a,b",
                                      "--mpp", "1", "--tile", "70", "--out", str(out), "--parity-tiles", "0:1"])
    assert result.exit_code == 0, result.output
    assert "tile 70 px, aligned" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["tile_size"], manifest["geometry"]) == (70, "aligned")
