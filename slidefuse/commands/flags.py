"""Library fields -> command-line flags. The library's errors name the fields of its option records
(`UsageError(..., field="batch_size")`, `max_tiles=250000` in a message); the command line shows the flag the user
typed instead. The map is read from the commands' click options, whose destination names are the library fields
they set (`@click.option("--batch", "batch_size", ...)`), so it cannot drift from the options."""

from __future__ import annotations

import re

import click

# `<field>=` in an error's message: a library field and the value after it (`=True`: a flag that takes no value);
# not a part of a word, path, flag or quoted value, nor a backend option's KEY=VALUE (`--option threads=2`)
_FIELD_VALUE = re.compile(r"(?<![\w./=\-'\"])(?<!--option )([a-z_][a-z0-9_]*)=(True\b)?")


def field_flags(command: click.Command) -> dict[str, str]:
    """Option destinations (each the library field the option sets) -> the option's first long flag, for
    `command` and, for a group, its subcommands (depth first; the first one seen wins)."""
    flags: dict[str, str] = {}
    for param in command.params:
        long_flags = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
        if param.name and long_flags:
            flags.setdefault(param.name, long_flags[0])
    for sub in (command.commands.values() if isinstance(command, click.Group) else ()):
        for name, flag in field_flags(sub).items():
            flags.setdefault(name, flag)
    return flags


def with_flags(text: str, flags: dict[str, str], field: str | None = None) -> str:
    """An error's one line in command-line terms: the error's `field` at the start of the line, and each
    `<field>=` anywhere in it, become the option's flag (`max_tiles=5` -> `--max-tiles 5`, `force=True` ->
    `--force`). Fields without a flag in `flags` stay as they are."""
    flag = flags.get(field or "")
    if field and flag and text.startswith(field) and text[len(field):len(field) + 1] in (" ", ":"):
        text = flag + text[len(field):]

    def flag_for(m: re.Match[str]) -> str:
        if m[1] not in flags:
            return m[0]
        return flags[m[1]] if m[2] else f"{flags[m[1]]} "

    return _FIELD_VALUE.sub(flag_for, text)
