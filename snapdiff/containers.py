"""Containers: an image's layers under a private writable layer, and a process running in it.

A container lives in ``<store_root>/containers/<id>/``::

    upper/ work/ merged/   the overlay's writable layer, its work dir, its mount point
    state.json             what the container is and what it is doing (atomic writes)
    log                    output of a detached run (``logs``)
    lock                   flock serialising read-modify-write of state.json

The process is launched by the C launcher (``_core.spawn``: new namespaces, pivot_root, no
Python between fork and exec), or by an OCI runtime (runc) from a bundle written here.
A detached run is watched by a monitor process (a fresh Python) that records the exit
status.  A state whose process died unwatched is detected by the pid's start time and shown
as exited.

An image is any object with ``.id``, ``.name``, ``.lower_dirs`` (top layer first) and
``.config`` (the OCI config's "config" object).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from snapdiff import _core, overlay
from snapdiff.errors import (
    ContainerNotFound,
    ContainerStateError,
    NameInUseError,
    SnapdiffError,
    SpawnError,
    StoreError,
    UnsupportedError,
)
from snapdiff.fsutil import atomic_write, flocked

__all__ = ["Containers", "Container", "parse_volume", "resolve_user", "FORWARDED_SIGNALS"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNTIMES = ("runc", "crun")
NETWORKS = ("none", "host")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# signals a foreground run passes on to the container's process
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


# --- small helpers ----------------------------------------------------------------------

def _write_json_atomic(path: str, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode(), sync_dir=False)


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if the process is gone
    or a zombie (it has exited; its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def _proc_state(pid: int) -> bytes | None:
    """The state letter of /proc/PID/stat (R, S, T, Z...), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0]


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def parse_volume(spec: str) -> tuple[str, str, bool]:
    """"HOST:CTR[:ro|rw]" -> (absolute host path, absolute container path, readonly)."""
    parts = spec.split(":")
    ro = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        ro = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UnsupportedError(f"volume '{spec}': expected HOST:CTR[:ro]")
    host, ctr = parts
    if not os.path.isabs(ctr):
        raise UnsupportedError(f"volume '{spec}': the container path must be absolute")
    if not os.path.exists(host):
        raise UnsupportedError(f"volume '{spec}': host path '{host}' does not exist")
    ctr = os.path.normpath(ctr)
    if ctr == "/":
        raise UnsupportedError(f"volume '{spec}': cannot mount over the container's root")
    return os.path.abspath(host), ctr, ro


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    """The colon-separated lines of the container's /etc/<name>, read as text (never NSS)."""
    path = os.path.join(rootfs, "etc", name)
    if os.path.islink(path):   # do not follow a link out of the container's tree
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and
                    not ln.startswith("#")]
    except FileNotFoundError:
        return []


def resolve_user(rootfs: str, user: str | None) -> tuple[int, int, list[int], str | None]:
    """Resolve "NAME|UID[:GROUP|GID]" against the container's /etc/passwd and /etc/group.

    Returns (uid, gid, supplementary gids, home).  A numeric uid missing from passwd gets
    gid 0, as docker does.  Raises SpawnError for an unknown name."""
    if not user:
        user = "0"
    uname, _, gname = user.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups = _read_db(rootfs, "group")
    entry = None
    for p in passwd:
        if len(p) >= 4 and (p[0] == uname or (uname.isdigit() and p[2] == uname)):
            entry = p
            break
    if uname.isdigit():
        uid = int(uname)
    elif entry is not None:
        uid = int(entry[2])
    else:
        raise SpawnError(f"user '{uname}': no such user in the container's /etc/passwd")
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if gname:
        if gname.isdigit():
            gid = int(gname)
        else:
            for g in groups:
                if len(g) >= 3 and g[0] == gname and g[2].isdigit():
                    gid = int(g[2])
                    break
            else:
                raise SpawnError(f"group '{gname}': no such group in the container's "
                                 f"/etc/group")
    extra: list[int] = []
    name = entry[0] if entry is not None else None
    if name is not None and not gname:
        for g in groups:
            if len(g) >= 4 and g[2].isdigit() and name in g[3].split(","):
                extra.append(int(g[2]))
    home = entry[5] if entry is not None and len(entry) > 5 and entry[5] else None
    return uid, gid, sorted(set(extra) | {gid}), home


