"""`slidefuse sign BUNDLE --key KEYFILE`: sign a bundle's digest (writes BUNDLE/signatures/<key id>.sig)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


@click.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", type=click.Path(path_type=Path), required=True,
              help="Private key file made by 'slidefuse keys new'.")
def command(bundle: Path, key: Path) -> None:
    """Verify BUNDLE and sign its digest with KEY: BUNDLE/signatures/<key id>.sig. Anyone who trusts the key
    can then tell the bundle is yours and unchanged; any later edit, even re-sealed, breaks the signature."""
    from slidefuse.runtime.signing import sign_bundle

    click.echo(f"signed: {sign_bundle(bundle, key)}")


def sign_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--sign KEYFILE` of a command that makes or changes a bundle (export, quantize)."""
    return click.option("--sign", "key", type=click.Path(path_type=Path), default=None, metavar="KEYFILE",
                        help=f"Sign {what} with this private key (made by 'slidefuse keys new').")


def check_key(key: Path | None) -> None:
    """Read --sign's key before the work starts, so a wrong key file fails at once."""
    if key is not None:
        from slidefuse.runtime.signing import load_private

        load_private(key)


def sign_result(folder: Path, key: Path | None) -> None:
    """Sign the bundle a command made, when --sign was given, and say so."""
    if key is not None:
        from slidefuse.runtime.signing import sign_bundle

        click.echo(f"signed: {sign_bundle(folder, key)}")
