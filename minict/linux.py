"""Every ctypes system call minict makes, and the one reader of the mount table.

Python 3.11 has no os.unshare/os.setns and no mount, pivot_root or capset at
all, so they are called through libc here.  Each wrapper raises OSError with
errno, the system call's name and the path it acted on, so the one printed
line says which call failed and why.  The constants carry the man page they
come from; their values are the kernel's UAPI ones (the same on x86_64 and
aarch64 unless noted).
"""

import ctypes
import errno
import os
import platform
import re
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# -- namespaces: clone(2), unshare(2), setns(2) -----------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# The OCI runtime spec's linux.namespaces[].type -> clone flag.
NAMESPACES = {
    "pid": CLONE_NEWPID, "network": CLONE_NEWNET, "mount": CLONE_NEWNS, "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS, "user": CLONE_NEWUSER, "cgroup": CLONE_NEWCGROUP, "time": CLONE_NEWTIME,
}

# -- mount(2) flags ---------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MS_PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED

# -- umount2(2) flags -------------------------------------------------------
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# -- mount_setattr(2): struct mount_attr's attr_set bits ---------------------
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
# mount(2) flags that mount_setattr(2) can add to an existing mount.
MS_TO_MOUNT_ATTR = {MS_RDONLY: MOUNT_ATTR_RDONLY, MS_NOSUID: MOUNT_ATTR_NOSUID,
                    MS_NODEV: MOUNT_ATTR_NODEV, MS_NOEXEC: MOUNT_ATTR_NOEXEC}

# -- prctl(2) options -------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# -- close_range(2) ---------------------------------------------------------
CLOSE_RANGE_CLOEXEC = 4

# -- capabilities(7): names as the OCI runtime spec writes them -> bit -------
CAPABILITIES = {name: bit for bit, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
))}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# System calls glibc has no wrapper for (or only a recent one), by machine;
# see syscalls(2).  close_range and mount_setattr have one number everywhere
# (the unified table from 424 on).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155},
    "aarch64": {"pivot_root": 41},
}
SYS_CLOSE_RANGE = 436
SYS_MOUNT_SETATTR = 442


def _check(result: int, call: str, path=None) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}: {os.strerror(errno)}", path)
    return result


def _path(value) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[platform.machine()][name]
    except KeyError:
        raise OSError(38, f"{name}: not supported on {platform.machine()}") from None


# -- namespaces ---------------------------------------------------------------

def unshare(flags: int) -> None:
    """Move the caller into new namespaces (unshare(2))."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace `fd` refers to (setns(2))."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str) -> None:
    """Set the UTS namespace's host name (sethostname(2))."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


# -- mounts -------------------------------------------------------------------

def mount(source, target, fstype=None, flags: int = 0, data: str | None = None) -> None:
    """Attach a file system or change a mount (mount(2)); raise OSError."""
    _check(_libc.mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags),
                       None if not data else data.encode()), "mount", target)


def umount2(target, flags: int = 0) -> None:
    """Detach the mount at `target` (umount2(2)); raise OSError."""
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root, put_old) -> None:
    """Make `new_root` the root of the mount namespace (pivot_root(2))."""
    _check(_libc.syscall(ctypes.c_long(_syscall_number("pivot_root")), _path(new_root),
                         _path(put_old)), "pivot_root", new_root)


def mount_setattr(target, attr_set: int, *, recursive: bool = False, dir_fd: int = -100) -> None:
    """Add the MOUNT_ATTR_* bits `attr_set` to the mount at `target` (mount_setattr(2)).

    Unlike a MS_REMOUNT, this only sets bits and so never trips over the flags
    the kernel locks on mounts inherited from a more privileged namespace
    (nosuid, nodev, atime: mount_namespaces(7)); with `recursive` it also
    reaches every mount below (an rbind's submounts).
    """
    attr = struct.pack("QQQQ", attr_set, 0, 0, 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(dir_fd), _path(target),
                         ctypes.c_uint(AT_RECURSIVE if recursive else 0), attr,
                         ctypes.c_size_t(len(attr))), "mount_setattr", target)


# -- processes ----------------------------------------------------------------

def prctl(option: int, arg2: int = 0, arg3: int = 0, name: str = "prctl") -> int:
    """Call prctl(2) with integer arguments; raise OSError naming `name`."""
    return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(0), ctypes.c_ulong(0)), name)


