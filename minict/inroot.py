"""Paths inside a rootfs, resolved as if the rootfs were `/`.

    found = resolve(root_fd, "/etc/resolv.conf", create=FILE)  # Found(parent_fd, name, fd)
    fd = open_in_root(root_fd, "etc/passwd", os.O_RDONLY)      # an existing path, opened
    fd = open_dir(root_fd, "/srv/app", create=True)             # a working directory
    dir_fd, real = walk(root_fd, b"bin", create=DIR)            # b"usr/bin" if bin -> usr/bin

What umoci, containerd and runc do with the symlinks real images carry
(`bin -> usr/bin`, `var/run -> ../run`, `lib -> /usr/lib`): a symlink is
followed, but an absolute target starts again at the rootfs and `..` never
climbs above it, so no path ever leads out of the rootfs, whatever the
rootfs holds.  Everything here works on descriptors: each component is
opened with O_PATH | O_NOFOLLOW below the descriptor of its parent, a
symlink is read from its own descriptor (readlinkat), so a symlink swapped
in during the walk is either read or not, never followed on the host.

Two ways, one result:
- openat2(2) with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (Linux 5.6), the
  kernel's own, for opening what exists (open_in_root, resolve);
- walk(), component by component, for kernels without openat2, for what
  must be created on the way (the applier's parent directories, a mount's
  target), and wherever the path as resolved is needed (the applier tracks
  what a layer wrote by it, as umoci does).  It counts symlinks like the
  kernel: more than MAX_LINKS in one resolution is ELOOP (and so is a loop).
  `..` takes the parent of the directory reached so far, opened again from
  the root along its resolved path without following anything.  A magic
  link of /proc is read as its text and resolved inside the root too.

The last component is followed or not as asked: the applier never follows
it (a member replaces a symlink, as tar and umoci do), mounts do (a bind on
/etc/resolv.conf -> ../run/... lands on the target, as runc's does).
"""

import collections
import errno
import os
import stat

from minict import linux

MAX_LINKS = 40  # the kernel's MAXSYMLINKS: symlinks followed in one resolution
DIR, FILE = "dir", "file"  # what `create` makes of a missing last component
_O_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
_OPENAT2_TRIES = 4

# None until the first call finds out; tests set it False to force walk().
use_openat2: bool | None = None


# A namedtuple, not typing.NamedTuple: importing typing costs `start` ~2 ms.
class Found(collections.namedtuple("Found", "parent_fd name fd")):
    """A resolved path: its parent directory, its name there (bytes), and itself (O_PATH).

    `name` is the real last component (after following a last symlink):
    looking it up again in `parent_fd` crosses a mount made on `fd`.
    """

    __slots__ = ()

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.parent_fd)


def components(path) -> list[bytes]:
    """Return the names of `path` (bytes or str), without empty and "." ones."""
    return [p for p in os.fsencode(path).split(b"/") if p and p != b"."]


def _loop(path) -> OSError:
    return OSError(errno.ELOOP, f"more than {MAX_LINKS} symbolic links (or a loop) in "
                   f"{os.fsdecode(path)!r}")


def _open_real(root_fd: int, real: list[bytes]) -> int:
    """Open the directory at the resolved path `real` again, following nothing."""
    fd = os.dup(root_fd)
    try:
        for name in real:
            child = os.open(name, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create(dir_fd: int, real: list[bytes], name: bytes, kind: str, before_mkdir) -> None:
    if kind == DIR:
        if before_mkdir is not None:
            before_mkdir(b"/".join(real), dir_fd)
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o755)  # not the umask's choice
        finally:
            os.close(fd)
    else:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dir_fd))


