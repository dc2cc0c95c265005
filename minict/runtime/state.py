"""What a container's directory says about it: state.json, its lock, and whether it runs.

    containers/<name>/state.json    {"status": "created"|"running"|"exited", "pid", "exitStatus",
                                     "autoRemove" (run --rm), "owner" (minict's pid),
                                     "startTime" (the init's, /proc/<pid>/stat field 22)}
    containers/.<name>.lock         held (flock) by the minict that creates, runs or
                                    removes it; deleted whenever the container is not there

The lock is the truth about "running": the minict that holds it is the
parent of the container's init, and that init dies with it (PDEATHSIG), so a
free lock means nothing runs, whatever state.json says after a crash.
state.json tells the rest: the pid while running, the status after.
"""

import fcntl
import os
import time

from minict import fsutil, store


def is_running(name: str) -> bool:
    """Return whether a minict holds container `name`'s lock (creating, running or removing it)."""
    lock = take_lock(name, wait=False, probe=True)
    if lock is None:
        return True
    release_lock(name, lock)
    return False


def running_pid(path) -> int | None:
    """Return the host pid of the bundle's init if state.json says it runs and it does.

    Unlike a look at the lock, this never gets in the way of a concurrent
    `start`; the pid counts only while its parent is the minict that wrote it.
    """
    state = read_state(path)
    pid = state.get("pid")
    if state.get("status") != "running" or not isinstance(pid, int):
        return None
    return pid if parent_pid(pid) == state.get("owner") else None


def is_complete(path) -> bool:
    """Return whether the bundle at `path` was fully built (bundle.is_complete)."""
    return os.path.isfile(store.bundle_file(path, store.COMPLETE_MARK))


def read_state(path) -> dict:
    """Return the bundle's state.json, or {} if it has none or it is unreadable."""
    return fsutil.read_json(store.bundle_file(path, store.STATE_NAME), {})


def bundle_identity(path) -> tuple:
    """Return what tells this bundle directory from one made later at the same path."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino


def record(path, identity: tuple, state: dict) -> bool:
    """Write `state` if the bundle `bundle_identity` named is still there; return whether it was.

    `rm --force` may have removed it while this minict was stopped; then
    nothing may be written, least of all a state.json into a new directory.
    """
    try:
        if bundle_identity(path) != identity:
            return False
        write_state(path, state)
    except FileNotFoundError:  # renamed away by rm (_remove_unowned) meanwhile
        return False
    return True


def write_state(path, state: dict) -> None:
    # Replaced by rename, so a reader never sees half a document; no fsync:
    # after a crash the lock, not this file, says whether anything runs.
    if "autoRemove" not in state and read_state(path).get("autoRemove"):
        state = {**state, "autoRemove": True}  # run --rm's choice lasts the container's life
    fsutil.write_json_atomic(store.bundle_file(path, store.STATE_NAME), state, fsync=False)


def parent_pid(pid: int, proc_fd: int | None = None) -> int | None:
    """Return the parent pid of `pid` (or of the /proc/<pid> `proc_fd`), or None if it is gone."""
    try:
        fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd) if proc_fd is not None \
            else os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def lock_path(name: str):
    return store.container_lock(name)


# A probe of a lock (is_running(), rm --force waiting for a minict to let go)
# holds it for microseconds; a command that finds a lock taken looks again
# for this long before it believes a minict really holds it.
_PROBE_GRACE = (0.005, 0.02, 0.05)


def take_lock(name: str, *, wait: bool, probe: bool = False) -> int | None:
    """Take container `name`'s lock; return its descriptor, or None if taken and not `wait`.

    Without `wait`, a lock found taken is tried again over a few tens of
    milliseconds (unless this is itself a `probe`), so that another
    command's momentary probe is not mistaken for a running container.
    """
    path = lock_path(name)
    retries = () if probe else _PROBE_GRACE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
            for pause in retries:
                try:
                    fcntl.flock(fd, flags)
                    break
                except BlockingIOError:
                    time.sleep(pause)
            else:
                fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        # `rm` unlinks the file of a removed container while holding it; a
        # lock on an unlinked file guards nothing, so lock the new one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def release_lock(name: str, fd: int) -> None:
    """Release container `name`'s lock; delete its file if the container is gone."""
    try:
        if not os.path.lexists(store.container_dir(name)):
            # Unlinked while held: whoever waits on this file sees the unlink
            # and locks a new file instead (see take_lock).
            os.unlink(lock_path(name))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
