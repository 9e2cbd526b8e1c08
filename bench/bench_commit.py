"""Commit speed: `snapdiff commit` against a floor and against buildah, in one run.

    python bench/bench_commit.py [--base-files 20000] [--scale 1|10]   # the table
    python -m pytest bench/bench_commit.py                              # pytest-benchmark

The base image is a busybox rootfs plus --base-files seeded files of 0-16 KiB (bench/_trees.py),
imported into a snapdiff store under $SNAPDIFF_BENCH_DIR/commit (default
/var/tmp/snapdiff-bench/commit) and reused by later runs.  --scale 10 also builds a base ten
times larger and times S1 on it (the cost of a commit must follow the change, not the image).

Scenarios, each written into a fresh container's merged overlay mount from Python:
  S1 100 new 4 KiB files, 10 modified, 10 deleted, 1 directory (100 files) removed
  S2 1 GiB of random bytes in 2,000 new files
  S3 50,000 new 1 KiB files
  S4 5,000 no-op copy-ups (chown away and back, chmod away and back, identical rewrite +
     mtime restored)

Every timing is the best of N rounds (N=3 for S1/S4, 2 for S2/S3) after a warm-up, with a
warm page cache.  Between rounds the image is removed and the container's commit record
dropped, so every round is a full first commit.  Floors and peers are timed in the same run:
`tar -cf - UPPER | openssl dgst -sha256` for the uncompressed commit, and `buildah commit
--format oci` to an OCI layout (buildah's overlay driver, same base, same changes written
into its mounted working container) for the gzip commit.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _trees  # noqa: E402

import snapdiff  # noqa: E402
from snapdiff.errors import ContainerNotFound, ImageNotFound  # noqa: E402

BENCH_DIR = os.path.join(os.environ.get("SNAPDIFF_BENCH_DIR", "/var/tmp/snapdiff-bench"),
                         "commit")
ROUNDS = {"S1": 3, "S2": 2, "S3": 2, "S4": 3}
BASE_REF = "base:1"
SNAPDIFF_CLI = os.path.join(os.path.dirname(sys.executable), "snapdiff")


# --- setup ---------------------------------------------------------------------------

def base_store(nfiles: int) -> snapdiff.Store:
    """The store holding base:1 for a base of nfiles generated files (built once)."""
    root = os.path.join(BENCH_DIR, f"store-{nfiles}")
    done = os.path.join(root, ".bench-done")
    if os.path.exists(done):
        return snapdiff.Store(root)
    for p in (root, root + ".rootfs"):
        if os.path.lexists(p):
            _force_rmtree(p)
    src = root + ".rootfs"
    t = time.perf_counter()
    _trees.build_base_rootfs(src, nfiles)
    store = snapdiff.Store(root)
    store.import_(src, BASE_REF)
    shutil.rmtree(src)  # the store's unpacked layer is the copy that matters
    open(done, "w").close()
    print(f"# built base of {nfiles} files in {time.perf_counter() - t:.1f}s: {root}",
          flush=True)
    return store


def _force_rmtree(path: str) -> None:
    """Remove a tree, unmounting any overlay left mounted under it by an interrupted run."""
    with open("/proc/self/mounts") as f:
        mounts = [ln.split()[1] for ln in f]
    for m in sorted((m for m in mounts if m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(path)


def scenario_container(store: snapdiff.Store, scen: str, nfiles: int):
    """A fresh container of base:1 with scenario `scen` written into it."""
    name = f"bench-{scen.lower()}"
    with contextlib.suppress(ContainerNotFound):
        store.container(name).remove(force=True)
    c = store.containers.create(store.image(BASE_REF), name=name, cmd=["/bin/sh"])
    merged = c.mount()
    try:
        _trees.SCENARIOS[scen](merged, nfiles)
    finally:
        c.umount()
    return c


def reset(store: snapdiff.Store, c, name: str) -> None:
    """Forget a commit: remove its image (and blobs) and the container's commit record."""
    c.reload()
    c.state.pop("commit", None)  # first: gc keeps what a container's last commit uses
    c.save_state()
    with contextlib.suppress(ImageNotFound):
        store.rmi(name)
    store.gc()


