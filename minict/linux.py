"""Every ctypes system call minict makes, and the one reader of the mount table.

Python 3.11 has no os.unshare/os.setns and no mount, pivot_root or capset at
all, so they are called through libc here.  Each wrapper raises OSError with
errno, the system call's name and the path it acted on, so the one printed
line says which call failed and why.  The constants carry the man page they
come from; their values are the kernel's UAPI ones (the same on x86_64 and
aarch64 unless noted).
"""

import collections
import ctypes
import errno
import os
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
MOUNT_ATTR_IDMAP = 0x100000  # Linux 5.12: map the mount's ids through a user namespace
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
# -- open_tree(2) and move_mount(2) (Linux 5.2) -------------------------------
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
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

# -- seccomp(2) -------------------------------------------------------------
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4

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
# (the unified table from 424 on), as do open_tree and move_mount.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "seccomp": 317, "bpf": 321, "keyctl": 250},
    "aarch64": {"pivot_root": 41, "seccomp": 277, "bpf": 280, "keyctl": 219},
}
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
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
        return _SYSCALLS[os.uname().machine][name]
    except KeyError:
        raise OSError(38, f"{name}: not supported on {os.uname().machine}") from None


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


def mount_setattr(target, attr_set: int, *, recursive: bool = False, dir_fd: int = -100,
                  userns_fd: int = 0) -> None:
    """Add the MOUNT_ATTR_* bits `attr_set` to the mount at `target` (mount_setattr(2)).

    Unlike a MS_REMOUNT, this only sets bits and so never trips over the flags
    the kernel locks on mounts inherited from a more privileged namespace
    (nosuid, nodev, atime: mount_namespaces(7)); with `recursive` it also
    reaches every mount below (an rbind's submounts).  `target` "" with a
    `dir_fd` acts on that descriptor's mount (AT_EMPTY_PATH); MOUNT_ATTR_IDMAP
    takes the user namespace whose id maps the mount shows in `userns_fd`.
    """
    attr = struct.pack("QQQQ", attr_set, 0, 0, userns_fd)
    flags = (AT_RECURSIVE if recursive else 0) | (AT_EMPTY_PATH if target == "" else 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(dir_fd), _path(target),
                         ctypes.c_uint(flags), attr, ctypes.c_size_t(len(attr))),
           "mount_setattr", target or None)


def open_tree_clone(path) -> int:
    """Return a close-on-exec descriptor of a detached copy of the mount at `path` (open_tree(2)).

    OPEN_TREE_CLONE makes a new bind mount that is attached nowhere yet, the
    only kind mount_setattr(2) may idmap; `path` itself must not be a
    symlink (AT_SYMLINK_NOFOLLOW), and mounts below it are not copied.
    """
    return _check(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(-100), _path(path),
                                ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC
                                              | AT_SYMLINK_NOFOLLOW)), "open_tree", path)


def move_mount_fd(mount_fd: int, target) -> None:
    """Attach the detached mount `mount_fd` on top of `target` (move_mount(2))."""
    _check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(mount_fd), b"",
                         ctypes.c_int(-100), _path(target),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", target)


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


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (seccomp(2)): the length in instructions and the code."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_set_filter(code: bytes, flags: int = 0) -> None:
    """Install the classic BPF program `code` (struct sock_filter[]) as a seccomp filter.

    Without flags through prctl(PR_SET_SECCOMP), which every architecture
    has; with SECCOMP_FILTER_FLAG_* through seccomp(2).  Needs no_new_privs
    or CAP_SYS_ADMIN (seccomp(2)).
    """
    program = _SockFprog(len(code) // 8, code)
    if flags:
        _check(_libc.syscall(ctypes.c_long(_syscall_number("seccomp")),
                             ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags),
                             ctypes.byref(program)), "seccomp(SECCOMP_SET_MODE_FILTER)")
    else:
        _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                           ctypes.byref(program), ctypes.c_ulong(0), ctypes.c_ulong(0)),
               "prctl(PR_SET_SECCOMP)")


# -- keyrings: keyctl(2), keyrings(7) ---------------------------------------
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_SETPERM = 5
# A key's permission mask: possessor, owner (user), group, other; 8 bits each.
KEY_POS_ALL = 0x3F000000
KEY_USR_SEARCH = 0x00080000
KEY_OTH_SEARCH = 0x00000008


def _keyctl(operation: int, *args, name: str) -> int:
    """Call keyctl(2) (glibc has no wrapper: it is libkeyutils'); raise OSError naming `name`."""
    return _check(_libc.syscall(ctypes.c_long(_syscall_number("keyctl")),
                                ctypes.c_long(operation), *args), name)