def set_child_subreaper() -> None:
    """Become the parent of orphaned descendants (PR_SET_CHILD_SUBREAPER)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1, name="prctl(PR_SET_CHILD_SUBREAPER)")


def set_pdeathsig(signo: int) -> None:
    """Get `signo` when the parent dies (PR_SET_PDEATHSIG; cleared by credential changes)."""
    prctl(PR_SET_PDEATHSIG, signo, name="prctl(PR_SET_PDEATHSIG)")


def set_dumpable(on: bool) -> None:
    """Allow or forbid ptrace and /proc/<pid> access by less privileged peers (PR_SET_DUMPABLE)."""
    prctl(PR_SET_DUMPABLE, int(on), name="prctl(PR_SET_DUMPABLE)")


def set_keepcaps(on: bool) -> None:
    """Keep the permitted set across setuid away from 0 (PR_SET_KEEPCAPS)."""
    prctl(PR_SET_KEEPCAPS, int(on), name="prctl(PR_SET_KEEPCAPS)")


def set_no_new_privs() -> None:
    """Forbid execve from granting privileges (PR_SET_NO_NEW_PRIVS, irreversible)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1, name="prctl(PR_SET_NO_NEW_PRIVS)")


def capbset_drop(cap: int) -> None:
    """Remove `cap` from the bounding set (PR_CAPBSET_DROP; needs CAP_SETPCAP)."""
    prctl(PR_CAPBSET_DROP, cap, name="prctl(PR_CAPBSET_DROP)")


def ambient_clear() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, name="prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def ambient_raise(cap: int) -> None:
    """Add `cap` to the ambient set (it must be permitted and inheritable)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, name="prctl(PR_CAP_AMBIENT_RAISE)")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the caller's three capability sets, given as 64-bit masks (capset(2))."""
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack("6I", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF,
                       inheritable & 0xFFFFFFFF, effective >> 32, permitted >> 32,
                       inheritable >> 32)
    _check(_libc.capset(header, data), "capset")


def last_cap() -> int:
    """Return the highest capability this kernel knows (capabilities(7))."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def close_range_cloexec(first: int) -> None:
    """Mark every descriptor from `first` up close-on-exec (close_range(2))."""
    _check(_libc.syscall(ctypes.c_long(SYS_CLOSE_RANGE), ctypes.c_uint(first),
                         ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)),
           "close_range")


# -- signals ------------------------------------------------------------------

SIGINFO_SIZE = 128  # struct signalfd_siginfo, signalfd(2)
SI_USER = 0


def signalfd(signals) -> int:
    """Return a close-on-exec descriptor that reads the (blocked) `signals` (signalfd(2))."""
    words = [0] * 16  # glibc's sigset_t: 1024 bits
    for signo in signals:
        words[(signo - 1) // 64] |= 1 << ((signo - 1) % 64)
    mask = struct.pack("16Q", *words)
    return _check(_libc.signalfd(ctypes.c_int(-1), mask, ctypes.c_int(os.O_CLOEXEC)), "signalfd")


def read_signals(fd: int) -> list[tuple[int, int]]:
    """Read pending records from a signalfd; return (signal, si_code) pairs."""
    data = os.read(fd, SIGINFO_SIZE * 16)
    return [struct.unpack_from("Iii", data, offset)[0:3:2]
            for offset in range(0, len(data), SIGINFO_SIZE)]


# -- statx(2) ----------------------------------------------------------------
AT_EMPTY_PATH = 0x1000
STATX_MNT_ID = 0x1000
_STATX_SIZE = 256  # struct statx
_STATX_MNT_ID_OFFSET = 144  # __u64 stx_mnt_id, after the dev_major/minor pairs


def mount_id(fd: int) -> int | None:
    """Return the id of the mount `fd` is on (statx(2) stx_mnt_id), or None if unknown.

    Unlike st_dev, it tells two bind mounts of one file system apart (Linux
    5.8 and later; None on older kernels).
    """
    statx = getattr(_libc, "statx", None)  # glibc 2.28 and later
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    try:
        _check(statx(ctypes.c_int(fd), b"", ctypes.c_int(AT_EMPTY_PATH),
                     ctypes.c_uint(STATX_MNT_ID), buf), "statx")
    except OSError as err:
        if err.errno != errno.ENOSYS:  # a kernel before 4.11
            raise
        return None
    mask = struct.unpack_from("I", buf, 0)[0]
    return struct.unpack_from("Q", buf, _STATX_MNT_ID_OFFSET)[0] if mask & STATX_MNT_ID else None


# -- the mount table: proc(5) /proc/self/mountinfo ----------------------------


def mounts_below(base: str) -> list[str]:
    """Return the mount points at or below `base` in /proc/self/mountinfo; raise OSError."""
    found = []
    prefix = base.rstrip("/") + "/"
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and
            # backslash as octal escapes (proc(5)).
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), line.split()[4])
            point = os.fsdecode(point)
            if point == base or point.startswith(prefix):
                found.append(point)
    return found
