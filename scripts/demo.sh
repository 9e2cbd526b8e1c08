#!/usr/bin/env bash
# The snapdiff demo: import a small base image, run a container that changes files,
# show what changed, commit it as a new layer, change more, commit again (incrementally),
# and run the result.  Uses a throw-away store in $DEMO_DIR (default /tmp/snapdiff-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPDIFF=${SNAPDIFF:-$PWD/.venv/bin/snapdiff}
DEMO_DIR=${DEMO_DIR:-/tmp/snapdiff-demo}
export SNAPDIFF_ROOT=$DEMO_DIR/store

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# clean up a previous run (containers first: their overlays are mounted)
if [ -d "$SNAPDIFF_ROOT/containers" ]; then
  for c in $(ls "$SNAPDIFF_ROOT/containers"); do "$SNAPDIFF" rm -f "$c" >/dev/null 2>&1 || true; done
fi
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/rootfs"

say "A small base image: busybox and a few files"
R=$DEMO_DIR/rootfs
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root,var/www,srv/data}
chmod 1777 "$R/tmp"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nwww:x:33:\n' > "$R/etc/group"
printf 'Welcome to the base image\n' > "$R/etc/motd"
printf '<h1>v1</h1>\n' > "$R/var/www/index.html"
for i in $(seq 1 20); do printf 'record %s\n' "$i" > "$R/srv/data/r$i"; done
run "$SNAPDIFF" import "$R" demo/base:1
run "$SNAPDIFF" images

say "Run a container that changes things"
run "$SNAPDIFF" run --name web demo/base:1 /bin/sh -c '
  echo "<h1>v2</h1>" > /var/www/index.html      # modify
  echo "served by snapdiff" > /var/www/about.html # add
  rm -rf /srv/data                              # delete a tree
  chmod 600 /etc/motd; chmod 644 /etc/motd      # a no-op copy-up: not a change
  mkdir -p /var/log && echo started > /var/log/web.log'

say "What changed (like docker diff)"
run "$SNAPDIFF" diff web

say "Commit it as a new layer"
run "$SNAPDIFF" commit -m "publish v2" -c 'CMD ["/bin/cat", "/var/www/index.html"]' web demo/web:2
run "$SNAPDIFF" history demo/web:2
layer_of() {
  "$SNAPDIFF" inspect "$1" | .venv/bin/python -c \
    'import json,sys; print(json.load(sys.stdin)["Manifest"]["layers"][-1]["digest"].split(":")[1])'
}
blob=$SNAPDIFF_ROOT/oci/blobs/sha256/$(layer_of demo/web:2)
printf '$ tar -tvzf <the new layer>\n'
tar -tvzf "$blob"

say "Change more, commit again: the new layer holds only what changed since"
M=$("$SNAPDIFF" mount web)
echo "<h1>v3</h1>" > "$M/var/www/index.html"
rm "$M/var/www/about.html"
"$SNAPDIFF" umount web
run "$SNAPDIFF" commit -m "publish v3" web demo/web:3
blob=$SNAPDIFF_ROOT/oci/blobs/sha256/$(layer_of demo/web:3)
printf '$ tar -tvzf <the second layer>\n'
tar -tvzf "$blob"

say "Run the committed image"
run "$SNAPDIFF" run --rm demo/web:3
run "$SNAPDIFF" run --rm demo/web:2

say "The store is an OCI layout that other tools read"
if command -v skopeo >/dev/null; then
  run skopeo inspect --format '{{.Digest}} {{len .Layers}} layers' "oci:$SNAPDIFF_ROOT/oci:demo/web:3"
fi
run "$SNAPDIFF" fsck
echo
echo "Demo store left in $DEMO_DIR (remove it with: rm -rf $DEMO_DIR after 'snapdiff rm -f web')"
