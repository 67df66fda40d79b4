"""`slidefuse models`: the encoder registry as an aligned table, or as JSON with `--json`.

Parameter counts come from the architectures themselves, built on torch's meta device (no memory), so this
command needs the `export` extra (torch, timm); torch is imported only when the command runs.
"""

from __future__ import annotations

import json
from typing import Any

import click

from slidefuse.errors import MissingExtra

COLUMNS = (
    ("id", "id"),
    ("architecture", "architecture"),
    ("patch", "patch_size"),
    ("width", "width"),
    ("params", "params"),
    ("paper", "paper_params"),
    ("format", "checkpoint_format"),
    ("note", "note"),
)


def _human(n: int) -> str:
    """12_345_678 -> '12.3M'; 1_134_000_000 -> '1.13B'; 0 -> '-'."""
    if n <= 0:
        return "-"
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


def registry_rows(include_test: bool = True) -> list[dict[str, Any]]:
    """Every registered encoder as a JSON-ready dict: the spec's fields plus `params` (counted, meta device)."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(exc.name or "torch", "export", "slidefuse models (counting parameters)") from exc
    from slidefuse.model.registry import count_params, list_specs

    rows = []
    for spec in list_specs(include_test=include_test):
        row = spec.to_dict()
        row["params"] = count_params(spec.id)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table of `registry_rows` output (numbers right-aligned, counts in M/B)."""
    cells = [[title for title, _ in COLUMNS]]
    for row in rows:
        line = []
        for _, key in COLUMNS:
            value = row[key]
            line.append(_human(value) if key in ("params", "paper_params") else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    numeric = {"patch_size", "width", "params", "paper_params"}
    out = []
    for r in cells:
        parts = [
            c.rjust(w) if key in numeric else c.ljust(w)
            for c, w, (_, key) in zip(r, widths, COLUMNS, strict=True)
        ]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per encoder) instead.")
@click.option("--no-test", is_flag=True, help="Leave out the tiny test encoders.")
def command(as_json: bool, no_test: bool) -> None:
    """List the encoder registry: patch size, token width, parameters (counted from the architecture on the
    meta device, and as the paper reports them), checkpoint format and notes."""
    rows = registry_rows(include_test=not no_test)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_table(rows))