def best(fn, rounds: int, before=None) -> float:
    """Best wall time of `rounds` calls of fn after one warm-up; `before` runs untimed
    before each call."""
    times = []
    for _ in range(rounds + 1):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def sh(cmd: list[str] | str) -> None:
    subprocess.run(cmd, shell=isinstance(cmd, str), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


# --- buildah -------------------------------------------------------------------------

class Buildah:
    """buildah with private storage (overlay driver) under BENCH_DIR/buildah."""

    def __init__(self, store: snapdiff.Store, tag: str):
        self.dir = os.path.join(BENCH_DIR, "buildah")
        self.base = ["buildah", "--root", os.path.join(self.dir, "root"),
                     "--runroot", os.path.join(self.dir, "runroot"),
                     "--storage-driver", "overlay"]
        self.source = f"oci:{store.oci_dir}:{BASE_REF}"
        self.tag = tag
        self.error: str | None = None

    def _run(self, *args: str, capture: bool = False) -> str:
        r = subprocess.run(self.base + list(args), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"buildah {args[0]}: {r.stderr.strip().splitlines()[-1:]}")
        return r.stdout.strip()

    def working(self, scen: str, nfiles: int) -> str | None:
        """A working container from the same base with the scenario written into it."""
        if self.error:
            return None
        name = f"bench-{self.tag}-{scen.lower()}"
        try:
            subprocess.run(self.base + ["rm", name], capture_output=True)
            self._run("from", "--quiet", "--name", name, self.source)
            merged = self._run("mount", name)
            try:
                _trees.SCENARIOS[scen](merged, nfiles)
            finally:
                self._run("umount", name)
            return name
        except (RuntimeError, OSError) as e:
            self.error = str(e)
            return None

    def commit(self, name: str, dest: str) -> None:
        self._run("commit", "--quiet", "--format", "oci", name, f"oci:{dest}:x")

    def rm(self, name: str) -> None:
        subprocess.run(self.base + ["rm", name], capture_output=True)


def layout_top_layer_size(layout: str) -> int:
    """Size of the top layer blob of the image in an OCI layout."""
    with open(os.path.join(layout, "index.json")) as f:
        desc = json.load(f)["manifests"][0]
    with open(os.path.join(layout, "blobs", *desc["digest"].split(":"))) as f:
        return json.load(f)["layers"][-1]["size"]


# --- the table -----------------------------------------------------------------------

class Table:
    def __init__(self):
        self.rows: list[str] = []

    def row(self, text: str) -> None:
        self.rows.append(text)
        print(text, flush=True)


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}" if b > 0 else "  n/a"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(nfiles: int, scale: int) -> Table:
    tab = Table()
    store = base_store(nfiles)
    tab.row(f"# snapdiff {snapdiff.__version__}, {os.cpu_count()} CPUs, python "
            f"{sys.version.split()[0]}, base {nfiles} files + busybox, store {store.root}")
    tab.row(f"# load average at start: {loadavg()}")
    bh = Buildah(store, str(nfiles))
    cont = {s: scenario_container(store, s, nfiles) for s in ROUNDS}

    def snap_commit(s: str, compression: str):
        c = cont[s]
        name = f"out-{s.lower()}:{compression}"
        out = {}

        def go():
            out["img"] = c.commit(name, compression=compression)
        t = best(go, ROUNDS[s], before=lambda: reset(store, c, name))
        img = out["img"]
        reset(store, c, name)
        return t, img

    # 1. uncompressed commit against the tar | sha256 floor
    tab.row("")
    tab.row(f"{'uncompressed commit':28s} {'snapdiff':>9s} {'tar|openssl':>12s} "
            f"{'ratio':>6s}  target   layer")
    none_imgs = {}
    for s in ROUNDS:
        t, img = snap_commit(s, "none")
        none_imgs[s] = img
        upper = cont[s].upper_dir
        floor = best(lambda u=upper: sh(f"tar -cf - {u} | openssl dgst -sha256"), ROUNDS[s])
        target = "<= 1.3" if s in ("S2", "S3") else ""
        tab.row(f"{s + ' ' + _desc(s):28s} {t:8.3f}s {floor:11.3f}s "
                f"{fmt_ratio(t, floor)}  {target:7s} {img.layer_info.size:>12,d} B, "
                f"{len(img.changes):,d} entries")

    # 2. S1 through the CLI, process start included, on this base and a larger one
    tab.row("")
    tab.row(f"{'S1 CLI commit (process wall)':28s} {'snapdiff':>9s} {'python -c pass':>15s}"
            f" {'import numpy,click':>19s}  target")
    bases = [(nfiles, store, cont["S1"])]
    if scale > 1:
        big = base_store(nfiles * scale)
        bases.append((nfiles * scale, big, scenario_container(big, "S1", nfiles * scale)))
    # an installed package has its bytecode compiled (pip does it); this environment may
    # set PYTHONDONTWRITEBYTECODE=1, which would recompile every module in every process
    compileall.compile_dir(os.path.dirname(snapdiff.__file__), quiet=1)
    py_floor = best(lambda: sh([sys.executable, "-c", "pass"]), 3)
    # what any Python command line built on numpy and click pays before doing anything
    np_floor = best(lambda: sh([sys.executable, "-c", "import numpy, click"]), 3)
    name = "out-s1-cli:1"
    for n, st, c in bases:
        t = best(lambda st=st, c=c: sh([SNAPDIFF_CLI, "--root", st.root, "commit",
                                        "--compression", "none", c.id, name]),
                 ROUNDS["S1"], before=lambda st=st, c=c: reset(st, c, name))
        reset(st, c, name)
        tab.row(f"{'S1 on ' + format(n, ',') + ' files':28s} {t:8.3f}s {py_floor:14.3f}s"
                f" {np_floor:18.3f}s  < 0.15 s {'ok' if t < 0.15 else 'MISSED'}")

    # 3. gzip commit against buildah commit of the same changes
    tab.row("")
    tab.row(f"{'gzip commit vs buildah':28s} {'snapdiff':>9s} {'buildah':>9s} "
            f"{'buildah/snapdiff':>17s}  target >= 3")
    gz_imgs = {}
    bh_sizes: dict[str, int] = {}
    dest = os.path.join(bh.dir, "out")
    for s in ROUNDS:
        t, img = snap_commit(s, "gzip")
        gz_imgs[s] = img
        wc = bh.working(s, nfiles)
        if wc is None:
            tab.row(f"{s + ' ' + _desc(s):28s} {t:8.3f}s  buildah unavailable: {bh.error}")
            continue
        try:
            tb = best(lambda wc=wc: bh.commit(wc, dest), ROUNDS[s],
                      before=lambda: shutil.rmtree(dest, ignore_errors=True))
            bh_sizes[s] = layout_top_layer_size(dest)
        except RuntimeError as e:
            tab.row(f"{s + ' ' + _desc(s):28s} {t:8.3f}s  buildah commit failed: {e}")
            continue
        finally:
            shutil.rmtree(dest, ignore_errors=True)
            bh.rm(wc)
        tab.row(f"{s + ' ' + _desc(s):28s} {t:8.3f}s {tb:8.3f}s {fmt_ratio(tb, t):>17s}"
                f"  {'ok' if tb >= 3 * t else 'MISSED'}")

    # 4. S4: the layer of no-op copy-ups carries no content
    img = gz_imgs["S4"]
    cs = img.changes
    tab.row("")
    tab.row("S4 no-op copy-ups: snapdiff layer "
            f"{img.layer_info.size:,d} B gzip / {none_imgs['S4'].layer_info.size:,d} B tar, "
            f"{len(cs)} entries, kept_bytes {cs.kept_bytes} "
            f"({'ok' if cs.kept_bytes == 0 else 'CONTENT LEAKED'}); buildah layer "
            + (f"{bh_sizes['S4']:,d} B gzip" if "S4" in bh_sizes else "n/a"))
    tab.row(f"# load average at end: {loadavg()}")
    for c in cont.values():
        c.remove(force=True)
    return tab


