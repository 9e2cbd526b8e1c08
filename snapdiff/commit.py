"""commit: turn a container's writable layer into a new read-only layer and image.

The change set is computed from the overlay upper directory alone (its cost grows with
what the container changed, not with the image), against the saved indexes of the
image's unpacked layers:

1. Walk the upper directory (no hashing); overlay's xattrs become entry flags.
2. Resolve each upper path in the lower layers as overlayfs would (top layer first,
   stopping at whiteouts, non-directories and opaque directories), in numpy, one pass per
   depth level and layer.
3. Hash only upper files that could be no-op copy-ups (same size as what they shadow),
   compare them with the lower entries in C, and drop those that are equal.
4. Incremental: a container committed before has the upper index of that commit saved;
   what is unchanged since then is left out, files deleted since become whiteouts, and
   the new layer stacks on the previous commit's image.
5. Add the parent directories of everything kept and complete hard-link groups, then
   stream the tar (sha256, compression) into the store's tmp/ and record the image.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from snapdiff import _core
from snapdiff.errors import (
    ContainerStateError,
    ImageNotFound,
    IndexFormatError,
    NameInUseError,
    UnsupportedError,
)
from snapdiff.index import (
    HASHED,
    METACOPY,
    OPAQUE,
    REDIRECT,
    XWHITEOUT,
    TreeIndex,
    layer_snapshot,
    snapshot,
)
from snapdiff.layers import ItemKind, LayerItems, write_layer

__all__ = ["ChangeSet", "compute_changes", "commit", "parse_changes"]

_S_IFMT = 0o170000
_DIFF_TYPE = 0x400
_STAT_COLS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")
COMMIT_INDEX = "commit.idx"


def _is_whiteout(ix: TreeIndex, at: np.ndarray | None = None) -> np.ndarray:
    """Whiteout mask of the entries (or of the positions `at` only: a lower layer's index
    is as large as the image, and commit must not pay for that)."""
    e = ix.entries if at is None else ix.entries[at]
    return (((e["mode"] & _S_IFMT) == stat.S_IFCHR) & (e["rdev"] == 0)) | \
        ((e["flags"] & XWHITEOUT) != 0)


def _is_dir(ix: TreeIndex, at: np.ndarray | None = None) -> np.ndarray:
    mode = ix.entries["mode"] if at is None else ix.entries["mode"][at]
    return (mode & _S_IFMT) == stat.S_IFDIR


def _parents(ix: TreeIndex) -> np.ndarray:
    out = np.empty(len(ix), dtype=np.int64)
    _core.index_parents(ix._raw, ix._paths_u8, out)
    return out


def _depths(ix: TreeIndex) -> np.ndarray:
    """Number of '/' in each path (paths are stored back to back in entry order)."""
    if len(ix) == 0:
        return np.zeros(0, dtype=np.int64)
    slashes = (ix._paths_u8 == ord("/")).astype(np.int32)
    return np.add.reduceat(slashes, ix.entries["path_off"].astype(np.int64)).astype(np.int64)


def _join(a: TreeIndex, b: TreeIndex) -> np.ndarray:
    """For each entry of b, its position in a or -1."""
    out = np.empty(len(b), dtype=np.int64)
    _core.index_join(a._raw, a._paths_u8, b._raw, b._paths_u8, out)
    return out


def _compare(a: TreeIndex, ia: np.ndarray, b: TreeIndex, ib: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ia), dtype=np.uint32)
    if len(ia):
        _core.index_compare_pairs(a._raw, a._extra_u8, np.ascontiguousarray(ia, np.int64),
                                  b._raw, b._extra_u8, np.ascontiguousarray(ib, np.int64), out)
    return out


def _by_level(depth: np.ndarray) -> list[np.ndarray]:
    """Positions grouped by depth, shallowest first."""
    if len(depth) == 0:
        return []
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(depth.max() + 2))
    return [order[bounds[d]:bounds[d + 1]] for d in range(depth.max() + 1)]


def load_lower_indexes(lower_dirs: Iterable[str]) -> list[TreeIndex]:
    """The saved index of each unpacked layer (``<layer>/index`` beside ``<layer>/diff``),
    or a fresh snapshot of a directory that has none."""
    out = []
    for d in lower_dirs:
        saved = os.path.join(os.path.dirname(d), "index")
        if os.path.basename(d) == "diff" and os.path.exists(saved):
            out.append(TreeIndex.load(saved))
        else:
            out.append(layer_snapshot(d))
    return out


@dataclass
class _Lower:
    """Where each upper path resolves in the lower layers."""

    layer: np.ndarray    # index into lowers of the entry that is visible, or -1
    pos: np.ndarray      # its position in that layer's index
    visible: np.ndarray  # the lower stack shows something at this path


def _resolve(U: TreeIndex, lowers: list[TreeIndex], parent: np.ndarray,
             levels: list[np.ndarray]) -> _Lower:
    """Resolve every upper path in the lower stack with overlayfs' rules."""
    n, N = len(U), len(lowers)
    pos = np.full((N, n), -1, dtype=np.int64)
    wh = np.zeros((N, n), dtype=bool)
    isdir = np.zeros((N, n), dtype=bool)
    opq = np.zeros((N, n), dtype=bool)
    for li, L in enumerate(lowers):
        pos[li] = _join(L, U)
        f = pos[li] >= 0
        p = pos[li][f]
        wh[li, f] = _is_whiteout(L, p)
        isdir[li, f] = _is_dir(L, p)
        opq[li, f] = (L.entries["flags"][p] & OPAQUE) != 0
    found = pos >= 0
    u_dir = _is_dir(U)
    u_cut = ((U.entries["flags"] & OPAQUE) != 0) | ~u_dir | _is_whiteout(U)
    limit = np.full(n, N - 1, dtype=np.int64)        # deepest layer that may show entry i
    child_limit = np.full(n, -1, dtype=np.int64)     # ... that may show i's children
    for sel in levels:
        par = parent[sel]
        has_par = par >= 0
        limit[sel[has_par]] = child_limit[par[has_par]]
        cl = np.where(u_cut[sel], -1, limit[sel])
        for li in range(N):
            active = li <= cl
            f = found[li, sel] & active
            stop_before = f & (wh[li, sel] | ~isdir[li, sel])
            stop_at = f & isdir[li, sel] & opq[li, sel]
            cl = np.where(stop_before, li - 1, np.where(stop_at, li, cl))
        child_limit[sel] = cl
    layer = np.full(n, -1, dtype=np.int64)
    for li in range(N):
        hit = found[li] & (li <= limit) & (layer < 0)
        layer[hit] = li
    at = np.arange(n)
    got = layer >= 0
    lpos = np.full(n, -1, dtype=np.int64)
    lpos[got] = pos[layer[got], at[got]]
    visible = np.zeros(n, dtype=bool)
    visible[got] = ~wh[layer[got], at[got]]
    layer[got & ~visible] = -1
    lpos[got & ~visible] = -1
    return _Lower(layer, lpos, visible)


