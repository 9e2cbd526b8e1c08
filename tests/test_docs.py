"""The documentation says what the code does."""

from __future__ import annotations

import os
import re
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_reference_is_current(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    sys.path.insert(0, os.path.join(TOP, "scripts"))
    try:
        import gen_cli_docs
    finally:
        sys.path.pop(0)
    with open(os.path.join(TOP, "docs", "cli.md")) as f:
        assert f.read() == gen_cli_docs.render(), \
            "docs/cli.md is stale: COLUMNS=100 python scripts/gen_cli_docs.py > docs/cli.md"


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(TOP, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(TOP, ".ci", "run")) as f:
        ci = f.read()
    cmd = re.search(r"^(\./scripts/bootstrap\.sh && SNAPDIFF_REQUIRE_ROOT=1 .*pytest -q)",
                    readme, re.M).group(1)
    assert cmd in ci
