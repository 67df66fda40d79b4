"""`slidefuse summary OUT [--format csv|parquet] [--out FILE]`: rebuild the cohort table from OUT's run log."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")


def rebuild_summary(out_root: Path, fmt: Format = "csv", path: Path | None = None) -> tuple[Path, int]:
    """Write the cohort table of `out_root`'s run log (run.json and every process's records) to `path` (default
    OUT/summary.csv or OUT/summary.parquet), under the run log's lock; returns the file and its row count.
    Raises UsageError when OUT holds no run log, MissingExtra when Parquet is asked for without pyarrow."""
    from slidefuse.errors import UsageError, require
    from slidefuse.runtime.segment.claims import exclusive_file
    from slidefuse.runtime.segment.runlog import RECORDS_DIR, RUN_LOG, RunLog
    from slidefuse.runtime.segment.summary import SUMMARY, csv_text, summary_table, write_summary_parquet

    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if fmt == "parquet":  # before anything is read or written: a missing extra changes nothing
        require("pyarrow", "parquet", "writing the cohort table as Parquet")
    out_root = Path(out_root)
    if not (out_root / RUN_LOG).is_file() and not any((out_root / RECORDS_DIR).glob("*.jsonl")):
        raise UsageError(f"{out_root}: no run log here ({RUN_LOG} or {RECORDS_DIR}/); pass the --out folder of a "
                         "'slidefuse segment' run")
    target = path or out_root / (SUMMARY if fmt == "csv" else Path(SUMMARY).with_suffix(".parquet").name)
    with exclusive_file(out_root / (RUN_LOG + ".lock")):
        entries = RunLog(out_root).entries  # a damaged run.json: rebuilt from the records (with a warning)
        table = summary_table(entries)
        if fmt == "parquet":
            write_summary_parquet(table, target)
        else:
            from slidefuse.atomic import write_text_atomic

            write_text_atomic(target, csv_text(table))
    return target, len(table.rows)


@click.command("summary")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="csv (RFC 4180) or parquet (typed columns; needs pyarrow: pip install 'slidefuse[parquet]').")
@click.option("--out", "path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File to write (default: OUT/summary.csv, or OUT/summary.parquet).")
def command(out: Path, fmt: Format, path: Path | None) -> None:
    """Rebuild the cohort table of OUT (the --out folder of 'slidefuse segment') from its run log: one row per
    slide with its status, tissue and class areas in mm², tiles, seconds, backend and model digest.
    'slidefuse segment' keeps OUT/summary.csv up to date itself; this rebuilds it, or writes Parquet."""
    target, rows = rebuild_summary(out, fmt, path)
    click.echo(f"{target}: {rows} slide(s)")
