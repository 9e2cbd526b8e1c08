"""overlayfs mounts for containers: mount with the options of constants.py, check that the
kernel honoured them, refuse upper directories this module cannot commit, unmount.

The mount goes through the new mount API in C (`_core.overlay_mount`: fsopen, one fsconfig
``lowerdir+`` per layer, fsmount, move_mount) rather than ``mount -t overlay``: no process
start, an errno and the kernel's own message on failure, and no page-size limit on the
options string however many layers an image has.  Kernels older than 6.8 lack
``lowerdir+``; there the classic mount(2) options string is used, and an image whose layer
list does not fit in one page is refused with a clear error.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from snapdiff import _core
from snapdiff.constants import (
    OVERLAY_METACOPY_SUFFIX,
    OVERLAY_MOUNT_OPTIONS,
    OVERLAY_REDIRECT_SUFFIX,
    OVERLAY_XATTR_PREFIXES,
)
from snapdiff.errors import MountError, UnsupportedError

__all__ = [
    "MountInfo", "parse_mountinfo_line", "find_mount", "is_mounted", "module_defaults",
    "check_mount_options", "overlay_xattr_prefix", "check_upper", "mount_overlay",
    "umount_overlay",
]

MNT_DETACH = 2
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# the options the kernel must honour: {"index": "off", ...}
_REQUIRED = dict(opt.split("=", 1) for opt in OVERLAY_MOUNT_OPTIONS)
# values as good as "off" for the check: redirect_dir=nofollow creates no redirect either
_ACCEPTED = {name: {value, "nofollow"} if name == "redirect_dir" else {value}
             for name, value in _REQUIRED.items()}


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    mount_point: str
    fstype: str
    source: str
    mount_options: str
    super_options: dict[str, str | None] = field(default_factory=dict)

    @property
    def xattr_prefix(self) -> bytes:
        """The namespace of overlay's whiteout/opaque/redirect xattrs on this mount."""
        return b"user.overlay." if "userxattr" in self.super_options else b"trusted.overlay."


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _split_options(opts: str) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    for item in opts.split(","):
        if not item:
            continue
        k, sep, v = item.partition("=")
        result[k] = v if sep else None
    return result


def parse_mountinfo_line(line: str) -> MountInfo:
    """Parse one mountinfo line (proc(5)); raises MountError on a malformed line."""
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
        return MountInfo(
            mount_id=int(fields[0]),
            mount_point=_unescape(fields[4]),
            fstype=fields[sep + 1],
            source=_unescape(fields[sep + 2]),
            mount_options=fields[5],
            super_options=_split_options(_unescape(fields[sep + 3])),
        )
    except (ValueError, IndexError):
        raise MountError(f"mountinfo: malformed line {line.strip()!r}") from None


def find_mount(mount_point: str, mountinfo: str = "/proc/self/mountinfo") -> MountInfo | None:
    """The top-most mount on `mount_point` (an absolute, symlink-free path), or None."""
    mount_point = os.path.realpath(mount_point)
    found = None
    with open(mountinfo) as f:
        for line in f:
            info = parse_mountinfo_line(line)
            if info.mount_point == mount_point:
                found = info
    return found


def is_mounted(mount_point: str) -> bool:
    return find_mount(mount_point) is not None


def module_defaults(params_dir: str = "/sys/module/overlay/parameters") -> dict[str, bool | None]:
    """The overlay module's defaults for the checked options (True = on, None = unknown).

    The kernel shows an option in mountinfo only when it differs from this default, so an
    option absent from mountinfo is as good as its default."""
    result: dict[str, bool | None] = {}
    for name in _REQUIRED:
        try:
            with open(os.path.join(params_dir, name)) as f:
                v = f.read().strip()
        except OSError:
            result[name] = None
            continue
        result[name] = v not in ("N", "0", "off")
    return result


def check_mount_options(info: MountInfo | str, *, defaults: dict[str, bool | None] | None = None
                        ) -> None:
    """Raise MountError unless the mount honours OVERLAY_MOUNT_OPTIONS.

    `info` is a MountInfo or one mountinfo line.  An option shown with another value is
    refused; an option not shown takes the module default, refused if that is on."""
    if isinstance(info, str):
        info = parse_mountinfo_line(info)
    if info.fstype != "overlay":
        raise MountError(f"mount overlay '{info.mount_point}': mounted as {info.fstype}, "
                         f"not overlay")
    if defaults is None:
        defaults = module_defaults()
    for name, wanted in _REQUIRED.items():
        shown = info.super_options.get(name)
        if shown is None and name in info.super_options:
            shown = "on"   # a bare flag
        if shown is not None and shown not in _ACCEPTED[name]:
            raise MountError(f"mount overlay '{info.mount_point}': the kernel did not honour "
                             f"{name}={wanted}: the mount has {name}={shown}")
        if shown is None and defaults.get(name):
            raise MountError(f"mount overlay '{info.mount_point}': the kernel did not honour "
                             f"{name}={wanted}: not shown in mountinfo and the module default "
                             f"is on")


def overlay_xattr_prefix(merged: str) -> bytes:
    """b"trusted.overlay." or b"user.overlay." (userxattr) for the overlay mounted on
    `merged`: the namespace of the whiteout and opaque markers in its upper directory."""
    info = find_mount(merged)
    if info is None or info.fstype != "overlay":
        raise MountError(f"overlay xattr prefix '{merged}': not an overlay mount point")
    return info.xattr_prefix


_BAD_SUFFIXES = (OVERLAY_REDIRECT_SUFFIX, OVERLAY_METACOPY_SUFFIX)
_BAD_XATTRS = tuple(p[:-len(b"overlay.")] + s for p in OVERLAY_XATTR_PREFIXES
                    for s in _BAD_SUFFIXES)


