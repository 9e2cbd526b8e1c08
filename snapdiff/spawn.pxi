# Binding for csrc/sd_spawn.h: see that header.
#
# Every C call here is a handful of syscalls (mounts, clone, a pipe read that waits for the
# child's exec), run with the GIL released so other threads keep going while the kernel
# sets up namespaces.

from libc.stdlib cimport calloc
from posix.types cimport gid_t, pid_t, uid_t

from snapdiff.includes.sd_spawn cimport (
    sd_bind, sd_exec_in, sd_exec_opts, sd_mount, sd_mount_overlay, sd_spawn, sd_spawn_opts,
    sd_umount,
)


cdef inline const char *_cstr(bytes b):
    """A pointer into b (kept alive by the caller), or NULL for None."""
    if b is None:
        return NULL
    return <const char *>b


cdef class _CStrings:
    """A NULL-terminated ``const char *[]`` over bytes objects it keeps alive."""
    cdef const char **ptrs
    cdef size_t n
    cdef list keep

    def __cinit__(self, items):
        cdef bytes b
        self.keep = [os.fsencode(x) for x in items]
        for b in self.keep:
            if b"\0" in b:
                raise ValueError(f"embedded NUL byte in {b!r}")
        self.n = len(self.keep)
        self.ptrs = <const char **>calloc(self.n + 1, sizeof(char *))
        if self.ptrs == NULL:
            raise MemoryError()
        for i in range(self.n):
            b = self.keep[i]
            self.ptrs[i] = b

    def __dealloc__(self):
        free(self.ptrs)


cdef class _Gids:
    cdef gid_t *gids
    cdef size_t n

    def __cinit__(self, groups):
        groups = list(groups)
        self.n = len(groups)
        self.gids = <gid_t *>calloc(self.n + 1, sizeof(gid_t))
        if self.gids == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.gids[i] = groups[i]

    def __dealloc__(self):
        free(self.gids)


cdef object _spawn_error(const sd_error *e, object context, object cls):
    """A SpawnError/MountError "CONTEXT: STEP 'PATH': strerror (kernel message)", with
    .errno, .step and .filename set."""
    op = (<bytes>e.op).decode() if e.op != NULL else ""
    spath = os.fsdecode(<bytes>e.path)
    where = f"{op} '{spath}'" if spath else op
    if e.code == SD_ERR_OS:
        reason = os.strerror(e.errnum)
        extra = (<bytes>e.msg).decode("utf-8", "replace")
        if extra:
            reason = f"{reason} ({extra})"
    else:
        reason = (<bytes>e.msg).decode("utf-8", "replace")
    prefix = f"{context}: " if context else ""
    exc = cls(f"{prefix}{where}: {reason}")
    exc.errno = e.errnum if e.code == SD_ERR_OS else None
    exc.strerror = reason
    exc.filename = spath or None
    exc.step = op
    return exc


def overlay_mount(lowers, upper, work, target, options, context=None):
    """Mount overlayfs on `target` with one fsconfig ``lowerdir+`` per layer (top first).

    Raises MountError with .errno and .step ("fsopen", "fsconfig lowerdir+", ...)."""
    cdef _CStrings lw = _CStrings(lowers)
    cdef _CStrings op = _CStrings(options)
    cdef bytes bup = os.fsencode(upper) if upper is not None else None
    cdef bytes bwork = os.fsencode(work) if work is not None else None
    cdef bytes btarget = os.fsencode(target)
    cdef const char *cup = _cstr(bup)
    cdef const char *cwork = _cstr(bwork)
    cdef const char *ctarget = btarget
    cdef sd_error err
    cdef int rc
    sd_error_clear(&err)
    with nogil:
        rc = sd_mount_overlay(lw.ptrs, lw.n, cup, cwork, ctarget, op.ptrs, op.n, &err)
    if rc < 0:
        raise _spawn_error(&err, context, _errors.MountError)


def mount(source, target, fstype=None, unsigned long flags=0, data=None):
    """mount(2); raises OSError."""
    cdef bytes bs = os.fsencode(source) if source is not None else None
    cdef bytes bt = os.fsencode(target)
    cdef bytes bf = os.fsencode(fstype) if fstype is not None else None
    cdef bytes bd = os.fsencode(data) if data is not None else None
    cdef const char *cs = _cstr(bs)
    cdef const char *ct = bt
    cdef const char *cf = _cstr(bf)
    cdef const char *cd = _cstr(bd)
    cdef sd_error err
    cdef int rc
    sd_error_clear(&err)
    with nogil:
        rc = sd_mount(cs, ct, cf, flags, cd, &err)
    if rc < 0:
        raise_sd_error(&err)


