"""snapdiff: turn what a container changed into a new OCI image layer, fast and exactly.

The public names are loaded on first use, so that ``import snapdiff.cli`` (every command
line start) pays only for what the command needs.  (No submodule may share the name of a
public function: importing it would replace the function on the package.)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Change": "snapdiff.treediff", "Diff": "snapdiff.treediff", "diff": "snapdiff.treediff",
    "Entry": "snapdiff.index", "TreeIndex": "snapdiff.index", "snapshot": "snapdiff.index",
    "SnapdiffError": "snapdiff.errors",
    "Image": "snapdiff.store", "Store": "snapdiff.store",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'snapdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