@dataclass
class ChangeSet:
    """What a commit writes: upper entries kept (with their item kind) and whiteouts for
    paths deleted since the previous commit."""

    upper: TreeIndex
    include: np.ndarray        # upper entries written as ENTRY (or WHITEOUT, see below)
    whiteout: np.ndarray       # ... of those, written as a whiteout
    opaque: np.ndarray         # upper directories followed by an opaque marker
    existed: np.ndarray        # the path showed something in the base view (C, not A)
    deleted: list[bytes]       # paths deleted since the previous commit: whiteouts
    listed: np.ndarray         # included entries `diff` shows (see lines())

    def items(self) -> list[tuple[bytes, ItemKind]]:
        """Tar items in tree order: parents first, opaque markers right after their dir."""
        U = self.upper
        out: list[tuple[bytes, ItemKind]] = []
        paths = bytes(U.paths)
        offs = U.entries["path_off"]
        lens = U.entries["path_len"]
        for i in np.flatnonzero(self.include).tolist():
            p = paths[offs[i]:offs[i] + lens[i]]
            if self.whiteout[i]:
                out.append((p, ItemKind.WHITEOUT))
            else:
                out.append((p, ItemKind.ENTRY))
                if self.opaque[i]:
                    out.append((p, ItemKind.OPAQUE))
        if self.deleted:
            out.extend((p, ItemKind.WHITEOUT) for p in self.deleted)
            out.sort(key=lambda it: (tuple(it[0].split(b"/")), it[1] == ItemKind.OPAQUE))
        return out

    def layer_items(self) -> tuple[LayerItems | list, np.ndarray]:
        """The tar items as columns for the writer, and for each item the position of the
        upper entry it writes (-1 for opaque markers and whiteouts of deleted paths)."""
        U = self.upper
        if self.deleted:  # whiteouts from the previous commit's index: merged in Python
            items = self.items()
            pos = np.array([U.find(p) if k == ItemKind.ENTRY else -1 for p, k in items],
                           dtype=np.int64)
            return items, pos
        pos = np.flatnonzero(self.include)
        reps = np.where(self.opaque[pos], 2, 1)
        item_pos = np.repeat(pos, reps)
        kinds = np.full(len(item_pos), int(ItemKind.ENTRY), dtype=np.uint8)
        kinds[self.whiteout[item_pos]] = int(ItemKind.WHITEOUT)
        markers = (np.cumsum(reps) - reps)[reps == 2] + 1  # right after their directory
        kinds[markers] = int(ItemKind.OPAQUE)
        item_pos[markers] = -1
        e = U.entries
        src = np.where(item_pos >= 0, item_pos, np.repeat(pos, reps))
        items = LayerItems(U._paths_u8, np.ascontiguousarray(e["path_off"][src], np.uint64),
                           np.ascontiguousarray(e["path_len"][src], np.uint32), kinds)
        return items, item_pos

    def record_hashes(self, item_pos: np.ndarray,
                      content_hashes: tuple[bytes, bytes] | None) -> None:
        """Keep the content hashes the tar writer computed in the upper index (and give
        them to hard-link peers it wrote as links), so the next commit need not read the
        files to know them unchanged."""
        if content_hashes is None:  # an empty layer: nothing was streamed
            return
        U = self.upper
        hashes = np.frombuffer(content_hashes[0], dtype="V16")
        ok = (np.frombuffer(content_hashes[1], dtype=np.uint8) != 0) & (item_pos >= 0)
        U.entries["hash"][item_pos[ok]] = hashes[ok]
        U.entries["flags"][item_pos[ok]] |= HASHED
        e = U.entries
        peers = np.flatnonzero(self.include & (e["nlink"] > 1) & ((e["flags"] & HASHED) == 0)
                               & ((e["mode"] & _S_IFMT) == stat.S_IFREG))
        if len(peers):
            done = np.flatnonzero(self.include & (e["nlink"] > 1) & ((e["flags"] & HASHED) != 0))
            by_ino = {int(e["ino"][i]): i for i in done.tolist()}
            for i in peers.tolist():
                j = by_ino.get(int(e["ino"][i]))
                if j is not None:
                    e["hash"][i] = e["hash"][j]
                    e["flags"][i] |= HASHED

    def lines(self) -> list[str]:
        """`docker diff` / `podman diff` lines for the changes this layer carries.

        D: deleted (a whiteout), or a directory that now hides what was there (opaque: the
        old directory is gone, its new contents follow as A); A: added; C: changed.  As in
        docker and podman, every ancestor of an A or D line is shown as C, but a directory
        the layer carries only as the parent of a changed file is not shown.  Unlike them,
        a no-op copy-up (a file chmod'ed away and back) is not a change."""
        U = self.upper
        rows = []
        paths = bytes(U.paths)
        offs = U.entries["path_off"]
        lens = U.entries["path_len"]
        for i in np.flatnonzero(self.listed).tolist():
            p = paths[offs[i]:offs[i] + lens[i]]
            letter = "D" if self.whiteout[i] or self.opaque[i] else \
                ("C" if self.existed[i] else "A")
            rows.append((p, letter))
        rows.extend((p, "D") for p in self.deleted)
        if self.deleted:
            rows.sort(key=lambda r: tuple(r[0].split(b"/")))
        return [f"{letter} /{os.fsdecode(p)}" for p, letter in rows]

    def to_json(self) -> str:
        return json.dumps([{"letter": ln[0], "path": ln[2:]} for ln in self.lines()], indent=1)

    def __len__(self) -> int:
        """Entries the layer carries (whiteouts and the parents it needs included)."""
        return int(self.include.sum()) + len(self.deleted)

    @property
    def kept_bytes(self) -> int:
        """Bytes of regular-file content the layer carries."""
        reg = (self.upper.entries["mode"] & _S_IFMT) == stat.S_IFREG
        return int(self.upper.entries["size"][self.include & ~self.whiteout & reg].sum())


