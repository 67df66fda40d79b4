"""Trust and a strict manifest: the seal is a checksum anyone can recompute, so a bundle can be signed (ed25519
over its digest) and `segment --require-signature` refuses what no trusted key signed. A re-sealed edit (random
weights, a class name, a swapped model.onnx) breaks the signature: refused under --require-signature, flagged in
report.json without it. The manifest parser refuses duplicate keys, deep nesting and huge files in one line, a
symlink loop is one line, and report.json never copies a huge manifest."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from slidefuse.cli import cli
from slidefuse.errors import SignatureError
from slidefuse.runtime.bundle import MAX_MANIFEST_BYTES, load_bundle, manifest_digest, write_manifest

from .conftest import one_error_line, segment


@pytest.fixture(autouse=True)
def _no_user_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust only what a test names: no trusted-keys file from the environment or the user's config."""
    monkeypatch.delenv("SLIDEFUSE_TRUSTED_KEYS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "maker.key"
    path.parent.mkdir()
    result = _run("keys", "new", "--out", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def signed(bundle_dir: Path, tmp_path: Path, key: Path) -> Path:
    folder = tmp_path / "signed.bundle"
    shutil.copytree(bundle_dir, folder)
    result = _run("sign", folder, "--key", key)
    assert result.exit_code == 0, result.output
    return folder


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _reseal(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest and recompute its integrity record, as anyone can."""
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    data["integrity"] = manifest_digest(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def _report(out: Path) -> dict[str, Any]:
    [report] = list(out.glob("*/report.json"))
    return json.loads(report.read_text())  # type: ignore[no-any-return]


def _signature_warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "WARNING" in ln and "signature check:" in ln]


# keys, sign, verify


def test_keys_new_writes_a_private_key_only_its_owner_reads(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    line = _pub(key).read_text().strip()
    assert line.startswith("slidefuse-ed25519 ") and len(line.split()) == 2
    one_error_line(_run("keys", "new", "--out", key), "already exists", "--out", code=2)  # never replaced


def test_sign_writes_a_signature_outside_the_digest(signed: Path, key: Path, bundle_dir: Path) -> None:
    [sig] = list((signed / "signatures").glob("*.sig"))
    record = json.loads(sig.read_text())
    assert set(record) == {"key_id", "public_key", "algorithm", "digest", "signature"}
    assert record["algorithm"] == "ed25519" and sig.stem == record["key_id"] and len(record["key_id"]) == 16
    bundle = load_bundle(signed)  # the signature is not a file of the bundle: the seal still holds
    assert bundle.digest == load_bundle(bundle_dir).digest == record["digest"]
    assert not any(name.startswith("signatures") for name in bundle.manifest.files)


def test_info_shows_the_signature_state(signed: Path, key: Path) -> None:
    result = _run("info", signed)
    assert "signature  key" in result.output and "not trusted" in result.output, result.output
    result = _run("info", signed, "--trust", _pub(key), "--json")
    record = json.loads(result.output)["signature"]
    assert record["valid"] is True and record["trusted"] is True, record


def test_trusted_signature_runs_without_warning(signed: Path, key: Path, slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = segment(slide, "--model", signed, "--out", out, "--require-signature", "--trust", _pub(key))
    assert result.exit_code == 0, result.output
    assert not _signature_warnings(result.stderr), result.stderr
    record = _report(out)["bundle"]["signature"]
    assert record["trusted"] is True and record["valid"] is True and len(record["key_id"]) == 16


def test_trust_from_the_environment_and_the_config_file(signed: Path, key: Path, slide: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "trusted_keys"
    keys_file.write_text("# our makers\n" + _pub(key).read_text())
    monkeypatch.setenv("SLIDEFUSE_TRUSTED_KEYS", str(keys_file))
    assert segment(slide, "--model", signed, "--out", tmp_path / "a", "--require-signature").exit_code == 0
    monkeypatch.delenv("SLIDEFUSE_TRUSTED_KEYS")
    config = tmp_path / "config" / "slidefuse" / "trusted_keys"
    config.parent.mkdir(parents=True)
    shutil.copy(keys_file, config)
    assert segment(slide, "--model", signed, "--out", tmp_path / "b", "--require-signature").exit_code == 0
    monkeypatch.setenv("SLIDEFUSE_TRUSTED_KEYS", str(tmp_path / "missing"))
    one_error_line(segment(slide, "--model", signed, "--out", tmp_path / "c"), "SLIDEFUSE_TRUSTED_KEYS", code=2)


def test_a_bad_trust_value_is_one_usage_line(signed: Path, slide: Path, tmp_path: Path) -> None:
    one_error_line(segment(slide, "--model", signed, "--out", tmp_path / "o", "--trust", "nonsense"),
                   "--trust", code=2)
    bad = tmp_path / "bad.pub"
    bad.write_text("slidefuse-ed25519 AAAA\n")
    one_error_line(segment(slide, "--model", signed, "--out", tmp_path / "o", "--trust", bad), "bad.pub", code=2)


# unsigned and untrusted bundles


def test_unsigned_runs_with_one_warning_and_is_recorded(bundle_dir: Path, slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    second = slide.with_name("second.tif")
    shutil.copy(slide, second)
    result = segment(slide, second, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(_signature_warnings(result.stderr)) == 1, result.stderr
    reports = [json.loads(p.read_text()) for p in out.glob("*/report.json")]
    assert len(reports) == 2 and all(r["bundle"]["signature"] == "unsigned" for r in reports)


def test_unsigned_is_refused_under_require_signature(bundle_dir: Path, slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_error_line(segment(slide, "--model", bundle_dir, "--out", out, "--require-signature"),
                          str(bundle_dir), "not signed", "slidefuse sign")
    assert "Traceback" not in line
    assert not list(out.glob("*/report.json"))


def test_untrusted_signer_is_flagged_and_refused(signed: Path, slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = segment(slide, "--model", signed, "--out", out)
    assert result.exit_code == 0 and len(_signature_warnings(result.stderr)) == 1, result.stderr
    record = _report(out)["bundle"]["signature"]
    assert record["trusted"] is False and record["valid"] is True, record
    one_error_line(segment(slide, "--model", signed, "--out", tmp_path / "o2", "--require-signature"),
                   "not trusted", "--trust")


# re-sealed edits break the signature


def _swap_graph(folder: Path, other: Path) -> None:
    """Another export's model.onnx in place of this one, and the manifest re-sealed around it."""
    from slidefuse.runtime.bundle import read_manifest

    shutil.copy(other / "model.onnx", folder / "model.onnx")
    write_manifest(folder, read_manifest(folder))


RESEALED: dict[str, Callable[[Path], None]] = {
    "random_weights": lambda f: _reseal(f, lambda d: d.update(random_weights=not d["random_weights"])),
    "class name": lambda f: _reseal(f, lambda d: d["classes"][1].update(name="cancer")),
}


@pytest.mark.parametrize("edit", [*sorted(RESEALED), "swapped model.onnx"])
def test_resealed_edit_is_flagged_and_refused(signed: Path, key: Path, slide: Path, tmp_path: Path,
                                              edit: str) -> None:
    if edit == "swapped model.onnx":
        from runtime.onnx_models import make_bundle

        other = tmp_path / "other"
        make_bundle(other, tile_size=64, mpp=2.0, overlap=16, blur_radius=3, depth=1)
        _swap_graph(signed, other)
    else:
        RESEALED[edit](signed)
    load_bundle(signed)  # the seal holds: only the signature shows the edit
    trust = ("--trust", _pub(key))
    one_error_line(segment(slide, "--model", signed, "--out", tmp_path / "r", "--require-signature", *trust),
                   str(signed), "does not verify")
    out = tmp_path / "out"
    result = segment(slide, "--model", signed, "--out", out, *trust)
    assert result.exit_code == 0 and len(_signature_warnings(result.stderr)) == 1, result.stderr
    record = _report(out)["bundle"]["signature"]
    assert record["valid"] is False and record["trusted"] is True, record


def test_api_load_model_requires_a_signature(bundle_dir: Path, signed: Path, key: Path) -> None:
    import slidefuse

    with pytest.raises(SignatureError, match="not signed"):
        slidefuse.load_model(bundle_dir, require_signature=True)
    with slidefuse.load_model(signed, require_signature=True, trust=[_pub(key)]) as model:
        assert model.bundle.signature is not None and model.bundle.signature.ok


# the strict manifest parser


def _info_line(folder: Path, *text: str) -> str:
    return one_error_line(_run("info", folder), str(folder / "manifest.json"), *text, code=1)


def test_duplicate_keys_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    text = (folder / "manifest.json").read_text()
    data = json.loads(text)
    # the same digest either way: json keeps the last value, another parser may keep the first
    twice = text.replace('"random_weights": ', '"random_weights": true, "random_weights": ', 1)
    assert json.loads(twice)["random_weights"] == data["random_weights"]
    (folder / "manifest.json").write_text(twice)
    _info_line(folder, "'random_weights' appears twice")


def test_deep_nesting_is_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _info_line(folder, "nested more than 64 deep")
    brackets_in_strings = json.dumps({"note": "[" * 1000})  # brackets in strings are not nesting
    (folder / "manifest.json").write_text(brackets_in_strings)
    assert "nested" not in _info_line(folder)


def test_oversize_manifest_is_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    _reseal(folder, lambda d: d.update(created="x" * (MAX_MANIFEST_BYTES + 1)))
    _info_line(folder, "larger than 4 MB")


@pytest.mark.parametrize("where", ["model.onnx", "manifest.json", "a folder"])
def test_symlink_loop_is_one_line(bundle_dir: Path, tmp_path: Path, where: str) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    if where == "a folder":
        (folder / "extra").mkdir()
        os.symlink("..", folder / "extra" / "up")  # a folder cycle: hashing and scanning must not follow it
        os.symlink("loop", folder / "loop")
        load_bundle(folder)
        write_manifest(folder, load_bundle(folder).manifest)
        assert "loop" not in load_bundle(folder).manifest.files
        return
    (folder / where).unlink()
    os.symlink(where, folder / where)
    line = one_error_line(_run("info", folder), code=1)
    assert "Traceback" not in line and str(folder) in line


def test_report_does_not_copy_a_huge_manifest(bundle_dir: Path, slide: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    shutil.copytree(bundle_dir, folder)
    big = {f"k{i}": "v" * 1000 for i in range(3000)}  # 3 MB: under the manifest's limit
    _reseal(folder, lambda d: d.update(weights={**d["weights"], "notes": big}))
    out = tmp_path / "out"
    assert segment(slide, "--model", folder, "--out", out).exit_code == 0
    [report] = list(out.glob("*/report.json"))
    assert report.stat().st_size < 200_000
    assert "omitted" in json.loads(report.read_text())["model"]["weights"]


# commands that make bundles sign them


def test_export_sign_signs_the_new_bundle(key: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "tiny.bundle"
    result = _run("-q", "export", "tiny", "--random-weights", "--classes", "background,tissue", "--mpp", "2",
                  "--tile", "64", "--parity-tiles", "0:1", "--out", out, "--sign", key)
    assert result.exit_code == 0, result.output
    record = json.loads(_run("info", out, "--json", "--trust", _pub(key)).output)["signature"]
    assert record["valid"] is True and record["trusted"] is True, record


def test_export_sign_with_a_bad_key_fails_before_exporting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    out = tmp_path / "tiny.bundle"
    one_error_line(_run("export", "tiny", "--random-weights", "--classes", "a,b", "--mpp", "2", "--out", out,
                        "--sign", bad), "--sign ", "bad.key", "slidefuse keys new", code=2)
    assert not out.exists()


def test_quantize_sign_signs_the_quantised_copy(signed: Path, key: Path, cmu_slide: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "int8.bundle"
    result = _run("-q", "quantize", signed, "--out", out, "--slides", cmu_slide, "--op-types", "Conv,MatMul,Gemm",
                  "--min-agreement", "0", "--max-diff", "1", "--calibration-tiles", "4", "--gate-tiles", "2",
                  "--method", "minmax", "--sign", key)
    assert result.exit_code == 0, result.output
    record = json.loads(_run("info", out, "--json", "--trust", _pub(key)).output)["signature"]
    assert record["valid"] is True and record["trusted"] is True, record


def test_sign_with_a_missing_key_or_bundle_is_one_line(signed: Path, tmp_path: Path) -> None:
    one_error_line(_run("sign", signed, "--key", tmp_path / "none.key"), "--key ", "none.key", code=2)
    key = tmp_path / "k.key"
    assert _run("keys", "new", "--out", key).exit_code == 0
    one_error_line(_run("sign", tmp_path / "no.bundle", "--key", key), "no.bundle", "no such model bundle", code=1)