def join_session_keyring(name: str) -> int:
    """Make the keyring `name` (one we may search, else a new one) our session keyring.

    Return its serial (KEYCTL_JOIN_SESSION_KEYRING, keyctl_join_session_keyring(3)).
    """
    return _keyctl(KEYCTL_JOIN_SESSION_KEYRING, ctypes.c_char_p(name.encode()),
                   name="keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


def set_key_permissions(serial: int, permissions: int) -> None:
    """Set the permission mask of key `serial` (KEYCTL_SETPERM, keyctl_setperm(3))."""
    _keyctl(KEYCTL_SETPERM, ctypes.c_long(serial), ctypes.c_uint(permissions),
            name="keyctl(KEYCTL_SETPERM)")


# -- signals ------------------------------------------------------------------

SIGINFO_SIZE = 128  # struct signalfd_siginfo, signalfd(2)


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


# -- bpf(2): load an eBPF program and attach it to a cgroup --------------------
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
# Let cgroups below (and above) attach programs of their own; all of them
# must allow an access (bpf(2), BPF_PROG_ATTACH; what runc and systemd use).
BPF_F_ALLOW_MULTI = 2
_BPF_LOG_SIZE = 64 * 1024


def bpf_prog_load(prog_type: int, instructions: bytes, license: str) -> int:
    """Load an eBPF program (8-byte instructions); return its close-on-exec descriptor.

    When the verifier refuses the program, the OSError's message carries the
    end of its log (bpf(2), BPF_PROG_LOAD).
    """
    code = ctypes.create_string_buffer(instructions, len(instructions))
    licence = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(_BPF_LOG_SIZE)
    # union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type: prog_type,
    # insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16], prog_ifindex, expected_attach_type.
    attr = struct.pack("IIQQIIQII16sII", prog_type, len(instructions) // 8,
                       ctypes.addressof(code), ctypes.addressof(licence), 1, _BPF_LOG_SIZE,
                       ctypes.addressof(log), 0, 0, b"minict", 0, 0)
    fd = _libc.syscall(ctypes.c_long(_syscall_number("bpf")), ctypes.c_int(BPF_PROG_LOAD),
                       attr, ctypes.c_uint(len(attr)))
    if fd == -1:
        errno = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(errno, f"bpf(BPF_PROG_LOAD): {os.strerror(errno)}"
                      + (f" ({' / '.join(verifier)})" if verifier else ""))
    return fd


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach the program `prog_fd` to the cgroup directory `target_fd` (BPF_PROG_ATTACH)."""
    # union bpf_attr for BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type,
    # attach_flags, replace_bpf_fd.
    attr = struct.pack("IIIII", target_fd, prog_fd, attach_type, flags, 0)
    _check(_libc.syscall(ctypes.c_long(_syscall_number("bpf")), ctypes.c_int(BPF_PROG_ATTACH),
                         attr, ctypes.c_uint(len(attr))), "bpf(BPF_PROG_ATTACH)")


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

# A namedtuple, not typing.NamedTuple: importing typing costs `start` ~2 ms.
class Mount(collections.namedtuple("Mount", "root point fstype source super_options")):
    """One line of /proc/self/mountinfo (proc(5)), unescaped.

    root: the directory of the file system mounted here; point: where it is
    mounted; fstype; source; super_options: the file system's own options
    ("rw,devices" for a v1 cgroup).
    """

    __slots__ = ()


def _unescape(field: bytes) -> str:
    # Space, tab, newline and backslash are written as octal escapes (proc(5)).
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def mount_table() -> list[Mount]:
    """Return the mounts of this mount namespace in /proc/self/mountinfo order; raise OSError."""
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            # Optional fields run from the 7th up to a lone "-".
            tail = fields.index(b"-", 6)
            found.append(Mount(_unescape(fields[3]), _unescape(fields[4]),
                               _unescape(fields[tail + 1]), _unescape(fields[tail + 2]),
                               _unescape(fields[tail + 3]) if len(fields) > tail + 3 else ""))
    return found


def mounts_below(base: str) -> list[str]:
    """Return the mount points at or below `base` in /proc/self/mountinfo; raise OSError."""
    prefix = base.rstrip("/") + "/"
    return [m.point for m in mount_table() if m.point == base or m.point.startswith(prefix)]


# -- processes by pid: proc(5) /proc/<pid>/stat and /proc/locks, pidfds ---------

# Field 3 (R, S, D, T stopped, Z zombie...), field 4 and field 22 (clock ticks after boot).
ProcessStat = collections.namedtuple("ProcessStat", "state ppid start_time")


def process_stat(pid: int) -> ProcessStat | None:
    """Return the state, parent and start time of process `pid`, or None if there is none.

    A pid names a process only until it is reaped; the pair (pid, start time)
    names one for good, which is how runc recognises its container's init
    (libcontainer's initProcessStartTime) and how minict does.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return ProcessStat(fields[0].decode(), int(fields[1]), int(fields[19]))


def flock_holder(path) -> int | None:
    """Return the pid that holds a flock(2) on the file `path`, or None (proc(5), /proc/locks).

    The kernel shows the pid of the process that took the lock (in our pid
    namespace), even if children inherited the descriptor since.
    """
    try:
        st = os.stat(path)
        with open("/proc/locks", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 00:1d:393 0 EOF"; waiters show "->" after the number.
        words = line.split()
        if len(words) >= 6 and words[1] == "FLOCK" and words[5] == wanted:
            pid = int(words[4])
            return pid if pid > 0 else None  # 0: a process of a pid namespace we cannot see
    return None


def pidfd_open(pid: int) -> int:
    """Return a pidfd for process `pid` (pidfd_open(2)); raise ProcessLookupError if none.

    The descriptor keeps naming that process even after it exits and its
    pid is handed to another; it is close-on-exec.
    """
    return os.pidfd_open(pid)


def pidfd_send_signal(pidfd: int, signo: int) -> None:
    """Send `signo` to the process of `pidfd` (pidfd_send_signal(2)); never to a pid's new owner.

    Raise ProcessLookupError if that process has exited.
    """
    import signal

    signal.pidfd_send_signal(pidfd, signo)
