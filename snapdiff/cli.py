"""The snapdiff command line: a thin layer over the library.

Each sub-command parses its arguments, calls one library function and formats the
result.  Errors print one line to stderr and exit non-zero; ``--debug`` shows the
traceback.  Exit codes: 0 ok, 1 error, 2 usage or not found, 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys

# snapdiff does no linear algebra: do not let numpy's import start a BLAS thread per core
# (measurable on every command's start).  Only for the command line, before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
    """Entry point: every failure, usage errors included, is one line on stderr."""
    try:
        rv = cli.main(args=argv, prog_name="snapdiff", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "snapdiff"
        click.echo(f"snapdiff: {e.format_message()} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"snapdiff: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("snapdiff: aborted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


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


@cli.command("snapshot")
@click.argument("directory", type=click.Path(file_okay=False, dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the index file.")
@click.option("--no-hash", is_flag=True, help="Record stat data only; hash no file.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Hashing threads (default: one per CPU).")
@click.option("--cross-mounts", is_flag=True, help="Descend into other mounted filesystems.")
def snapshot_cmd(directory: str, output: str, no_hash: bool, threads: int | None,
                 cross_mounts: bool) -> None:
    """Walk DIRECTORY and write its index to a file."""
    from snapdiff.index import snapshot

    if not os.path.isdir(directory):
        raise click.UsageError(f"snapshot: '{directory}' is not a directory")
    ix = snapshot(directory, hash=not no_hash, threads=threads,
                  one_file_system=not cross_mounts)
    ix.save(output)
    for p in ix.problems:
        click.echo(f"snapdiff: warning: {p}", err=True)
    click.echo(f"{len(ix)} entries -> {output}", err=True)


@cli.command("diff")
@click.argument("a")
@click.argument("b", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.option("--hash-all", is_flag=True,
              help="Hash every file of a live tree, not only those whose stat data changed.")
@click.pass_context
def diff_cmd(ctx: click.Context, a: str, b: str | None, as_json: bool, hash_all: bool) -> None:
    """List changes from A to B (each a directory or an index file), or, with one
    argument, the changes of container A, as `docker diff` does."""
    if b is None:
        from snapdiff.containers import Containers

        changes = Containers(_store(ctx).root).get(a).diff()
    else:
        from snapdiff.treediff import diff

        for side in (a, b):
            if not os.path.exists(side):
                raise click.UsageError(f"diff: '{side}': no such directory or index file")
        changes = diff(a, b, hash_all=hash_all)
    if as_json:
        click.echo(changes.to_json())
    else:
        # names are bytes and need not be UTF-8: print them as they are, like docker diff
        out = sys.stdout.buffer
        for line in changes.lines():
            out.write(os.fsencode(line) + b"\n")
        out.flush()


# --- images --------------------------------------------------------------------------

class _Bar:
    """A tqdm progress bar on a terminal (stderr), nothing otherwise; a progress callback."""

    def __init__(self, desc: str):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            leave=False, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total if total > 0 else None
            self.bar.n = done
            self.bar.refresh()

    def __enter__(self):
        return self if self.bar is not None else None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"


@cli.command("import")
@click.argument("source")
@click.argument("name", required=False)
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip",
              show_default=True, help="Compression of the layer written for a rootfs directory.")
@with_store
def import_cmd(store, source: str, name: str | None, compression: str) -> None:
    """Import SOURCE as an image: a rootfs directory, a rootfs tarball (.tar, .tar.gz,
    .tar.zst, or - for stdin), oci:DIR[:REF], oci-archive:FILE[:REF] or
    docker-archive:FILE[:REF]."""
    with _Bar("import") as bar:
        img = store.import_(source, name, compression=compression, progress=bar)
    click.echo(img.id)


@cli.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Print image ids only.")
@with_store
def images_cmd(store, quiet: bool) -> None:
    """List the images of the store."""
    records = store.images()
    if quiet:
        for r in records:
            click.echo(r.id)
        return
    click.echo(f"{'NAME':<40} {'IMAGE ID':<12}  {'CREATED':<20} {'SIZE':>9}")
    for r in records:
        click.echo(f"{(r.name or '<none>'):<40} {_short(r.id):<12}  "
                   f"{(r.created or '')[:19]:<20} {_human(r.size):>9}")


@cli.command("inspect")
@click.argument("image")
@with_store
def inspect_cmd(store, image: str) -> None:
    """Print what the store knows of IMAGE as JSON."""
    import json

    click.echo(json.dumps(store.inspect(image), indent=2))


@cli.command("history")
@click.argument("image")
@with_store
def history_cmd(store, image: str) -> None:
    """Show the history of IMAGE, newest first."""
    click.echo(f"{'LAYER':<12}  {'CREATED':<20} {'SIZE':>9}  CREATED BY")
    for h in store.history(image):
        layer = _short(h["layer"]) if h["layer"] else "<empty>"
        click.echo(f"{layer:<12}  {(h['created'] or '')[:19]:<20} {_human(h['size']):>9}  "
                   f"{h['created_by'] or h['comment']}")


@cli.command("tag")
@click.argument("src")
@click.argument("dst")
@with_store
def tag_cmd(store, src: str, dst: str) -> None:
    """Give image SRC the name DST (moving DST from any other image)."""
    img = store.tag(src, dst)
    click.echo(f"{img.name} {_short(img.id)}")


@cli.command("rmi")
@click.argument("images", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove every name of an image given by id.")
@with_store
def rmi_cmd(store, images: tuple[str, ...], force: bool) -> None:
    """Remove image names (blobs and layers stay until gc)."""
    for ref in images:
        for removed in store.rmi(ref, force=force):
            click.echo(f"untagged {removed}")


@cli.command("export")
@click.argument("image")
@click.argument("dest")
@with_store
def export_cmd(store, image: str, dest: str) -> None:
    """Write IMAGE to DEST: oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE,
    or a flattened rootfs tarball (rootfs:FILE or FILE.tar[.gz|.zst])."""
    with _Bar("export") as bar:
        store.export(image, dest, progress=bar)


@cli.command("gc")
@with_store
def gc_cmd(store) -> None:
    """Remove blobs and unpacked layers that no image references."""
    s = store.gc()
    click.echo(f"removed {s['blobs']} blobs ({_human(s['bytes'])}), {s['layers']} unpacked "
               f"layers, {s['tmp']} temporaries")


@cli.command("fsck")
@with_store
def fsck_cmd(store) -> None:
    """Re-hash every blob and unpacked layer; exit 1 on any problem."""
    with _Bar("fsck") as bar:
        problems = store.fsck(progress=bar)
    for p in problems:
        click.echo(f"snapdiff: fsck: {p}", err=True)
    if problems:
        sys.exit(1)
    click.echo("ok")


# --- containers ----------------------------------------------------------------------


def _store_root(ctx: click.Context) -> str:
    from snapdiff.store import default_root

    return ctx.obj.get("root") or default_root()


def _containers(ctx: click.Context):
    from snapdiff.containers import Containers

    return Containers(_store_root(ctx))


def _status_text(c) -> str:
    import time as _time

    st = c.status
    if st == "running":
        return "Up (Paused)" if c.paused else "Up"
    if st == "exited":
        code = c.exit_code
        ago = int(_time.time() - (c._data.get("finished_at") or c.created))
        return f"Exited ({'?' if code is None else code}) {ago}s ago"
    return "Created"


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--name", default=None, help="Name of the container.")
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the id.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory.")
@click.option("-u", "--user", default=None, metavar="UID[:GID]", help="User (name or id).")
@click.option("--hostname", default=None, help="Host name (default: the short id).")
@click.option("--network", type=click.Choice(["none", "host"]), default="none",
              show_default=True, help="Network namespace: loopback only, or the host's.")
@click.option("-v", "--volume", multiple=True, metavar="HOST:CTR[:ro]", help="Bind mount.")
@click.option("--runtime", type=click.Choice(["runc", "crun"]), default=None,
              help="Run with an OCI runtime instead of the built-in launcher.")
@click.argument("image")
@click.argument("cmd", nargs=-1)
@click.pass_context
def run(ctx, name, remove, detach, env, workdir, user, hostname, network, volume, runtime,
        image, cmd):
    """Run CMD (or the image's command) in a new container from IMAGE."""
    img = _store(ctx).image(image)
    c, code = _containers(ctx).run(img, detach=detach, remove=remove, name=name,
                                   cmd=list(cmd) or None, env=env, workdir=workdir, user=user,
                                   hostname=hostname, network=network, volumes=volume,
                                   runtime=runtime)
    if detach:
        click.echo(c.id)
    ctx.exit(code)


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show stopped containers too.")
@click.pass_context
def ps(ctx, show_all):
    """List containers."""
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "NAMES")]
    for c in _containers(ctx).list(all=show_all):
        command = " ".join(" ".join(c.spec["argv"]).split())  # one line, whatever the script
        if len(command) > 30:
            command = command[:27] + "..."
        rows.append((c.id[:12], c.image_name or c.image_id[7:19], command, _status_text(c),
                     c.name or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@cli.command()
@click.option("-t", "--time", "timeout", default=10.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx, timeout, containers):
    """Stop running containers (SIGTERM, then SIGKILL)."""
    cs = _containers(ctx)
    for ref in containers:
        cs.get(ref).stop(timeout=timeout)
        click.echo(ref)


@cli.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True,
              help="Signal name or number.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx, sig, containers):
    """Send a signal to running containers."""
    import signal as _signal

    if sig.isdigit():
        signum = int(sig)
    else:
        name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
        if not hasattr(_signal, name):
            raise click.BadParameter(f"unknown signal '{sig}'", param_hint="'-s'")
        signum = int(getattr(_signal, name))
    cs = _containers(ctx)
    for ref in containers:
        cs.get(ref).kill(signum)
        click.echo(ref)


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx, force, containers):
    """Remove containers and their writable layers."""
    cs = _containers(ctx)
    for ref in containers:
        cs.get(ref).remove(force=force)
        click.echo(ref)


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory.")
@click.option("-u", "--user", default=None, metavar="UID[:GID]", help="User (name or id).")
@click.argument("container")
@click.argument("cmd", nargs=-1, required=True)
@click.pass_context
def exec_(ctx, env, workdir, user, container, cmd):
    """Run CMD inside a running container's namespaces."""
    code = _containers(ctx).get(container).exec(list(cmd), env=env, workdir=workdir, user=user)
    ctx.exit(code)


@cli.command()
@click.argument("container")
@click.pass_context
def mount(ctx, container):
    """Mount a container's tree and print the path."""
    click.echo(_containers(ctx).get(container).mount())


@cli.command()
@click.argument("container")
@click.pass_context
def umount(ctx, container):
    """Unmount a container's tree."""
    _containers(ctx).get(container).umount()


@cli.command()
@click.argument("container")
@click.pass_context
def logs(ctx, container):
    """Print the output of a detached container."""
    data = _containers(ctx).get(container).logs()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()

# --- registry -------------------------------------------------------------------------
# push / pull move images between the store and a registry (Store.push / Store.pull);
# login / logout keep credentials in ~/.config/snapdiff/auth.json.

def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@cli.command("push")
@click.argument("image")
@click.argument("dest", required=False)
@click.option("--insecure", "--plain-http", "insecure", is_flag=True,
              help="Use plain http (implied for 127.0.0.1 and localhost).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True,
              help="Blobs uploaded at once.")
@with_store
def push_cmd(store, image: str, dest: str | None, insecure: bool, jobs: int) -> None:
    """Push IMAGE of the store to DEST (REGISTRY/REPO[:TAG]; default: IMAGE's own name)."""
    r = store.push(image, dest, insecure=insecure, jobs=jobs)
    click.echo(f"pushed {dest or image} {r.manifest_digest} ({len(r.uploaded)} uploaded, "
               f"{len(r.skipped)} present, {len(r.mounted)} mounted, {_mib(r.bytes_uploaded)})")


@cli.command("pull")
@click.argument("source")
@click.argument("name", required=False)
@click.option("--insecure", "--plain-http", "insecure", is_flag=True,
              help="Use plain http (implied for 127.0.0.1 and localhost).")
@click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
              help="Platform to pick from a multi-platform image (default: this machine).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True,
              help="Blobs downloaded at once.")
