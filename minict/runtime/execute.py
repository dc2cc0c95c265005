"""The last steps of a container's process, shared by its PID 1 and by `exec`.

become() runs inside the container's root, after the namespaces (and for
PID 1 the mounts) are in place: a session of its own, the terminal, resource
limits, the working directory, the user, capabilities, no_new_privs, the
seccomp filter, and execve of the command.  The session keyring is joined
earlier (init.py), but its rules live here with the rest of the process.
"""

import errno
import fcntl
import os
import re
import resource
import signal
import termios

from minict import inroot, linux
from minict.runtime.steps import SCM_RIGHTS, SOL_SOCKET, SetupError, expect, fail

# A working directory reached through a descriptor could be one leaked from
# the host (CVE-2024-21626): refuse /proc/<pid>/fd/... and /proc/<pid>/task/<tid>/fd/...
FD_PATH = re.compile(r"/proc/[^/]+/(task/[^/]+/)?fd(/|\Z)")

# The annotation of `run --no-new-keyring` (spec.NO_NEW_KEYRING; not imported
# from there, so that `start` need not load spec.py).
NO_NEW_KEYRING = "org.minict.no-new-keyring"

# Exit statuses of a command that could not be run, as POSIX shells use them.
NOT_EXECUTABLE = 126
NOT_FOUND = 127


def become(channel, process: dict, terminal: bool, syscall_filter=None) -> None:
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
    #     It is resolved in the container's root (its symlinks followed there,
    #     no magic link of /proc), its missing part made, and held open.
    cwd = process.get("cwd") or "/"
    if not cwd.startswith("/") or FD_PATH.match(os.path.normpath(cwd)):
        raise SetupError(f"refusing working directory {cwd!r}: it must be an absolute path "
                         "that does not go through /proc/<pid>/fd")
    try:
        root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cwd_fd = inroot.open_dir(root_fd, cwd, create=True)
        finally:
            os.close(root_fd)
    except OSError as err:
        raise fail(f"create working directory {cwd}", err) from None

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

    # 13. Enter the working directory as the container's user, by its path
    #     (so every directory on it must let the user through, as with runc),
    #     and make sure it is the one resolved in root at step 10 and inside
    #     the new root (getcwd fails for an unreachable one).
    try:
        os.chdir(cwd)
        os.getcwd()
        entered, resolved = os.stat("."), os.fstat(cwd_fd)
    except OSError as err:
        raise fail(f"chdir to {cwd}", err) from None
    os.close(cwd_fd)
    if (entered.st_dev, entered.st_ino) != (resolved.st_dev, resolved.st_ino):
        raise SetupError(f"chdir to {cwd}: it is not the directory resolved in the container")

    # 14. Die with minict: the parent is minict itself once the intermediate
    #     process is reaped, and credential changes clear this setting, so it
    #     is the last step before execve.
    expect(channel, b"reaped")
    linux.set_pdeathsig(signal.SIGKILL)

    # 15. The system-call filter, when no_new_privs let us wait: from here
    #     on only execve and the error report run under it.
    if syscall_filter is not None and no_new_privs:
        _load_filter(syscall_filter)

    _exec(process.get("args") or [], process.get("env") or [])


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
        channel.sendmsg([b"pty"], [(SOL_SOCKET, SCM_RIGHTS, master.to_bytes(4, "little"))])
        os.close(master)
        # The pty becomes the controlling terminal of our new session: job control works.
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(slave, target)
        if slave > 2:
            os.close(slave)
    except OSError as err:
        raise fail("set up the terminal", err) from None




# -- session keyring -------------------------------------------------------------------

def keyring_name(bundle: str, config: dict) -> str | None:
    """Return the container's session keyring name (runc's), or None with --no-new-keyring."""
    if (config.get("annotations") or {}).get(NO_NEW_KEYRING) == "true":
        return None
    return "_ses." + os.path.basename(os.path.normpath(bundle))


def join_keyring(name: str) -> int | None:
    """Make the keyring `name` our session keyring (a new one unless one is found); return it.

    A kernel without keyrings (ENOSYS) has nothing to leak: go on, as runc does.
    """
    try:
        return linux.join_session_keyring(name)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return None
        raise fail("join a session keyring of its own", err) from None


def new_keyring(name: str, config: dict) -> None:
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
    serial = join_keyring(name)
    if serial is None:
        return
    kinds = {ns.get("type") for ns in (config.get("linux") or {}).get("namespaces") or []}
    search = linux.KEY_USR_SEARCH | (linux.KEY_OTH_SEARCH if "user" in kinds else 0)
    try:
        linux.set_key_permissions(serial, linux.KEY_POS_ALL | search)
    except OSError as err:
        raise fail("set the session keyring's permissions", err) from None


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
        raise fail(f"switch to uid {uid} gid {gid}", err) from None


def _load_filter(syscall_filter) -> None:
    try:
        syscall_filter.load()
    except OSError as err:
        raise fail("load the seccomp filter", err) from None


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
                    raise fail("drop the bounding set", err) from None


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
        raise fail("set capabilities", err) from None


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
