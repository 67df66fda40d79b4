"""The `slidefuse` command line. Each verb lives in `slidefuse/commands/<verb>.py`; this module only builds
the group, sets up logging, and turns slidefuse's errors into one-line messages and exit codes."""

from __future__ import annotations

import errno
import logging
import sys
from typing import Any

import click

from slidefuse import __version__
from slidefuse.commands.flags import field_flags, with_flags
from slidefuse.errors import SlidefuseError, one_line


class _Group(click.Group):
    """A click group that prints SlidefuseError as one line (no traceback) and exits with its code. The
    library's errors name its fields (`max_tiles=5`); the line names the invoked command's flags instead
    (`--max-tiles 5`, see `slidefuse.commands.flags`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SlidefuseError as exc:
            line = with_flags(str(exc), self._invoked_flags(ctx), getattr(exc, "field", None))
            click.echo(f"slidefuse: error: {line}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C (exit 130) or SIGTERM (exit 143), once everything is cleaned up
            from slidefuse.runtime import interrupt

            code = interrupt.exit_code(exc)
            click.echo("slidefuse: interrupted" if code == 130 else "slidefuse: terminated (SIGTERM)", err=True)
            ctx.exit(code)
        except OSError as exc:  # the environment (permissions, a full or read-only disk, a file for a folder)
            click.echo(f"slidefuse: error: {os_error_line(exc)}", err=True)
            ctx.exit(1)

    def _invoked_flags(self, ctx: click.Context) -> dict[str, str]:
        """The flags of the command that was invoked (of all a group's subcommands for a group such as
        `bench`): the same field may be another command's other flag (`slides`: quantize's --slides, bench
        parity's --parity-slides), and a field the invoked command has no option for stays a field."""
        sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        return field_flags(sub) if sub is not None else {}


# errno -> what to do about it, for errors the operating system raises on paths the user named
_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder stands where a file is expected: check the path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.ELOOP: "the path has a symlink loop: check the path",
}


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: the path, what the system said and how to fix it."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or one_line(exc)
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and the disk, then try again")
    return f"{where + ': ' if where else ''}{what}; {fix}"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("slidefuse")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slidefuse")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """slidefuse: segment whole-slide images with pathology foundation-model encoders exported to
    fused ONNX / TensorRT engines.

    \b
    Typical use:
      slidefuse models
      slidefuse export tiny --random-weights --classes background,tissue --mpp 2 --out tiny.bundle
      slidefuse segment slides/ --model tiny.bundle --out results/
      slidefuse info results/... or a slide or a bundle
    """
    from slidefuse.runtime import interrupt

    interrupt.install_handler()  # Ctrl-C and SIGTERM also reach work on other threads (checked between steps)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose, quiet)


def _register() -> None:
    # Command modules import only click at module level; heavy imports happen inside each command.
    from slidefuse.commands import (
        bench,
        build,
        embed,
        export,
        info,
        keys,
        models,
        quantize,
        segment,
        sign,
        summary,
        train,
        triton,
        view,
    )

    for mod in (models, export, build, quantize, sign, keys, segment, summary, embed, bench, info, train, triton,
                view):
        cli.add_command(mod.command)


_register()


def main() -> None:
    cli(prog_name="slidefuse")
