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


# --- registry -------------------------------------------------------------------------
# push / pull move images between the store's OCI layout (<root>/oci) and a registry;
# login / logout keep credentials in ~/.config/snapdiff/auth.json.

def _layout_dir(ctx: click.Context) -> str:
    root = ctx.obj["root"] or ("/var/lib/snapdiff" if os.geteuid() == 0
                               else os.path.expanduser("~/.local/share/snapdiff"))
    return os.path.join(root, "oci")


def _image_name(name: str) -> str:
    """``app`` -> ``app:latest``; a name with a tag or digest is left alone."""
    last = name.rsplit("/", 1)[-1]
    return name if (":" in last or "@" in name) else f"{name}:latest"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@cli.command("push")
@click.argument("image")
@click.argument("dest", required=False)
@click.option("--insecure", "--plain-http", "insecure", is_flag=True,
              help="Use plain http (implied for 127.0.0.1 and localhost).")
@click.option("-j", "--jobs", default=4, show_default=True, help="Blobs uploaded at once.")
@click.pass_context
def push_cmd(ctx: click.Context, image: str, dest: str | None, insecure: bool, jobs: int) -> None:
    """Push IMAGE of the store to DEST (REGISTRY/REPO[:TAG]; default: IMAGE's own name)."""
    from snapdiff import registry

    image = _image_name(image)
    dest = dest or image
    r = registry.push(_layout_dir(ctx), image, dest, insecure=insecure, jobs=jobs)
    click.echo(f"pushed {dest} {r.manifest_digest} ({len(r.uploaded)} uploaded, "
               f"{len(r.skipped)} present, {len(r.mounted)} mounted, {_mib(r.bytes_uploaded)})")


@cli.command("pull")
@click.argument("source")
@click.argument("name", required=False)
@click.option("--insecure", "--plain-http", "insecure", is_flag=True,
              help="Use plain http (implied for 127.0.0.1 and localhost).")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
              help="Platform to pick from a multi-platform image (default: this machine).")
@click.option("-j", "--jobs", default=4, show_default=True, help="Blobs downloaded at once.")
@click.pass_context
def pull_cmd(ctx: click.Context, source: str, name: str | None, insecure: bool,
             platform: str | None, jobs: int) -> None:
    """Pull SOURCE (REGISTRY/REPO[:TAG|@DIGEST]) into the store as NAME[:TAG]."""
    from snapdiff import registry

    layout = _layout_dir(ctx)
    ref_name = _image_name(name or str(registry.parse_reference(source)))
    r = registry.pull(source, layout, platform=platform, insecure=insecure, jobs=jobs)
    registry.record_in_layout(layout, r.manifest, ref_name)
    click.echo(f"pulled {source} as {ref_name} {r.manifest['digest']} ({len(r.fetched)} fetched, "
               f"{len(r.reused)} present, {_mib(r.bytes_fetched)})")


@cli.command("login")
@click.argument("registry_host", metavar="REGISTRY")
@click.option("-u", "--username", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", "--plain-http", "insecure", is_flag=True,
              help="Use plain http (implied for 127.0.0.1 and localhost).")
def login_cmd(registry_host: str, username: str, password_stdin: bool, insecure: bool) -> None:
    """Check credentials for REGISTRY and save them."""
    from snapdiff import registry

    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    if not password:
        raise click.UsageError("empty password")
    path = registry.login(registry_host, username, password, insecure=insecure)
    click.echo(f"login succeeded; credentials saved in {path}")


@cli.command("logout")
@click.argument("registry_host", metavar="REGISTRY")
def logout_cmd(registry_host: str) -> None:
    """Forget the saved credentials for REGISTRY."""
    from snapdiff import auth

    if not auth.remove(registry_host):
        click.echo(f"snapdiff: logout '{registry_host}': not logged in", err=True)
        sys.exit(1)
    click.echo(f"removed credentials for {registry_host}")
