"""The child side of starting a container: a flat checklist, in order.

For run and start, two processes run this code, both forked from minict
(launch.py is the parent side and documents the messages on the channel):

    intermediate()   leave minict's session, move into the container's cgroup,
                     unshare the namespaces, wait for the uid/gid maps (and the
                     network), fork PID 1 of the new pid namespace, tell its pid, exit
    container()      PID 1: a session keyring of its own, mounts, pivot_root,
                     host name, then (execute.become) a session of its own,
                     terminal, limits, user, capabilities, the seccomp filter,
                     execve of the command

`exec` replaces both: joiner() leaves minict's session, moves into the
container's cgroup, enters a running container's namespaces, session keyring
and root, and forks the command, which then takes the same last steps as
PID 1 (execute.become).

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

import os
import signal

from minict import linux
from minict.bundle import usermap
from minict.errors import MinictError
from minict.runtime import execute, mounts
from minict.runtime.steps import SetupError, expect, expect_fd, fail, report

# -- the two processes ---------------------------------------------------------

def intermediate(channel, bundle: str, config: dict, terminal: bool, syscall_filter=None,
                 cgroup=None):
    """Unshare, get mapped, fork PID 1 of the new pid namespace; never return.

    `syscall_filter` is config.json's seccomp filter (a seccomp_filter.Program), or None;
    `cgroup` (cgroups.Cgroup) the container's cgroup, or None.
    """
    _never_return(channel, _unshare_and_fork, channel, bundle, config, terminal, syscall_filter,
                  cgroup)


def container(channel, bundle: str, config: dict, terminal: bool, rootfs_fd: int | None = None,
              syscall_filter=None):
    """Set the container up as PID 1 and execve its command; never return.

    `rootfs_fd` is the idmapped rootfs the parent made (--userns auto), a detached mount;
    `syscall_filter` is config.json's seccomp filter (a seccomp_filter.Program), or None.
    """
    _never_return(channel, _setup_and_exec, channel, bundle, config, terminal, rootfs_fd,
                  syscall_filter)


def joiner(channel, proc_fd: int, bundle: str, config: dict, terminal: bool,
           syscall_filter=None, cgroup=None):
    """Join the running container `proc_fd` (/proc/<pid>) names, fork the command; never return."""
    _never_return(channel, _join_and_fork, channel, proc_fd, bundle, config, terminal,
                  syscall_filter, cgroup)


def _never_return(channel, work, *args):
    """Run `work(*args)` and `os._exit`: 0 if it returns, else after reporting why."""
    status = 1
    try:
        work(*args)
        status = 0
    except SetupError as err:
        status = err.status
        report(channel, status, str(err))
    except BaseException as err:  # noqa: BLE001 - nothing may escape a forked child
        report(channel, 1, f"{type(err).__name__}: {err}")
    finally:
        os._exit(status)


def _unshare_and_fork(channel, bundle, config, terminal, syscall_filter, cgroup):
    _leave_session()
    _default_signals()
    _enter_cgroup(cgroup)
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
        raise fail("unshare namespaces", err) from None
    rootfs_fd = None
    if flags & linux.CLONE_NEWUSER:
        # Only a process outside the new user namespace may write its
        # uid_map and gid_map (user_namespaces(7)); ask the parent.  Only
        # it can idmap the rootfs too (userns.idmapped_rootfs).
        channel.send(b"userns")
        if usermap.idmapped(config):
            rootfs_fd = expect_fd(channel, b"rootfs")
        expect(channel, b"mapped")
    if flags & linux.CLONE_NEWNET:
        # A new network namespace is empty: the parent, on the host side,
        # brings lo up and plugs in eth0 (network.py) before anything runs.
        channel.send(b"netns")
        expect(channel, b"networked")
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


def _join_and_fork(channel, proc_fd, bundle, config, terminal, syscall_filter, cgroup):
    _leave_session()
    _default_signals()
    # Until its execve the command is minict's Python, with the host's
    # binary behind /proc/<pid>/exe and host descriptors open, yet visible to
    # the container's processes: not dumpable, they cannot open any of it
    # (CVE-2019-5736; runc's nsexec does the same).  The fork inherits this,
    # and the execve of a normal program makes it dumpable again.
    linux.set_dumpable(False)
    _enter_cgroup(cgroup)
    # Open everything first: once in the container's mount namespace, the
    # host's /proc is out of reach.
    try:
        root = os.open("root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
        targets = _namespaces_to_join(proc_fd)
    except OSError as err:
        raise fail("open the container's namespaces (has it exited?)", err) from None
    _join_all(targets)
    _become_namespace_root()
    # The container's session keyring, found by its name in the container's
    # user namespace (as runc's exec does); never minict's.
    keyring = execute.keyring_name(bundle, config)
    if keyring is not None:
        execute.join_keyring(keyring)
    # setns(CLONE_NEWNS) puts us at the namespace's root, which need not be
    # the container's: enter the root its init sees (runc's nsexec does too).
    try:
        os.fchdir(root)
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise fail("enter the container's root", err) from None
    os.close(root)
    # A joined pid namespace applies to children only (setns(2)).
    pid = os.fork()
    if pid == 0:
        _never_return(channel, execute.become, channel, config.get("process") or {}, terminal,
                      syscall_filter)
    channel.send(b"pid %d" % pid)


def _enter_cgroup(cgroup) -> None:
    """Move into the container's cgroup (if any), before anything else happens.

    Its device rules then hold for us and for every process we fork, and a
    cgroup namespace made later would be rooted there.  We move ourselves,
    one thread as we are, which the kernel does far faster than the parent
    could move us (cgroups.Cgroup.join).
    """
    if cgroup is None:
        return
    try:
        cgroup.join()
    except MinictError as err:
        raise SetupError(err.message) from None


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
            raise fail(f"join the container's {name} namespace", err) from None
        os.close(fd)
    for name, fd, flag in later:
        try:
            linux.setns(fd, flag)
        except OSError as err:
            raise fail(f"join the container's {name} namespace", err) from None
        os.close(fd)


def _setup_and_exec(channel, bundle, config, terminal, rootfs_fd, syscall_filter):
    process = config.get("process") or {}
    linux_config = config.get("linux") or {}
    entries = config.get("mounts") or []
    rootfs = os.path.join(bundle, (config.get("root") or {}).get("path", "rootfs"))

    # 0. A new, empty session keyring (keyrings(7)): the one inherited from
    #    minict is the caller's, with whatever keys it holds.
    keyring = execute.keyring_name(bundle, config)
    if keyring is not None:
        execute.new_keyring(keyring, config)

    # 1. Nothing mounted from here on may propagate back to the host: make
    #    every mount in our new mount namespace private, recursively.
    mounts.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE, step="make / rprivate")

    # 2. pivot_root needs the new root to be a mount point of its own.  A
    #    rootfs that is a symlink could point anywhere on the host: refuse it.
    if os.path.islink(rootfs) or not os.path.isdir(rootfs):
        raise SetupError(f"the rootfs {rootfs} is not a directory")
    if rootfs_fd is None:
        mounts.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC, step="bind the rootfs")
    else:
        try:
            linux.move_mount_fd(rootfs_fd, rootfs)
        except OSError as err:
            raise fail("attach the idmapped rootfs", err) from None
        os.close(rootfs_fd)
    #    No device node of the image opens: only /dev, mounted below after
    #    this, holds usable ones (devices.py).  Adding nodev is allowed even
    #    on mounts whose flags are locked (mount_namespaces(7)).
    mounts.setattr_path(rootfs, linux.MOUNT_ATTR_NODEV, True, "make the rootfs nodev")
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    # 2b. With an idmapped rootfs, container root is not host root: from
    #     here on act as the user namespace's root, whose ids exist in the
    #     idmapped rootfs and in the tmpfs and devpts mounted below (host uid
    #     0 does not: creating a file as it fails with EOVERFLOW).  The host
    #     paths it may no longer reach (the bundle is 0700) are opened first.
    if rootfs_fd is not None:
        entries = mounts.pin_bind_sources(bundle, entries)
        _become_namespace_root()

    # 3. The config's mounts, in the config's order: a later one (/dev/pts)
    #    lands inside an earlier one (/dev).
    dev_is_bind = False
    for entry in entries:
        mounts.mount_entry(root_fd, bundle, entry)
        if mounts.clean(entry.get("destination", "")) == "dev" and entry.get("type") == "bind":
            dev_is_bind = True

    # 4. Devices and /dev symlinks, unless /dev came from the host whole.
    if not dev_is_bind:
        mounts.populate_dev(root_fd, linux_config.get("devices") or [])

    # 5. Mask and write-protect what the config names, while the host's
    #    /dev/null is still reachable (before pivot_root).
    for path in linux_config.get("maskedPaths") or []:
        mounts.mask(root_fd, path)
    for path in linux_config.get("readonlyPaths") or []:
        mounts.make_readonly(root_fd, path)

    # 6. Swap roots and drop the host's tree entirely, so no path leads out.
    mounts.pivot_root(root_fd)
    os.close(root_fd)
    if (config.get("root") or {}).get("readonly"):
        mounts.setattr_path("/", linux.MOUNT_ATTR_RDONLY, False, "make / read-only")

    # 7. Host name: needs CAP_SYS_ADMIN in the uts namespace's owner, so before
    #    the user switch drops it.
    if config.get("hostname"):
        try:
            linux.sethostname(config["hostname"])
        except OSError as err:
            raise fail("sethostname", err) from None

    execute.become(channel, process, terminal, syscall_filter)


# Every signal a disposition can be set for, but SIGKILL and SIGSTOP; the
# real-time signals glibc keeps for itself (32 and 33) need the raw call.
_SETTABLE = tuple(s for s in signal.valid_signals()
                  if s not in (signal.SIGKILL, signal.SIGSTOP) and not 32 <= s < signal.SIGRTMIN)
_GLIBC_OWN = tuple(range(32, signal.SIGRTMIN))


def _default_signals() -> None:
    """Give the container every signal at its default and none blocked, as docker's do.

    An ignored signal stays ignored across execve: Python ignores SIGPIPE and
    SIGXFSZ, and minict itself may have been started with SIGHUP ignored
    (nohup) or SIGINT and SIGQUIT ignored (a shell's background job).  None
    of that may reach the container, where `trap` could not even undo it.
    The parent blocked the signals it forwards.
    """
    for signo in _SETTABLE:
        signal.signal(signo, signal.SIG_DFL)
    for signo in _GLIBC_OWN:
        linux.default_signal(signo)
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
        raise fail(f"join {kind} namespace {path}", err) from None


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
        raise fail("become root of the user namespace", err) from None

