"""Unit tests of `slidefuse.runtime.signing` and the strict manifest reader: keys, signatures and their states,
the trust set, and the bracket-depth check."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from slidefuse.errors import SignatureError, UsageError
from slidefuse.runtime import signing
from slidefuse.runtime.bundle import SIGNATURES, _depth, hash_files, load_bundle


@pytest.fixture(autouse=True)
def _no_user_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.TRUST_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, signing.PublicKey]:
    return tmp_path / "k.key", signing.new_key(tmp_path / "k.key")[1]


@pytest.fixture
def folder(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _state(folder: Path, trusted: frozenset[str] = frozenset()) -> signing.SignatureState:
    return signing.check_signatures(load_bundle(folder), trusted)


def test_key_id_and_public_line_round_trip(keypair: tuple[Path, signing.PublicKey]) -> None:
    _, public = keypair
    assert len(public.key_id) == 16 and public.key_id == signing.key_id(public.raw)
    assert signing.parse_public(public.line() + " a comment", "here") == public
    short = "slidefuse-ed25519 " + base64.b64encode(b"x").decode()
    for bad in ("", "ssh-ed25519 AAAA", "slidefuse-ed25519 !!!", short):
        with pytest.raises(UsageError, match="here"):
            signing.parse_public(bad, "here")


def test_sign_then_verify_and_trust(folder: Path, keypair: tuple[Path, signing.PublicKey]) -> None:
    key, public = keypair
    assert _state(folder) == signing.UNSIGNED and _state(folder).record() == "unsigned"
    signing.sign_bundle(folder, key)
    assert hash_files(folder) == load_bundle(folder).manifest.files  # signatures/ is not hashed
    assert _state(folder) == signing.SignatureState(public.key_id, valid=True, trusted=False)
    assert _state(folder, frozenset({public.key_id})).ok
    assert signing.trusted_keys([key.with_name("k.key.pub")]) == frozenset({public.key_id})
    assert signing.trusted_keys([public.line()]) == frozenset({public.key_id})
    assert signing.trusted_keys([public]) == frozenset({public.key_id})


def test_raw_private_key_file_is_accepted(folder: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = tmp_path / "raw.key"
    raw.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
    signing.sign_bundle(folder, raw)
    assert _state(folder).valid


@pytest.mark.parametrize("damage", ["signature", "digest", "algorithm", "not json", "huge", "public key"])
def test_damaged_signature_files_are_invalid(folder: Path, keypair: tuple[Path, signing.PublicKey],
                                             damage: str) -> None:
    key, public = keypair
    path = signing.sign_bundle(folder, key)
    record = json.loads(path.read_text())
    other = signing.new_key(folder.parent / "other.key")[1]
    if damage == "signature":
        sig = bytearray(base64.b64decode(record["signature"]))
        sig[0] ^= 1
        record["signature"] = base64.b64encode(bytes(sig)).decode()
    elif damage == "digest":
        record["digest"] = "0" * 64
    elif damage == "algorithm":
        record["algorithm"] = "rsa"
    elif damage == "public key":
        record["public_key"] = other.line()
    text = {"not json": "{", "huge": " " * (signing.MAX_SIGNATURE_BYTES + 1)}.get(damage, json.dumps(record))
    path.write_text(text)
    state = _state(folder, frozenset({public.key_id, other.key_id}))
    assert state.key_id is not None and not state.valid and not state.ok


def test_best_signature_wins(folder: Path, keypair: tuple[Path, signing.PublicKey], tmp_path: Path) -> None:
    key, public = keypair
    signing.sign_bundle(folder, key)
    signing.new_key(tmp_path / "o.key")
    signing.sign_bundle(folder, tmp_path / "o.key")
    assert len(list((folder / SIGNATURES).glob("*.sig"))) == 2
    assert _state(folder, frozenset({public.key_id})).key_id == public.key_id


def test_require_signed_says_why(folder: Path, keypair: tuple[Path, signing.PublicKey]) -> None:
    bundle = load_bundle(folder)
    cases = {"not signed": signing.UNSIGNED,
             "does not verify": signing.SignatureState("k", valid=False, trusted=True),
             "not trusted": signing.SignatureState("k", valid=True, trusted=False)}
    for text, state in cases.items():
        with pytest.raises(SignatureError, match=text) as err:
            signing.require_signed(bundle, state)
        assert "\n" not in str(err.value) and str(folder) in str(err.value)
    signing.require_signed(bundle, signing.SignatureState("k", valid=True, trusted=True))


def test_trusted_keys_file_skips_comments_and_names_bad_lines(tmp_path: Path,
                                                              keypair: tuple[Path, signing.PublicKey]) -> None:
    _, public = keypair
    keys = tmp_path / "keys"
    keys.write_text(f"# team\n\n{public.line()} alice\n")
    assert signing.trusted_keys([keys]) == frozenset({public.key_id})
    keys.write_text(f"{public.line()}\nnot a key\n")
    with pytest.raises(UsageError, match=r"keys:2"):
        signing.trusted_keys([keys])


def test_new_key_never_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        signing.new_key(tmp_path / "k")
    assert not (tmp_path / "k").exists()


def test_depth_counts_brackets_outside_strings() -> None:
    assert _depth('{"a": [1, [2]]}') == 3
    assert _depth(r'{"a": "[[[\"[[[", "b": {}}') == 2
    assert _depth("[" * 1000) == 65  # stops counting past the limit
