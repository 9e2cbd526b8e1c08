"""Real containers from a busybox root filesystem as the single lower directory."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from fstree import File, build

from snapdiff import overlay
from snapdiff.containers import Containers
from snapdiff.errors import (
    ContainerNotFound,
    ContainerStateError,
    NameInUseError,
    SpawnError,
    StoreError,
    UnsupportedError,
)

pytestmark = [pytest.mark.needs("root", "overlay", "unshare"), pytest.mark.timeout(120)]


@dataclass
class Image:
    id: str
    name: str | None
    lower_dirs: list[str]
    config: dict = field(default_factory=dict)


@pytest.fixture
def image(busybox_rootfs):
    build(busybox_rootfs, [File("etc/motd", b"orig\n"), File("del/me", b"x"),
                           File("data/sub/f", b"f"),
                           File("etc/group", b"root:x:0:\nnogroup:x:65534:\nstaff:x:50:nobody\n")])
    return Image("sha256:" + "ab" * 32, "busybox:test", [busybox_rootfs],
                 {"Cmd": ["sh"], "Env": ["FOO=image", "KEEP=1"], "WorkingDir": "/root"})


@pytest.fixture
def cs(tmp_path):
    c = Containers(str(tmp_path / "store"))
    yield c
    for x in c.list(all=True):
        x.remove(force=True)


def run_out(cs, image, cmd, **kw):
    r, w = os.pipe()
    try:
        c, code = cs.run(image, cmd=cmd, stdout=w, stderr=w, **kw)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        return c, code, f.read().decode()


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_pid1_hostname_env_workdir_user(cs, image):
    c, code, out = run_out(cs, image, ["sh", "-c", "echo pid=$$ host=$(hostname) "
                                       "foo=$FOO keep=$KEEP cwd=$(pwd) id=$(id -u):$(id -g) "
                                       "groups=$(id -G) home=$HOME"],
                           env=["FOO=cli"], workdir="/tmp", user="nobody", hostname="box")
    assert code == 0, out
    assert out.split() == ["pid=1", "host=box", "foo=cli", "keep=1", "cwd=/tmp",
                           "id=65534:65534", "groups=65534", "50", "home=/"]
    assert c.status == "exited" and c.exit_code == 0
    assert not overlay.is_mounted(c.merged_dir)   # unmounted after the run


def test_image_defaults_and_numeric_user(cs, image):
    _, code, out = run_out(cs, image, ["sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g) "
                                       "$(hostname)"], user="1234:4321", name="nu")
    c = cs.get("nu")
    assert code == 0
    assert out.split() == ["image", "/root", "1234:4321", c.id[:12]]


def test_exit_code_propagates(cs, image):
    _, code, _ = run_out(cs, image, ["sh", "-c", "exit 42"])
    assert code == 42


def test_foreground_signal_reaches_the_process(cs, image, tmp_path):
    script = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_containers import Image
from snapdiff.containers import Containers
img = Image({image.id!r}, None, {image.lower_dirs!r}, {{}})
c, code = Containers({cs.store_root!r}).run(img, name="fg", cmd=["sh", "-c",
    "trap 'echo got-term; exit 7' TERM; touch /ready; while :; do sleep 0.05; done"])
sys.exit(code)
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert wait_for(lambda: any(os.path.exists(os.path.join(c.upper_dir, "ready"))
                                for c in cs.list()))
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 7
    assert b"got-term" in out
    assert cs.get("fg").exit_code == 7


def test_network_none_has_only_loopback_up(cs, image):
    _, code, out = run_out(cs, image, ["sh", "-c", "ls /sys/class/net; "
                                       "cat /sys/class/net/lo/flags"])
    assert code == 0
    assert out.split() == ["lo", "0x9"]   # IFF_UP | IFF_LOOPBACK
    _, code, out = run_out(cs, image, ["ls", "/sys/class/net"], network="host")
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


def test_proc_dev_sys(cs, image):
    _, code, out = run_out(cs, image, ["sh", "-c",
                                       "ls /proc/1/status >/dev/null && echo proc; "
                                       "for d in null zero full random urandom tty; do "
                                       "test -c /dev/$d && echo $d; done; "
                                       "head -c 4 /dev/zero | wc -c; test -d /dev/pts && "
                                       "test -L /dev/ptmx && test -d /dev/shm && echo pts; "
                                       "touch /sys/x 2>&1 | grep -q Read-only && echo sysro"])
    assert out.split() == ["proc", "null", "zero", "full", "random", "urandom", "tty", "4",
                           "pts", "sysro"]


def test_volumes_rw_ro_and_file(cs, image, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "in").write_text("ro-data")
    single = tmp_path / "single.txt"
    single.write_text("file-vol")
    _, code, out = run_out(cs, image, ["sh", "-c",
                                       "echo hi > /mnt/rw/out; cat /mnt/ro/in; echo; "
                                       "touch /mnt/ro/x 2>&1 | grep -q Read-only && echo ro-ok;"
                                       "cat /etc/single"],
                           volumes=[f"{rw}:/mnt/rw", f"{ro}:/mnt/ro:ro",
                                    f"{single}:/etc/single:ro"])
    assert code == 0, out
    assert out.split() == ["ro-data", "ro-ok", "file-vol"]
    assert (rw / "out").read_text() == "hi\n"
    assert not (ro / "x").exists()


def test_writes_land_in_upper(cs, image):
    c, code, out = run_out(cs, image, ["sh", "-c",
                                       "echo new > /new; echo more >> /etc/motd; rm /del/me; "
                                       "rm -r /data/sub; mkdir /data/sub; echo g > /data/sub/g"])
    assert code == 0, out
    up = c.upper_dir
    assert open(f"{up}/new").read() == "new\n"
    assert open(f"{up}/etc/motd").read() == "orig\nmore\n"
    assert open(f"{image.lower_dirs[0]}/etc/motd").read() == "orig\n"
    st = os.lstat(f"{up}/del/me")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(f"{up}/data/sub", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(f"{up}/data/sub")) == ["g"]
    assert c.xattr_prefix == b"trusted.overlay."


def test_mount_umount_and_checked_options(cs, image):
    c = cs.create(image, name="m")
    merged = c.mount()
    info = overlay.find_mount(merged)
    assert info is not None and info.super_options["upperdir"] == c.upper_dir
    overlay.check_mount_options(info)
    assert open(f"{merged}/etc/motd").read() == "orig\n"
    assert c.mount() == merged            # idempotent
    assert c.umount() is True
    assert not overlay.is_mounted(merged)


def test_detached_logs_stop_ps(cs, image):
    c = cs.create(image, name="bg", cmd=["sh", "-c", "echo started; trap 'echo term; exit 7' "
                                         "TERM; while :; do sleep 0.05; done"])
    assert c.status == "created"
    assert c.run(detach=True) == 0
    assert c.status == "running"
    assert [x.name for x in cs.list()] == ["bg"]
    assert wait_for(lambda: b"started" in c.logs())
    assert c.stop(timeout=5) == 7
    assert c.status == "exited"
    assert c.logs() == b"started\nterm\n"
    assert cs.list() == [] and [x.name for x in cs.list(all=True)] == ["bg"]
    # a stopped container keeps its writable layer and can run again
    assert c.run(detach=True) == 0
    c.kill(signal.SIGKILL)
    assert wait_for(lambda: c.status == "exited" and c.exit_code == 137)


def test_stop_escalates_to_sigkill(cs, image):
    c = cs.create(image, cmd=["sleep", "100"])   # PID 1 without a handler ignores SIGTERM
    c.start()
    t = time.monotonic()
    assert c.stop(timeout=0.3) == 137
    assert time.monotonic() - t < 8


def test_stale_state_shows_exited(cs, image):
    c = cs.create(image, name="stale")
    c._update(status="running", pid=os.getpid(), pid_start=1)  # pid reused by another process
    assert c.status == "exited"
    c._update(status="running", pid=2 ** 22 + 7, pid_start=5)  # pid gone
    assert c.status == "exited"
    assert cs.list() == []


def test_exec_joins_namespaces(cs, image):
    c = cs.create(image, name="ex", hostname="exhost", cmd=["sleep", "100"])
    c.start()
    r, w = os.pipe()
    code = c.exec(["sh", "-c", "hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '; "
                   "ls /sys/class/net; echo $FOO"], stdout=w, env=["FOO=x"])
    os.close(w)
    out = os.read(r, 4096).decode().split()
    os.close(r)
    assert code == 0
    assert out[0] == "exhost"
    assert 1 < int(out[1]) < 50               # a small pid: the container's PID namespace
    assert out[2:5] == ["sleep", "100", "lo"]
    assert out[5] == "x"
    with pytest.raises(SpawnError, match=r"^exec 'ex': execve 'nosuch': No such file") as ei:
        c.exec(["nosuch"])
    assert ei.value.errno == errno.ENOENT and ei.value.step == "execve"
    c.stop(timeout=0.2)
    with pytest.raises(ContainerStateError, match="not running"):
        c.exec(["true"])


def test_pause_resume_freezes_the_processes(cs, image):
    c = cs.create(image, cmd=["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; "
                                          "sleep 0.01; done"])
    c.start()
    counter = f"{c.upper_dir}/tmp/c"
    assert wait_for(lambda: os.path.exists(counter) and open(counter).read().strip())
    c.pause()
    assert c.paused
    time.sleep(0.1)
    before = open(counter).read()
    time.sleep(0.3)
    assert open(counter).read() == before
    c.resume()
    assert not c.paused
    assert wait_for(lambda: open(counter).read() != before)


def test_pause_without_cgroup_uses_sigstop(cs, image):
    c = cs.create(image, cmd=["sh", "-c", "sleep 100 & wait"])
    c.start()
    cgroup = c.reload()._data.get("cgroup")
    c._update(cgroup=None)   # as if no freezer hierarchy were writable
    assert wait_for(lambda: len(c._ns_pids()) == 2)
    c.pause()
    states = [open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] for p in c._ns_pids()]
    assert states == ["T", "T"]
    c.resume()
    states = [open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] for p in c._ns_pids()]
    assert "T" not in states
    c.stop(timeout=0.2)
    if cgroup:
        os.rmdir(cgroup)


def test_rm_refuses_running_and_cleans_up(cs, image):
    c = cs.create(image, name="gone", cmd=["sleep", "100"])
    c.start()
    with pytest.raises(ContainerStateError, match="^rm 'gone': container is running"):
        c.remove()
    merged = c.merged_dir
    c.remove(force=True)
    assert not os.path.exists(c.dir)
    assert not overlay.is_mounted(merged)
    with pytest.raises(ContainerNotFound):
        cs.get("gone")


def test_run_remove(cs, image):
    c, code, _ = run_out(cs, image, ["true"], remove=True, name="tmp")
    assert code == 0 and not os.path.exists(c.dir)


def test_state_json_is_atomic_and_keeps_free_form_state(cs, image):
    c = cs.create(image, name="st")
    c.state["commits"] = [{"index": "abc"}]
    c.save_state()
    assert cs.get("st").state == {"commits": [{"index": "abc"}]}
    assert json.load(open(f"{c.dir}/state.json"))["state"]["commits"][0]["index"] == "abc"
    assert [n for n in os.listdir(c.dir) if ".tmp" in n] == []


def test_lookup_by_name_and_prefix(cs, image):
    c = cs.create(image, name="look")
    assert cs.get("look").id == c.id
    assert cs.get(c.id[:8]).id == c.id
    with pytest.raises(ContainerNotFound, match="^container 'zzz': no such container"):
        cs.get("zzz")


def test_runc_runtime(cs, image):
    _, code, out = run_out(cs, image, ["sh", "-c", "echo $$ $(hostname) $FOO; "
                                       "ls /sys/class/net; exit 3"],
                           runtime="runc", hostname="rc")
    assert code == 3
    assert out.split() == ["1", "rc", "image", "lo"]


def test_runc_detached_stop(cs, image):
    c = cs.create(image, name="rcd", runtime="runc",
                  cmd=["sh", "-c", "trap 'exit 5' TERM; echo up; while :; do sleep 0.05; done"])
    c.start()
    assert c.status == "running"
    assert wait_for(lambda: b"up" in c.logs())
    assert c.stop(timeout=5) == 5


# --- bad input ---------------------------------------------------------------------------

def test_missing_image_dir(cs, image, tmp_path):
    bad = Image(image.id, None, [str(tmp_path / "missing")], {"Cmd": ["sh"]})
    with pytest.raises(StoreError, match="image layer directory '.*missing' does not exist"):
        cs.create(bad)
    assert cs.list(all=True) == []


@pytest.mark.parametrize("spec", ["nocolon", "/tmp:relative", "/tmp:/x:rx", ":/x",
                                  "/does/not/exist:/x"])
def test_bad_volume_spec(cs, image, spec):
    with pytest.raises(UnsupportedError, match=f"volume '{spec}'"):
        cs.create(image, volumes=[spec])
    assert cs.list(all=True) == []


def test_unknown_user(cs, image):
    with pytest.raises(SpawnError, match="^run 'u': user 'alice': no such user"):
        cs.run(image, name="u", user="alice", cmd=["true"])
    c = cs.get("u")
    assert c.status == "created" and not overlay.is_mounted(c.merged_dir)


def test_command_not_found(cs, image):
    with pytest.raises(SpawnError) as ei:
        cs.run(image, name="nf", cmd=["nosuch-cmd"])
    assert str(ei.value) == "run 'nf': execve 'nosuch-cmd': No such file or directory"
    assert ei.value.step == "execve" and ei.value.errno == errno.ENOENT
    with pytest.raises(SpawnError, match="execve '/bin/nope'"):
        cs.run(image, detach=True, cmd=["/bin/nope"])


def test_name_taken(cs, image):
    cs.create(image, name="dup")
    with pytest.raises(NameInUseError, match="^create 'dup': the name is in use"):
        cs.create(image, name="dup")
    with pytest.raises(UnsupportedError, match="invalid name"):
        cs.create(image, name="bad/name")


# --- CLI -----------------------------------------------------------------------------------

def cli(store, *args):
    return subprocess.run([sys.executable, "-c", "from snapdiff.cli import main; main()",
                           "--root", store, *args], capture_output=True, text=True, timeout=60)


def test_cli_ps_exec_logs_stop_rm(cs, image):
    c = cs.create(image, name="clic", hostname="clihost",
                  cmd=["sh", "-c", "echo hello; while :; do sleep 0.05; done"])
    c.start()
    store = cs.store_root
    r = cli(store, "ps")
    assert r.returncode == 0 and "clic" in r.stdout and "Up" in r.stdout
    r = cli(store, "exec", "clic", "hostname")
    assert (r.returncode, r.stdout) == (0, "clihost\n")
    r = cli(store, "exec", "clic", "sh", "-c", "exit 9")
    assert r.returncode == 9
    assert wait_for(lambda: cli(store, "logs", "clic").stdout == "hello\n")
    r = cli(store, "rm", "clic")
    assert r.returncode == 1 and r.stderr == ("snapdiff: rm 'clic': container is running: "
                                              "stop it first or force\n")
    r = cli(store, "kill", "-s", "NOPE", "clic")
    assert r.returncode == 2 and "unknown signal" in r.stderr
    assert cli(store, "stop", "-t", "0.2", "clic").returncode == 0
    r = cli(store, "ps", "-a")
    assert "Exited (137)" in r.stdout
    r = cli(store, "mount", "clic")
    assert r.stdout.strip() == c.merged_dir and overlay.is_mounted(c.merged_dir)
    assert cli(store, "umount", "clic").returncode == 0
    assert not overlay.is_mounted(c.merged_dir)
    assert cli(store, "rm", "clic").returncode == 0
    r = cli(store, "logs", "clic")
    assert r.returncode == 2 and r.stderr == "snapdiff: container 'clic': no such container\n"
