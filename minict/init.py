"""The child side of starting a container: a flat checklist, in order.

For run and start, two processes run this code, both forked from minict
(launch.py is the parent side and documents the messages on the channel):

    intermediate()   leave minict's session, get put in the container's cgroup,
                     unshare the namespaces, wait for the uid/gid maps (and the
                     network), fork PID 1 of the new pid namespace, tell its pid, exit
    container()      PID 1: a session keyring of its own, mounts, pivot_root,
                     host name, then (_become_process) a session of its own,
                     terminal, limits, user, capabilities, the seccomp filter,
                     execve of the command

`exec` replaces both: joiner() leaves minict's session, gets put in the
container's cgroup, enters a running container's namespaces, session keyring
and root, and forks the command, which then takes the same last steps as
PID 1 (_become_process).

Neither the container's processes nor these children before them are ever
in minict's session or process group: a `kill 0` inside must not reach the
caller's shell, and a Ctrl-C on the host's terminal must reach the container
only as minict passes it on (launch.py).  The streams they get are never
the host's terminal (launch.py, streams.py).

None ever returns into minict's normal code: on success container()
becomes the container's program; on any failure each reports one line on the
channel and `os._exit`s.  So a failed step can never go on to run anything on
the host (the teaching clone this replaces ran the command on the host when
its chroot failed).

Everything done here comes from the bundle's config.json, parsed once by the
parent; the children inherit the dict through fork.  Every module is
imported up front: after pivot_root the host's Python library is out of reach.
"""

import errno
import fcntl
import os
import re
import resource
import signal
import stat
import termios

from minict import devices, linux, userns

# Device nodes bind-mounted from the host: mknod(2) is refused in a user
# namespace, and the OCI runtime spec requires these six (config-linux.md,
# "Default Devices").
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                    ("ptmx", "pts/ptmx"))

# mount(8) option words -> (flag, set it?) as the OCI runtime spec lists them.
_FLAG_OPTIONS = {
    "ro": (linux.MS_RDONLY, True), "rw": (linux.MS_RDONLY, False),
    "nosuid": (linux.MS_NOSUID, True), "suid": (linux.MS_NOSUID, False),
    "nodev": (linux.MS_NODEV, True), "dev": (linux.MS_NODEV, False),
    "noexec": (linux.MS_NOEXEC, True), "exec": (linux.MS_NOEXEC, False),
    "sync": (linux.MS_SYNCHRONOUS, True), "async": (linux.MS_SYNCHRONOUS, False),
    "dirsync": (linux.MS_DIRSYNC, True), "remount": (linux.MS_REMOUNT, True),
    "mand": (linux.MS_MANDLOCK, True), "nomand": (linux.MS_MANDLOCK, False),
    "noatime": (linux.MS_NOATIME, True), "atime": (linux.MS_NOATIME, False),
    "nodiratime": (linux.MS_NODIRATIME, True), "diratime": (linux.MS_NODIRATIME, False),
    "relatime": (linux.MS_RELATIME, True), "norelatime": (linux.MS_RELATIME, False),
    "strictatime": (linux.MS_STRICTATIME, True), "nostrictatime": (linux.MS_STRICTATIME, False),
    "nosymfollow": (linux.MS_NOSYMFOLLOW, True), "symfollow": (linux.MS_NOSYMFOLLOW, False),
    "bind": (linux.MS_BIND, True), "rbind": (linux.MS_BIND | linux.MS_REC, True),
}
_PROPAGATION_OPTIONS = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
# A working directory reached through a descriptor could be one leaked from
# the host (CVE-2024-21626): refuse /proc/<pid>/fd/... and /proc/<pid>/task/<tid>/fd/...
_FD_PATH = re.compile(r"/proc/[^/]+/(task/[^/]+/)?fd(/|\Z)")

# The annotation of `run --no-new-keyring` (spec.NO_NEW_KEYRING; not imported
# from there, so that `start` need not load spec.py).
NO_NEW_KEYRING = "org.minict.no-new-keyring"

# Exit statuses of a command that could not be run, as POSIX shells use them.
NOT_EXECUTABLE = 126
NOT_FOUND = 127


