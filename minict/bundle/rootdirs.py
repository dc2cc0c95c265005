"""The rootfs's directories, reached by descriptor: never through a symlink.

    split_name(member.name)   -> (parent, base), normalised; Refused for '..' or absolute
    dirs = RootDirs(root_fd, before_mkdir)
    dirs.dir_fd(parent)       -> an open fd of rootfs/parent, missing directories made

Confinement, for the layer applier (minict.apply): every parent directory
is reached one component at a time with `openat(..., O_NOFOLLOW |
O_DIRECTORY)` from the rootfs's own descriptor, so no path is ever resolved
through a symlink, inside the rootfs or out of it; a symlink or a file on
the way is refused (minict.tar.Refused), never followed.  RootDirs keeps
the most recently used descriptors open (a layer lists a directory's
members together), at most _DIR_CACHE_MAX of them.  One directory below
another is opened by minict.fsutil.open_dir_at.
"""

import errno
import os
import stat

from minict.bundle.tar import Refused

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE_MAX = 256  # open directory descriptors kept per layer (the soft RLIMIT_NOFILE is 1024)


def split_name(name: bytes, what: str = "name") -> tuple[bytes, bytes]:
    """Return (parent, base) of a member name, normalised; raise Refused if unsafe.

    Parent is b"" for the top level; base is b"" for the root itself.
    """
    if name.startswith(b"/"):
        if all(p in (b"", b".") for p in name.split(b"/")):
            return b"", b""  # the root spelled absolutely: `umoci insert SRC /` writes "/"
        raise Refused(f"absolute {what}")
    if name.startswith(b"./"):
        name = name[2:]
    name = name.rstrip(b"/")
    if b"//" in name or b"./" in name or name.endswith(b".") or b"/." in name:
        parts = [p for p in name.split(b"/") if p and p != b"."]
        if b".." in parts:
            raise Refused(f"'..' in {what}")
        name = b"/".join(parts)
    parent, _, base = name.rpartition(b"/")
    return parent, base


class RootDirs:
    """Open directories of one rootfs by path, most recently used last.

    `before_mkdir(parent, parent_fd)` is called before a missing directory
    is created below `parent` (the applier keeps the parent's times).
    """

    def __init__(self, root_fd: int, before_mkdir):
        self.root_fd = root_fd
        self._before_mkdir = before_mkdir
        self._fds: dict[bytes, int] = {}  # resolved path -> open fd, in LRU order

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def cached(self, path: bytes) -> int | None:
        """Return the open fd of `path` if there is one, without any lookup."""
        return self._fds.get(path)

    def dir_fd(self, path: bytes, create: bool = True) -> int | None:
        """Return an fd of directory `path` (b"" is the root), resolved without symlinks.

        Missing directories are created (0755, root) when `create`, else None
        is returned.  Raise Refused for a symlink or non-directory on the way.
        """
        if not path:
            return self.root_fd
        fd = self._fds.pop(path, None)
        if fd is not None:
            self._fds[path] = fd  # most recently used last
            return fd
        # Walk down from the deepest directory already open (a loop, not
        # recursion: hostile layers nest deeper than Python recurses).
        parts = path.split(b"/")
        known = len(parts) - 1
        while known and (fd := self._fds.get(b"/".join(parts[:known]))) is None:
            known -= 1
        if not known:
            fd = self.root_fd
        for depth in range(known + 1, len(parts) + 1):
            fd = self._open_child(fd, parts[depth - 1], b"/".join(parts[:depth]), create)
            if fd is None:
                return None
        return fd

    def _open_child(self, parent_fd: int, base: bytes, path: bytes, create: bool) -> int | None:
        try:
            fd = os.open(base, _O_DIR, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                return None
            self._before_mkdir(path.rpartition(b"/")[0], parent_fd)
            os.mkdir(base, 0o755, dir_fd=parent_fd)
            fd = os.open(base, _O_DIR, dir_fd=parent_fd)
            os.fchmod(fd, 0o755)  # not the umask's choice
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
            if not create and not stat.S_ISLNK(st.st_mode):
                return None  # a file: nothing below it to find
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise Refused(f"its parent {path.decode(errors='replace')!r} is {what}") from None
        self.remember(path, fd)
        return fd

    def remember(self, path: bytes, fd: int) -> None:
        """Keep `fd` as directory `path`'s (closing an older one), the oldest beyond _DIR_CACHE_MAX closed."""
        old = self._fds.pop(path, None)
        if old is not None:
            os.close(old)
        self._fds[path] = fd
        if len(self._fds) > _DIR_CACHE_MAX:
            oldest = next(iter(self._fds))
            os.close(self._fds.pop(oldest))

    def forget(self, path: bytes) -> None:
        """Drop cached fds of `path` and below: it is being removed or replaced."""
        below = path + b"/"
        for p in [p for p in self._fds if p == path or p.startswith(below)]:
            os.close(self._fds.pop(p))