def walk(root_fd: int, path, *, start=None, follow_last=True, create=None,
         before_mkdir=None) -> tuple[int, list[bytes]]:
    """Resolve `path` below `root_fd` in root, component by component; return (fd, real).

    `fd` is an O_PATH descriptor of what the path names, `real` its resolved
    path (names of real directories from the root, then the last name).
    `start` = (fd, real) begins below a directory already resolved.  A
    missing component is made a directory when `create` is given (the last
    one a DIR or a FILE as `create` says), `before_mkdir(parent_path,
    parent_fd)` called before each mkdir; otherwise it is FileNotFoundError.
    A non-directory on the way is NotADirectoryError; too many symlinks, ELOOP.
    """
    start_fd, real = start if start is not None else (root_fd, [])
    real = list(real)
    todo = components(path)[::-1]  # a stack: the next name last
    if os.fsencode(path).startswith(b"/"):
        start_fd, real = root_fd, []
    fd = os.dup(start_fd)
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == b"..":
                if real:  # at the root, `..` is the root
                    real.pop()
                    os.close(fd)
                    fd = _open_real(root_fd, real)
                continue
            last = not todo
            try:
                child = os.open(name, _O_STEP, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                _create(fd, real, name, create if last else DIR, before_mkdir)
                child = os.open(name, _O_STEP, dir_fd=fd)
            mode = os.fstat(child).st_mode
            if stat.S_ISLNK(mode) and (follow_last or not last):
                target = os.readlink(b"", dir_fd=child)
                os.close(child)
                links += 1
                if links > MAX_LINKS:
                    raise _loop(path)
                if not target:
                    raise FileNotFoundError(errno.ENOENT, "an empty symbolic link", path)
                if target.startswith(b"/"):
                    os.close(fd)
                    fd, real = os.dup(root_fd), []
                todo.extend(components(target)[::-1])
                continue
            if not last and not stat.S_ISDIR(mode):
                os.close(child)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                         os.fsdecode(b"/".join(real + [name])))
            os.close(fd)
            fd = child
            real.append(name)
    except BaseException:
        os.close(fd)
        raise
    return fd, real


def _openat2(root_fd: int, path, flags: int) -> int | None:
    """openat2 in root; None when this kernel has none (remembered for next time).

    The kernel answers EAGAIN when a rename or mount raced with a `..`: try
    again, and after a few, let walk() do it.
    """
    global use_openat2
    if use_openat2 is False:
        return None
    relative = b"/".join(components(path)) or b"."
    for _ in range(_OPENAT2_TRIES):
        try:
            fd = linux.openat2(root_fd, relative, flags | os.O_CLOEXEC, 0, _IN_ROOT)
        except OSError as err:
            if err.errno == errno.EAGAIN:
                continue
            if err.errno not in linux.OPENAT2_MISSING:
                raise
            use_openat2 = False
            return None
        use_openat2 = True
        return fd
    return None


def open_in_root(root_fd: int, path, flags: int = os.O_PATH) -> int:
    """Open the existing `path` in root with `flags`, the last symlink followed.

    openat2 when the kernel has it; else walk() and open what it found
    again with `flags` below its parent, checked to be the same inode.
    """
    fd = _openat2(root_fd, path, flags)
    if fd is not None:
        return fd
    fd, real = walk(root_fd, path)
    if flags & os.O_PATH:
        return fd
    try:
        # Opened again for I/O below its parent: it must be the inode the walk found.
        parent = _open_real(root_fd, real[:-1])
        try:
            opened = os.open(real[-1] if real else b".", flags | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=parent)
        finally:
            os.close(parent)
        if _inode(os.fstat(opened)) != _inode(os.fstat(fd)):
            os.close(opened)
            raise OSError(errno.EAGAIN, "the path changed while it was opened", path)
        return opened
    finally:
        os.close(fd)


def _inode(st) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def resolve(root_fd: int, path, *, create=None, follow_last=True) -> Found:
    """Resolve `path` in root; return its parent, real name and O_PATH descriptor.

    Missing directories on the way, and the last component (a DIR or a
    FILE), are created when `create` says which.  The root itself has no
    parent: resolving to it is IsADirectoryError.
    """
    names = components(path)
    if names and names[-1] != b"..":
        # The common case, no symlink at the end: the kernel resolves the parent.
        parent = _openat2_or_none(root_fd, b"/".join(names[:-1]))
        if parent is not None:
            try:
                fd = os.open(names[-1], _O_STEP, dir_fd=parent)
                if not (follow_last and stat.S_ISLNK(os.fstat(fd).st_mode)):
                    return Found(parent, names[-1], fd)
                os.close(fd)
            except FileNotFoundError:
                if create is None:
                    os.close(parent)
                    raise
            os.close(parent)
    fd, real = walk(root_fd, path, create=create, follow_last=follow_last)
    try:
        if not real:
            raise IsADirectoryError(errno.EISDIR, "the path is the root itself", path)
        parent = _open_real(root_fd, real[:-1])
    except BaseException:
        os.close(fd)
        raise
    return Found(parent, real[-1], fd)


def _openat2_or_none(root_fd: int, dir_path: bytes) -> int | None:
    """The directory `dir_path` by openat2, or None: no openat2, or missing (walk creates)."""
    try:
        return _openat2(root_fd, dir_path, _O_DIR & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return None


def open_dir(root_fd: int, path, *, create: bool = False) -> int:
    """Return an O_PATH descriptor of directory `path` in root, made (with its parents) if missing.

    NotADirectoryError if it is something else.
    """
    try:
        return open_in_root(root_fd, path, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        if not create:
            raise
    fd, _ = walk(root_fd, path, create=DIR)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return fd
