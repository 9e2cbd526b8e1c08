"""Push and pull of an image with one 1 GiB layer to a local registry: snapdiff vs skopeo.

Run:  .venv/bin/python bench/bench_registry.py [--size-mib 1024] [--rounds 2] [--json out.json]

The layer is a tar of one file of random bytes (so neither tool can win by compression).
Both tools copy the same OCI layout to the same docker-registry on 127.0.0.1, each round
to fresh repositories and into fresh layouts; the best of ``--rounds`` is reported with
the ratio snapdiff/skopeo (target <= 1.0).  ``pull_store`` is ``Store.pull`` into a fresh
store: the same transfer plus the diff_id check, safe unpack and layer index of the layer,
i.e. what ``snapdiff pull`` costs; skopeo has no such step, so it gets no ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from registry_fixture import LocalRegistry  # noqa: E402

from snapdiff import registry  # noqa: E402
from snapdiff.store import Store  # noqa: E402


def build_big_image(layout: str, size: int) -> dict:
    """One uncompressed layer: a tar holding ``size`` random bytes, hashed while written."""
    registry.init_layout(layout)
    blobs = os.path.join(layout, "blobs", "sha256")
    tmp = os.path.join(blobs, ".layer.tmp")
    h = hashlib.sha256()
    info = tarfile.TarInfo("random.bin")
    info.size, info.mode, info.mtime = size, 0o644, 1700000000
    with open(tmp, "wb") as f:
        def put(b: bytes) -> None:
            h.update(b)
            f.write(b)
        put(info.tobuf(format=tarfile.PAX_FORMAT))
        left = size
        while left:
            n = min(left, 8 << 20)
            put(os.urandom(n))
            left -= n
        put(b"\0" * ((-size) % 512) + b"\0" * 1024)
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + h.hexdigest(),
             "size": os.path.getsize(tmp)}
    os.rename(tmp, os.path.join(blobs, h.hexdigest()))

    def blob(data: bytes, media_type: str) -> dict:
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + d, "size": len(data)}

    config = blob(json.dumps({"architecture": "amd64", "os": "linux",
                              "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": [layer]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    registry.record_in_layout(layout, manifest, "big")
    return manifest


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def pull_and_record(source: str, layout: str, jobs: int) -> None:
    r = registry.pull(source, layout, jobs=jobs)
    registry.record_in_layout(layout, r.manifest, "big")


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-registry-", dir=os.environ.get("BENCH_TMP", "/var/tmp"))
    reg = None
    try:
        src = os.path.join(work, "src")
        t = time.perf_counter()
        m = build_big_image(src, args.size_mib << 20)
        print(f"built {args.size_mib} MiB layer image {m['digest'][:19]} in {time.perf_counter() - t:.1f}s")
        res: dict[str, list[float]] = {"push_snapdiff": [], "push_skopeo": [], "pull_snapdiff": [],
                                        "pull_skopeo": [], "pull_store": []}
        for i in range(args.rounds):
            # a fresh registry (new port, empty storage) per round: neither tool's memory of
            # where a blob lives (our mount cache, skopeo's blob-info cache) can turn the
            # upload into a mount
            if reg:
                reg.stop()
                shutil.rmtree(reg.workdir)
            os.makedirs(os.path.join(work, f"reg{i}"))
            reg = LocalRegistry(os.path.join(work, f"reg{i}"))
            ours, theirs = f"{reg.host}/ours{i}/big:v1", f"{reg.host}/skopeo{i}/big:v1"
            res["push_snapdiff"].append(timed(registry.push, src, "big", ours, jobs=args.jobs))
            res["push_skopeo"].append(timed(
                skopeo, "copy", "--dest-tls-verify=false", f"oci:{src}:big", f"docker://{theirs}"))
            d1, d2 = os.path.join(work, f"pull-ours{i}"), os.path.join(work, f"pull-skopeo{i}")
            res["pull_snapdiff"].append(timed(pull_and_record, ours, d1, args.jobs))
            res["pull_skopeo"].append(timed(
                skopeo, "copy", "--src-tls-verify=false", f"docker://{theirs}", f"oci:{d2}:big"))
            d3 = os.path.join(work, f"store{i}")
            res["pull_store"].append(timed(Store(d3).pull, ours, jobs=args.jobs))
            shutil.rmtree(d1)
            shutil.rmtree(d2)
            shutil.rmtree(d3)
            print(f"round {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()))
        best = {k: min(v) for k, v in res.items()}
        size = args.size_mib
        print(f"\nimage: one {size} MiB random layer; best of {args.rounds}; registry docker-registry on 127.0.0.1")
        for op in ("push", "pull"):
            a, b = best[f"{op}_snapdiff"], best[f"{op}_skopeo"]
            print(f"{op}: snapdiff {a:.2f}s ({size / a:.0f} MiB/s)  skopeo {b:.2f}s ({size / b:.0f} MiB/s)"
                  f"  ratio {a / b:.2f}x")
        a = best["pull_store"]
        print(f"pull into a store (verify + unpack): {a:.2f}s ({size / a:.0f} MiB/s)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"size_mib": size, "rounds": res, "best": best}, f, indent=2)
    finally:
        if reg:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