@with_store
def pull_cmd(store, source: str, name: str | None, insecure: bool, platform: str | None,
             jobs: int) -> None:
    """Pull SOURCE (REGISTRY/REPO[:TAG|@DIGEST]) into the store as NAME[:TAG]
    (default: the source's REPO:TAG); prints the image id."""
    img = store.pull(source, name, insecure=insecure, platform=platform, jobs=jobs)
    t = img.transfer
    click.echo(img.id)
    click.echo(f"pulled {source} as {img.name or '<none>'} ({len(t.fetched)} fetched, "
               f"{len(t.reused)} present, {_mib(t.bytes_fetched)})", err=True)


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
    from snapdiff import registry

    registry.logout(registry_host)
    click.echo(f"removed credentials for {registry_host}")

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


# --- commit --------------------------------------------------------------------------


@cli.command("commit")
@click.option("-m", "--message", default=None, help="Commit message (history comment).")
@click.option("-a", "--author", default=None, help="Author of the new image.")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, "
                   "WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL. Repeatable.")
@click.option("--compression", type=click.Choice(["none", "gzip", "zstd"]), default="gzip",
              show_default=True, help="Layer compression.")
@click.option("--level", type=int, default=None, help="Compression level.")
@click.option("--full", is_flag=True,
              help="Commit everything since the container was created, not only what "
                   "changed since its last commit.")
@click.option("--pause/--no-pause", default=True, show_default=True,
              help="Freeze a running container while its layer is written.")
@click.option("--replace", is_flag=True, help="Move NAME to the new image if it is taken.")
@click.option("--timestamp", type=int, default=None, envvar="SOURCE_DATE_EPOCH",
              help="Clamp every mtime in the layer to this time (seconds since the epoch).")
@click.argument("container")
@click.argument("name", required=False)
@click.pass_context
def commit_cmd(ctx, message, author, changes, compression, level, full, pause, replace,
               timestamp, container, name) -> None:
    """Write CONTAINER's changes as a new layer and image (NAME[:TAG]); print its id."""
    store = _store(ctx)
    with _Bar("commit") as bar:
        # the layer's size is known only at the end: bytes written so far, no total
        image = store.commit(container, name, message=message, author=author,
                             changes=changes, compression=compression, level=level, full=full,
                             pause=pause, replace=replace, timestamp=timestamp,
                             progress=(lambda done: bar(done, 0)) if bar else None)
    click.echo(image.id)