def _refuse_special(U: TreeIndex, what: str) -> None:
    flags = U.entries["flags"]
    bad = np.flatnonzero((flags & (REDIRECT | METACOPY)) != 0)
    if len(bad):
        kind = "redirect" if flags[bad[0]] & REDIRECT else "metacopy"
        raise UnsupportedError(
            f"{what}: '/{os.fsdecode(U.path(int(bad[0])))}' carries an overlay {kind} xattr "
            f"(made with {kind}=on by another tool): its upper directory is not a complete "
            f"changeset and cannot be committed exactly")
    # a name starting with ".wh." cannot be carried by an OCI layer: find ".wh." at the
    # start of a path or after a '/' (paths are stored back to back and never end in '/')
    blob = bytes(U.paths)
    k = blob.find(b".wh.")
    if k < 0:
        return
    offs = U.entries["path_off"]
    starts = set(offs.tolist())
    while k >= 0:
        if k in starts or blob[k - 1] == ord("/"):
            i = int(np.searchsorted(offs, k, side="right") - 1)
            raise UnsupportedError(
                f"{what}: '/{os.fsdecode(U.path(i))}': names starting with '.wh.' cannot be "
                f"stored in an OCI layer (they mark deletions)")
        k = blob.find(b".wh.", k + 1)


