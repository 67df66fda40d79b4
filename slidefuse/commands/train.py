"""`slidefuse train` (being written; see the issue tracker)."""

from __future__ import annotations

import click

from slidefuse.errors import SlidefuseError


@click.command("train")
def command() -> None:
    """Not available yet in this build."""
    raise SlidefuseError("'slidefuse train' is not implemented in this build yet")
