"""The snapdiff command line: a thin layer over the library.

Each sub-command parses its arguments, calls one library function and formats the
result.  Errors print one line to stderr and exit non-zero; ``--debug`` shows the
traceback.  Exit codes: 0 ok, 1 error, 2 usage or not found, 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from snapdiff import __version__
from snapdiff.errors import SnapdiffError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("snapdiff: interrupted", err=True)
            sys.exit(130)
        except (SnapdiffError, OSError, ValueError) as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"snapdiff: {_one_line(e)}", err=True)
            sys.exit(getattr(e, "exit_code", 1))


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, SnapdiffError) and e.strerror:
        msg = e.strerror if e.filename is None else f"{os.fsdecode(e.filename)}: {e.strerror}"
        if msg.startswith(("walk", "hash", "open")) or e.filename is None:
            msg = str(e.strerror)
    else:
        msg = str(e)
    return " ".join(msg.split("\n"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="snapdiff")
@click.option("--root", envvar="SNAPDIFF_ROOT", default=None, metavar="DIR",
              help="Store directory (default: $SNAPDIFF_ROOT, /var/lib/snapdiff as root, "
                   "~/.local/share/snapdiff otherwise).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, root: str | None, debug: bool) -> None:
    """snapdiff: turn what a container changed into a new image layer."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="snapdiff")


def _store(ctx: click.Context):
    from snapdiff.store import Store

    return Store(ctx.obj["root"])


def with_store(f):
    """Pass the Store selected by --root as the first argument."""

    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx, *args, **kwargs):
        return f(_store(ctx), *args, **kwargs)

    return wrapper


# --- sub-commands of the core: snapshot, diff (see below) ----------------------------


# --- layers: write-layer --------------------------------------------------------------

@cli.command("write-layer")
@click.argument("rootfs", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--compression", type=click.Choice(["none", "gzip", "zstd"]), default="gzip",
              show_default=True)
@click.option("--level", type=int, default=None, help="gzip 0..3 (default 2), zstd -7..22 "
              "(default 3).")
@click.option("--timestamp", type=int, envvar="SOURCE_DATE_EPOCH", default=None,
              help="Clamp every mtime to this time (default: $SOURCE_DATE_EPOCH).")
def write_layer_cmd(rootfs: str, dest: str, compression: str, level: int | None,
                    timestamp: int | None) -> None:
    """Write the whole tree ROOTFS as one layer blob at DEST; print its digests."""
    from snapdiff.layers import tree_items, write_layer

    info = write_layer(rootfs, tree_items(rootfs), dest, compression=compression, level=level,
                       timestamp=timestamp)
    for path, reason in info.skipped:
        click.echo(f"snapdiff: skipped '{os.fsdecode(path)}': {reason}", err=True)
    click.echo(f"digest: {info.digest}\ndiff_id: {info.diff_id}\nsize: {info.size}\n"
               f"uncompressed_size: {info.uncompressed_size}\nmedia_type: {info.media_type}")