def _merge_env(base: list[str], extra: list[str] | tuple[str, ...]) -> list[str]:
    env: dict[str, str] = {}
    for item in list(base) + list(extra):
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise UnsupportedError(f"environment '{item}': expected KEY=VALUE")
        env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


def _fd_of(stream: Any) -> int:
    if stream is None:
        return -1
    if isinstance(stream, int):
        return stream
    return stream.fileno()


class _Forwarder:
    """While active, the signals in FORWARDED_SIGNALS are passed on to a process."""

    def __init__(self, pid_fn):
        self.pid_fn = pid_fn
        self.saved: dict[int, Any] = {}

    def _handler(self, signum, frame):
        pid = self.pid_fn()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def __enter__(self):
        for s in FORWARDED_SIGNALS:
            self.saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return _exit_code(status)
        except ChildProcessError:
            return -1


# --- cgroup freezer ---------------------------------------------------------------------

def _freezer_base() -> tuple[str, str] | None:
    """("v1", mount point of the freezer hierarchy) or ("v2", a cgroup2 mount), or None."""
    v2 = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                info = overlay.parse_mountinfo_line(line)
                if info.fstype == "cgroup" and "freezer" in info.super_options:
                    return "v1", info.mount_point
                if info.fstype == "cgroup2" and v2 is None:
                    v2 = info.mount_point
    except OSError:
        return None
    return ("v2", v2) if v2 else None


def _make_cgroup(cid: str) -> tuple[str, str] | None:
    base = _freezer_base()
    if base is None:
        return None
    kind, mnt = base
    path = os.path.join(mnt, "snapdiff", cid)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None   # no write access to the hierarchy: pause falls back to SIGSTOP
    return kind, path


def _remove_cgroup(path: str | None, timeout: float = 2.0) -> None:
    """rmdir the container's cgroup.  When PID 1 dies the kernel kills the rest of its PID
    namespace, but they may leave the cgroup a moment later (EBUSY until then)."""
    if not path:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            time.sleep(0.01)


# --- the container ----------------------------------------------------------------------