def _reuse_hashes(U: TreeIndex, prev: TreeIndex, j: np.ndarray) -> None:
    """Copy hashes from the previous commit's index for files whose stat data is unchanged."""
    m = j >= 0
    if not m.any():
        return
    ju = np.flatnonzero(m)
    jp = j[m]
    same = ((prev.entries["flags"][jp] & HASHED) != 0) & \
        ((U.entries["mode"][ju] & _S_IFMT) == stat.S_IFREG)
    for col in _STAT_COLS:
        same &= U.entries[col][ju] == prev.entries[col][jp]
    ju, jp = ju[same], jp[same]
    if len(ju):
        U.entries["hash"][ju] = prev.entries["hash"][jp]
        U.entries["flags"][ju] |= HASHED


def _hash_where(U: TreeIndex, want: np.ndarray, threads: int | None) -> None:
    todo = np.flatnonzero(want & ((U.entries["flags"] & HASHED) == 0))
    if len(todo):
        U.hash(todo, threads=threads)


def compute_changes(upper: str, lowers: list[TreeIndex], *, xattr_prefix: bytes,
                    prev: TreeIndex | None = None, threads: int | None = None,
                    what: str = "commit") -> ChangeSet:
    """The change set of an overlay upper directory over `lowers` (top layer first),
    relative to the state saved at the previous commit (`prev`), or to the lower stack
    alone (prev=None: everything since the container was created)."""
    U = snapshot(upper, hash=False, overlay_prefix=xattr_prefix)
    if U.problems:
        raise OSError(U.problems[0].errno, f"{what}: walk: {U.problems[0]}")
    if not U.entries.flags.writeable:
        U.entries = U.entries.copy()
    _refuse_special(U, what)
    n = len(U)
    parent = _parents(U)
    depth = _depths(U)
    levels = _by_level(depth)
    low = _resolve(U, lowers, parent, levels)
    u_wh = _is_whiteout(U)
    u_dir = _is_dir(U)
    u_reg = (U.entries["mode"] & _S_IFMT) == stat.S_IFREG
    u_opq = (U.entries["flags"] & OPAQUE) != 0

    j = _join(prev, U) if prev is not None else np.full(n, -1, dtype=np.int64)
    if prev is not None:
        _reuse_hashes(U, prev, j)
    # upper files that may equal what they shadow must be hashed to tell
    vis = low.visible & ~u_wh
    cand = np.zeros(n, dtype=bool)
    for li, L in enumerate(lowers):
        m = vis & (low.layer == li) & u_reg
        if m.any():
            lp = low.pos[m]
            same_size = ((L.entries["mode"][lp] & _S_IFMT) == stat.S_IFREG) & \
                (L.entries["size"][lp] == U.entries["size"][m]) & \
                ((L.entries["flags"][lp] & HASHED) != 0)
            cand[np.flatnonzero(m)[same_size]] = True
    if prev is not None:
        # files present at the last commit whose stat changed at equal size
        m = (j >= 0) & u_reg
        jp = j[m]
        same = (prev.entries["size"][jp] == U.entries["size"][m]) & \
            ((prev.entries["flags"][jp] & HASHED) != 0)
        cand[np.flatnonzero(m)[same]] = True
    _hash_where(U, cand, threads)

    # differences from the lower stack
    vs_lower = np.zeros(n, dtype=np.uint32)
    for li, L in enumerate(lowers):
        m = vis & (low.layer == li)
        if m.any():
            vs_lower[m] = _compare(L, low.pos[m], U, np.flatnonzero(m))
    new_since = j < 0
    changed = np.zeros(n, dtype=bool)
    # since the container was created (or since the last commit for new upper entries)
    changed |= new_since & u_wh & low.visible
    changed |= new_since & ~u_wh & (~low.visible | (vs_lower != 0))
    existed = low.visible.copy()
    if prev is not None:
        old = ~new_since
        io = np.flatnonzero(old)
        fp = _compare(prev, j[old], U, io)
        changed[io] = fp != 0
        existed[io] = ~_is_whiteout(prev, j[old])
    # opaque markers: a directory that now hides what the base view had below it
    opaque = u_dir & u_opq & existed
    if prev is not None:
        io = np.flatnonzero(~new_since)
        was_opq = (prev.entries["flags"][j[io]] & OPAQUE) != 0
        opaque[io] &= ~was_opq
    changed |= opaque
    # everything below a new opaque marker is written again: the marker hides the base
    under_new_opaque = np.zeros(n, dtype=bool)
    for sel in levels[1:]:
        par = parent[sel]
        ok = par >= 0
        under_new_opaque[sel[ok]] = under_new_opaque[par[ok]] | opaque[par[ok]]
    changed |= under_new_opaque & ~u_wh
    # whiteouts for paths deleted since the previous commit
    deleted: list[bytes] = []
    need_parent = np.zeros(n, dtype=bool)
    if prev is not None and len(prev):
        matched = np.zeros(len(prev), dtype=bool)
        matched[j[j >= 0]] = True
        p_wh = _is_whiteout(prev)
        gone = ~matched & ~p_wh
        if gone.any():
            p_par = _parents(prev)
            prev_to_u = np.full(len(prev), -1, dtype=np.int64)
            prev_to_u[j[j >= 0]] = np.flatnonzero(j >= 0)
            cut_u = u_wh | ~u_dir | opaque
            for i in np.flatnonzero(gone).tolist():
                pp = int(p_par[i])
                if pp >= 0 and (gone[pp] or (prev_to_u[pp] >= 0 and cut_u[prev_to_u[pp]])):
                    continue  # the parent's whiteout or replacement covers it
                deleted.append(prev.path(i))
                if pp >= 0 and prev_to_u[pp] >= 0:
                    need_parent[prev_to_u[pp]] = True
    include = changed.copy()
    # what `diff` lists: entries that changed themselves, and every ancestor of an added or
    # deleted one (docker's and podman's rule), not parents the tar needs and nothing else
    added_or_deleted = changed & (u_wh | opaque | ~existed)
    above = need_parent.copy()
    for sel in reversed(levels[1:]):
        s = sel[added_or_deleted[sel] | above[sel]]
        par = parent[s]
        above[par[par >= 0]] = True
    # keep hard-link groups whole: a kept file's peers are kept too
    multi = u_reg & (U.entries["nlink"] > 1)
    if multi.any() and (include & multi).any():
        inos = U.entries["ino"][multi]
        kept = np.unique(inos[include[multi]])
        include[np.flatnonzero(multi)[np.isin(inos, kept)]] = True
    # parents of everything kept, with their real metadata
    include |= need_parent
    for sel in reversed(levels[1:]):
        s = sel[include[sel]]
        par = parent[s]
        include[par[par >= 0]] = True
    listed = include & (changed | above | ~u_dir)
    return ChangeSet(U, include, include & u_wh, opaque & include, existed, deleted, listed)


