"""snapdiff: turn what a container changed into a new OCI image layer, fast and exactly."""

from __future__ import annotations

__version__ = "0.1.0"