class SetupError(Exception):
    """A step failed; `status` is what the child exits with."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _fail(step: str, err: OSError) -> SetupError:
    return SetupError(f"{step}: {err.strerror or err}")


# -- the two processes ---------------------------------------------------------

def intermediate(channel, bundle: str, config: dict, terminal: bool, syscall_filter=None):
    """Unshare, get mapped, fork PID 1 of the new pid namespace; never return.

    `syscall_filter` is config.json's seccomp filter (a seccomp.Program), or None.
    """
    _never_return(channel, _unshare_and_fork, channel, bundle, config, terminal, syscall_filter)


def container(channel, bundle: str, config: dict, terminal: bool, rootfs_fd: int | None = None,
              syscall_filter=None):
    """Set the container up as PID 1 and execve its command; never return.

    `rootfs_fd` is the idmapped rootfs the parent made (--userns auto), a detached mount;
    `syscall_filter` is config.json's seccomp filter (a seccomp.Program), or None.
    """
    _never_return(channel, _setup_and_exec, channel, bundle, config, terminal, rootfs_fd,
                  syscall_filter)


def joiner(channel, proc_fd: int, bundle: str, config: dict, terminal: bool,
           syscall_filter=None):
    """Join the running container `proc_fd` (/proc/<pid>) names, fork the command; never return."""
    _never_return(channel, _join_and_fork, channel, proc_fd, bundle, config, terminal,
                  syscall_filter)


def _never_return(channel, work, *args):
    """Run `work(*args)` and `os._exit`: 0 if it returns, else after reporting why."""
    status = 1
    try:
        work(*args)
        status = 0
    except SetupError as err:
        status = err.status
        _report(channel, status, str(err))
    except BaseException as err:  # noqa: BLE001 - nothing may escape a forked child
        _report(channel, 1, f"{type(err).__name__}: {err}")
    finally:
        os._exit(status)


def _unshare_and_fork(channel, bundle, config, terminal, syscall_filter):
    _leave_session()
    _default_signals()
    _enter_cgroup(channel)
    flags = 0
    for ns in config.get("linux", {}).get("namespaces", []):
        kind = ns.get("type")
        if kind not in linux.NAMESPACES:
            raise SetupError(f"unknown namespace type {kind!r} in config.json")
        if ns.get("path"):
            _join(ns["path"], kind)
        else:
            flags |= linux.NAMESPACES[kind]
    # Without a mount namespace of its own every mount below would land on
    # the host, and without a uts namespace sethostname would rename it.
    kinds = {ns.get("type") for ns in config.get("linux", {}).get("namespaces", [])}
    if "mount" not in kinds:
        raise SetupError("config.json asks for no mount namespace; refusing to mount on the host")
    if config.get("hostname") and "uts" not in kinds:
        raise SetupError("config.json sets a hostname but asks for no uts namespace")
    try:
        linux.unshare(flags)
    except OSError as err:
        raise _fail("unshare namespaces", err) from None
    rootfs_fd = None
    if flags & linux.CLONE_NEWUSER:
        # Only a process outside the new user namespace may write its
        # uid_map and gid_map (user_namespaces(7)); ask the parent.  Only
        # it can idmap the rootfs too (userns.idmapped_rootfs).
        channel.send(b"userns")
        if userns.idmapped(config):
            rootfs_fd = _expect_fd(channel, b"rootfs")
        _expect(channel, b"mapped")
    if flags & linux.CLONE_NEWNET:
        # A new network namespace is empty: the parent, on the host side,
        # brings lo up and plugs in eth0 (network.py) before anything runs.
        channel.send(b"netns")
        _expect(channel, b"networked")
    # unshare(CLONE_NEWPID) moves only the children into the new pid
    # namespace, so PID 1 is the next fork (pid_namespaces(7)).
    pid = os.fork()
    if pid == 0:
        container(channel, bundle, config, terminal, rootfs_fd, syscall_filter)
    channel.send(b"pid %d" % pid)


# /proc/<pid>/ns/<file> -> clone flag, the user namespace last (see _join_all).
_NS_FILES = {"mnt": linux.CLONE_NEWNS, "pid": linux.CLONE_NEWPID, "ipc": linux.CLONE_NEWIPC,
             "uts": linux.CLONE_NEWUTS, "net": linux.CLONE_NEWNET,
             "cgroup": linux.CLONE_NEWCGROUP, "user": linux.CLONE_NEWUSER}


def _join_and_fork(channel, proc_fd, bundle, config, terminal, syscall_filter):
    _leave_session()
    _default_signals()
    # Until its execve the command is minict's Python, with the host's
    # binary behind /proc/<pid>/exe and host descriptors open, yet visible to
    # the container's processes: not dumpable, they cannot open any of it
    # (CVE-2019-5736; runc's nsexec does the same).  The fork inherits this,
    # and the execve of a normal program makes it dumpable again.
    linux.set_dumpable(False)
    _enter_cgroup(channel)
    # Open everything first: once in the container's mount namespace, the
    # host's /proc is out of reach.
    try:
        root = os.open("root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
        targets = _namespaces_to_join(proc_fd)
    except OSError as err:
        raise _fail("open the container's namespaces (has it exited?)", err) from None
    _join_all(targets)
    _become_namespace_root()
    # The container's session keyring, found by its name in the container's
    # user namespace (as runc's exec does); never minict's.
    keyring = _keyring_name(bundle, config)
    if keyring is not None:
        _join_keyring(keyring)
    # setns(CLONE_NEWNS) puts us at the namespace's root, which need not be
    # the container's: enter the root its init sees (runc's nsexec does too).
    try:
        os.fchdir(root)
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise _fail("enter the container's root", err) from None
    os.close(root)
    # A joined pid namespace applies to children only (setns(2)).
    pid = os.fork()
    if pid == 0:
        _never_return(channel, _become_process, channel, config.get("process") or {}, terminal,
                      syscall_filter)
    channel.send(b"pid %d" % pid)


def _enter_cgroup(channel) -> None:
    """Have the parent put us in the container's cgroup, before anything else happens.

    Its device rules then hold for us and for every process we fork, and a
    cgroup namespace made later would be rooted there.
    """
    channel.send(b"cgroup")
    _expect(channel, b"grouped")


def _namespaces_to_join(proc_fd: int) -> list[tuple[str, int, int]]:
    """Return (name, fd, flag) of each namespace of the container that is not already ours."""
    targets = []
    for name, flag in _NS_FILES.items():
        try:
            theirs = os.stat(f"ns/{name}", dir_fd=proc_fd)
        except FileNotFoundError:
            continue  # a kernel without this namespace type
        ours = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            targets.append((name, os.open(f"ns/{name}", os.O_RDONLY | os.O_CLOEXEC,
                                          dir_fd=proc_fd), flag))
    return targets


def _join_all(targets) -> None:
    """setns into each target: the others first, then the user namespace, then what failed.

    minict's root may join any namespace from the initial user namespace; a
    namespace the container's user namespace owns can also be joined from
    inside it (for minict without root).  Trying both orders serves both.
    """
    later = []
    for name, fd, flag in targets:
        try:
            linux.setns(fd, flag)
        except PermissionError:
            if name == "user":
                raise SetupError("join the container's user namespace: permission denied")
            later.append((name, fd, flag))
            continue
        except OSError as err:
            raise _fail(f"join the container's {name} namespace", err) from None
        os.close(fd)
    for name, fd, flag in later:
        try:
            linux.setns(fd, flag)
        except OSError as err:
            raise _fail(f"join the container's {name} namespace", err) from None
        os.close(fd)


def _setup_and_exec(channel, bundle, config, terminal, rootfs_fd, syscall_filter):
    process = config.get("process") or {}
    linux_config = config.get("linux") or {}
    mounts = config.get("mounts") or []
    rootfs = os.path.join(bundle, (config.get("root") or {}).get("path", "rootfs"))

    # 0. A new, empty session keyring (keyrings(7)): the one inherited from
    #    minict is the caller's, with whatever keys it holds.
    keyring = _keyring_name(bundle, config)
    if keyring is not None:
        _new_keyring(keyring, config)

    # 1. Nothing mounted from here on may propagate back to the host: make
    #    every mount in our new mount namespace private, recursively.
    _mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, step="make / rprivate")

    # 2. pivot_root needs the new root to be a mount point of its own.  A
    #    rootfs that is a symlink could point anywhere on the host: refuse it.
    if os.path.islink(rootfs) or not os.path.isdir(rootfs):
        raise SetupError(f"the rootfs {rootfs} is not a directory")
    if rootfs_fd is None:
        _mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC, step="bind the rootfs")
    else:
        try:
            linux.move_mount_fd(rootfs_fd, rootfs)
        except OSError as err:
            raise _fail("attach the idmapped rootfs", err) from None
        os.close(rootfs_fd)
    #    No device node of the image opens: only /dev, mounted below after
    #    this, holds usable ones (devices.py).  Adding nodev is allowed even
    #    on mounts whose flags are locked (mount_namespaces(7)).
    _setattr_path(rootfs, linux.MOUNT_ATTR_NODEV, True, "make the rootfs nodev")
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    # 2b. With an idmapped rootfs, container root is not host root: from
    #     here on act as the user namespace's root, whose ids exist in the
    #     idmapped rootfs and in the tmpfs and devpts mounted below (host uid
    #     0 does not: creating a file as it fails with EOVERFLOW).  The host
    #     paths it may no longer reach (the bundle is 0700) are opened first.
    if rootfs_fd is not None:
        mounts = _pin_bind_sources(bundle, mounts)
        _become_namespace_root()

    # 3. The config's mounts, in the config's order: a later one (/dev/pts)
    #    lands inside an earlier one (/dev).
    dev_is_bind = False
    for entry in mounts:
        _mount_entry(root_fd, bundle, entry)
        if _clean(entry.get("destination", "")) == "dev" and entry.get("type") == "bind":
            dev_is_bind = True

    # 4. Devices and /dev symlinks, unless /dev came from the host whole.
    if not dev_is_bind:
        _populate_dev(root_fd, linux_config.get("devices") or [])

    # 5. Mask and write-protect what the config names, while the host's
    #    /dev/null is still reachable (before pivot_root).
    for path in linux_config.get("maskedPaths") or []:
        _mask(root_fd, path)
    for path in linux_config.get("readonlyPaths") or []:
        _make_readonly(root_fd, path)

    # 6. Swap roots and drop the host's tree entirely, so no path leads out.
    _pivot_root(root_fd)
    os.close(root_fd)
    if (config.get("root") or {}).get("readonly"):
        _setattr_path("/", linux.MOUNT_ATTR_RDONLY, False, "make / read-only")

    # 7. Host name: needs CAP_SYS_ADMIN in the uts namespace's owner, so before
    #    the user switch drops it.
    if config.get("hostname"):
        try:
            linux.sethostname(config["hostname"])
        except OSError as err:
            raise _fail("sethostname", err) from None

    _become_process(channel, process, terminal, syscall_filter)


def _become_process(channel, process: dict, terminal: bool, syscall_filter=None) -> None:
    """Turn this process, inside the container's root, into the config's process; never return.

    The steps the container's init and `exec` share (exec has joined the
    namespaces and entered the root instead of building them).
    """
    # 8. A session and process group of its own, without a controlling
    #    terminal: `kill 0` inside reaches only the container, and /dev/tty
    #    is not the host's terminal.  Then the terminal, if any, comes from
    #    the container's own devpts (/dev/ptmx -> pts/ptmx), so the
    #    container sees its tty under /dev/pts.
    os.setsid()
    user = process.get("user") or {}
    if terminal:
        _attach_terminal(channel, user)

    # 9. Resource limits: raising a hard limit needs CAP_SYS_RESOURCE.
    _set_rlimits(process.get("rlimits") or [])

    # 10. The working directory exists before it is entered (as root, who can
    #     create it; Docker does the same for a WorkingDir missing from the image).
    cwd = process.get("cwd") or "/"
    if not cwd.startswith("/") or _FD_PATH.match(os.path.normpath(cwd)):
        raise SetupError(f"refusing working directory {cwd!r}: it must be an absolute path "
                         "that does not go through /proc/<pid>/fd")
    if not os.path.isdir(cwd):
        try:
            os.makedirs(cwd, 0o755, exist_ok=True)
        except OSError as err:
            raise _fail(f"create working directory {cwd}", err) from None

    # 11. User and capabilities.  The bounding set is cut first, while we
    #     still hold CAP_SETPCAP; keepcaps keeps the permitted set across the
    #     uid change so capset can then give exactly the config's sets.
    #     Groups, then gid, then uid: after setuid we could change neither.
    #     Without no_new_privs, loading a seccomp filter needs CAP_SYS_ADMIN:
    #     then it is loaded now, and must let the rest of the setup through
    #     (docker's profile does); with it, as late as possible (runc's order).
    no_new_privs = bool(process.get("noNewPrivileges"))
    if syscall_filter is not None and not no_new_privs:
        _load_filter(syscall_filter)
    caps = process.get("capabilities")
    if caps is not None:
        _drop_bounding(caps.get("bounding") or [])
        linux.set_keepcaps(True)
    _switch_user(user)
    if caps is not None:
        _set_capabilities(caps)
    if no_new_privs:
        linux.set_no_new_privs()

    # 12. Only 0-2 survive the execve (our channel included: its closing tells
    #     the parent that execve succeeded).
    linux.close_range_cloexec(3)

    # 13. Enter the working directory as the container's user, and make sure
    #     it is inside the new root (getcwd fails for an unreachable one).
    try:
        os.chdir(cwd)
        os.getcwd()
    except OSError as err:
        raise _fail(f"chdir to {cwd}", err) from None

    # 14. Die with minict: the parent is minict itself once the intermediate
    #     process is reaped, and credential changes clear this setting, so it
    #     is the last step before execve.
    _expect(channel, b"reaped")
    linux.set_pdeathsig(signal.SIGKILL)

    # 15. The system-call filter, when no_new_privs let us wait: from here
    #     on only execve and the error report run under it.
    if syscall_filter is not None and no_new_privs:
        _load_filter(syscall_filter)

    _exec(process.get("args") or [], process.get("env") or [])


# -- channel ---------------------------------------------------------------------

def _expect_fd(channel, message: bytes) -> int:
    """Wait for `message` with one descriptor (SCM_RIGHTS); return it, or exit quietly."""
    got, ancillary, _, _ = channel.recvmsg(64, 64)
    if got != message or not ancillary or ancillary[0][:2] != (_SOL_SOCKET, _SCM_RIGHTS):
        os._exit(1)
    return int.from_bytes(ancillary[0][2][:4], "little")


def _expect(channel, message: bytes) -> None:
    """Wait for `message` from the parent; exit quietly if the parent is gone."""
    got = channel.recv(64)
    if got != message:
        os._exit(1)


def _report(channel, status: int, message: str) -> None:
    try:
        channel.send(b"error %d %s" % (status, message.encode(errors="replace")[:4000]))
    except OSError:
        pass


def _default_signals() -> None:
    """Undo what the Python runtime and the parent did to signals before fork."""
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored
    # across execve; the parent blocked the signals it forwards.
    for signo in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _leave_session() -> None:
    """Leave minict's session and process group (setsid(2)), first thing after fork.

    A child of minict is never a process group leader, so this cannot fail.
    """
    os.setsid()


def _join(path: str, kind: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.NAMESPACES[kind])
        finally:
            os.close(fd)
    except OSError as err:
        raise _fail(f"join {kind} namespace {path}", err) from None


def _become_namespace_root() -> None:
    """Take uid and gid 0 of our user namespace (runc's nsexec does so right after joining).

    Until then our ids are the host's root, which a user namespace of
    --userns auto does not map; with identity maps (or none) nothing changes.
    Capabilities stay: none of the old ids was this namespace's root.
    """
    try:
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)
    except OSError as err:
        raise _fail("become root of the user namespace", err) from None


# -- mounts ----------------------------------------------------------------------

def _pin_bind_sources(bundle: str, mounts: list) -> list:
    """Return `mounts` with each bind source opened now (O_PATH) and named by its descriptor.

    Opened before giving up host root's ids, they stay reachable after:
    /proc/self/fd/N leads to the file without searching its directories.
    """
    pinned = []
    for entry in mounts:
        flags, _, _ = _parse_options(entry.get("options") or [])
        if entry.get("type") == "bind" or flags & linux.MS_BIND:
            source = entry.get("source") or ""
            if not source.startswith("/"):
                source = os.path.join(bundle, source)
            try:
                fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                pinned.append(entry)  # _mount_entry says so
                continue
            except OSError as err:
                raise _fail(f"open the bind source {source}", err) from None
            entry = {**entry, "source": _proc_fd(fd)}
        pinned.append(entry)
    return pinned


def _mount(source, target, fstype, flags, data=None, *, step):
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise _fail(step, err) from None


def _clean(destination: str) -> str:
    return "/".join(p for p in destination.split("/") if p and p != ".")


def _parse_options(options):
    """Return (flags, propagation, data) for a list of mount(8) option words."""
    flags, propagation, data = 0, 0, []
    for word in options:
        if word in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[word]
            flags = flags | bit if on else flags & ~bit
        elif word in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[word]
        else:
            data.append(word)
    return flags, propagation, ",".join(data)


def _open_parent(root_fd: int, destination: str, create: bool):
    """Return (fd of the parent directory, last name) of `destination` in the rootfs.

    Walk one component at a time with O_NOFOLLOW from the rootfs, creating
    missing directories if `create`, and refuse any component that is a
    symlink: a symlink planted in the image (or by an earlier run) must not
    move a mount onto the host (the CVE-2021-30465 class).  Raise
    FileNotFoundError when a component is missing and not `create`.
    """
    parts = [p for p in destination.split("/") if p and p != "."]
    if not destination.startswith("/") or not parts or ".." in parts:
        raise SetupError(f"mount destination {destination!r} must be an absolute path "
                         "without '..' and other than /")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            _refuse_symlink(fd, part, destination, create_dir=create)
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _refuse_symlink(dir_fd: int, name: str, destination: str, *, create_dir=False,
                    create_file=False) -> None:
    """Raise SetupError if `name` in `dir_fd` is a symlink; create it if asked and missing."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if create_dir:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        elif create_file:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=dir_fd))
        else:
            raise
        return
    if stat.S_ISLNK(st.st_mode):
        raise SetupError(f"mount destination {destination} goes through the symlink {name!r} "
                         "inside the rootfs; refusing to follow it")


def _open_target(root_fd, destination, *, create_dir=False, create_file=False):
    """Open `destination` in the rootfs (O_PATH, no symlinks); return (parent fd, name, fd)."""
    parent, name = _open_parent(root_fd, destination, create_dir or create_file)
    try:
        _refuse_symlink(parent, name, destination, create_dir=create_dir, create_file=create_file)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except BaseException:
        os.close(parent)
        raise
    return parent, name, fd


def _proc_fd(fd: int) -> str:
    # Mounting on the descriptor's magic link mounts on exactly the inode we
    # checked, even if the path were swapped after the check.
    return f"/proc/self/fd/{fd}"


def _mount_entry(root_fd: int, bundle: str, entry: dict) -> None:
    """Mount one entry of config.json's `mounts` inside the rootfs."""
    destination = entry.get("destination") or ""
    kind = entry.get("type") or ""
    source = entry.get("source") or kind
    flags, propagation, data = _parse_options(entry.get("options") or [])
    if devices.forces_nodev(destination, entry.get("options")):
        flags |= linux.MS_NODEV
    bind = kind == "bind" or flags & linux.MS_BIND
    step = f"mount {kind or 'bind'} on {destination}"
    if bind:
        if not source.startswith("/"):
            source = os.path.join(bundle, source)
        is_dir = os.path.isdir(source)
        if not is_dir and not os.path.exists(source):
            raise SetupError(f"{step}: source {source} does not exist")
    else:
        is_dir = True
    try:
        parent, name, fd = _open_target(root_fd, destination, create_dir=is_dir,
                                        create_file=not is_dir)
    except SetupError:
        raise
    except OSError as err:
        raise _fail(f"{step}: prepare the target", err) from None
    try:
        if bind:
            # A bind mount ignores all flags but MS_REC; ro, nosuid, nodev and
            # noexec are added to the new mount afterwards (mount(2)).
            _mount(source, _proc_fd(fd), None, flags & (linux.MS_BIND | linux.MS_REC), step=step)
            attrs = _mount_attrs(flags)
            if attrs:
                _setattr_at(parent, name, attrs, bool(flags & linux.MS_REC), step)
        else:
            _mount(source, _proc_fd(fd), kind, flags & ~linux.MS_PROPAGATION, data, step=step)
        if propagation:
            top = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                _mount(None, _proc_fd(top), None, propagation, step=f"{step}: propagation")
            finally:
                os.close(top)
    finally:
        os.close(fd)
        os.close(parent)


def _mount_attrs(flags: int) -> int:
    return sum(attr for ms, attr in linux.MS_TO_MOUNT_ATTR.items() if flags & ms)


def _setattr_at(parent: int, name: str, attrs: int, recursive: bool, step: str) -> None:
    """Add `attrs` to the mount now on top of `name` in `parent`."""
    # Looking the name up again crosses into the new mount; the old
    # descriptor would still name the directory underneath it.
    top = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        _setattr_path(_proc_fd(top), attrs, recursive, step)
    finally:
        os.close(top)


def _setattr_path(path: str, attrs: int, recursive: bool, step: str) -> None:
    try:
        linux.mount_setattr(path, attrs, recursive=recursive)
    except OSError as err:
        raise _fail(step, err) from None


def _populate_dev(root_fd: int, extra: list) -> None:
    """Bind the host's device nodes into /dev (the defaults and `extra`, config.json's
    linux.devices) and add the usual symlinks."""
    nodes = {}
    for entry in extra:
        if not isinstance(entry, dict) or os.path.normpath(str(entry.get("path"))) == "/dev/ptmx":
            continue  # /dev/ptmx stays the container's own devpts (runc does the same)
        try:
            nodes[os.path.normpath(entry["path"])] = devices.host_node(entry)
        except devices.DeviceError as err:
            raise SetupError(err.message) from None
    for name in DEFAULT_DEVICES:
        nodes.setdefault(f"/dev/{name}", f"/dev/{name}")
    for destination, source in nodes.items():
        try:
            parent, _, fd = _open_target(root_fd, destination, create_file=True)
        except OSError as err:
            raise _fail(f"create {destination}", err) from None
        try:
            _mount(source, _proc_fd(fd), None, linux.MS_BIND, step=f"bind {destination}")
        finally:
            os.close(fd)
            os.close(parent)
    dev, _ = _open_parent(root_fd, "/dev/x", create=True)
    try:
        for name, target in DEFAULT_SYMLINKS:
            try:
                os.symlink(target, name, dir_fd=dev)
            except FileExistsError:
                pass  # the image or an earlier run has one; /dev is a fresh tmpfs normally
            except OSError as err:
                raise _fail(f"create /dev/{name}", err) from None
    finally:
        os.close(dev)


def _mask(root_fd: int, path: str) -> None:
    """Hide `path`: /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        parent, _, fd = _open_target(root_fd, path)
    except FileNotFoundError:
        return  # nothing to hide on this kernel (/proc/kcore on some)
    except OSError as err:
        raise _fail(f"mask {path}", err) from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            _mount("tmpfs", _proc_fd(fd), "tmpfs", linux.MS_RDONLY, step=f"mask {path}")
        else:
            _mount("/dev/null", _proc_fd(fd), None, linux.MS_BIND, step=f"mask {path}")
    finally:
        os.close(fd)
        os.close(parent)


def _make_readonly(root_fd: int, path: str) -> None:
    """Bind `path` on itself, then make that mount (and those below) read-only."""
    try:
        parent, name, fd = _open_target(root_fd, path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise _fail(f"make {path} read-only", err) from None
    try:
        _mount(_proc_fd(fd), _proc_fd(fd), None, linux.MS_BIND | linux.MS_REC,
               step=f"bind {path} on itself")
        _setattr_at(parent, name, linux.MOUNT_ATTR_RDONLY, True, f"make {path} read-only")
    finally:
        os.close(fd)
        os.close(parent)


def _pivot_root(root_fd: int) -> None:
    """Make the rootfs (open at `root_fd`) `/` and detach the host's tree (pivot_root(2),
    'new_root and put_old may be the same directory')."""
    try:
        # By descriptor: container root may not search the bundle's path.
        os.fchdir(root_fd)
        linux.pivot_root(".", ".")
        # The old root is now stacked on top of the new one at ".": detach it
        # lazily, so nothing of the host stays reachable.
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")
    except OSError as err:
        raise _fail("pivot_root", err) from None


# -- terminal, limits, user, capabilities, exec --------------------------------------

def _attach_terminal(channel, user: dict) -> None:
    """Open a pty in the container's devpts, pass its master to the parent, take the slave."""
    try:
        master, slave = os.openpty()
        # The host terminal is still our fd 0: start with its window size.
        try:
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        except OSError:
            pass
        os.fchown(slave, user.get("uid", 0), user.get("gid", 0))
        channel.sendmsg([b"pty"], [(_SOL_SOCKET, _SCM_RIGHTS, master.to_bytes(4, "little"))])
        os.close(master)
        # The pty becomes the controlling terminal of our new session: job control works.
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(slave, target)
        if slave > 2:
            os.close(slave)
    except OSError as err:
        raise _fail("set up the terminal", err) from None


