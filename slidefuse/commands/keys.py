"""`slidefuse keys new --out KEYFILE`: make an ed25519 key pair to sign bundles with."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("keys")
def command() -> None:
    """Signing keys: make a key pair to sign bundles with ('slidefuse sign'; see docs/trust.md)."""


@command.command("new")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Private key file to create (mode 0600); the public key goes to OUT.pub. Neither is replaced.")
def new(out: Path) -> None:
    """Make an ed25519 key pair: the private key in OUT (keep it secret), the public key in OUT.pub (give its
    one line to the people who run your bundles; they trust it with --trust or a trusted-keys file)."""
    from slidefuse.runtime.signing import new_key

    pub_path, public = new_key(out)
    click.echo(f"private key {out} (keep it secret); public key {pub_path}, key id {public.key_id}:")
    click.echo(public.line())
