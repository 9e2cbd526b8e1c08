"""snapdiff: turn what a container changed into a new OCI image layer, fast and exactly."""

from __future__ import annotations

__version__ = "0.1.0"

from snapdiff.diff import Change, Diff, diff
from snapdiff.errors import SnapdiffError
from snapdiff.index import Entry, TreeIndex, snapshot

__all__ = ["Change", "Diff", "Entry", "SnapdiffError", "TreeIndex", "diff", "snapshot",
           "__version__"]

from snapdiff.store import Image, Store  # noqa: E402

__all__ += ["Image", "Store"]
