"""One hierarchy of errors for all of snapdiff.

Every class derives from SnapdiffError and from the builtin it most resembles,
so callers may catch either.  Messages say the operation first and quote the
subject: ``commit 'web': walk: openat 'usr/lib': Permission denied``.
The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``.
"""

from __future__ import annotations

__all__ = [
    "SnapdiffError", "IndexFormatError", "LayerFormatError", "UnsafeLayerError",
    "DigestMismatchError", "FileChangedError", "MountError", "ImageNotFound",
    "ContainerNotFound", "NameInUseError", "ContainerStateError", "StoreError",
    "RegistryError", "UnsupportedError", "SpawnError",
]


class SnapdiffError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __str__(self) -> str:  # KeyError subclasses would otherwise repr() the message
        return " ".join(str(a) for a in self.args) if self.args else self.__class__.__name__


class IndexFormatError(SnapdiffError, ValueError):
    """A saved TreeIndex is corrupt, truncated, or of an unknown version."""


class LayerFormatError(SnapdiffError, ValueError):
    """A layer tar stream is malformed (bad header, truncated, bad compression)."""


class UnsafeLayerError(LayerFormatError):
    """A layer entry would escape the target root or is not a valid name."""


class DigestMismatchError(SnapdiffError, ValueError):
    """Content does not hash to the digest that names it."""


class FileChangedError(SnapdiffError, OSError):
    """A file changed (size or type) while snapdiff was reading it."""


class MountError(SnapdiffError, OSError):
    """overlayfs is missing, refused the options, or did not honour them."""


class ImageNotFound(SnapdiffError, KeyError):
    """No image of that name or id in the store."""

    exit_code = 2


class ContainerNotFound(SnapdiffError, KeyError):
    """No container of that name or id."""

    exit_code = 2


class NameInUseError(SnapdiffError, ValueError):
    """The name is taken by another image or container."""


class ContainerStateError(SnapdiffError, RuntimeError):
    """The container is not in a state that allows the operation."""


class StoreError(SnapdiffError, OSError):
    """The store is inconsistent or cannot be written."""


class RegistryError(SnapdiffError, OSError):
    """A registry refused a request or answered with something wrong."""


class UnsupportedError(SnapdiffError, ValueError):
    """The input cannot be represented (e.g. a file named .wh.* in a layer)."""


class SpawnError(SnapdiffError, OSError):
    """Launching a container process failed at a named step."""