_SOL_SOCKET, _SCM_RIGHTS = 1, 1  # socket(7), unix(7)


# -- session keyring -------------------------------------------------------------------

def _keyring_name(bundle: str, config: dict) -> str | None:
    """Return the container's session keyring name (runc's), or None with --no-new-keyring."""
    if (config.get("annotations") or {}).get(NO_NEW_KEYRING) == "true":
        return None
    return "_ses." + os.path.basename(os.path.normpath(bundle))


def _join_keyring(name: str) -> int | None:
    """Make the keyring `name` our session keyring (a new one unless one is found); return it.

    A kernel without keyrings (ENOSYS) has nothing to leak: go on, as runc does.
    """
    try:
        return linux.join_session_keyring(name)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return None
        raise _fail("join a session keyring of its own", err) from None


def _new_keyring(name: str, config: dict) -> None:
    """Join a new session keyring `name` that only its possessors and `exec` can use.

    A keyring made by joining is also readable, linkable and viewable by its
    owner's uid (KEY_USR_*): here that is host uid 0, and, as the user
    namespace maps ids one to one, the root of every other container.  One
    that linked this keyring into its own would possess it and read its keys.
    So the owner keeps only search permission, which is what `exec` needs to
    find the keyring by name (it joins as host root, before its user switch).
    With a user namespace, names are looked up in the caller's user
    namespace alone, so "other" may search too, as runc allows
    (getSessionRingParams): exec then finds the keyring even where the
    container's root is mapped to another host uid than exec's.
    """
    serial = _join_keyring(name)
    if serial is None:
        return
    kinds = {ns.get("type") for ns in (config.get("linux") or {}).get("namespaces") or []}
    search = linux.KEY_USR_SEARCH | (linux.KEY_OTH_SEARCH if "user" in kinds else 0)
    try:
        linux.set_key_permissions(serial, linux.KEY_POS_ALL | search)
    except OSError as err:
        raise _fail("set the session keyring's permissions", err) from None