def check_upper(upper: str) -> None:
    """Refuse an upper directory holding redirect or metacopy xattrs (made by a mount with
    redirect_dir=on or metacopy=on, i.e. by another tool): its files are no longer a complete
    changeset, so committing it would silently lose renamed directories or file data.
    Raises UnsupportedError naming the first such entry."""
    if not os.path.isdir(upper):
        return
    stack = [os.fsencode(upper)]
    base = len(stack[0]) + 1
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise MountError(f"check upper '{upper}': scandir "
                             f"'{os.fsdecode(d[base:])}': {e.strerror}") from None
        for ent in entries:
            try:
                names = os.listxattr(ent.path, follow_symlinks=False)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.ENOENT):
                    names = []
                else:
                    raise
            for n in names:
                bn = os.fsencode(n)
                if bn in _BAD_XATTRS:
                    raise UnsupportedError(
                        f"check upper '{upper}': '{os.fsdecode(ent.path[base:])}' has "
                        f"{n} (made by an overlay mount with redirect_dir or metacopy on, "
                        f"not by snapdiff): its changes cannot be committed exactly")
            if ent.is_dir(follow_symlinks=False):
                stack.append(ent.path)


def _legacy_data(lower_dirs, upper, work, options) -> str:
    for p in (*lower_dirs, upper, work):
        if "," in p or ":" in p:
            raise MountError(f"mount overlay: path '{p}' contains ',' or ':', which a mount(2) "
                             f"options string cannot carry (needs a kernel >= 6.8)")
    data = ",".join([f"lowerdir={':'.join(lower_dirs)}", f"upperdir={upper}",
                     f"workdir={work}", *options])
    if len(data) + 1 > _PAGE_SIZE:
        raise MountError(f"mount overlay: {len(lower_dirs)} lower directories make an options "
                         f"string of {len(data)} bytes, over the page size ({_PAGE_SIZE}); "
                         f"a kernel >= 6.8 (fsconfig lowerdir+) mounts any number")
    return data


def mount_overlay(lower_dirs: list[str], upper: str, work: str, merged: str, *,
                  userxattr: bool = False, api: str = "auto") -> MountInfo:
    """Mount overlayfs on `merged` (lower_dirs top layer first) with OVERLAY_MOUNT_OPTIONS,
    plus ``userxattr`` if asked (markers in ``user.overlay.*``: needed in a user namespace).

    `api`: "auto" (fsconfig per layer, the options string on kernels without ``lowerdir+``),
    "fsconfig" or "legacy" (mount(2) with one options string).  After mounting, checks in
    mountinfo that the kernel honoured the options; if not, unmounts and raises MountError.
    Returns the mount's MountInfo."""
    if not lower_dirs:
        raise MountError(f"mount overlay '{merged}': no lower directory")
    lower_dirs = [os.path.abspath(p) for p in lower_dirs]
    upper, work, merged = (os.path.abspath(p) for p in (upper, work, merged))
    for p in lower_dirs:
        if not os.path.isdir(p):
            raise MountError(f"mount overlay '{merged}': lower directory '{p}' does not exist")
    for p in (upper, work, merged):
        os.makedirs(p, exist_ok=True)
    if is_mounted(merged):
        raise MountError(f"mount overlay '{merged}': already mounted")
    check_upper(upper)
    options = list(OVERLAY_MOUNT_OPTIONS)
    if userxattr:
        # redirect_dir=off creates no redirect but follows existing ones, which userxattr
        # forbids ("conflicting options"); nofollow creates none and follows none
        options = ["redirect_dir=nofollow" if o == "redirect_dir=off" else o for o in options]
        options.append("userxattr")
    context = f"mount overlay '{merged}'"
    if api not in ("auto", "fsconfig", "legacy"):
        raise ValueError(f"mount overlay: unknown api {api!r}")
    if api != "legacy":
        try:
            _core.overlay_mount(lower_dirs, upper, work, merged, options, context=context)
        except MountError as e:
            if e.step == "fsopen" and e.errno == errno.ENODEV:
                raise MountError(f"overlayfs is not available: {e}") from None
            no_plus = e.step == "fsconfig lowerdir+" and e.errno == errno.EINVAL
            no_api = e.step == "fsopen" and e.errno == errno.ENOSYS
            if api == "fsconfig" or not (no_plus or no_api):
                raise
            api = "legacy"
    if api == "legacy":
        data = _legacy_data(lower_dirs, upper, work, options)
        try:
            _core.mount("overlay", merged, "overlay", 0, data)
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise MountError(f"overlayfs is not available: {context}: "
                                 f"{os.strerror(e.errno)}") from None
            raise MountError(f"{context}: mount: {os.strerror(e.errno)}") from None
    info = find_mount(merged)
    try:
        if info is None:
            raise MountError(f"{context}: the mount does not appear in /proc/self/mountinfo")
        check_mount_options(info)
    except MountError:
        umount_overlay(merged)
        raise
    return info


def umount_overlay(merged: str) -> bool:
    """Unmount `merged`; False if it was not mounted.  If the mount is busy (a process
    still has a file open or its cwd inside), it is detached lazily (MNT_DETACH): it
    disappears from the namespace now and the kernel frees it when the last user goes."""
    merged = os.path.abspath(merged)
    if not is_mounted(merged):
        return False
    try:
        _core.umount(merged)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False  # unmounted meanwhile (say, by the container's monitor)
        if e.errno != errno.EBUSY:
            raise MountError(f"umount overlay '{merged}': {os.strerror(e.errno)}") from None
        try:
            _core.umount(merged, MNT_DETACH)
        except OSError as e2:
            if e2.errno != errno.EINVAL:
                raise MountError(f"umount overlay '{merged}': "
                                 f"{os.strerror(e2.errno)}") from None
    return True
