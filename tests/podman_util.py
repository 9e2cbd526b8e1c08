"""Drive podman as an independent oracle, in a private storage that never touches the
system's default one.

This machine needs: cgroupfs (no systemd), runc (crun refuses its cgroups), explicit
ulimits (runc cannot raise RLIMIT_NPROC without CAP_SYS_RESOURCE, so podman's default
of copying the current limits fails: we lower them) and no network namespace setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

PODMAN_RUN_FLAGS = ("--network", "none", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=4096:4096", "--cap-add", "MKNOD",
                    "--log-driver", "k8s-file", "--pull", "never")


class PodmanError(Exception):
    """podman failed; the message is its command and its stderr, one line."""


class Podman:
    """podman with its own --root/--runroot (overlay driver by default) in a new directory
    under /tmp: podman refuses a runroot longer than 50 characters, so pytest's tmp_path
    will not do."""

    def __init__(self, *, driver: str = "overlay"):
        self.root = tempfile.mkdtemp(prefix="sdpm-", dir="/tmp")
        self.driver = driver
        self.exe = shutil.which("podman")

    @property
    def base_args(self) -> list[str]:
        return [self.exe or "podman", "--root", os.path.join(self.root, "root"),
                "--runroot", os.path.join(self.root, "run"),
                "--storage-driver", self.driver, "--cgroup-manager", "cgroupfs",
                "--runtime", "runc", "--events-backend", "file",
                "--tmpdir", os.path.join(self.root, "tmp")]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        if self.exe is None:
            raise PodmanError("podman: not installed")
        r = subprocess.run(self.base_args + list(args), capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            err = " ".join(r.stderr.split()) or f"exit code {r.returncode}"
            raise PodmanError(f"podman {args[0]}: {err}")
        return r

    def load(self, archive: str) -> str:
        """Load an oci-archive/docker-archive; returns the loaded name."""
        out = self("load", "-i", archive).stdout
        return out.strip().splitlines()[-1].split("Loaded image:")[-1].strip()

    def run(self, image: str, script: str, name: str) -> int:
        r = self("run", "--name", name, *PODMAN_RUN_FLAGS, image, "/bin/sh", "-c", script,
                 check=False)
        if r.returncode != 0 and "Error:" in r.stderr:
            raise PodmanError(f"podman run: {' '.join(r.stderr.split())}")
        return r.returncode

    def diff(self, name: str) -> list[str]:
        """`podman diff` lines, sorted by path."""
        lines = [ln for ln in self("diff", name).stdout.splitlines() if ln]
        return sorted(lines, key=lambda ln: ln[2:])

    def mount(self, name: str) -> str:
        return self("mount", name).stdout.strip()

    def umount(self, name: str) -> None:
        self("umount", name)

    def rm(self, name: str) -> None:
        self("rm", "-f", name, check=False)

    def close(self) -> None:
        """Remove every container and image, unmount, delete the private storage."""
        self("rm", "-a", "-f", check=False)
        self("rmi", "-a", "-f", check=False)
        subprocess.run(["umount", "-R", os.path.join(self.root, "root", "overlay")],
                       capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
