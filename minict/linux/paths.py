"""openat2(2): opening a path under the kernel's RESOLVE_* rules (Linux 5.6).

minict.inroot uses it to resolve a path inside a rootfs as if it were `/`,
and falls back to its own walk where the kernel has no openat2.
"""

import ctypes
import errno
import struct

from minict.linux.libc import SYS_OPENAT2, check, encode_path, libc

# struct open_how's resolve bits (openat2(2)).
RESOLVE_NO_XDEV = 0x01        # never cross a mount point
RESOLVE_NO_MAGICLINKS = 0x02  # refuse /proc/<pid>/fd/N, /proc/<pid>/root and the like
RESOLVE_NO_SYMLINKS = 0x04    # refuse every symlink
RESOLVE_BENEATH = 0x08        # refuse anything above dirfd
RESOLVE_IN_ROOT = 0x10        # resolve as if dirfd were "/": `..` and absolute links stay below it
# The errnos that mean "this kernel has no openat2 (or not this struct)": fall back.
OPENAT2_MISSING = (errno.ENOSYS, errno.E2BIG)


def openat2(dir_fd: int, path, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open `path` relative to `dir_fd` under the RESOLVE_* rules `resolve` (openat2(2)).

    Return the new descriptor.  A kernel before 5.6 raises OSError with an
    errno in OPENAT2_MISSING (ENOSYS, or E2BIG for a struct it does not know).
    """
    how = struct.pack("QQQ", flags, mode, resolve)  # struct open_how: flags, mode, resolve
    return check(libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd), encode_path(path),
                              how, ctypes.c_size_t(len(how))), "openat2", path)
