"""Benchmarks of the compiled core against floors measured in the same run.

    python bench/bench_core.py            # the side-by-side table (ratios)
    python -m pytest bench/bench_core.py  # pytest-benchmark timings

Trees are seeded and built once under $SNAPDIFF_BENCH_DIR (default /var/tmp/snapdiff-bench):
"small" has 100,000 files of 0-8 KiB in 1,000 directories, "large" 1 GiB in 256 files of
4 MiB.  Every timing is the best of several runs with a warm page cache, because the
machine is shared and noisy; what matters is the ratio to the floor timed beside it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np

import snapdiff
from snapdiff.index import ENTRY_DTYPE, TreeIndex, snapshot
from snapdiff.treediff import diff

BENCH_DIR = os.environ.get("SNAPDIFF_BENCH_DIR", "/var/tmp/snapdiff-bench")


def small_tree() -> str:
    root = os.path.join(BENCH_DIR, "small")
    if os.path.exists(os.path.join(root, ".done")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(1)
    for d in range(1000):
        dp = os.path.join(root, f"d{d // 100:02d}", f"s{d:03d}")
        os.makedirs(dp)
        for f in range(100):
            with open(os.path.join(dp, f"f{f:03d}"), "wb") as fh:
                fh.write(rng.randbytes(rng.randrange(0, 8192)))
    open(os.path.join(root, ".done"), "w").close()
    return root


def large_tree() -> str:
    root = os.path.join(BENCH_DIR, "large")
    if os.path.exists(os.path.join(root, ".done")):
        return root
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(2)
    for i in range(256):
        with open(os.path.join(root, f"blob{i:03d}"), "wb") as fh:
            fh.write(rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())
    open(os.path.join(root, ".done"), "w").close()
    return root


def best(fn, runs: int = 3) -> float:
    fn()  # warm the page cache and the code
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sh(cmd: str):
    return lambda: subprocess.run(["bash", "-c", cmd], check=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)


def synthetic_index(n: int, seed: int) -> TreeIndex:
    """An index of n entries with sorted paths, for in-memory diff timings."""
    paths = [b"d%04d/f%06d" % (i // 1000, i) for i in range(n)]
    dirs = sorted({p.split(b"/")[0] for p in paths})
    allp = sorted(paths + dirs, key=lambda p: p.split(b"/"))
    blob = b"".join(allp)
    ents = np.zeros(len(allp), dtype=ENTRY_DTYPE)
    lens = np.array([len(p) for p in allp], dtype=np.uint64)
    ents["path_len"] = lens
    ents["path_off"] = np.concatenate([[0], np.cumsum(lens)[:-1]])
    is_dir = np.array([b"/" not in p for p in allp])
    ents["mode"] = np.where(is_dir, 0o40755, 0o100644)
    rng = np.random.default_rng(seed)
    ents["size"] = rng.integers(0, 10000, len(allp))
    ents["mtime_ns"] = 1_700_000_000 * 10**9
    ents["flags"] = np.where(is_dir, 0, 1)
    return TreeIndex(ents, blob, b"")


def table() -> list[tuple[str, float, str, float, float]]:
    small, large = small_tree(), large_tree()
    rows = []

    def row(name, ours, floor_name, floor, target):
        rows.append((name, ours, floor_name, floor, target))
        print(f"{name:42s} {ours:8.3f}s  {floor_name:44s} {floor:8.3f}s  "
              f"ratio {ours / floor:5.2f} (target {target})", flush=True)

    find_floor = best(sh(f"find {small} -printf '%s %T@ %m %U %G\\n' >/dev/null"))
    row("walk, no hashing (100k files)", best(lambda: snapshot(small, hash=False)),
        "find -printf", find_floor, "<= 1.5")
    row("walk + hash (100k files)", best(lambda: snapshot(small)),
        "find | xargs xxh128sum", best(sh(f"find {small} -type f -print0 | xargs -0 xxh128sum"
                                          " >/dev/null")), "<= 1.0")
    row("walk + hash (1 GiB, 256 files)", best(lambda: snapshot(large)),
        "find | xargs xxh128sum", best(sh(f"find {large} -type f -print0 | xargs -0 xxh128sum"
                                          " >/dev/null")), "<= 1.0")
    base = snapshot(small)
    victims = [os.path.join(small, f"d05/s5{i:02d}/f050") for i in range(100)]
    saved = [(p, open(p, "rb").read(), os.lstat(p)) for p in victims]
    try:
        for p, data, _ in saved:
            with open(p, "wb") as fh:
                fh.write(data[::-1])
        row("index vs live tree, 100 changed files", best(lambda: diff(base, small)),
            "find -printf", find_floor, "<= 1.5")
    finally:
        for p, data, st in saved:
            with open(p, "wb") as fh:
                fh.write(data)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    a, b = synthetic_index(1_000_000, 1), synthetic_index(1_000_000, 2)
    t = best(lambda: diff(a, b))
    rows.append(("diff of two 1,000,000-entry indexes", t, "absolute", 1.0, "< 1 s"))
    print(f"{'diff of two 1,000,000-entry indexes':42s} {t:8.3f}s  (target < 1 s)")
    path = os.path.join(BENCH_DIR, "million.idx")
    a.save(path)
    t = best(lambda: TreeIndex.load(path))
    rows.append(("load a 1,000,000-entry index", t, "absolute", 0.5, "< 0.5 s"))
    print(f"{'load a 1,000,000-entry index':42s} {t:8.3f}s  (target < 0.5 s)")
    return rows


# --- pytest-benchmark ----------------------------------------------------------------

def test_walk_nohash(benchmark):
    root = small_tree()
    benchmark(lambda: snapshot(root, hash=False))


def test_walk_hash(benchmark):
    root = small_tree()
    benchmark(lambda: snapshot(root))


def test_diff_index_vs_live(benchmark):
    root = small_tree()
    base = snapshot(root)
    benchmark(lambda: snapdiff.diff(base, root))


def test_diff_million_in_memory(benchmark):
    a, b = synthetic_index(1_000_000, 1), synthetic_index(1_000_000, 2)
    benchmark(lambda: diff(a, b))


if __name__ == "__main__":
    print(f"snapdiff {snapdiff.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    table()
