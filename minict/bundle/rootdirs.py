"""The rootfs's directories, reached by descriptor, symlinks followed inside the rootfs.

    split_name(member.name)   -> (parent, base), normalised; Refused for '..' or absolute
    dirs = RootDirs(root_fd, before_mkdir)
    dirs.resolve(parent)      -> (fd, resolved path) of rootfs/parent, missing directories made
    dirs.dir_fd(path)         -> an open fd of rootfs/path, which must have no symlink on the way

Confinement, for the layer applier (minict.apply): a member's parent
directory is resolved by minict.inroot as if the rootfs were `/` (what umoci
does): `bin -> usr/bin` makes `bin/tool` land in usr/bin, an absolute link
starts again at the rootfs, `..` never climbs above it.  Every step is an
`openat(..., O_NOFOLLOW)` below a descriptor, so nothing is resolved on
the host.  The applier keeps paths as resolved ("usr/bin", never "bin"), so
a directory has one name here; dir_fd takes such a resolved path and
refuses a symlink on the way (minict.tar.Refused).  RootDirs keeps the most
recently used descriptors open by resolved path (a layer lists a
directory's members together), at most _DIR_CACHE_MAX of them.  One
directory below another is opened by minict.fsutil.open_dir_at.
"""

import errno
import os
import stat

from minict import inroot
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

    def resolve(self, path: bytes, create: bool = True) -> tuple[int, bytes] | None:
        """Return (fd, resolved path) of directory `path` (b"" is the root), resolved in root.

        Missing directories are created (0755, root) when `create`, else None
        is returned; so it is for a non-directory on the way when not
        `create` (nothing below a file to find), and Refused when `create`.
        More than inroot.MAX_LINKS symlinks is OSError ELOOP.
        """
        if not path:
            return self.root_fd, b""
        fd = self._fds.pop(path, None)
        if fd is not None:
            self._fds[path] = fd  # most recently used last
            return fd, path
        # Cached paths are resolved ones, real directories all the way down:
        # walk on from the deepest one the path starts with.
        parts = path.split(b"/")
        known = len(parts) - 1
        while known and b"/".join(parts[:known]) not in self._fds:
            known -= 1
        start = (self._fds[b"/".join(parts[:known])] if known else self.root_fd, parts[:known])
        try:
            found, real = inroot.walk(self.root_fd, b"/".join(parts[known:]), start=start,
                                      create=inroot.DIR if create else None,
                                      before_mkdir=self._before_mkdir)
        except (FileNotFoundError, NotADirectoryError) as err:
            if not create:
                return None
            where = err.filename if isinstance(err, NotADirectoryError) and err.filename else path
            raise Refused(f"its parent {os.fsdecode(where)!r} is not a directory") from None
        try:
            if not stat.S_ISDIR(os.fstat(found).st_mode):
                if not create:
                    return None
                raise Refused(f"its parent {path.decode(errors='replace')!r} is not a directory")
            resolved = b"/".join(real)
            if resolved in self._fds:  # a caller may hold that fd: keep it
                return self.resolve(resolved, create)
            # O_PATH is not enough to list, chown or utime it: open it for reading.
            fd = os.open(".", _O_DIR, dir_fd=found)
        finally:
            os.close(found)
        self.remember(resolved, fd)
        return fd, resolved

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
