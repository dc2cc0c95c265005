"""Namespaces, prctl, capabilities, seccomp, keyrings, signalfd and pidfds of a process."""

import ctypes
import os
import struct

from minict.linux.libc import SYS_CLOSE_RANGE, check, libc, syscall_number

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

# -- namespaces ---------------------------------------------------------------

def unshare(flags: int) -> None:
    """Move the caller into new namespaces (unshare(2))."""
    check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace `fd` refers to (setns(2))."""
    check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str) -> None:
    """Set the UTS namespace's host name (sethostname(2))."""
    raw = name.encode()
    check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")



# -- processes ----------------------------------------------------------------

def prctl(option: int, arg2: int = 0, arg3: int = 0, name: str = "prctl") -> int:
    """Call prctl(2) with integer arguments; raise OSError naming `name`."""
    return check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
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
    check(libc.capset(header, data), "capset")


def last_cap() -> int:
    """Return the highest capability this kernel knows (capabilities(7))."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def close_range_cloexec(first: int) -> None:
    """Mark every descriptor from `first` up close-on-exec (close_range(2))."""
    check(libc.syscall(ctypes.c_long(SYS_CLOSE_RANGE), ctypes.c_uint(first),
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
        check(libc.syscall(ctypes.c_long(syscall_number("seccomp")),
                             ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags),
                             ctypes.byref(program)), "seccomp(SECCOMP_SET_MODE_FILTER)")
    else:
        check(libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
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
    return check(libc.syscall(ctypes.c_long(syscall_number("keyctl")),
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
# The kernel's struct sigaction: handler, flags, restorer, mask (8 bytes each
# on x86_64 and aarch64); all zero is SIG_DFL with no flags and an empty mask.
_KERNEL_SIGACTION_DEFAULT = bytes(32)


def default_signal(signo: int) -> None:
    """Set `signo`'s disposition to SIG_DFL with rt_sigaction(2) itself; raise OSError.

    glibc's sigaction refuses the two real-time signals it keeps for itself
    (32 and 33), and so does Python; an ignored one still survives execve.
    """
    check(libc.syscall(ctypes.c_long(syscall_number("rt_sigaction")), ctypes.c_int(signo),
                       _KERNEL_SIGACTION_DEFAULT, None, ctypes.c_size_t(8)),
          f"rt_sigaction({signo})")


def signalfd(signals) -> int:
    """Return a close-on-exec descriptor that reads the (blocked) `signals` (signalfd(2))."""
    words = [0] * 16  # glibc's sigset_t: 1024 bits
    for signo in signals:
        words[(signo - 1) // 64] |= 1 << ((signo - 1) % 64)
    mask = struct.pack("16Q", *words)
    return check(libc.signalfd(ctypes.c_int(-1), mask, ctypes.c_int(os.O_CLOEXEC)), "signalfd")


def read_signals(fd: int) -> list[tuple[int, int]]:
    """Read pending records from a signalfd; return (signal, si_code) pairs."""
    data = os.read(fd, SIGINFO_SIZE * 16)
    return [struct.unpack_from("Iii", data, offset)[0:3:2]
            for offset in range(0, len(data), SIGINFO_SIZE)]



# -- pidfds ---------------------------------------------------------------------

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
