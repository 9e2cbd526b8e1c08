"""Tree diff: scripted changes give exactly the expected change lists."""

from __future__ import annotations

import os
import random
import shutil

import pytest
import reference
from fstree import File, build

import snapdiff
from snapdiff.index import TreeIndex, snapshot


def _changes(d) -> list[tuple[str, bytes]]:
    return [(c.kind, c.path) for c in d]


def _restore_mtime(path, ns):
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


# each scenario: (name, function(root) that changes the tree, expected changes)
def _add(r):
    (r / "dir/new").write_bytes(b"new")


def _delete(r):
    (r / "dir/f1").unlink()


def _modify(r):
    (r / "dir/f1").write_bytes(b"other content")


def _modify_same_size_restore_mtime(r):
    st = os.lstat(r / "dir/f1")
    (r / "dir/f1").write_bytes(b"F1")  # same size as "f1", different bytes
    _restore_mtime(r / "dir/f1", st.st_mtime_ns)
    _restore_mtime(r / "dir", os.lstat(r / "dir").st_mtime_ns)


def _chmod(r):
    os.chmod(r / "dir/f1", 0o600)


def _chown(r):
    os.chown(r / "dir/f1", 1000, 1000)


def _touch(r):
    os.utime(r / "dir/f1", ns=(1, 1))


def _identical_rewrite_restored(r):
    st = os.lstat(r / "dir/f1")
    dir_mtime = os.lstat(r / "dir").st_mtime_ns
    tmp = r / "dir/.tmp"
    tmp.write_bytes(b"f1")
    os.chmod(tmp, st.st_mode & 0o7777)
    os.rename(tmp, r / "dir/f1")  # new inode, new ctime, same bytes
    _restore_mtime(r / "dir/f1", st.st_mtime_ns)
    _restore_mtime(r / "dir", dir_mtime)


def _identical_rewrite_new_mtime(r):
    st = os.lstat(r / "dir/f1")
    (r / "dir/f1").write_bytes(b"f1")
    os.utime(r / "dir/f1", ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))


def _file_to_dir(r):
    (r / "dir/f1").unlink()
    (r / "dir/f1").mkdir()
    (r / "dir/f1/inside").write_bytes(b"i")


def _dir_to_file(r):
    shutil.rmtree(r / "sub")
    (r / "sub").write_bytes(b"now a file")


def _xattr(r):
    os.setxattr(r / "dir/f1", "user.k", b"v")


def _symlink_retarget(r):
    os.unlink(r / "link")
    os.symlink("dir/f2", r / "link")


SCENARIOS = [
    ("add", _add, [("metadata", b"dir"), ("added", b"dir/new")]),
    ("delete", _delete, [("metadata", b"dir"), ("deleted", b"dir/f1")]),
    ("modify", _modify, [("modified", b"dir/f1")]),
    ("modify-same-size-restored-mtime", _modify_same_size_restore_mtime,
     [("modified", b"dir/f1")]),
    ("chmod", _chmod, [("metadata", b"dir/f1")]),
    ("chown", _chown, [("metadata", b"dir/f1")]),
    ("touch", _touch, [("metadata", b"dir/f1")]),
    ("identical-rewrite", _identical_rewrite_restored, []),
    ("identical-rewrite-new-mtime", _identical_rewrite_new_mtime, [("metadata", b"dir/f1")]),
    ("file-to-dir", _file_to_dir,
     [("metadata", b"dir"), ("type", b"dir/f1"), ("added", b"dir/f1/inside")]),
    ("dir-to-file", _dir_to_file, [("type", b"sub"), ("deleted", b"sub/a"), ("deleted", b"sub/b")]),
    ("xattr", _xattr, [("metadata", b"dir/f1")]),
    ("symlink", _symlink_retarget, [("modified", b"link")]),
]

BASE_MTIME = 1_500_000_000_000_000_000


def _base(root):
    build(root, [File("dir/f1", b"f1", mtime=BASE_MTIME), File("dir/f2", b"f2", mtime=BASE_MTIME),
                 File("sub/a", b"a", mtime=BASE_MTIME), File("sub/b", b"b", mtime=BASE_MTIME)])
    os.symlink("dir/f1", root / "link")
    for d in ("dir", "sub"):
        _restore_mtime(root / d, BASE_MTIME)