def _set_rlimits(rlimits) -> None:
    for limit in rlimits:
        kind = limit.get("type", "")
        number = getattr(resource, kind, None) if kind.startswith("RLIMIT_") else None
        if number is None:
            raise SetupError(f"unknown rlimit {kind!r} in config.json")
        try:
            resource.setrlimit(number, (limit.get("soft", 0), limit.get("hard", 0)))
        except (OSError, ValueError) as err:
            raise SetupError(f"setrlimit {kind} soft={limit.get('soft')} "
                             f"hard={limit.get('hard')}: {err}") from None


def _switch_user(user: dict) -> None:
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    try:
        os.setgroups(list(user.get("additionalGids") or []))
        os.setgid(gid)
        os.setuid(uid)
    except OSError as err:
        raise _fail(f"switch to uid {uid} gid {gid}", err) from None


def _load_filter(syscall_filter) -> None:
    try:
        syscall_filter.load()
    except OSError as err:
        raise _fail("load the seccomp filter", err) from None


def _cap_mask(names) -> int:
    mask = 0
    for name in names:
        if name not in linux.CAPABILITIES:
            raise SetupError(f"unknown capability {name!r} in config.json")
        mask |= 1 << linux.CAPABILITIES[name]
    return mask


def _drop_bounding(names) -> None:
    keep = _cap_mask(names)
    try:
        last = linux.last_cap()
    except OSError:  # no /proc in this container: drop every capability we know
        last = max(linux.CAPABILITIES.values())
    for cap in range(last + 1):
        if not keep & (1 << cap):
            try:
                linux.capbset_drop(cap)
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: a capability this kernel lacks
                    raise _fail("drop the bounding set", err) from None


