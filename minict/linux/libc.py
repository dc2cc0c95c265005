"""libc through ctypes, and the raw numbers of the system calls glibc does not wrap.

Each wrapper in this package calls check() so a failure is an OSError with
errno, the call's name and the path it acted on.
"""

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


# System calls glibc has no wrapper for (or only a recent one), by machine;
# see syscalls(2).  close_range and mount_setattr have one number everywhere
# (the unified table from 424 on), as do open_tree, move_mount and openat2.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "seccomp": 317, "bpf": 321, "keyctl": 250,
               "rt_sigaction": 13},
    "aarch64": {"pivot_root": 41, "seccomp": 277, "bpf": 280, "keyctl": 219,
                "rt_sigaction": 134},
}
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_CLOSE_RANGE = 436
SYS_OPENAT2 = 437
SYS_MOUNT_SETATTR = 442


def check(result: int, call: str, path=None) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}: {os.strerror(errno)}", path)
    return result


def encode_path(value) -> bytes | None:
    return None if value is None else os.fsencode(value)


def syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[os.uname().machine][name]
    except KeyError:
        raise OSError(38, f"{name}: not supported on {os.uname().machine}") from None