# --- config changes (-c) -------------------------------------------------------------

_JSON_OR_SHELL = ("CMD", "ENTRYPOINT")


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            out = json.loads(value)
        except ValueError:
            out = None
        if isinstance(out, list) and all(isinstance(x, str) for x in out):
            return out
    return ["/bin/sh", "-c", value]


def parse_changes(changes: Iterable[str], base_config: dict) -> dict:
    """Dockerfile-style instructions (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE,
    VOLUME, STOPSIGNAL) applied to a copy of an image's ``config``; returns the keys that
    change (for Store.commit_image's config_changes)."""
    out: dict = {}
    env = list(base_config.get("Env") or [])
    labels = dict(base_config.get("Labels") or {})
    ports = dict(base_config.get("ExposedPorts") or {})
    vols = dict(base_config.get("Volumes") or {})
    for raw in changes:
        word, _, rest = raw.strip().partition(" ")
        word = word.upper()
        rest = rest.strip()
        if not rest:
            raise UnsupportedError(f"commit: change '{raw}': missing a value")
        if word in _JSON_OR_SHELL:
            out["Cmd" if word == "CMD" else "Entrypoint"] = _exec_form(rest)
        elif word == "ENV":
            pairs = [rest.split(None, 1)] if "=" not in rest.split(None, 1)[0] else \
                [p.split("=", 1) for p in shlex.split(rest)]
            for kv in pairs:
                if len(kv) != 2 or not kv[0]:
                    raise UnsupportedError(f"commit: change '{raw}': expected ENV KEY=VALUE")
                k, v = kv
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            out["Env"] = env
        elif word == "WORKDIR":
            if not rest.startswith("/"):
                raise UnsupportedError(f"commit: change '{raw}': WORKDIR must be absolute")
            out["WorkingDir"] = rest
        elif word == "USER":
            out["User"] = rest
        elif word == "LABEL":
            for p in shlex.split(rest):
                k, sep, v = p.partition("=")
                if not sep or not k:
                    raise UnsupportedError(f"commit: change '{raw}': expected LABEL KEY=VALUE")
                labels[k] = v
            out["Labels"] = labels
        elif word == "EXPOSE":
            for p in rest.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            out["ExposedPorts"] = ports
        elif word == "VOLUME":
            for p in _exec_form(rest) if rest.startswith("[") else rest.split():
                vols[p] = {}
            out["Volumes"] = vols
        elif word == "STOPSIGNAL":
            out["StopSignal"] = rest
        else:
            raise UnsupportedError(f"commit: change '{raw}': unknown instruction '{word}' "
                                   f"(CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, "
                                   f"VOLUME, STOPSIGNAL)")
    return out


