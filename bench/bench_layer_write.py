"""Benchmarks of the layer writer (snapdiff.layers.write_layer) against the floors it must meet.

Two ways to run it:

    # the side-by-side comparison on a seeded ~1 GiB tree, ratios printed in one run
    .venv/bin/python bench/bench_layer_write.py [--size-mib 1024] [--repeat 2]

    # pytest-benchmark suites on a smaller tree (bench/ is outside the default testpaths)
    .venv/bin/python -m pytest bench/bench_layer_write.py --benchmark-only

Floors hash with ``openssl dgst -sha256`` (the CPU's SHA instructions), as the write does
through hashlib.  Targets (issue 3): uncompressed <= 1.2x ``tar | openssl``; gzip >= 2x
faster than ``tar | gzip -6 | openssl`` at a comparable ratio and no slower than ``pigz -6``;
zstd <= 1.2x ``tar | zstd -3 -T0 | openssl``.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time

import pytest

from snapdiff.layers import tree_items, write_layer

SEED = 20240603
_POOL = None


def _pool() -> bytes:
    """64 MiB of data that compresses like real files (a skewed alphabet with repeats) and
    8 MiB of random bytes (already compressed media); file contents are slices of it."""
    global _POOL
    if _POOL is None:
        import numpy as np

        rng = np.random.default_rng(SEED)
        alphabet = np.frombuffer(b"etaoinshrdlucmfwypvbgkjqxz ETAOIN\n\t{}();=.,_-0123456789",
                                 dtype=np.uint8)
        p = 1.0 / np.arange(1, len(alphabet) + 1)
        text = alphabet[rng.choice(len(alphabet), size=48 << 20, p=p / p.sum())]
        # repeat some stretches, as source code and configuration files do
        reps = [text[o:o + 4096].tobytes() * 4 for o in rng.integers(0, (48 << 20) - 4096, 1024)]
        _POOL = text.tobytes() + b"".join(reps) + rng.bytes(8 << 20)
    return _POOL


def build_tree(root: str, size_mib: int) -> str:
    """A seeded mixed tree of about size_mib MiB: many small files in many directories,
    a few hundred medium ones, a handful of large ones.  Built once per (seed, size)."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rnd = random.Random(SEED)
    pool = _pool()
    budget = size_mib << 20
    shares = [(0.17, 1 << 10, 16 << 10), (0.43, 256 << 10, 2 << 20), (0.40, 64 << 20, 120 << 20)]
    n = 0
    for share, lo, hi in shares:
        left = int(budget * share)
        while left > 0:
            size = min(left, rnd.randint(lo, hi))
            d = os.path.join(root, f"d{n % 97:02d}", f"s{n % 13}")
            os.makedirs(d, exist_ok=True)
            off = rnd.randrange(0, len(pool) - min(size, len(pool)) + 1)
            with open(os.path.join(d, f"f{n:06d}"), "wb") as f:
                while size > 0:
                    chunk = pool[off:off + size]
                    f.write(chunk)
                    size -= len(chunk)
                    left -= len(chunk)
                    off = 0
            n += 1
    return root


def tree(size_mib: int) -> str:
    base = os.environ.get("SNAPDIFF_BENCH_DIR", tempfile.gettempdir())
    root = os.path.join(base, f"snapdiff-bench-tree-{SEED}-{size_mib}m")
    if not os.path.exists(root + ".complete"):  # built once per (seed, size), then reused
        os.makedirs(root, exist_ok=True)
        build_tree(root, size_mib)
        open(root + ".complete", "w").close()  # beside the tree, not in it
    return root


def ours(root: str, compression: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        info = write_layer(root, tree_items(root), null, compression=compression)
    return time.perf_counter() - t0, info.size


def shell(cmd: str) -> tuple[float, int]:
    """Seconds for a floor pipeline; its compressed size is counted with `wc -c` on a tee."""
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, 0


def shell_size(cmd: str) -> int:
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd + " | wc -c"], check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip())


def best(f, repeat: int) -> tuple[float, int]:
    runs = [f() for _ in range(repeat)]
    return min(r[0] for r in runs), runs[0][1]


def compare(size_mib: int = 1024, repeat: int = 2) -> list[tuple]:
    """Time snapdiff and its floors on the same tree, in this one run; print the table."""
    root = tree(size_mib)
    q = shlex.quote(root)
    tar = f"tar -cf - -C {q} ."
    subprocess.run(f"{tar} > /dev/null", shell=True, check=True)  # warm the page cache
    raw = shell_size(tar)
    rows = []
    cases = [
        ("none", f"{tar} | openssl dgst -sha256", "tar | openssl", 1.2, "max"),
        ("gzip", f"{tar} | gzip -6 | openssl dgst -sha256", "tar | gzip -6 | openssl", 0.5,
         "max"),
        ("gzip", f"{tar} | pigz -6 | openssl dgst -sha256", "tar | pigz -6 | openssl", 1.0,
         "max"),
        ("zstd", f"{tar} | zstd -3 -T0 | openssl dgst -sha256", "tar | zstd -3 -T0 | openssl",
         1.2, "max"),
    ]
    mine: dict[str, tuple[float, int]] = {}
    for compression, cmd, label, target, _ in cases:
        if compression not in mine:
            mine[compression] = best(lambda c=compression: ours(root, c), repeat)
        t_floor, _ = best(lambda c=cmd: shell(c), repeat if "gzip -6" not in cmd else 1)
        floor_size = raw if compression == "none" else shell_size(cmd.rsplit(" | openssl", 1)[0])
        t_ours, size_ours = mine[compression]
        rows.append((compression, label, t_ours, t_floor, t_ours / t_floor, target,
                     size_ours / raw, floor_size / raw))
    print(f"\nlayer write, tree {root} ({raw / 2**20:.0f} MiB of tar), best of {repeat}")
    print(f"{'snapdiff':<10} {'floor':<28} {'ours s':>7} {'floor s':>8} {'ratio':>6} "
          f"{'target':>7} {'our size':>9} {'floor size':>10}")
    for c, label, to, tf, r, tgt, so, sf in rows:
        print(f"{c:<10} {label:<28} {to:7.2f} {tf:8.2f} {r:6.2f} {'<=' + str(tgt):>7} "
              f"{so:9.3f} {sf:10.3f}")
    return rows


# --- pytest-benchmark suites (small tree; ratios come from compare()) --------------------

@pytest.fixture(scope="module")
def small_tree():
    return tree(int(os.environ.get("SNAPDIFF_BENCH_MIB", "128")))


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_write_layer(benchmark, small_tree, compression):
    benchmark.pedantic(ours, args=(small_tree, compression), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("floor", ["openssl", "gzip -6", "pigz -6", "zstd -3 -T0"])
def test_floor(benchmark, small_tree, floor):
    q = shlex.quote(small_tree)
    cmd = f"tar -cf - -C {q} . | " + ("" if floor == "openssl" else f"{floor} | ") + \
        "openssl dgst -sha256"
    benchmark.pedantic(shell, args=(cmd,), rounds=3, warmup_rounds=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    rows = compare(a.size_mib, a.repeat)
    sys.exit(0)
