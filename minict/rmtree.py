"""The one recursive delete: a tree a hostile container or layer made, at any depth.

    remove_tree(path)              a bundle, a half-made bundle, a layout's .partial/
    remove_at(dir_fd, name)        the same below an open directory (unpack's whiteouts)

What it guarantees, whatever the tree holds:

- It never follows a symlink.  Each directory is opened by one name
  relative to its parent's descriptor with O_NOFOLLOW | O_DIRECTORY; a
  symlink is unlinked, never entered.  No directory is ever reached again
  by a path from an ancestor, so one renamed, or replaced by a symlink,
  while the removal runs cannot send it elsewhere.
- It stays on the mount it started on (`rm -rf --one-file-system`, and
  stricter): every directory it opens must have the top's st_dev and mount
  id (statx stx_mnt_id, which also tells apart a bind mount of the same file
  system, where st_dev cannot).  Anything else raises OSError EXDEV before
  a single entry below it is touched.  remove_tree also refuses up front
  when /proc/self/mountinfo lists a mount at or below the path.
- Any depth, a bounded number of descriptors: at most `DEPTH_MAX`
  directories are open at once, however deep the tree (a container can
  nest directories far past PATH_MAX with `mkdir d; cd d` in a loop).  A
  directory met deeper than that is moved (renameat, within the tree) up
  into the top directory under a fresh name and removed from there later:
  the tree gets shallower instead of the descriptor table fuller.  No
  recursion either: the walk is a loop over an explicit stack.
- Wide directories cost linear time: subdirectory names are read in
  batches of `BATCH`, and a directory is read again only once its batch is
  done (what was removed is no longer listed).
"""

import errno
import os
import stat
from pathlib import Path

from minict import linux
from minict.errors import MinictError

DEPTH_MAX = 32  # directories open at once (with the top); RLIMIT_NOFILE is often 1024, or 256
BATCH = 1024  # subdirectory names remembered per open directory
MOVED_PREFIX = ".minict-rm-"  # deep directories moved up into the top directory

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path) -> None:
    """Delete `path` and everything below it; a missing path is fine.

    Raise MinictError naming the path (and the entry) if something cannot
    be removed, or if a mount point is at or below it (nothing is deleted then).
    """
    path = Path(os.path.abspath(path))
    mounted = _mounts_at_or_below(path)
    if mounted:
        raise MinictError(f"cannot remove {path}: {mounted[0]} is still mounted")
    try:
        parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_at(parent_fd, path.name)
    except OSError as err:
        raise MinictError(f"cannot remove {path}: {err.strerror or err}"
                          + (f" ({os.fsdecode(err.filename)})" if err.filename else "")) from None
    finally:
        os.close(parent_fd)


def _mounts_at_or_below(path: Path) -> list[str]:
    base = os.path.realpath(path) if os.path.lexists(path) else str(path)
    try:
        return linux.mounts_below(base)
    except OSError:
        return []  # no /proc: the per-directory mount checks still hold


def remove_at(dir_fd: int, name, dev: int | None = None) -> None:
    """Remove `name` under `dir_fd` and, if it is a directory, everything below it.

    Stays on `dir_fd`'s mount (and on device `dev`, when given); a missing
    `name` is fine.  Raise OSError (EXDEV for another mount).
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fence = _Fence(dir_fd, dev)
    top = fence.open(dir_fd, name)
    # One frame per open directory: [fd, its name in the parent, subdirectories to remove].
    stack = [[top, name, []]]
    moved = 0
    try:
        while stack:
            fd, dir_name, todo = stack[-1]
            if not todo:
                found = _scan(fd)
                if found is None:  # empty: done with it
                    stack.pop()
                    os.close(fd)
                    os.rmdir(dir_name, dir_fd=stack[-1][0] if stack else dir_fd)
                    continue
                todo += found  # none if it held only files: it is read again
                if not todo:
                    continue
            child = todo.pop()
            if len(stack) >= DEPTH_MAX:
                moved = _move_up(fd, child, top, moved)
                continue
            try:
                child_fd = fence.open(fd, child)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                _unlink(fd, child)  # no longer a directory: replaced since it was listed
                continue
            stack.append([child_fd, child, []])
    finally:
        for frame in stack:
            os.close(frame[0])


def _scan(fd: int) -> list[str] | None:
    """Unlink the non-directories of `fd`; return up to BATCH subdirectory names.

    Return None if the directory had no entries at all.
    """
    subdirs = []
    anything = False
    with os.scandir(fd) as entries:
        for entry in entries:
            anything = True
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not is_dir and _unlink(fd, entry.name):
                continue
            subdirs.append(entry.name)
            if len(subdirs) >= BATCH:
                break
    return subdirs if anything else None


def _unlink(fd: int, name: str) -> bool:
    """Unlink non-directory `name`; return False if it is (now) a directory."""
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        return False
    return True


def _move_up(fd: int, name: str, top: int, moved: int) -> int:
    """Rename `name` (under `fd`) into the top directory; return the last name number used.

    rename(2) never follows a symlink and never crosses a mount (EXDEV, or
    EBUSY for a mount point): whatever `name` is now, it stays in the tree.
    """
    while True:
        moved += 1
        target = f"{MOVED_PREFIX}{moved}"
        try:
            os.stat(target, dir_fd=top, follow_symlinks=False)
            continue  # the tree has this name already (it may have been made by anyone)
        except FileNotFoundError:
            pass
        try:
            os.rename(name, target, src_dir_fd=fd, dst_dir_fd=top)
        except FileNotFoundError:
            return moved
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                continue  # the target appeared meanwhile: take the next name
            raise
        return moved


class _Fence:
    """The mount a removal must stay on: the device and mount id of its starting directory."""

    def __init__(self, dir_fd: int, dev: int | None):
        self.dev = os.fstat(dir_fd).st_dev if dev is None else dev
        self.mount = linux.mount_id(dir_fd)

    def open(self, parent_fd: int, name) -> int:
        """Open directory `name` under `parent_fd`, not following a symlink, on this mount only."""
        fd = os.open(name, _O_DIR, dir_fd=parent_fd)
        try:
            if os.fstat(fd).st_dev != self.dev or (
                    self.mount is not None and linux.mount_id(fd) != self.mount):
                raise OSError(errno.EXDEV, "is a mount point", name)
        except BaseException:
            os.close(fd)
            raise
        return fd
