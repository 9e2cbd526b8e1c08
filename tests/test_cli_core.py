"""The snapshot and diff sub-commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fstree import File, build


def run(*args, check=True, text=True):
    r = subprocess.run([sys.executable, "-m", "snapdiff", *map(str, args)],
                       capture_output=True, text=text)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


@pytest.fixture
def trees(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(a, [File("keep", b"k", mtime=10**18), File("gone", b"g"), File("mod", b"m1", mtime=10**18)])
    build(b, [File("keep", b"k", mtime=10**18), File("new", b"n"), File("mod", b"m22", mtime=10**18),
              File(b"odd\xffname", b"x")])
    return a, b


def test_diff_prints_docker_diff_lines(trees):
    a, b = trees
    out = run("diff", a, b, text=False).stdout
    # the non-UTF-8 name comes out as the bytes it is
    assert out.splitlines() == [b"D /gone", b"C /mod", b"A /new", b"A /odd\xffname"]


def test_snapshot_then_diff_against_index(trees, tmp_path):
    a, b = trees
    run("snapshot", a, "-o", tmp_path / "a.idx")
    assert (tmp_path / "a.idx").exists()
    out = run("diff", tmp_path / "a.idx", b, "--json").stdout
    data = json.loads(out)
    assert [(d["letter"], d["path"]) for d in data][:3] == [("D", "/gone"), ("C", "/mod"),
                                                            ("A", "/new")]
    assert data[1]["kind"] == "modified" and "content" in data[1]["fields"]
    assert data[1]["old"]["size"] == 2 and data[1]["new"]["size"] == 3


@pytest.mark.parametrize("args,needle", [
    (["diff", "/no/such/dir", "/tmp"], "no such directory or index file"),
    (["snapshot", "/no/such/dir", "-o", "/tmp/x.idx"], "not a directory"),
    (["diff", "--frobnicate", "a", "b"], "No such option"),
    (["snapshot", "/tmp"], "Missing option"),
    (["no-such-command"], "No such command"),
])
def test_errors_are_one_line_without_traceback(args, needle):
    r = run(*args, check=False)
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_corrupt_index_is_one_line(tmp_path, trees):
    _, b = trees
    (tmp_path / "bad.idx").write_bytes(b"SDINDEX\0" + os.urandom(200))
    r = run("diff", tmp_path / "bad.idx", b, check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "load index" in r.stderr


def test_version_and_help():
    assert "snapdiff" in run("--version").stdout
    for cmd in ([], ["snapshot"], ["diff"]):
        assert "Usage:" in run(*cmd, "--help").stdout