@pytest.mark.parametrize("name,change,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario(tmp_path, name, change, expected):
    root = tmp_path / "t"
    _base(root)
    before = snapshot(root)
    ref_before = reference.walk(root)
    change(root)
    if name == "chown" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    # index vs live tree, index vs index, and the reference all agree with the expectation
    live = snapdiff.diff(before, root)
    assert _changes(live) == expected
    after = snapshot(root)
    assert _changes(snapdiff.diff(before, after)) == expected
    assert reference.diff(ref_before, reference.walk(root)) == expected
    # two live trees: copy the base first
    for c in live:
        assert (c.old is None) == (c.kind == "added") and (c.new is None) == (c.kind == "deleted")


def test_live_diff_hashes_only_stat_changed_files(tmp_path):
    build(tmp_path, [File(f"f{i}", b"%d" % i) for i in range(100)])
    before = snapshot(tmp_path)
    (tmp_path / "f7").write_bytes(b"X")  # same size, new content
    d = snapdiff.diff(before, tmp_path)
    assert _changes(d) == [("modified", b"f7")]
    hashed = [e.path for e in d.b if e.hash is not None]
    assert hashed == [b"f7"]


def test_force_hash_all_finds_change_hidden_from_stat(tmp_path):
    """Content changed behind stat's back (same size, mtime and ctime restored is impossible
    for ctime, so compare two indexes whose stat data we forge equal)."""
    build(tmp_path, [File("f", b"aaaa")])
    a = snapshot(tmp_path)
    (tmp_path / "f").write_bytes(b"bbbb")
    b = snapshot(tmp_path)
    b.entries = b.entries.copy()
    for col in ("mtime_ns", "ctime_ns", "ino"):
        b.entries[col] = a.entries[col]
    # both sides hashed: the hash decides, whatever stat says
    assert _changes(snapdiff.diff(a, b)) == [("modified", b"f")]
    a_nohash = snapshot(tmp_path, hash=False)
    a_nohash.entries = a_nohash.entries.copy()
    b_nohash = TreeIndex(a_nohash.entries.copy(), a_nohash.paths, a_nohash.extra)
    assert _changes(snapdiff.diff(a_nohash, b_nohash)) == []


def test_diff_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(a, [File("same", b"s", mtime=BASE_MTIME), File("gone", b"g"),
              File("changed", b"c1", mtime=BASE_MTIME)])
    build(b, [File("same", b"s", mtime=BASE_MTIME), File("new", b"n"),
              File("changed", b"c2", mtime=BASE_MTIME)])
    d = snapdiff.diff(a, b)
    assert _changes(d) == [("modified", b"changed"), ("deleted", b"gone"), ("added", b"new")]
    assert d.lines() == ["C /changed", "D /gone", "A /new"]
    assert d.summary() == {"added": 1, "deleted": 1, "modified": 1, "metadata": 0, "type": 0}


def test_diff_with_saved_index_file(tmp_path):
    build(tmp_path / "t", [File("x", b"1")])
    snapshot(tmp_path / "t").save(tmp_path / "t.idx")
    (tmp_path / "t" / "y").write_bytes(b"2")
    assert _changes(snapdiff.diff(tmp_path / "t.idx", tmp_path / "t")) == [("added", b"y")]


N_BIG = 100_000


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """100,000 files in 1,000 directories, seeded."""
    root = tmp_path_factory.mktemp("big") / "t"
    rng = random.Random(42)
    for d in range(1000):
        dp = root / f"d{d:03d}"
        dp.mkdir(parents=True)
        for f in range(N_BIG // 1000):
            (dp / f"f{f:03d}").write_bytes(rng.randbytes(rng.randrange(0, 200)))
    return root


@pytest.mark.slow
def test_big_tree_matches_reference_and_scripted_changes(big_tree):
    root = big_tree
    ix = snapshot(root)
    assert len(ix) == N_BIG + 1000
    ref = reference.walk(root)
    got = reference.index_records(ix)
    assert list(got) == sorted(ref, key=reference.tree_key)
    assert got == ref

    expected = []
    (root / "d000/added").write_bytes(b"new")
    expected += [("metadata", b"d000"), ("added", b"d000/added")]
    (root / "d001/f000").unlink()
    expected += [("metadata", b"d001"), ("deleted", b"d001/f000")]
    with open(root / "d002/f000", "ab") as f:
        f.write(b"appended")
    expected += [("modified", b"d002/f000")]
    os.chmod(root / "d003/f000", 0o600)
    expected += [("metadata", b"d003/f000")]
    if os.geteuid() == 0:
        os.chown(root / "d004/f000", 1, 1)
        expected += [("metadata", b"d004/f000")]
    os.utime(root / "d005/f000", ns=(5, 5))
    expected += [("metadata", b"d005/f000")]
    st = os.lstat(root / "d006/f000")
    (root / "d006/f000").write_bytes((root / "d006/f000").read_bytes())
    _restore_mtime(root / "d006/f000", st.st_mtime_ns)  # identical rewrite: no change
    dm = os.lstat(root / "d007").st_mtime_ns
    (root / "d007/f000").unlink()
    (root / "d007/f000").mkdir()
    _restore_mtime(root / "d007", dm)
    expected += [("type", b"d007/f000")]
    dm = os.lstat(root / "d008").st_mtime_ns
    shutil.rmtree(root / "d008")
    (root / "d008").write_bytes(b"file now")
    expected += [("type", b"d008")] + [("deleted", b"d008/f%03d" % i) for i in range(100)]
    expected.sort(key=lambda c: reference.tree_key(c[1]))

    d = snapdiff.diff(ix, root)
    assert _changes(d) == expected
    assert _changes(snapdiff.diff(ix, snapshot(root))) == expected
    # the live walk hashed only the same-size files whose stat data changed (chmod, chown,
    # touch and rewrite all change ctime), not the other 100,000
    hashed = sorted(e.path for e in d.b if e.hash is not None)
    assert hashed == sorted([b"d003/f000", b"d005/f000", b"d006/f000"]
                            + ([b"d004/f000"] if os.geteuid() == 0 else []))
