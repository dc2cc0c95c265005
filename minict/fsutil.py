"""Files written whole or not at all, JSON read back safely, directories opened without links.

Every file minict replaces (index.json, a bundle's config.json and
state.json, network files, leases, the user-namespace record, the seccomp
cache, /etc/subuid) goes through write_atomic: the bytes go to a temporary
file in the same directory, which is renamed over the name only once
written, so a reader sees the old file or the new one, never part of one,
whatever kills the writer (the rename is atomic; POSIX rename(2)).  The
temporary name is unique (two writers never share one) and hidden (a dot
name no reader of ours lists), and it is removed if the write fails.

Whether the data is fsync'd first is each caller's explicit choice: it
costs a wait for the disk, worth it where a crash must not lose what was
written (a blob before index.json names it, a user-namespace range handed
out), not for what a crash ends anyway (a bundle being built, a container's
state).  Recursive removal is minict.rmtree's.
"""

import contextlib
import errno
import json
import os

from minict import boundedjson

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path, data: bytes | str, *, fsync: bool, mode: int | None = None,
                 sync_dir: bool = False) -> None:
    """Replace `path` by `data` in one step; raise OSError (nothing is left behind then).

    `fsync`: flush the data to disk before the rename.  `mode`: the file's
    permissions (default: 0666 less the umask, as open() makes them).
    `sync_dir`: fsync the directory after the rename, so that the new name
    itself survives a crash.
    """
    if isinstance(data, str):
        data = data.encode()
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600 if mode is not None else 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mode is not None:
                os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(directory or ".")


def write_json_atomic(path, document, *, fsync: bool, indent=None, mode: int | None = None,
                      sync_dir: bool = False, sort_keys: bool = False) -> None:
    """Replace `path` by `document` as JSON and a newline (write_atomic); raise OSError."""
    text = json.dumps(document, indent=indent, sort_keys=sort_keys) + "\n"
    write_atomic(path, text, fsync=fsync, mode=mode, sync_dir=sync_dir)


def read_json(path, default=None, limit: int = boundedjson.SIZE_MAX):
    """Return the JSON object in file `path`, or `default` if it is absent, unreadable or not one.

    For files others may have written (a bundle's, the host-wide records):
    parsed by boundedjson, within `limit` bytes.
    """
    try:
        with open(path, "rb") as f:
            value = boundedjson.loads(f.read(limit + 1), limit)
    except (OSError, ValueError):
        return default
    return value if isinstance(value, dict) else default


def load_json(path, limit: int = boundedjson.SIZE_MAX):
    """Return the JSON in file `path` parsed by boundedjson; raise OSError or ValueError.

    For callers that tell an absent file (FileNotFoundError) from a broken one.
    """
    with open(path, "rb") as f:
        return boundedjson.loads(f.read(limit + 1), limit)


def fsync_dir(path) -> None:
    """Make the names just created or renamed in directory `path` durable; raise OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_dir_at(dir_fd: int, name, dev: int | None = None) -> int:
    """Open directory `name` under `dir_fd` without following a symlink; return its descriptor.

    With `dev`, refuse (OSError EXDEV) a directory on another device: a mount point.
    """
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    if dev is not None and os.fstat(fd).st_dev != dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "is a mount point of another file system", name)
    return fd
