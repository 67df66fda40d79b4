"""`slidefuse info SLIDE_OR_BUNDLE`: describe a slide, or verify a bundle and print its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / "manifest.json").exists()) or path.name == "manifest.json"


def slide_summary(path: Path, mpp: float | None) -> dict[str, Any]:
    from slidefuse.runtime.slide import open_slide

    with open_slide(path, mpp=mpp) as slide:
        i = slide.info
        return {
            "path": str(i.path),
            "width": i.width,
            "height": i.height,
            "mpp": i.mpp,
            "mpp_source": i.mpp_source,
            "vendor": i.vendor,
            "loader": i.loader,
            "objective_power": i.objective_power,
            "levels": [{"width": lv.width, "height": lv.height, "downsample": lv.downsample} for lv in i.levels],
        }


def _print_slide(d: dict[str, Any]) -> None:
    click.echo(f"slide      {d['path']}")
    click.echo(f"size       {d['width']} x {d['height']} px (level 0)")
    mpp = f"{d['mpp']:.4f} um/px (from {d['mpp_source']})" if d["mpp"] else "unknown"
    click.echo(f"pixel size {mpp}")
    if d.get("objective_power"):
        click.echo(f"objective  {d['objective_power']:g}x")
    click.echo(f"vendor     {d['vendor']}")
    click.echo(f"loader     {d['loader']}")
    click.echo(f"levels     {len(d['levels'])}")
    for n, lv in enumerate(d["levels"]):
        click.echo(f"  {n}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:g}")


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Pixel size override (um/px) for slides without one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-verify", is_flag=True, help="Bundles: skip the sha256 check of every file.")
def command(path: Path, mpp: float | None, as_json: bool, no_verify: bool) -> None:
    """Describe a slide (size, levels, pixel size, vendor, loader) or a model bundle (verifies every
    file's sha256 and prints the model card)."""
    from slidefuse.errors import SlideNotFound

    if not path.exists():
        raise SlideNotFound(f"{path}: no such file or folder; check the path")
    if _is_bundle(path):
        from slidefuse.runtime.bundle import load_bundle, model_card

        bundle = load_bundle(path.parent if path.name == "manifest.json" else path, verify=not no_verify)
        if as_json:
            click.echo(json.dumps(bundle.manifest.to_dict(), indent=2))
        else:
            click.echo(model_card(bundle, verified=not no_verify))
        return
    d = slide_summary(path, mpp)
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_slide(d)
