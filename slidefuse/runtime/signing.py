"""Signed bundles: ed25519 signatures over a bundle's digest, key files, and the set of trusted keys.

A bundle's digest (`Bundle.digest`, the manifest's integrity record) covers every manifest field and, through
the sha256 it lists, every file; but anyone can recompute it after an edit. A signature by a key the user
trusts says who made the bundle: an edit re-sealed by anyone else changes the digest, and the signature no
longer verifies. A signature lives in the bundle as `signatures/<key id>.sig` (JSON: key id, public key,
algorithm, the digest signed, the signature), a folder the digest does not cover (`bundle.hash_files` skips it).

Key files: the private key is PEM (PKCS#8, unencrypted) in a file only its owner can read (0600); the public key
is one line `slidefuse-ed25519 <base64 of the 32 raw bytes>`. A key id is the first 16 hex digits of the sha256
of the raw public key. Trust comes from `trust` arguments (a public-key line or a file of them), the file named
by SLIDEFUSE_TRUSTED_KEYS, and $XDG_CONFIG_HOME/slidefuse/trusted_keys (default ~/.config/...); see docs/trust.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slidefuse.atomic import write_text_atomic
from slidefuse.errors import SignatureError, UsageError, one_line
from slidefuse.runtime.bundle import SIGNATURES, UNSIGNED, Bundle, SignatureState, load_bundle

ALGORITHM: Literal["ed25519"] = "ed25519"
PUBLIC_PREFIX = "slidefuse-ed25519"  # first word of a public-key line
TRUST_ENV = "SLIDEFUSE_TRUSTED_KEYS"  # names a trusted-keys file
MAX_SIGNATURE_BYTES = 4096  # a signature file is a few hundred bytes; anything larger is not one
_CONTEXT = b"slidefuse-bundle-digest:"  # what is signed: this prefix + the digest (never a bare string)


def key_id(raw: bytes) -> str:
    """The key id of a raw 32-byte ed25519 public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32 raw bytes of an ed25519 public key

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def line(self) -> str:
        """The key as its one-line text form (a .pub file, a trusted-keys line, a --trust value)."""
        return f"{PUBLIC_PREFIX} {base64.b64encode(self.raw).decode('ascii')}"




def parse_public(text: str, source: str) -> PublicKey:
    """A public key from its line `slidefuse-ed25519 <base64>` (words after it are a comment)."""
    words = text.split()
    if len(words) < 2 or words[0] != PUBLIC_PREFIX:
        raise UsageError(f"{source}: not a slidefuse public key; expected a line '{PUBLIC_PREFIX} <base64>' "
                         "(a KEYFILE.pub made by 'slidefuse keys new')")
    try:
        raw = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{source}: not an ed25519 public key (expected 32 bytes in base64); copy the line of a "
                         "KEYFILE.pub made by 'slidefuse keys new'")
    return PublicKey(raw)


