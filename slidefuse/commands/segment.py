"""`slidefuse segment` (being written; see the issue tracker)."""

from __future__ import annotations

import click

from slidefuse.errors import SlidefuseError


@click.command("segment")
def command() -> None:
    """Not available yet in this build."""
    raise SlidefuseError("'slidefuse segment' is not implemented in this build yet")
