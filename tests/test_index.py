"""TreeIndex persistence: round trip, memory-mapped load, corrupt files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fstree import File, Symlink, build

from snapdiff.errors import IndexFormatError
from snapdiff.index import TreeIndex, snapshot


@pytest.fixture
def saved(tmp_path):
    build(tmp_path / "t", [File("a", b"1"), File("d/b", b"22", xattrs={"user.x": b"y"}),
                           Symlink("l", "a"), File(b"\xff", b"3")])
    ix = snapshot(tmp_path / "t")
    ix.save(tmp_path / "t.idx")
    return ix, tmp_path / "t.idx"


def test_round_trip(saved):
    ix, path = saved
    back = TreeIndex.load(path)
    assert len(back) == len(ix)
    assert list(back) == list(ix)
    assert back[b"d/b"].xattrs == {b"user.x": b"y"}
    assert back[b"l"].link_target == b"a"
    assert back.find(b"\xff") == ix.find(b"\xff") >= 0
    # loaded by memory-mapping, not copied
    assert back._mmap is not None and not back.entries.flags.owndata


def test_empty_tree(tmp_path):
    (tmp_path / "e").mkdir()
    ix = snapshot(tmp_path / "e")
    ix.save(tmp_path / "e.idx")
    back = TreeIndex.load(tmp_path / "e.idx")
    assert len(back) == 0 and list(back) == [] and back.find(b"x") == -1


@pytest.mark.parametrize("offset", [0, 9, 20, 64, 64 + 40, -1])
def test_flipped_byte_is_detected(saved, offset):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="load index"):
        TreeIndex.load(path)


@pytest.mark.parametrize("keep", [0, 10, 63, 64, 100])
def test_truncated_file_is_detected(saved, keep):
    _, path = saved
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(IndexFormatError, match="truncated"):
        TreeIndex.load(path)


def test_checksummed_but_inconsistent_index_is_rejected(saved, tmp_path):
    """A file with a valid checksum but entries out of order (a bug or a forgery) is refused
    by validation, so the C code never reads out of bounds."""
    ix, _ = saved
    bad = TreeIndex(ix.entries[::-1].copy(), ix.paths, ix.extra)
    bad.save(tmp_path / "bad.idx")
    with pytest.raises(IndexFormatError, match="not in tree order"):
        TreeIndex.load(tmp_path / "bad.idx")
    ents = ix.entries.copy()
    ents["path_off"][0] = 10**9
    TreeIndex(ents, ix.paths, ix.extra).save(tmp_path / "oob.idx")
    with pytest.raises(IndexFormatError, match="out of bounds"):
        TreeIndex.load(tmp_path / "oob.idx")


def test_not_an_index(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(IndexFormatError, match="not a snapdiff index"):
        TreeIndex.load(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        TreeIndex.load(tmp_path / "missing")


def test_save_is_atomic(saved, tmp_path, monkeypatch):
    ix, path = saved
    before = path.read_bytes()

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        ix.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "t.idx"]


def test_columns(saved):
    ix, _ = saved
    assert ix.regular_mask().sum() == 3
    assert np.all(ix.hashed == ix.regular_mask())
