"""`slidefuse export` (being written; see the issue tracker)."""

from __future__ import annotations

import click

from slidefuse.errors import SlidefuseError


@click.command("export")
def command() -> None:
    """Not available yet in this build."""
    raise SlidefuseError("'slidefuse export' is not implemented in this build yet")