class Container:
    """One container; its attributes are read from state.json on each access."""

    def __init__(self, containers: Containers, cid: str):
        self._containers = containers
        self.id = cid
        self.dir = os.path.join(containers.root, cid)
        self.upper_dir = os.path.join(self.dir, "upper")
        self.work_dir = os.path.join(self.dir, "work")
        self.merged_dir = os.path.join(self.dir, "merged")
        self.log_path = os.path.join(self.dir, "log")
        self._state_path = os.path.join(self.dir, "state.json")
        self._data = self._load()
        self.state: dict = self._data.setdefault("state", {})

    # -- persistence
    def _load(self) -> dict:
        try:
            with open(self._state_path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise ContainerNotFound(f"container '{self.id[:12]}': removed") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"container '{self.id[:12]}': state.json: {e}") from None

    def _locked(self):
        return flocked(os.path.join(self.dir, "lock"))

    def _update(self, **fields) -> None:
        with self._locked():
            data = self._load()
            data.update(fields)
            _write_json_atomic(self._state_path, data)
            self._data = data
            self.state = data.setdefault("state", {})

    def reload(self) -> Container:
        self._data = self._load()
        self.state = self._data.setdefault("state", {})
        return self

    def save_state(self) -> None:
        """Persist the free-form ``state`` dict (atomically, under the container's lock)."""
        self._update(state=self.state)

    # -- attributes
    @property
    def name(self) -> str | None:
        return self._data.get("name")

    @property
    def image_id(self) -> str:
        return self._data["image_id"]

    @property
    def image_name(self) -> str | None:
        return self._data.get("image_name")

    @property
    def lower_dirs(self) -> list[str]:
        return list(self._data["lower_dirs"])

    @property
    def spec(self) -> dict:
        return dict(self._data["spec"])

    @property
    def created(self) -> float:
        return self._data["created"]

    @property
    def exit_code(self) -> int | None:
        self.reload()
        return self._data.get("exit_code")

    @property
    def display_name(self) -> str:
        return self.name or self.id[:12]

    @property
    def pid(self) -> int | None:
        """The container's PID 1, as seen from the host, while it runs."""
        d = self.reload()._data
        if d.get("status") != "running":
            return None
        pid = d.get("pid")
        if d["spec"].get("runtime") and pid is None:
            pid = self._runtime_pid()
        if pid is None:
            return None
        if d.get("pid_start") is not None and _proc_start_time(pid) != d["pid_start"]:
            return None
        if d.get("pid_start") is None and _proc_start_time(pid) is None:
            return None
        return pid

    @property
    def status(self) -> str:
        """"created", "running" or "exited" (a process that died unwatched is exited)."""
        d = self.reload()._data
        st = d.get("status", "created")
        if st != "running":
            return st
        if d.get("monitor_pid") and d.get("pid") is None:
            # the monitor has not yet reported the pid: running if the monitor lives
            alive = _proc_start_time(d["monitor_pid"]) == d.get("monitor_start")
            return "running" if alive else "exited"
        return "running" if self.pid is not None else "exited"

    @property
    def paused(self) -> bool:
        return bool(self.reload()._data.get("paused")) and self.status == "running"

    # -- mounts
    def mount(self) -> str:
        """Mount the overlay (if not mounted) and return the merged path."""
        if not overlay.is_mounted(self.merged_dir):
            for d in self.lower_dirs:
                if not os.path.isdir(d):
                    raise StoreError(f"mount '{self.display_name}': image layer directory "
                                     f"'{d}' does not exist")
            overlay.mount_overlay(self.lower_dirs, self.upper_dir, self.work_dir,
                                  self.merged_dir, userxattr=self.spec.get("userxattr", False))
        return self.merged_dir

    def umount(self) -> bool:
        """Unmount the overlay; refuses while the container runs.  False if not mounted."""
        if self.status == "running":
            raise ContainerStateError(f"umount '{self.display_name}': container is running")
        self._update(user_mounted=False)
        return overlay.umount_overlay(self.merged_dir)

    @property
    def xattr_prefix(self) -> bytes:
        """Namespace of the whiteout/opaque xattrs in upper_dir."""
        return b"user.overlay." if self.spec.get("userxattr") else b"trusted.overlay."

    # -- running
    def _launch_args(self) -> dict:
        """Mount, resolve the user and build the arguments of _core.spawn."""
        spec = self.spec
        merged = self.mount()
        try:
            uid, gid, groups, home = resolve_user(merged, spec.get("user"))
        except SpawnError as e:
            self._after_failed_start()
            raise SpawnError(f"run '{self.display_name}': {e}") from None
        env = list(spec["env"])
        if home and not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home}")
        return dict(rootfs=merged, argv=spec["argv"], env=env, cwd=spec["workdir"],
                    hostname=spec["hostname"], uid=uid, gid=gid, groups=groups,
                    host_network=spec["network"] == "host",
                    binds=[tuple(v) for v in spec["volumes"]])

    def _check_startable(self, op: str) -> None:
        if self.status == "running":
            raise ContainerStateError(f"{op} '{self.display_name}': container is already "
                                      f"running")

    def _record_start(self, pid: int | None, cgroup: str | None, **extra) -> None:
        self._update(status="running", pid=pid,
                     pid_start=_proc_start_time(pid) if pid else None, exit_code=None,
                     started_at=time.time(), finished_at=None, paused=False, cgroup=cgroup,
                     **extra)

    def _record_exit(self, code: int) -> None:
        with self._locked():
            data = self._load()
            data.update(status="exited", exit_code=code, finished_at=time.time(), pid=None,
                        pid_start=None, paused=False, monitor_pid=None)
            _write_json_atomic(self._state_path, data)
            self._data = data
        _remove_cgroup(self._data.get("cgroup"))
        if self._data["spec"].get("runtime"):
            self._runtime("delete", "--force", self.id, check=False)
        if not self._data.get("user_mounted"):
            with contextlib.suppress(SnapdiffError, OSError):
                overlay.umount_overlay(self.merged_dir)

    def run(self, *, detach: bool = False, remove: bool = False, stdin=None, stdout=None,
            stderr=None) -> int:
        """Run the container's command.  Foreground: signals reach the process (forwarded
        by this process) and the return value is its exit code (128+N if killed by signal
        N).  Detached: returns 0 once it runs; a monitor waits for it, writes its output to
        the log and records the exit status.  `remove`: remove the container afterwards."""
        if detach:
            self.start(remove=remove)
            return 0
        self._check_startable("run")
        try:
            code = self._run_foreground(stdin, stdout, stderr)
        finally:
            if remove:
                with contextlib.suppress(ContainerNotFound):
                    self.remove(force=True)
        return code

    def _run_foreground(self, stdin, stdout, stderr) -> int:
        spec = self.spec
        if spec.get("runtime"):
            return self._runtime_foreground(stdin, stdout, stderr)
        args = self._launch_args()
        cg = _make_cgroup(self.id)
        tty = -1
        if stdin is None and os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            tty = 0   # the container's group becomes the terminal's foreground group
        box: dict[str, int] = {}
        with _Forwarder(lambda: box.get("pid")):
            try:
                pid = _core.spawn(**args, stdin=_fd_of(stdin), stdout=_fd_of(stdout),
                                  stderr=_fd_of(stderr), tty_fd=tty,
                                  cgroup_procs=os.path.join(cg[1], "cgroup.procs") if cg
                                  else None, context=f"run '{self.display_name}'")
            except SnapdiffError:
                _remove_cgroup(cg[1] if cg else None)
                self._after_failed_start()
                raise
            box["pid"] = pid
            self._record_start(pid, cg[1] if cg else None, cgroup_kind=cg[0] if cg else None,
                               monitor_pid=None)
            code = _wait(pid)
        if tty >= 0:
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, os.getpgrp())
            finally:
                signal.signal(signal.SIGTTOU, old)
        self._record_exit(code)
        return code

    def _after_failed_start(self) -> None:
        if not self.reload()._data.get("user_mounted"):
            with contextlib.suppress(SnapdiffError, OSError):
                overlay.umount_overlay(self.merged_dir)

    def start(self, *, remove: bool = False) -> int:
        """Start detached, under a monitor process; returns the container's pid once it
        runs (raises the launcher's error if it could not start)."""
        self._check_startable("start")
        rfd, wfd = os.pipe()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                      0o640)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from snapdiff.containers import _monitor_main; "
                 "_monitor_main()", self._containers.store_root, self.id, str(wfd),
                 "1" if remove else "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(wfd,),
                start_new_session=True, close_fds=True)
        finally:
            os.close(wfd)
            os.close(log)
        with os.fdopen(rfd, "rb") as f:
            reply = f.read().decode("utf-8", "replace")
        kind, _, rest = reply.partition(" ")
        if kind == "ok":
            return int(rest)
        proc.wait()
        if kind == "error":
            cls_name, _, msg = rest.partition(" ")
            import snapdiff.errors as errors_mod

            cls = getattr(errors_mod, cls_name, None)
            if isinstance(cls, type) and issubclass(cls, SnapdiffError):
                raise cls(msg)
            raise SpawnError(msg)
        raise SpawnError(f"start '{self.display_name}': the monitor exited with status "
                         f"{proc.returncode} before the container started (see "
                         f"{self.log_path})")

    def _monitor(self, report_fd: int, remove: bool) -> None:
        """Body of the monitor process: launch, report, wait, record."""
        def report(text: str) -> None:
            os.write(report_fd, text.encode())
            os.close(report_fd)

        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        spec = self.spec
        try:
            self._update(status="running", pid=None, monitor_pid=os.getpid(),
                         monitor_start=_proc_start_time(os.getpid()), exit_code=None)
            if spec.get("runtime"):
                proc = self._runtime_popen(stdin=subprocess.DEVNULL, stdout=1, stderr=2)
                pid = self._wait_runtime_pid(proc)
                self._record_start(None, None, monitor_pid=os.getpid(),
                                   monitor_start=_proc_start_time(os.getpid()))
                report(f"ok {pid}")
                code = proc.wait()
            else:
                args = self._launch_args()
                cg = _make_cgroup(self.id)
                devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pid = _core.spawn(**args, stdin=devnull, stdout=1, stderr=2,
                                      new_session=True,
                                      cgroup_procs=os.path.join(cg[1], "cgroup.procs") if cg
                                      else None, context=f"run '{self.display_name}'")
                except SnapdiffError:
                    _remove_cgroup(cg[1] if cg else None)
                    raise
                finally:
                    os.close(devnull)
                self._record_start(pid, cg[1] if cg else None,
                                   cgroup_kind=cg[0] if cg else None,
                                   monitor_pid=os.getpid(),
                                   monitor_start=_proc_start_time(os.getpid()))
                report(f"ok {pid}")
                code = _wait(pid)
        except SnapdiffError as e:
            self._update(status="created" if self._data.get("started_at") is None
                         else "exited", monitor_pid=None, pid=None)
            self._after_failed_start()
            report(f"error {type(e).__name__} {' '.join(str(e).split())}")
            return
        self._record_exit(code)
        if remove:
            with contextlib.suppress(ContainerNotFound):
                self.remove(force=True)

    def _wait_for_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None:
                return True
            time.sleep(0.02)
        return self.pid is None

    def _wait_recorded(self, timeout: float = 5.0) -> None:
        """After the process died, give its watcher a moment to record the exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reload()._data.get("status") != "running":
                return
            d = self._data
            watcher = d.get("monitor_pid")
            if not watcher or _proc_start_time(watcher) != d.get("monitor_start"):
                return
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the container's PID 1 (which, as an init, receives only signals
        it handles, besides SIGKILL and SIGSTOP)."""
        pid = self.pid
        if pid is None:
            raise ContainerStateError(f"kill '{self.display_name}': container is not running")
        os.kill(pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        pid = self.pid
        if pid is not None:
            if self.paused:
                self.resume()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_for_exit(timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_for_exit(10)
            self._wait_recorded()
        return self.exit_code

    def _ns_pids(self) -> list[int]:
        """Every process of the container's PID namespace."""
        pid = self.pid
        if pid is None:
            return []
        ns = os.readlink(f"/proc/{pid}/ns/pid")
        result = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                        result.append(int(entry))
                except OSError:
                    continue
        return result

    def _freeze(self, frozen: bool) -> None:
        d = self._data
        path, kind = d.get("cgroup"), d.get("cgroup_kind")
        if kind == "v1":
            with open(os.path.join(path, "freezer.state"), "w") as f:
                f.write("FROZEN" if frozen else "THAWED")
            want = "FROZEN" if frozen else "THAWED"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open(os.path.join(path, "freezer.state")) as f:
                    if f.read().strip() == want:
                        return
                time.sleep(0.005)
            raise ContainerStateError(f"pause '{self.display_name}': freezer did not reach "
                                      f"{want}")
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1" if frozen else "0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(os.path.join(path, "cgroup.events")) as f:
                if f"frozen {int(frozen)}" in f.read():
                    return
            time.sleep(0.005)
        raise ContainerStateError(f"pause '{self.display_name}': cgroup did not freeze")

    def pause(self) -> None:
        """Freeze every process of the container: the cgroup freezer when the container has a
        cgroup, else SIGSTOP to every process of its PID namespace (twice, to catch a
        process forked during the first pass)."""
        if self.pid is None:
            raise ContainerStateError(f"pause '{self.display_name}': container is not running")
        if self._data.get("paused"):
            return
        if self.spec.get("runtime"):
            self._runtime("pause", self.id)
        elif self._data.get("cgroup"):
            self._freeze(True)
        else:
            for _ in range(2):
                for p in self._ns_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGSTOP)
            self._wait_stopped()
        self._update(paused=True)

    def _wait_stopped(self, timeout: float = 5.0) -> None:
        """SIGSTOP is delivered asynchronously: wait until every process is stopped, so a
        commit that follows reads a tree nobody writes to."""
        deadline = time.monotonic() + timeout
        while True:
            running = [p for p in self._ns_pids() if _proc_state(p) not in (b"T", b"t", None)]
            if not running:
                return
            if time.monotonic() > deadline:
                raise ContainerStateError(f"pause '{self.display_name}': processes "
                                          f"{running[:5]} did not stop")
            time.sleep(0.002)

    def resume(self) -> None:
        if self.pid is None:
            raise ContainerStateError(f"resume '{self.display_name}': container is not "
                                      f"running")
        if not self._data.get("paused"):
            return
        if self.spec.get("runtime"):
            self._runtime("resume", self.id)
        elif self._data.get("cgroup"):
            self._freeze(False)
        else:
            for p in self._ns_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
        self._update(paused=False)

    def exec(self, cmd: list[str], *, env=(), workdir: str | None = None,
             user: str | None = None, stdin=None, stdout=None, stderr=None) -> int:
        """Run `cmd` inside the running container's namespaces; returns its exit code."""
        pid = self.pid
        if pid is None:
            raise ContainerStateError(f"exec '{self.display_name}': container is not running")
        if not cmd:
            raise UnsupportedError(f"exec '{self.display_name}': no command given")
        spec = self.spec
        merged = f"/proc/{pid}/root"
        uid, gid, groups, home = resolve_user(merged, user or spec.get("user"))
        full_env = _merge_env(spec["env"], list(env))
        cwd = workdir or spec["workdir"]
        if spec.get("runtime"):
            args = ["exec", "--cwd", cwd, "--user", f"{uid}:{gid}"]
            for e in full_env:
                args += ["--env", e]
            proc = subprocess.Popen([*self._runtime_cmd(), *args, self.id, *cmd],
                                    stdin=stdin, stdout=stdout, stderr=stderr)
            with _Forwarder(lambda: proc.pid):
                return proc.wait()
        box: dict[str, int] = {}
        with _Forwarder(lambda: box.get("pid")):
            try:
                child = _core.exec_in(pid, cmd, full_env, cwd=cwd, uid=uid, gid=gid,
                                      groups=groups, stdin=_fd_of(stdin),
                                      stdout=_fd_of(stdout), stderr=_fd_of(stderr),
                                      context=f"exec '{self.display_name}'")
            except SpawnError as e:
                # the container exited while we joined it: its namespaces went first
                if (getattr(e, "step", "") or "").startswith(("open namespace", "setns")) \
                        and e.errno in (errno.ENOENT, errno.ESRCH, errno.EINVAL) \
                        and self._wait_for_exit(1.0):
                    raise ContainerStateError(f"exec '{self.display_name}': container is "
                                              f"not running") from None
                raise
            box["pid"] = child
            return _wait(child)

    def logs(self) -> bytes:
        """Output of the detached runs so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def remove(self, *, force: bool = False) -> None:
        """Unmount and delete the container and its writable layer.  A running container is
        refused unless `force` (then it is killed first)."""
        if self.status == "running":
            if not force:
                raise ContainerStateError(f"rm '{self.display_name}': container is running: "
                                          f"stop it first or force")
            pid = self.pid
            if self.paused:
                with contextlib.suppress(SnapdiffError, OSError):
                    self.resume()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_for_exit(10)
            self._wait_recorded()
        if self.spec.get("runtime"):
            self._runtime("delete", "--force", self.id, check=False)
        _remove_cgroup(self._data.get("cgroup"))
        overlay.umount_overlay(self.merged_dir)
        # rename first: a crash in rmtree leaves no half-removed container behind
        trash = os.path.join(self._containers.root, f".removing-{self.id}")
        os.rename(self.dir, trash)
        shutil.rmtree(trash)

    # -- OCI runtime ------------------------------------------------------------------
    def _runtime_cmd(self) -> list[str]:
        rt = self.spec["runtime"]
        return [rt, "--root", os.path.join(self._containers.store_root, rt)]

    def _runtime(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([*self._runtime_cmd(), *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            msg = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
            raise SpawnError(f"{self.spec['runtime']} {args[0]} '{self.display_name}': {msg}")
        return r.stdout

    def _runtime_pid(self) -> int | None:
        r = subprocess.run([*self._runtime_cmd(), "state", self.id], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return None
        st = json.loads(r.stdout)
        return st.get("pid") if st.get("status") in ("running", "paused") else None

    def write_bundle(self) -> str:
        """Write an OCI runtime bundle (config.json, root = the merged tree); returns its
        directory."""
        spec = self.spec
        merged = self.mount()
        uid, gid, groups, home = resolve_user(merged, spec.get("user"))
        env = list(spec["env"])
        if home and not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home}")
        bundle = os.path.join(self.dir, "bundle")
        os.makedirs(bundle, exist_ok=True)
        caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ]
        for host, ctr, ro in spec["volumes"]:
            mounts.append({"destination": ctr, "type": "bind", "source": host,
                           "options": ["rbind", "ro" if ro else "rw"]})
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if spec["network"] != "host":
            namespaces.append({"type": "network"})
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": uid, "gid": gid, "additionalGids": groups},
                "args": spec["argv"], "env": env, "cwd": spec["workdir"],
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": False,
            },
            "root": {"path": merged, "readonly": False},
            "hostname": spec["hostname"],
            "mounts": mounts,
            "linux": {
                # a cgroupfs path (not systemd's "slice:prefix:name" form)
                "cgroupsPath": f"/snapdiff/{self.id}",
                "namespaces": namespaces,
                "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                                "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                  "/proc/sysrq-trigger"],
            },
        }
        _write_json_atomic(os.path.join(bundle, "config.json"), config)
        return bundle

    def _runtime_popen(self, **kw) -> subprocess.Popen:
        bundle = self.write_bundle()
        self._runtime("delete", "--force", self.id, check=False)   # a stale state of ours
        return subprocess.Popen([*self._runtime_cmd(), "run", "--bundle", bundle, self.id],
                                **kw)

    def _wait_runtime_pid(self, proc: subprocess.Popen, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._runtime_pid()
            if pid:
                return pid
            if proc.poll() is not None:
                rt = self.spec["runtime"]
                hint = (" (crun refuses this machine's cgroup v1 hierarchy; use runc)"
                        if rt == "crun" else "")
                raise SpawnError(f"run '{self.display_name}': {rt} exited with status "
                                 f"{proc.returncode} before the container started{hint}")
            time.sleep(0.02)
        proc.kill()
        raise SpawnError(f"run '{self.display_name}': {self.spec['runtime']} did not start "
                         f"the container within {timeout} s")

    def _runtime_foreground(self, stdin, stdout, stderr) -> int:
        proc = self._runtime_popen(stdin=stdin, stdout=stdout, stderr=stderr)
        self._record_start(None, None, monitor_pid=os.getpid(),
                           monitor_start=_proc_start_time(os.getpid()))
        with _Forwarder(lambda: proc.pid):   # runc passes them on to the container
            code = proc.wait()
        if code < 0:
            code = 128 - code
        if code != 0 and self.spec["runtime"] == "crun" and self._data.get("pid") is None:
            sys.stderr.write("snapdiff: crun failed: it refuses this machine's cgroup v1 "
                             "hierarchy; use --runtime runc\n")
        self._record_exit(code)
        return code

    # -- changes (snapdiff.commit)
    def diff(self, *, threads: int | None = None):
        """What this container changed since it was created, as `docker diff` shows it:
        a snapdiff.commit.ChangeSet (``.lines()``, ``.items()``)."""
        from snapdiff.commit import container_diff

        return container_diff(self, threads=threads)

    def commit(self, name: str | None = None, **kw):
        """Commit this container's changes as a new image (see snapdiff.commit.commit for
        the options); returns the new snapdiff.store.Image."""
        from snapdiff.commit import commit
        from snapdiff.store import Store

        return commit(Store(self._containers.store_root), self, name, **kw)

    def __repr__(self) -> str:
        return f"<Container {self.id[:12]} {self.name!r}>"


def _monitor_main() -> None:
    """Entry point of the monitor process (see Container.start)."""
    store_root, cid, fd, remove = sys.argv[1:5]
    c = Containers(store_root).get(cid)
    c._monitor(int(fd), remove == "1")


# --- the collection ---------------------------------------------------------------------

class Containers:
    """The containers of one store: ``<store_root>/containers/``."""

    def __init__(self, store_root: str):
        self.store_root = os.path.abspath(store_root)
        self.root = os.path.join(self.store_root, "containers")

    def _locked(self):
        os.makedirs(self.root, exist_ok=True)
        return flocked(os.path.join(self.root, ".lock"))

    def _ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if len(n) == 64 and
                      os.path.exists(os.path.join(self.root, n, "state.json")))

    def list(self, all: bool = False) -> list[Container]:  # noqa: A002 (docker's -a)
        """Containers, oldest first; only running ones unless `all`."""
        result = []
        for cid in self._ids():
            try:
                c = Container(self, cid)
            except ContainerNotFound:
                continue
            if all or c.status == "running":
                result.append(c)
        return sorted(result, key=lambda c: c.created)

    def get(self, ref: str) -> Container:
        """By exact name, full id, or unique id prefix."""
        ids = self._ids()
        if ref in ids:
            return Container(self, ref)
        for cid in ids:
            with contextlib.suppress(ContainerNotFound):
                c = Container(self, cid)
                if c.name == ref:
                    return c
        matches = [cid for cid in ids if ref and cid.startswith(ref)]
        if len(matches) == 1:
            return Container(self, matches[0])
        if len(matches) > 1:
            raise ContainerNotFound(f"container '{ref}': ambiguous id prefix "
                                    f"({len(matches)} containers)")
        raise ContainerNotFound(f"container '{ref}': no such container")

    def create(self, image, *, name: str | None = None, cmd: list[str] | None = None,
               env=(), workdir: str | None = None, user: str | None = None,
               hostname: str | None = None, network: str = "none", volumes=(),
               runtime: str | None = None, userxattr: bool = False) -> Container:
        """Create a container from `image` (see the module doc for what an image is).

        cmd replaces the image's Cmd (the Entrypoint stays); env entries "K=V" override the
        image's Env; volumes are "HOST:CTR[:ro]" strings or (host, ctr, readonly) triples.
        userxattr mounts overlay with its markers in user.overlay.* (for unprivileged use):
        overlay then reads opaque directories of the lower layers from user.overlay.opaque
        too, while the store unpacks layers with trusted.overlay.opaque, so use it only
        with lower directories made for it.  Nothing is mounted or run yet."""
        what = f"create '{name}'" if name else "create"
        cfg = dict(getattr(image, "config", None) or {})
        if network not in NETWORKS:
            raise UnsupportedError(f"{what}: network '{network}': expected none or host")
        if runtime is not None:
            if runtime not in RUNTIMES:
                raise UnsupportedError(f"{what}: runtime '{runtime}': expected runc or crun")
            if shutil.which(runtime) is None:
                raise UnsupportedError(f"{what}: runtime '{runtime}' is not installed")
        if name is not None and not _NAME_RE.match(name):
            raise UnsupportedError(f"{what}: invalid name: use letters, digits, '_', '.', "
                                   f"'-'")
        lower_dirs = [os.path.abspath(d) for d in image.lower_dirs]
        if not lower_dirs:
            raise StoreError(f"{what}: image '{image.id}' has no layer directories")
        for d in lower_dirs:
            if not os.path.isdir(d):
                raise StoreError(f"{what}: image layer directory '{d}' does not exist")
        vols = [parse_volume(v) if isinstance(v, str) else
                (os.path.abspath(v[0]), v[1], bool(v[2])) for v in volumes]
        argv = list(cfg.get("Entrypoint") or []) + list(cmd if cmd else
                                                       (cfg.get("Cmd") or []))
        if not argv:
            raise UnsupportedError(f"{what}: no command: the image has no Entrypoint or Cmd "
                                   f"and none was given")
        cid = os.urandom(32).hex()
        hostname = hostname or cfg.get("Hostname") or cid[:12]
        base_env = list(cfg.get("Env") or [])
        if not any(e.startswith("PATH=") for e in base_env):
            base_env.insert(0, f"PATH={DEFAULT_PATH}")
        full_env = _merge_env(base_env + [f"HOSTNAME={hostname}"], list(env))
        workdir = workdir or cfg.get("WorkingDir") or "/"
        if not os.path.isabs(workdir):
            raise UnsupportedError(f"{what}: working directory '{workdir}' must be absolute")
        data = {
            "id": cid, "name": name, "image_id": image.id,
            "image_name": getattr(image, "name", None), "lower_dirs": lower_dirs,
            "created": time.time(), "status": "created", "pid": None, "exit_code": None,
            "spec": {"argv": argv, "env": full_env, "workdir": workdir,
                     "user": user or cfg.get("User") or None, "hostname": hostname,
                     "network": network, "volumes": [list(v) for v in vols],
                     "runtime": runtime, "userxattr": bool(userxattr)},
            "state": {},
        }
        with self._locked():
            if name is not None:
                for other in self._ids():
                    with contextlib.suppress(ContainerNotFound, StoreError):
                        if Container(self, other).name == name:
                            raise NameInUseError(f"create '{name}': the name is in use by "
                                                 f"container '{other[:12]}'")
            tmpdir = os.path.join(self.root, f".creating-{cid}")
            os.makedirs(tmpdir)
            try:
                for sub in ("upper", "work", "merged"):
                    os.mkdir(os.path.join(tmpdir, sub), 0o755)
                _write_json_atomic(os.path.join(tmpdir, "state.json"), data)
                os.rename(tmpdir, os.path.join(self.root, cid))
            except OSError as e:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise StoreError(f"{what}: {e.strerror}: {e.filename}") from None
        return Container(self, cid)

    def run(self, image, *, detach: bool = False, remove: bool = False, stdin=None,
            stdout=None, stderr=None, **create_kw) -> tuple[Container, int]:
        """create + run; returns (container, exit code)."""
        c = self.create(image, **create_kw)
        try:
            code = c.run(detach=detach, remove=remove, stdin=stdin, stdout=stdout,
                         stderr=stderr)
        except BaseException:
            if remove:
                with contextlib.suppress(SnapdiffError, OSError):
                    c.remove(force=True)
            raise
        return c, code

