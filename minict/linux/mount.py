"""mount(2) and the new mount API: mounting, pivot_root, detached trees and mount ids.
"""

import ctypes
import errno
import os
import struct

from minict.linux.libc import (
    SYS_MOUNT_SETATTR,
    SYS_MOVE_MOUNT,
    SYS_OPEN_TREE,
    check,
    encode_path,
    libc,
    syscall_number,
)

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


# -- mounts -------------------------------------------------------------------

def mount(source, target, fstype=None, flags: int = 0, data: str | None = None) -> None:
    """Attach a file system or change a mount (mount(2)); raise OSError."""
    check(libc.mount(encode_path(source), encode_path(target), encode_path(fstype), ctypes.c_ulong(flags),
                       None if not data else data.encode()), "mount", target)


def umount2(target, flags: int = 0) -> None:
    """Detach the mount at `target` (umount2(2)); raise OSError."""
    check(libc.umount2(encode_path(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root, put_old) -> None:
    """Make `new_root` the root of the mount namespace (pivot_root(2))."""
    check(libc.syscall(ctypes.c_long(syscall_number("pivot_root")), encode_path(new_root),
                         encode_path(put_old)), "pivot_root", new_root)


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
    check(libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(dir_fd), encode_path(target),
                         ctypes.c_uint(flags), attr, ctypes.c_size_t(len(attr))),
           "mount_setattr", target or None)


def open_tree_clone(path) -> int:
    """Return a close-on-exec descriptor of a detached copy of the mount at `path` (open_tree(2)).

    OPEN_TREE_CLONE makes a new bind mount that is attached nowhere yet, the
    only kind mount_setattr(2) may idmap; `path` itself must not be a
    symlink (AT_SYMLINK_NOFOLLOW), and mounts below it are not copied.
    """
    return check(libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(-100), encode_path(path),
                                ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC
                                              | AT_SYMLINK_NOFOLLOW)), "open_tree", path)


def move_mount_fd(mount_fd: int, target) -> None:
    """Attach the detached mount `mount_fd` on top of `target` (move_mount(2))."""
    check(libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(mount_fd), b"",
                         ctypes.c_int(-100), encode_path(target),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", target)



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
    statx = getattr(libc, "statx", None)  # glibc 2.28 and later
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    try:
        check(statx(ctypes.c_int(fd), b"", ctypes.c_int(AT_EMPTY_PATH),
                     ctypes.c_uint(STATX_MNT_ID), buf), "statx")
    except OSError as err:
        if err.errno != errno.ENOSYS:  # a kernel before 4.11
            raise
        return None
    mask = struct.unpack_from("I", buf, 0)[0]
    return struct.unpack_from("Q", buf, _STATX_MNT_ID_OFFSET)[0] if mask & STATX_MNT_ID else None
