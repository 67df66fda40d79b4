"""`slidefuse build` (being written; see the issue tracker)."""

from __future__ import annotations

import click

from slidefuse.errors import SlidefuseError


@click.command("build")
def command() -> None:
    """Not available yet in this build."""
    raise SlidefuseError("'slidefuse build' is not implemented in this build yet")
