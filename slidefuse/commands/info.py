"""`slidefuse info SLIDE_OR_BUNDLE`: describe a slide, or verify a bundle and print its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / "manifest.json").exists()) or path.name == "manifest.json"


def slide_summary(path: Path, mpp: float | None, check_colours: bool = False) -> dict[str, Any]:
    import dataclasses

    from slidefuse.runtime.slide import open_slide

    with open_slide(path, default_mpp=mpp, require_mpp=False) as slide:
        i = slide.info
        checks = None
        if check_colours:
            from slidefuse.runtime.slide.crosscheck import check_colours as run_check

            checks = [dataclasses.asdict(c) for c in run_check(slide)]
        return {
            "path": str(i.path),
            "width": i.width,
            "height": i.height,
            "mpp": i.mpp or None,  # None: the file records no pixel size (and none was given)
            "mpp_source": i.mpp_source,
            "vendor": i.vendor,
            "loader": i.loader,
            "objective_power": i.objective_power,
            "levels": [{"width": lv.width, "height": lv.height, "downsample": lv.downsample} for lv in i.levels],
            "colour": dataclasses.asdict(i.colour) if i.colour else None,
            "colour_check": checks,
        }


def _print_slide(d: dict[str, Any]) -> None:
    click.echo(f"slide      {d['path']}")
    click.echo(f"size       {d['width']} x {d['height']} px (level 0)")
    mpp = f"{d['mpp']:.4f} um/px (from {d['mpp_source']})" if d["mpp"] else "unknown (not recorded in the file)"
    click.echo(f"pixel size {mpp}")
    if d.get("objective_power"):
        click.echo(f"objective  {d['objective_power']:g}x")
    click.echo(f"vendor     {d['vendor']}")
    click.echo(f"loader     {d['loader']}")
    click.echo(f"levels     {len(d['levels'])}")
    for n, lv in enumerate(d["levels"]):
        click.echo(f"  {n}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:g}")
    c = d.get("colour")
    if c:
        click.echo(f"colour     decoder {c['decoder']}; stored {', '.join(c['stored'])}")
        click.echo(f"           conversions: {', '.join(c['conversions']) or 'none'}; ICC: {c['icc']}")
    if d.get("colour_check") is not None:
        _print_colour_check(d["colour_check"])


def _print_colour_check(checks: list[dict[str, Any]]) -> None:
    if not checks:
        click.echo("colour check: no independent decoder reads this file (tifffile, openslide-python)")
        return
    for name in sorted({c["decoder"] for c in checks}):
        mine = [c for c in checks if c["decoder"] == name]
        bad = [c for c in mine if not c["agrees"]]
        worst = max(mine, key=lambda c: c["mean_abs_diff"])
        verdict = "agrees" if not bad else f"DISAGREES on {len(bad)} of {len(mine)} regions"
        click.echo(f"colour check vs {name}: {verdict} (worst region: level {worst['level']}, mean |diff| "
                   f"{worst['mean_abs_diff']:.2f}, p99 {worst['p99_abs_diff']:.1f} grey levels, {worst['method']})")


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None, help="Pixel size (um/px) to show for a slide without one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-verify", is_flag=True, help="Bundles: skip the sha256 check of every file.")
@click.option("--check-colours", is_flag=True,
              help="Slides: compare the decoded colours with independent decoders (tifffile, openslide-python; "
                   "the 'colour' extra) on random regions; exits 1 when one disagrees.")
@click.option("--trust", "trust", multiple=True, metavar="PUBKEY",
              help="Bundles: a public key to trust when showing the signature state (repeatable; see segment).")
def command(path: Path, mpp: float | None, as_json: bool, no_verify: bool, check_colours: bool,
            trust: tuple[str, ...]) -> None:
    """Describe a slide (size, levels, pixel size, vendor, loader, colour pipeline) or a model bundle
    (verifies every file's sha256, prints the model card and its signature state)."""
    from slidefuse.errors import SlideNotFound

    if not path.exists():
        raise SlideNotFound(f"{path}: no such file or folder; check the path")
    if _is_bundle(path):
        from slidefuse.runtime.bundle import load_bundle, model_card
        from slidefuse.runtime.signing import check_signatures, trusted_keys

        bundle = load_bundle(path.parent if path.name == "manifest.json" else path, verify=not no_verify)
        state = check_signatures(bundle, trusted_keys(trust))
        if as_json:
            click.echo(json.dumps({**bundle.manifest.to_dict(), "signature": state.record()}, indent=2))
        else:
            click.echo(model_card(bundle, verified=not no_verify))
            click.echo(f"signature  {state.describe()}")
        return
    d = slide_summary(path, mpp, check_colours)
    if not d["mpp"]:
        click.echo(f"slidefuse: warning: {path}: the file records no pixel size; 'slidefuse segment' needs one: "
                   "--mpp UM_PER_PX (used only for slides without one), or a --list CSV with the columns path,mpp",
                   err=True)
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_slide(d)
    if check_colours and any(not c["agrees"] for c in d["colour_check"] or []):
        raise SystemExit(1)
