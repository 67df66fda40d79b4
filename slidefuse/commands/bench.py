"""`slidefuse bench`: a group; its subcommands live in bench_engine.py, bench_slide.py, bench_parity.py."""

from __future__ import annotations

import click


@click.group("bench")
def command() -> None:
    """Measure engines and slides: latency, throughput, parity between backends."""


def _register() -> None:
    import importlib

    for name in ("bench_engine", "bench_slide", "bench_parity"):
        try:
            mod = importlib.import_module(f"slidefuse.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"slidefuse.commands.{name}":
                continue  # subcommand not written yet
            raise
        command.add_command(mod.command)


_register()
