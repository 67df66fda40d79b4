"""`slidefuse view OUT`: review a batch's results in a browser (a local, read-only web app)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

LOCAL_HOSTS = ("localhost",)


def is_local(host: str) -> bool:
    """True when `host` is a loopback address or `localhost`."""
    if host.lower() in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """The warning to print for a non-local `host` (None for a local one); raises UsageError when a non-local
    `host` comes without `allow_remote`."""
    from slidefuse.errors import UsageError

    if is_local(host):
        return None
    if not allow_remote:
        raise UsageError(f"--host {host} is not a local address: anyone who can reach this machine could browse the "
                         "slides; add --allow-remote to serve it anyway", field="host")
    return (f"warning: serving on {host}: anyone who can reach this machine on this port can see these slides and "
            "results (no login, no encryption)")


@click.command("view")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. A non-local address needs --allow-remote.")
@click.option("--allow-remote", is_flag=True, help="Allow a non-local --host (e.g. 0.0.0.0 in a container).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for rendered tiles [default: $XDG_CACHE_HOME/slidefuse/view].")
@click.option("--cache-size", type=click.IntRange(16, None), default=2048, show_default=True,
              help="Most megabytes of tiles kept in the cache (least recently used removed first).")
def command(out: Path, port: int, host: str, allow_remote: bool, cache_dir: Path | None, cache_size: int) -> None:
    """Review the results in OUT (a `slidefuse segment --out` folder) in a browser: a cohort table of every slide,
    and per slide a zoomable view with its mask, probabilities and QC overlays. Read-only; it serves only the
    slides and files that OUT's run log records. Needs the `view` extra: pip install 'slidefuse[view]'."""
    from slidefuse.errors import require
    from slidefuse.view.app import create_app
    from slidefuse.view.cache import TileCache, default_cache_dir

    warning = check_host(host, allow_remote)
    uvicorn = require("uvicorn", "view", "slidefuse view")
    require("starlette", "view", "slidefuse view")
    cache = TileCache(cache_dir or default_cache_dir(), cache_size * 1024 * 1024)
    app = create_app(out, cache)
    if warning:
        click.echo(warning, err=True)
    n = len(app.state.viewer.catalogue.slides)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"slidefuse view: {n} slide(s) from {out} at http://{shown}:{port}/ (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
