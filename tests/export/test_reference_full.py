"""Full-width reference checks (marked `slow`; `make test-slow` runs them): every paper encoder at its real
width and head count, depth 2, against its publisher's implementation at 224 px and at the product's tile
sizes; and `slidefuse export hibou-b` from a full-size checkpoint in HistAI's transformers layout (SwiGLU)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from slidefuse.model.registry import PAPER_IDS, get_spec

pytest.importorskip("transformers")

from slidefuse.export.references import compare, run_sizes

TOL = 1e-5

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("encoder_id", PAPER_IDS)
def test_full_width_patch_tokens_match_the_publishers_code(encoder_id: str, tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec(encoder_id), depth=2)
    diffs = compare(encoder_id, spec, tmp_path, run_sizes(spec))
    assert max(diffs.values()) <= TOL, diffs


def test_export_hibou_b_from_histai_layout(tmp_path: Path) -> None:
    """The whole hibou-b (12 blocks, SwiGLU) saved by transformers' save_pretrained, exported by the CLI."""
    from click.testing import CliRunner

    from slidefuse.cli import cli
    from slidefuse.export.references import references, scramble

    logging.getLogger("torch.__trace").disabled = True
    src = references()["hibou-b"].build(get_spec("hibou-b"))
    scramble(src)
    src.save_pretrained(tmp_path / "hibou-b")  # type: ignore[operator]
    out = tmp_path / "hibou.bundle"
    result = CliRunner().invoke(cli, [
        "-q", "export", "hibou-b", "--encoder-weights", str(tmp_path / "hibou-b" / "model.safetensors"),
        "--random-weights", "--classes", "background,tumour", "--mpp", "0.5", "--out", str(out),
        "--parity-tiles", "0:1",
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tile_size"] == 518 and manifest["geometry"] == "aligned"
    assert manifest["weights"]["encoder"]["file"] == "model.safetensors"
    assert manifest["parity"]["fp32"]["passed"]
