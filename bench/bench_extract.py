"""Extraction speed: snapdiff's apply_layer against GNU `tar -xf` of the same tar, same run.

    python bench/bench_extract.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp]

Builds a seeded tree of mixed files (many small, some medium, a few large, a little
sparse-friendly zero content), tars it once with GNU tar, then alternates extracting it with
`tar -xf` (the floor) and with apply_layer (which also hashes the diff_id), each into a fresh
directory, and prints the best time of each and their ratio (target: at most 1.3x).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from snapdiff.extraction import apply_layer


def build_tree(root: str, size_mib: int, seed: int = 1234) -> tuple[int, int]:
    """A fixed-shape tree: ~60% of the bytes in 1-64 KiB files, 30% in 1-4 MiB, 10% in 32 MiB
    files; one file in eight has a run of zeros.  Returns (files, bytes)."""
    rnd = random.Random(seed)
    budget = size_mib << 20
    shares = [(0.6, 1 << 10, 64 << 10), (0.3, 1 << 20, 4 << 20), (0.1, 32 << 20, 32 << 20)]
    blob = rnd.randbytes(64 << 20)  # content is sliced from one seeded pool: fast and fixed
    files = total = 0
    for share, lo, hi in shares:
        left = int(budget * share)
        while left > 0:
            size = min(left, rnd.randint(lo, hi))
            d = os.path.join(root, f"d{files % 97:02d}", f"s{files % 13}")
            os.makedirs(d, exist_ok=True)
            off = rnd.randrange(0, len(blob) - size) if size < len(blob) else 0
            data = blob[off:off + size] if size <= len(blob) else blob * (size // len(blob))
            if files % 8 == 0 and size >= 16384:
                cut = size // 4
                data = data[:cut] + bytes(size // 2) + data[cut + size // 2:]
            with open(os.path.join(d, f"f{files:06d}"), "wb") as f:
                f.write(data)
            files += 1
            total += len(data)
            left -= len(data)
    return files, total


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("SNAPDIFF_BENCH_DIR", "/var/tmp"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-extract-", dir=args.dir)
    try:
        src = os.path.join(work, "src")
        files, nbytes = build_tree(src, args.size_mib)
        tar = os.path.join(work, "layer.tar")
        subprocess.run(["tar", "--format=posix", "--numeric-owner", "-C", src, "-cf", tar, "."],
                       check=True)
        shutil.rmtree(src)
        tar_size = os.path.getsize(tar)
        best = {"tar -xf": float("inf"), "apply_layer": float("inf")}
        for r in range(args.rounds):
            for name in best:
                dst = os.path.join(work, f"out-{name.replace(' ', '')}-{r}")
                os.mkdir(dst)
                subprocess.run(["sync"], check=True)
                if name == "tar -xf":
                    t = timed(lambda d=dst: subprocess.run(["tar", "-xf", tar, "-C", d],
                                                           check=True))
                else:
                    t = timed(lambda d=dst: apply_layer(tar, d))
                best[name] = min(best[name], t)
                shutil.rmtree(dst)
        floor = best["tar -xf"]
        print(f"layer: {files} files, {nbytes / 2**20:.0f} MiB of content, "
              f"tar {tar_size / 2**20:.0f} MiB; best of {args.rounds}")
        for name, t in best.items():
            print(f"  {name:12s} {t:7.2f} s  {tar_size / 2**20 / t:7.0f} MiB/s  "
                  f"{t / floor:5.2f}x")
        ratio = best["apply_layer"] / floor
        print(f"ratio apply_layer / tar -xf = {ratio:.2f} (target <= 1.3)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
