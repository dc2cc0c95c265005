"""Compare two unpacked root file systems, so a fast unpack is also a right one."""

import os
import stat
from pathlib import Path


def entries(root: Path) -> dict[str, tuple]:
    """Return {relative path: (mode, uid, gid, size, link target, rdev, mtime)} under `root`.

    Directory sizes are left out: they depend on the file system.  Directory
    mtimes count: minict restores those a layer changes without listing them,
    as umoci does, so both trees must agree on them too.
    """
    found = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            is_dir = stat.S_ISDIR(info.st_mode)
            found[os.path.relpath(path, root)] = (
                info.st_mode, info.st_uid, info.st_gid,
                None if is_dir else info.st_size,
                os.readlink(path) if stat.S_ISLNK(info.st_mode) else None,
                info.st_rdev,
                int(info.st_mtime),
            )
    return found


def differences(left: Path, right: Path) -> list[str]:
    """Return the relative paths whose entry differs between the trees, sorted."""
    a, b = entries(left), entries(right)
    return sorted(path for path in a.keys() | b.keys() if a.get(path) != b.get(path))