def umount(target, int flags=0):
    """umount2(2); raises OSError (EBUSY, EINVAL when not a mount point...)."""
    cdef bytes bt = os.fsencode(target)
    cdef const char *ct = bt
    cdef sd_error err
    cdef int rc
    sd_error_clear(&err)
    with nogil:
        rc = sd_umount(ct, flags, &err)
    if rc < 0:
        raise_sd_error(&err)


def spawn(rootfs, argv, env, *, cwd=None, hostname=None, uid_t uid=0, gid_t gid=0,
          groups=(), bint host_network=False, binds=(), int stdin=-1, int stdout=-1,
          int stderr=-1, bint new_session=False, int tty_fd=-1, cgroup_procs=None,
          context=None):
    """Start argv as PID 1 of new namespaces rooted at `rootfs`; returns its pid once it has
    exec'd.  binds: (host_src, container_dst, readonly) triples.  Raises SpawnError naming
    the step that failed (.step, .errno)."""
    cdef _CStrings cargv = _CStrings(argv)
    cdef _CStrings cenv = _CStrings(env)
    cdef _Gids cgroups = _Gids(groups)
    binds = [(os.fsencode(s), os.fsencode(d), bool(ro)) for s, d, ro in binds]
    cdef _CStrings bsrc = _CStrings([b[0] for b in binds])
    cdef _CStrings bdst = _CStrings([b[1] for b in binds])
    cdef sd_bind *cb = <sd_bind *>calloc(len(binds) + 1, sizeof(sd_bind))
    if cb == NULL:
        raise MemoryError()
    cdef bytes broot = os.fsencode(rootfs)
    cdef bytes bcwd = os.fsencode(cwd) if cwd is not None else None
    cdef bytes bhost = os.fsencode(hostname) if hostname is not None else None
    cdef bytes bcg = os.fsencode(cgroup_procs) if cgroup_procs is not None else None
    cdef sd_spawn_opts o
    cdef sd_error err
    cdef pid_t pid = 0
    cdef int rc
    try:
        for i in range(len(binds)):
            cb[i].src = bsrc.ptrs[i]
            cb[i].dst = bdst.ptrs[i]
            cb[i].readonly = binds[i][2]
        o.rootfs = broot
        o.argv = cargv.ptrs
        o.envp = cenv.ptrs
        o.cwd = _cstr(bcwd)
        o.hostname = _cstr(bhost)
        o.uid = uid
        o.gid = gid
        o.groups = cgroups.gids
        o.ngroups = cgroups.n
        o.host_network = host_network
        o.binds = cb
        o.nbinds = len(binds)
        o.stdin_fd = stdin
        o.stdout_fd = stdout
        o.stderr_fd = stderr
        o.new_session = new_session
        o.tty_fd = tty_fd
        o.cgroup_procs = _cstr(bcg)
        sd_error_clear(&err)
        with nogil:  # waits for the child's exec or its failure report
            rc = sd_spawn(&o, &pid, &err)
    finally:
        free(cb)
    if rc < 0:
        raise _spawn_error(&err, context, _errors.SpawnError)
    return pid


def exec_in(pid_t target, argv, env, *, cwd=None, uid_t uid=0, gid_t gid=0, groups=(),
            int stdin=-1, int stdout=-1, int stderr=-1, context=None):
    """Start argv in the namespaces and root of process `target`; returns the new process's
    pid (a child of the caller).  Raises SpawnError naming the failed step."""
    cdef _CStrings cargv = _CStrings(argv)
    cdef _CStrings cenv = _CStrings(env)
    cdef _Gids cgroups = _Gids(groups)
    cdef bytes bcwd = os.fsencode(cwd) if cwd is not None else None
    cdef sd_exec_opts o
    cdef sd_error err
    cdef pid_t pid = 0
    cdef int rc
    o.target = target
    o.argv = cargv.ptrs
    o.envp = cenv.ptrs
    o.cwd = _cstr(bcwd)
    o.uid = uid
    o.gid = gid
    o.groups = cgroups.gids
    o.ngroups = cgroups.n
    o.stdin_fd = stdin
    o.stdout_fd = stdout
    o.stderr_fd = stderr
    sd_error_clear(&err)
    with nogil:  # waits for the helper and the exec
        rc = sd_exec_in(&o, &pid, &err)
    if rc < 0:
        raise _spawn_error(&err, context, _errors.SpawnError)
    return pid
