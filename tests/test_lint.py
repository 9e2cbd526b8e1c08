"""Lint as part of the test run: ruff on the Python, a warning-free C build, stubs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    r = subprocess.run([ruff, "check", "snapdiff", "tests", "bench", "scripts"], cwd=TOP,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("source", sorted(glob.glob(os.path.join(TOP, "csrc", "*.c"))),
                         ids=os.path.basename)
def test_c_compiles_without_warnings(source):
    r = subprocess.run(["cc", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Werror", "-D_GNU_SOURCE", "-D_FILE_OFFSET_BITS=64", "-O2",
                        "-fsyntax-only", "-I", os.path.join(TOP, "csrc"), source],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_csrc_never_includes_python():
    import re

    for source in glob.glob(os.path.join(TOP, "csrc", "*")):
        with open(source) as f:
            assert not re.search(r'#\s*include\s*[<"]Python\.h', f.read()), source


def test_type_stubs_cover_the_extension():
    import snapdiff._core as core

    stub = os.path.join(TOP, "snapdiff", "_core.pyi")
    with open(stub) as f:
        text = f.read()
    public = [n for n in dir(core) if not n.startswith("_") and callable(getattr(core, n))]
    missing = [n for n in public if f"def {n}(" not in text and f"class {n}" not in text]
    assert missing == []


def test_public_names_are_not_shadowed_by_submodules():
    """Importing every submodule must leave snapdiff.diff, snapdiff.snapshot ... the public
    functions and classes (a submodule of the same name would replace them)."""
    import importlib
    import pkgutil

    import snapdiff

    for mod in pkgutil.iter_modules(snapdiff.__path__):
        if mod.name != "__main__":  # that one runs the command line
            importlib.import_module(f"snapdiff.{mod.name}")
    for name in snapdiff.__all__:
        if name != "__version__":
            assert not isinstance(getattr(snapdiff, name), type(snapdiff)), name
    assert callable(snapdiff.diff) and callable(snapdiff.snapshot)
