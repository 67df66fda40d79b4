"""Library errors name fields; the command line shows flags. The field -> flag map is read from the click
options (each option's destination is the library field it sets), per invoked command."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import slidefuse
from slidefuse.cli import cli
from slidefuse.commands.flags import field_flags, with_flags

PACKAGE = Path(slidefuse.__file__).parent
CLI_MODULES = (PACKAGE / "cli.py", PACKAGE / "commands")

# Fields that library errors name but no command sets: Python API only, each with why.
API_ONLY = {
    "array": "Model.segment(array): the Python API's RGB array argument",
    "prefetch": "SegmentOptions.prefetch: batches read ahead of the engine; a tuning knob of the Python API",
    "gpus_per_worker": "RayConfig: the Python API's cluster tuning (status and start-up timings, GPUs per worker)",
    "status_interval": "RayConfig: the Python API's cluster tuning",
    "ready_timeout": "RayConfig: the Python API's cluster tuning",
    "geojson_max_pixels": "OutputOptions: the Python API's cap on the grid polygonised for mask.geojson",
    "geojson_mpp": "OutputOptions: the Python API's pixel size of that grid",
    # TissueParams: the CLI sets two of them through --tissue-threshold / --min-tile-tissue, checked by those names
    **{name: "TissueParams: tissue detection parameters of the Python API" for name in (
        "thumb_max_side", "smoothing_px", "detect_mpp", "opening_radius_um", "closing_radius_um", "min_saturation",
        "max_saturation_threshold", "white_value", "black_value", "min_object_fraction", "max_hole_fraction",
        "tile_min_fraction")},
}


def _leaf_commands(command: click.Command, path: str = "") -> dict[str, click.Command]:
    if isinstance(command, click.Group):
        out: dict[str, click.Command] = {}
        for name, sub in command.commands.items():
            out.update(_leaf_commands(sub, f"{path} {name}".strip()))
        return out
    return {path: command}


def _loop_values(func: ast.AST, name: str) -> set[str]:
    """The string constants a `for` loop in `func` binds to `name` (at its position in the loop's tuples)."""
    found: set[str] = set()
    for loop in (n for n in ast.walk(func) if isinstance(n, ast.For) and isinstance(n.iter, ast.Tuple)):
        target = loop.target
        names = [t.id if isinstance(t, ast.Name) else "" for t in target.elts] if isinstance(target, ast.Tuple) \
            else [target.id if isinstance(target, ast.Name) else ""]
        if name not in names:
            continue
        at = names.index(name)
        for item in loop.iter.elts:
            value = item.elts[at] if isinstance(item, ast.Tuple) and isinstance(target, ast.Tuple) else item
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(value.value)
    return found


def library_error_fields() -> dict[str, str]:
    """Every `field=` the library passes to an error -> where: constants, and names a loop binds."""
    fields: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == CLI_MODULES[0] or CLI_MODULES[1] in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
                for kw in call.keywords:
                    if kw.arg != "field":
                        continue
                    where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno}"
                    if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        fields.setdefault(kw.value.value, where)
                    elif isinstance(kw.value, ast.Name):
                        for name in _loop_values(func, kw.value.id):
                            fields.setdefault(name, where)
    return fields


def test_the_scan_finds_the_fields_of_constants_and_loops() -> None:
    fields = library_error_fields()
    # constants (segment stages, triton), SegmentOptions' loop, TrainConfig's loop, RayConfig's loop
    assert {"max_tiles", "runtime", "stitch_threads", "batch_size", "restart_every", "ray_workers"} <= set(fields)


def test_every_field_an_error_names_maps_to_a_flag() -> None:
    flags = field_flags(cli)
    missing = {f: where for f, where in library_error_fields().items() if f not in flags and f not in API_ONLY}
    assert not missing, f"errors name fields no command has an option for (add the option's destination): {missing}"
    assert not set(API_ONLY) & set(flags), "a field listed as API-only has a flag now: drop it from API_ONLY"
    assert set(API_ONLY) <= set(library_error_fields()), "API_ONLY lists a field no error names any more"


