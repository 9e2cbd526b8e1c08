#!/usr/bin/env bash
# Set up snapdiff on a fresh Debian machine as root: system packages, a virtualenv in
# .venv, and an editable install with the compiled core.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential python3 python3-dev python3-venv   # the build of snapdiff._core
  libxxhash-dev                                      # XXH3-128 for the C core
  xxhash openssl pigz zstd tar findutils             # floors the benchmarks compare with
  libarchive-tools                                   # bsdtar: an independent tar reader in tests
  attr acl libcap2-bin util-linux kmod               # setfattr/setcap/mount used by tests
  busybox-static                                     # a tiny runnable root filesystem
  umoci skopeo buildah podman runc docker-registry   # independent oracles and peers
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
# compat mode: a plain path entry and the extension built in place, instead of an import
# hook that every snapdiff command would pay for at start
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
.venv/bin/python -c 'import snapdiff._core' >/dev/null