def _set_capabilities(caps: dict) -> None:
    # A capability newer than the running kernel cannot be held: skip it,
    # as runc does, so that --privileged's full list works on older kernels.
    try:
        kernel = (1 << (linux.last_cap() + 1)) - 1
    except OSError:
        kernel = -1
    try:
        linux.set_keepcaps(False)
        linux.capset(_cap_mask(caps.get("effective") or []) & kernel,
                     _cap_mask(caps.get("permitted") or []) & kernel,
                     _cap_mask(caps.get("inheritable") or []) & kernel)
        linux.ambient_clear()
        ambient = _cap_mask(caps.get("ambient") or []) & kernel
        for cap in range(ambient.bit_length()):
            if ambient & (1 << cap):
                linux.ambient_raise(cap)
    except OSError as err:
        raise _fail("set capabilities", err) from None


def _exec(args, env) -> None:
    """execve `args` with `env`, looking args[0] up on the container's PATH."""
    if not args:
        raise SetupError("config.json has no process.args to run", NOT_FOUND)
    program = args[0]
    if "/" in program:
        candidates = [program]
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
        candidates = [os.path.join(d or ".", program) for d in path.split(":")]
    denied = None
    for candidate in candidates:
        try:
            os.execve(candidate, args, dict(_split_env(env)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            denied = denied or (candidate, err)
    if denied:
        raise SetupError(f"exec {denied[0]}: {denied[1].strerror}", NOT_EXECUTABLE)
    where = "" if "/" in program else " in the container's PATH"
    raise SetupError(f"exec {program}: executable file not found{where}", NOT_FOUND)


def _split_env(env):
    for entry in env:
        name, _, value = entry.partition("=")
        yield name, value