def _key_lines(path: Path) -> list[PublicKey]:
    """The public keys of a file: one per line; blank lines and '#' comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable key file ({one_line(exc)}); pass a file of "
                         f"'{PUBLIC_PREFIX} <base64>' lines") from exc
    return [parse_public(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def config_trust_file() -> Path:
    """$XDG_CONFIG_HOME/slidefuse/trusted_keys (XDG_CONFIG_HOME defaults to ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "slidefuse" / "trusted_keys"


def trusted_keys(trust: Iterable[str | os.PathLike[str] | PublicKey] = ()) -> frozenset[str]:
    """The key ids trusted here: each of `trust` (a PublicKey, a public-key line, or a file of such lines),
    the keys of the file named by SLIDEFUSE_TRUSTED_KEYS (which must exist when set) and of the config file."""
    keys: list[PublicKey] = []
    for item in trust:
        if isinstance(item, PublicKey):
            keys.append(item)
        elif str(item).startswith(PUBLIC_PREFIX):
            keys.append(parse_public(str(item), "trust"))
        elif Path(item).is_file():
            keys += _key_lines(Path(item))
        else:
            raise UsageError(f"trust={str(item)!r}: neither a public-key line nor a key file; pass a KEYFILE.pub "
                             "made by 'slidefuse keys new', or its line", field="trust")
    named = os.environ.get(TRUST_ENV)
    if named:
        if not Path(named).is_file():
            raise UsageError(f"{TRUST_ENV}={named}: no such trusted-keys file; create it (one public-key line "
                             "each) or unset the variable")
        keys += _key_lines(Path(named))
    if config_trust_file().is_file():
        keys += _key_lines(config_trust_file())
    return frozenset(k.key_id for k in keys)


def new_key(out: Path) -> tuple[Path, PublicKey]:
    """Create a key pair: the private key in `out` (PEM, mode 0600, never replacing a file) and the public key
    in `out`.pub. Returns (the .pub path, the public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if p.exists() or p.is_symlink():
            raise UsageError(f"out={p}: already exists; a key file is never replaced: choose another path",
                             field="out")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = PublicKey(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    write_text_atomic(pub_path, public.line() + "\n")
    return pub_path, public


def load_private(path: Path) -> Any:
    """The ed25519 private key of a key file made by `new_key` (PEM; a raw 32-byte file is accepted too)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
        if len(data) == 32:
            return Ed25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"key={path}: not a readable unencrypted ed25519 private key ({one_line(exc)}); make one "
                         "with 'slidefuse keys new'", field="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"key={path}: not an ed25519 key; make one with 'slidefuse keys new'", field="key")
    return key


def sign_bundle(folder: Path, key_path: Path) -> Path:
    """Sign a bundle (verified first) with the private key in `key_path`; writes and returns
    `signatures/<key id>.sig` (an earlier signature by the same key is replaced)."""
    from cryptography.hazmat.primitives import serialization

    private = load_private(key_path)
    bundle = load_bundle(folder)
    public = PublicKey(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    signature = private.sign(_CONTEXT + bundle.digest.encode("ascii"))
    record = {"key_id": public.key_id, "public_key": public.line(), "algorithm": ALGORITHM,
              "digest": bundle.digest, "signature": base64.b64encode(signature).decode("ascii")}
    path = bundle.path / SIGNATURES / f"{public.key_id}.sig"
    path.parent.mkdir(exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def _read_signature(path: Path, digest: str, trusted: frozenset[str]) -> SignatureState:
    """The state of one signature file: unreadable or malformed files count as invalid."""
    try:
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise ValueError("too large")
        data = json.loads(path.read_text(encoding="utf-8"))
        public = parse_public(str(data["public_key"]), str(path))
        signature = base64.b64decode(str(data["signature"]), validate=True)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return SignatureState(key_id=path.stem[:64], valid=False, trusted=False)
    valid = data.get("algorithm") == ALGORITHM and data.get("digest") == digest and _verifies(public, signature,
                                                                                              digest)
    return SignatureState(key_id=public.key_id, valid=valid, trusted=public.key_id in trusted)


def _verifies(public: PublicKey, signature: bytes, digest: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public.raw).verify(signature, _CONTEXT + digest.encode("ascii"))
    except (InvalidSignature, ValueError):
        return False
    return True


def check_signatures(bundle: Bundle, trusted: frozenset[str]) -> SignatureState:
    """The best of the bundle's signatures over its current digest: valid and trusted, else valid, else any;
    UNSIGNED when it has none."""
    folder = bundle.path / SIGNATURES
    files = sorted(folder.glob("*.sig"))[:64] if folder.is_dir() and not folder.is_symlink() else []
    states = [_read_signature(p, bundle.digest, trusted) for p in files if p.is_file()]
    if not states:
        return UNSIGNED
    return max(states, key=lambda s: (s.valid and s.trusted, s.valid, s.trusted))


def require_signed(bundle: Bundle, state: SignatureState) -> None:
    """Raise SignatureError (one line naming the bundle and the fix) unless `state` is valid and trusted."""
    if state.ok:
        return
    if state.key_id is None:
        fix = "sign it with 'slidefuse sign BUNDLE --key KEYFILE'"
    elif not state.valid:
        fix = "get the bundle again from its maker, or re-sign it if you made the change"
    else:
        fix = f"trust that key (trust=KEYFILE.pub, {TRUST_ENV} or {config_trust_file()}) if you trust its owner"
    raise SignatureError(f"{bundle.path}: {state.problem()}, and a trusted signature is required; {fix}")