# --- the commit ----------------------------------------------------------------------

def _head(store, container, full: bool):
    """(base image, index of the upper at the last commit) for an incremental commit, or
    (the container's image, None)."""
    rec = container.state.get("commit")
    if not full and rec:
        try:
            base = store.image(rec["image"])
            prev = TreeIndex.load(os.path.join(container.dir, COMMIT_INDEX))
            return base, prev
        except (ImageNotFound, FileNotFoundError, IndexFormatError):
            pass  # the previous commit's image was removed: commit everything again
    return store.image(container.image_id), None


def commit(store, container, name: str | None = None, *, message: str | None = None,
           author: str | None = None, changes: Iterable[str] = (), compression: str = "gzip",
           level: int | None = None, full: bool = False, pause: bool = True,
           replace: bool = False, timestamp: int | None = None, threads: int | None = None,
           progress: Callable[[int], None] | None = None):
    """Commit `container`'s changes as a new layer on its image (or on the image of its
    previous commit: incremental), record the image (named `name`), return it.

    A running container is paused (frozen) during the commit unless pause=False.  The
    store is written only at the end, under its lock; a failure before leaves it as it
    was, and the container untouched."""
    what = f"commit '{container.display_name}'"
    if name is not None and not replace:
        try:
            taken = store.image(name)
        except ImageNotFound:
            taken = None
        if taken is not None:
            raise NameInUseError(f"{what}: the name '{name}' is taken by image "
                                 f"{taken.id[:19]} (use --replace to move it)")
    base, prev = _head(store, container, full)
    config_changes = parse_changes(changes, base.config)
    if author:
        config_changes["author"] = author
    running = container.status == "running"
    paused = False
    if running and pause:
        container.pause()
        paused = True
    try:
        lowers = load_lower_indexes(container.lower_dirs)
        cs = compute_changes(container.upper_dir, lowers, xattr_prefix=container.xattr_prefix,
                             prev=prev, threads=threads, what=what)
        tmp = os.path.join(store.tempdir(), f"commit-{container.id[:12]}-{os.getpid()}.blob")
        items, item_pos = cs.layer_items()
        try:
            # the writer hashes each file as it streams it: the next commit knows what this
            # one carried without reading it again
            info = write_layer(container.upper_dir, items, tmp, compression=compression,
                               level=level, timestamp=timestamp, threads=threads,
                               hash_content=True, progress=progress)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    finally:
        if paused:
            container.resume()
    created_by = "snapdiff commit" + (" --full" if full else "")
    history = {"created_by": created_by}
    if message:
        history["comment"] = message
    if author:
        history["author"] = author
    try:
        image = store.commit_image(base, [(info, tmp)], config_changes=config_changes,
                                   history_entry=history, name=name, unpack=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    cs.record_hashes(item_pos, info.content_hashes)
    # remember what this commit covered, for the next (incremental) one; written after the
    # image, so a crash in between only makes the next commit repeat these changes
    cs.upper.save(os.path.join(container.dir, COMMIT_INDEX))
    container.state["commit"] = {"image": image.id, "time": time.time(),
                                 "layer": info.digest, "diff_id": info.diff_id}
    container.save_state()
    image.layer_info = info
    image.changes = cs
    return image


def container_diff(container, *, threads: int | None = None) -> ChangeSet:
    """What the container changed since it was created (`docker diff`)."""
    if not os.path.isdir(container.upper_dir):
        raise ContainerStateError(f"diff '{container.display_name}': no writable layer")
    lowers = load_lower_indexes(container.lower_dirs)
    return compute_changes(container.upper_dir, lowers, xattr_prefix=container.xattr_prefix,
                           threads=threads, what=f"diff '{container.display_name}'")