def _desc(s: str) -> str:
    return {"S1": "small change", "S2": "1 GiB/2k files", "S3": "50k x 1 KiB",
            "S4": "5k no-op copy-ups"}[s]


# --- pytest-benchmark ----------------------------------------------------------------

def _bench_files() -> int:
    return int(os.environ.get("SNAPDIFF_BENCH_BASE_FILES", "20000"))


def _fixtures():
    import pytest

    @pytest.fixture(scope="module")
    def bench_store():
        return base_store(_bench_files())

    @pytest.fixture(scope="module")
    def containers(bench_store):
        made = {}

        def get(s):
            if s not in made:
                made[s] = scenario_container(bench_store, s, _bench_files())
            return made[s]
        yield get
        for c in made.values():
            c.remove(force=True)
    return bench_store, containers


if "pytest" in sys.modules:
    import pytest

    bench_store, containers = _fixtures()

    @pytest.mark.parametrize("scen", list(ROUNDS))
    @pytest.mark.parametrize("compression", ["none", "gzip"])
    def test_commit(benchmark, bench_store, containers, scen, compression):
        c = containers(scen)
        name = f"out-{scen.lower()}:{compression}"
        out = benchmark.pedantic(lambda: c.commit(name, compression=compression),
                                 setup=lambda: reset(bench_store, c, name),
                                 rounds=ROUNDS[scen], iterations=1, warmup_rounds=1)
        assert out.layer_info.size > 0
        if scen == "S4":
            assert out.changes.kept_bytes == 0
        reset(bench_store, c, name)

    @pytest.mark.parametrize("scen", ["S2", "S3"])
    def test_floor_tar_sha256(benchmark, containers, scen):
        upper = containers(scen).upper_dir
        benchmark.pedantic(lambda: sh(f"tar -cf - {upper} | openssl dgst -sha256"),
                           rounds=ROUNDS[scen], iterations=1, warmup_rounds=1)

    def test_cli_commit_s1(benchmark, bench_store, containers):
        c = containers("S1")
        name = "out-s1-cli:1"
        benchmark.pedantic(lambda: sh([SNAPDIFF_CLI, "--root", bench_store.root, "commit",
                                       "--compression", "none", c.id, name]),
                           setup=lambda: reset(bench_store, c, name),
                           rounds=ROUNDS["S1"], iterations=1, warmup_rounds=1)
        assert len(bench_store.image(name).layers) == len(bench_store.image(BASE_REF).layers) + 1
        reset(bench_store, c, name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-files", type=int, default=20000)
    ap.add_argument("--scale", type=int, default=1, choices=(1, 10))
    args = ap.parse_args()
    if args.base_files < 1000:
        ap.error("--base-files: at least 1000")
    if os.geteuid() != 0:
        ap.error("needs root (overlay mounts)")
    measure(args.base_files, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
