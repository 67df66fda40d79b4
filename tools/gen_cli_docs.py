"""Regenerate docs/CLI.md from the CLI's own --help texts (so the reference never drifts).

Usage: .venv/bin/python tools/gen_cli_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from slidefuse.cli import cli

OUT = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"


def _walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
    out = [path]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            out += _walk(cmd.commands[name], [*path, name])
    return out


def render() -> str:
    runner = CliRunner()
    parts = [
        "# slidefuse command reference",
        "",
        "Generated from the commands' own `--help` by `tools/gen_cli_docs.py`; do not edit by hand.",
        "",
    ]
    for path in _walk(cli, []):
        res = runner.invoke(cli, [*path, "--help"], prog_name="slidefuse", terminal_width=100)
        if res.exit_code != 0:
            raise SystemExit(f"--help failed for {' '.join(path)}: {res.output}")
        title = " ".join(["slidefuse", *path])
        parts += [f"## `{title}`", "", "```text", res.output.rstrip(), "```", ""]
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/CLI.md is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run tools/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