def test_the_map_is_read_from_the_options() -> None:
    flags = field_flags(cli)
    assert flags["batch_size"] == "--batch" and flags["stitch_threads"] == "--stitch-threads"
    assert flags["max_tiles"] == "--max-tiles" and flags["tile_size"] == "--tile"
    assert flags["device_id"] == "--device" and flags["max_memory_gb"] == "--max-memory"
    assert field_flags(cli.commands["bench"])["max_engine_tiles"] == "--engine-max-tiles"


def test_a_field_is_one_flag_within_a_command_group() -> None:
    """`bench` errors use the union of its subcommands' flags: a field must mean one flag among them. Across
    top-level commands the invoked command's flag wins (see the quantize / bench parity test below)."""
    for group in (c for c in cli.commands.values() if isinstance(c, click.Group)):
        seen: dict[str, tuple[str, str]] = {}
        for name, command in _leaf_commands(group).items():
            for field, flag in field_flags(command).items():
                other = seen.setdefault(field, (flag, name))
                assert other[0] == flag, f"{group.name}: {field} is {flag} in {name} but {other[0]} in {other[1]}"


def test_with_flags_rewrites_fields_and_values() -> None:
    flags = {"mpp": "--mpp", "max_tiles": "--max-tiles", "force": "--force", "threads": "--threads",
             "stitch_threads": "--stitch-threads"}
    assert with_flags("a.svs: pass mpp=0.5 (e.g. mpp=0.25 for 40x)", flags) == \
        "a.svs: pass --mpp 0.5 (e.g. --mpp 0.25 for 40x)"
    assert with_flags("stitch_threads must be an integer >= 1, got 0", flags, "stitch_threads") == \
        "--stitch-threads must be an integer >= 1, got 0"
    assert with_flags("exceed max_tiles=10; or pass force=True", flags) == "exceed --max-tiles 10; or pass --force"
    # not a field: a part of a word, a path, a flag, a quoted value, a backend option, a field without a flag
    for text in ("pass xmpp=1", "/data/mpp=1.tif", "--mpp=1", "'mpp=1'", "--option threads=2", "seed=3",
                 "stitch_threadsx 1"):
        assert with_flags(text, flags, "stitch_threads") == text


def _error_line(result: click.testing.Result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_an_option_record_error_shows_the_flag(runner: CliRunner, bundle_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(cli, ["segment", str(tmp_path), "--model", str(bundle_dir), "--out", str(tmp_path / "o"),
                              "--stitch-threads", "0"])
    assert res.exit_code == 2
    assert _error_line(res) == "slidefuse: error: --stitch-threads must be an integer >= 1, got 0"
    res = runner.invoke(cli, ["segment", str(tmp_path), "--model", str(bundle_dir), "--out", str(tmp_path / "o"),
                              "--batch", "0"])
    assert _error_line(res) == "slidefuse: error: --batch must be an integer >= 1, got 0"


@pytest.mark.parametrize(("args", "flag"), [
    (["quantize", "B", "--slides", "missing.svs", "--gate-tiles", "0"], "--gate-tiles 0: expected at least 1"),
    (["train", "--encoder", "tiny", "--tiles", ".", "--classes", "a", "--out", "x.safetensors",
      "--random-encoder"], "--classes a: expected two or more"),
    (["bench", "engine", "--model", "B", "--batch", "0"], "--batch '0': expected comma-separated"),
    (["bench", "slide", "s.svs", "--model", "B", "--engine-max-tiles", "0"], "--engine-max-tiles 0: expected"),
])
def test_each_command_shows_its_own_flags(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str], flag: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "B").mkdir()
    (tmp_path / "s.svs").write_bytes(b"")
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and flag in _error_line(res), res.output


def test_the_invoked_command_decides_between_two_flags_of_one_field(runner: CliRunner, tmp_path: Path) -> None:
    """`slides` is quantize's --slides and bench parity's --parity-slides: each command shows its own."""
    assert field_flags(cli.commands["quantize"])["slides"] == "--slides"
    assert field_flags(cli.commands["bench"])["slides"] == "--parity-slides"
    from slidefuse.errors import UsageError

    error = UsageError("slides: name at least one slide", field="slides")
    assert with_flags(str(error), field_flags(cli.commands["quantize"]), error.field).startswith("--slides:")
    assert with_flags(str(error), field_flags(cli.commands["bench"]), error.field).startswith("--parity-slides:")
    assert with_flags(str(error), field_flags(cli.commands["info"]), error.field).startswith("slides:")
