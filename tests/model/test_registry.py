"""The encoder registry: the fifteen paper encoders, parameter counts on the meta device, `slidefuse models`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import UnknownName
from slidefuse.model.registry import (
    CHECKPOINT_FORMATS,
    PAPER_IDS,
    POS_RESAMPLE,
    count_params,
    get_spec,
    list_specs,
)

FIFTEEN = (
    "uni", "uni2-h", "conch", "conch-v1.5", "virchow", "virchow2", "phikon", "phikon-v2", "prov-gigapath",
    "h-optimus-0", "h-optimus-1", "kaiko", "lunit", "hibou-b", "hibou-l",
)  # fmt: skip

# The reference design's encoder table: id -> (patch size, width d)
TABLE = {
    "uni": (16, 1024), "uni2-h": (14, 1536), "conch": (16, 768), "conch-v1.5": (16, 1024),
    "virchow": (14, 1280), "virchow2": (14, 1280), "phikon": (16, 768), "phikon-v2": (16, 1024),
    "prov-gigapath": (16, 1536), "h-optimus-0": (14, 1536), "h-optimus-1": (14, 1536), "kaiko": (14, 1024),
    "lunit": (8, 384), "hibou-b": (14, 768), "hibou-l": (14, 1024),
}  # fmt: skip


def test_the_fifteen_ids_and_the_test_encoders() -> None:
    assert PAPER_IDS == FIFTEEN
    assert [s.id for s in list_specs()] == [*FIFTEEN, "tiny", "tiny-p14-reg", "tiny-p8"]
    assert [s.id for s in list_specs(include_test=False)] == list(FIFTEEN)


@pytest.mark.parametrize("encoder_id", FIFTEEN)
def test_patch_and_width_match_the_spec_table(encoder_id: str) -> None:
    spec = get_spec(encoder_id)
    assert (spec.patch_size, spec.width) == TABLE[encoder_id]
    assert spec.checkpoint_format in CHECKPOINT_FORMATS
    assert spec.num_prefix_tokens == 1 + spec.num_registers
    assert spec.default_decoder_width == 256
    assert all(0 < m < 1 for m in spec.mean) and all(0 < s < 1 for s in spec.std)


def test_registers_and_normalisation_of_selected_encoders() -> None:
    assert get_spec("uni2-h").num_registers == 8 and get_spec("uni2-h").no_embed_class
    assert get_spec("virchow2").num_prefix_tokens == 5 and get_spec("virchow").num_prefix_tokens == 1
    assert get_spec("h-optimus-0").mean == (0.707223, 0.578729, 0.703617)
    assert get_spec("kaiko").mean == (0.5, 0.5, 0.5)
    assert get_spec("hibou-l").std == (0.195, 0.2316, 0.1816)
    assert get_spec("conch").native_size == 448 and get_spec("conch").mean[0] == pytest.approx(0.48145466)
    assert "2560" in get_spec("virchow").note


def test_unknown_id_lists_the_valid_ids() -> None:
    with pytest.raises(UnknownName) as err:
        get_spec("uni3")
    msg = str(err.value)
    assert "'uni3'" in msg and "uni2-h" in msg and "hibou-l" in msg and "tiny" in msg


@pytest.mark.parametrize("encoder_id", FIFTEEN)
def test_counted_params_reproduce_the_paper_or_say_why(encoder_id: str) -> None:
    spec = get_spec(encoder_id)
    counted = count_params(encoder_id)  # built on the meta device: no memory even for 1.1 B
    tolerance = 0.10 if spec.paper_params >= 1_000_000_000 else 0.03
    rel = abs(counted - spec.paper_params) / spec.paper_params
    assert rel <= tolerance or spec.note, (encoder_id, counted, spec.paper_params)


def test_conch_counts_the_vision_trunk_and_notes_the_text_tower() -> None:
    counted = count_params("conch")
    assert 85_000_000 < counted < 88_000_000  # ViT-B/16 at 448 px
    assert "text tower" in get_spec("conch").note


def test_spec_to_dict_is_json_ready() -> None:
    d = get_spec("tiny-p14-reg").to_dict()
    back = json.loads(json.dumps(d))
    assert back["patch_size"] == 14 and back["num_registers"] == 4 and back["builder"] == "_build_vit"


def test_models_table_through_the_cli() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "architecture", "patch", "width"]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == [*FIFTEEN, "tiny", "tiny-p14-reg", "tiny-p8"]
    # aligned: the 'patch' column ends at the same offset on every row
    end = lines[0].index("patch") + len("patch")
    uni = next(line for line in lines if line.startswith("uni "))
    assert uni[end - 2 : end] == "16"
    assert "1.13B" in result.output and "text tower" in result.output


def test_models_json_through_the_cli() -> None:
    result = CliRunner().invoke(cli, ["models", "--json", "--no-test"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["id"] for r in rows] == list(FIFTEEN)
    for row in rows:
        for key in ("id", "patch_size", "width", "params", "paper_params", "note", "mean", "std",
                    "checkpoint_format", "num_prefix_tokens", "native_size"):
            assert key in row, key
    by_id = {r["id"]: r for r in rows}
    assert by_id["uni"]["params"] == count_params("uni")
    assert by_id["lunit"]["patch_size"] == 8 and by_id["lunit"]["width"] == 384


def test_models_without_torch_names_the_export_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 1
    assert "slidefuse[export]" in result.output and "torch" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("encoder_id", FIFTEEN)
def test_every_paper_encoder_names_its_source_and_position_rule(encoder_id: str) -> None:
    spec = get_spec(encoder_id)
    assert len(spec.reference) > 40 and spec.pos_resample in POS_RESAMPLE
    assert spec.to_dict()["reference"] == spec.reference


def test_publisher_specific_choices() -> None:
    assert {get_spec(i).pos_resample for i in ("phikon", "phikon-v2")} == {"bicubic"}
    assert get_spec("conch-v1.5").pos_resample == "bicubic-offset" and get_spec("conch-v1.5").native_size == 224
    assert get_spec("hibou-b").mlp == get_spec("hibou-l").mlp == "swiglu-dinov2"
    assert (get_spec("hibou-b").mlp_hidden(), get_spec("hibou-l").mlp_hidden()) == (4096, 5472)
    assert get_spec("uni2-h").mlp_hidden() == 8192 and get_spec("virchow").mlp_hidden() == 6832
