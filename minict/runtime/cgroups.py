"""Control groups: where the hierarchies are, and each container's cgroup in them.

    v1   <controller's mount>/minict/<key>-<name>    e.g. /sys/fs/cgroup/devices/minict/fe00-2c0a1-web
    v2   <cgroup2 mount>/minict/<key>-<name>         e.g. /sys/fs/cgroup/unified/minict/fe00-2c0a1-web

<key> names $MINICT_DIR by its device and inode numbers, in hex: two state
directories may both hold a container `web`, and each needs its own cgroup
(a second `web` must neither join nor remove the first one's, and starting
one kills whatever a stale cgroup of its name still holds).  Unlike a hash of
the path, the pair cannot collide between two existing directories, is the
same through a symlink or after a rename, and costs no hashlib import on
the start path.  Within one $MINICT_DIR the container's lock (container.py)
makes the name unique.

A Cgroup is one container's directory in each hierarchy it uses, by
controller: on v1 each controller has its own mount, on v2 they all share
the one directory.  device_cgroup.py asks for "devices"; a later resource-limits
module asks for "memory", "cpu" or "pids" the same way and writes its files
into `directory(controller)`.  Processes move themselves in with `join`
(a container's first process does, before anything of the image runs), and
`remove` deletes the directories once the container has exited.  A cgroup
left by a minict that was killed is removed by the next start (`create`) or
by `rm` (`remove_leftovers`).  One whose state directory is gone too (a
killed minict's temporary $MINICT_DIR) is swept by any later start or rm:
an empty cgroup under minict/ that is older than ORPHAN_AGE belongs to no
running container (a running one holds its PID 1; a new one is empty only
for the milliseconds between its mkdir and its first process).
"""

import errno
import os
import signal
import time
from pathlib import Path

from minict import linux, store
from minict.errors import MinictError

PARENT = "minict"
# Controllers a v1 cgroup mount may carry (cgroups(7)); its other super
# options (rw, name=..., xattr, ...) are not controllers.
V1_CONTROLLERS = frozenset({"cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer",
                            "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma",
                            "misc"})
_EMPTY_WAIT = 2.0  # seconds a removal waits for the last processes to leave
ORPHAN_AGE = 60.0  # seconds an empty cgroup under minict/ must have existed to be swept


class CgroupError(MinictError):
    """A cgroup could not be found, created, joined or removed."""


class Hierarchies:
    """The cgroup file systems mounted here: v1 controllers and the v2 tree."""

    def __init__(self, v1: dict[str, str], v2: str | None):
        self.v1 = v1  # controller -> mount point
        self.v2 = v2  # the cgroup2 mount point, or None

    def all_points(self) -> list[str]:
        """Return every mount point, each once (a leftover may be in any of them)."""
        points = list(dict.fromkeys(self.v1.values()))
        return points + ([self.v2] if self.v2 and self.v2 not in points else [])


def hierarchies() -> Hierarchies:
    """Return the cgroup mounts of this mount namespace (/proc/self/mountinfo); raise CgroupError."""
    try:
        table = linux.mount_table()
    except OSError as err:
        raise CgroupError(f"cannot read the mount table: {err.strerror}") from None
    v1, v2 = {}, None
    for mount in table:
        # A mount of a sub-tree (root other than /) is someone's bind mount,
        # not where the hierarchy starts: the first real one wins.
        if mount.root != "/":
            continue
        if mount.fstype == "cgroup":
            for option in mount.super_options.split(","):
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, mount.point)
        elif mount.fstype == "cgroup2" and v2 is None:
            v2 = mount.point
    return Hierarchies(v1, v2)


def leaf_name(name: str) -> str:
    """Return the directory name of container `name`'s cgroup: <key>-<name>; raise CgroupError."""
    try:
        st = os.stat(store.root())
    except OSError as err:
        raise CgroupError(f"cannot read {store.root()}: {err.strerror}") from None
    return f"{st.st_dev:x}-{st.st_ino:x}-{store.check_container_name(name)}"


class Cgroup:
    """Container `name`'s cgroup: one directory per controller it uses."""

    def __init__(self, name: str, directories: dict[str, Path]):
        self.name = name
        self.directories = directories  # controller -> directory (v2: all the same one)

    def directory(self, controller: str) -> Path:
        return self.directories[controller]

    def _unique(self) -> list[Path]:
        return list(dict.fromkeys(self.directories.values()))

    def create(self) -> None:
        """Make the directories, after removing a stale one left by a killed minict."""
        for path in self._unique():
            sweep_orphans(path.parent)
            if path.exists():
                _remove_directory(path)
            for attempt in range(3):
                try:
                    path.parent.mkdir(exist_ok=True)
                    path.mkdir()
                    break
                except FileNotFoundError:
                    if attempt == 2:  # a concurrent removal keeps taking the parent away
                        raise CgroupError(f"cannot create the cgroup {path}: "
                                          "its parent keeps disappearing") from None
                except OSError as err:
                    self.remove()
                    raise CgroupError(f"cannot create the cgroup {path}: {err.strerror}") from None

    def join(self) -> None:
        """Move the calling process into the cgroup; raise CgroupError.

        Only for a process with one thread (a child right after fork): on v1
        it writes 0, "the calling thread", to each hierarchy's `tasks`.  The
        kernel moves the calling thread alone without write-locking the
        global threadgroup lock (cgroup_procs_write_start: "If we migrate a
        single thread ... we can skip the global lock"), which a cgroup.procs
        write takes, waiting out an RCU grace period: 0.3 ms against 6-30 ms
        here (runc pays it: it writes cgroup.procs).  With one thread, that
        thread is the whole process.  A v2 domain cgroup has no `tasks`:
        there the process moves itself through cgroup.procs.
        """
        for path in self._unique():
            try:
                try:
                    fd = os.open(path / "tasks", os.O_WRONLY | os.O_CLOEXEC)
                except FileNotFoundError:  # cgroup v2
                    fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as err:
                raise CgroupError(f"cannot move process {os.getpid()} into the cgroup {path}: "
                                  f"{err.strerror}") from None

    def remove(self) -> None:
        """Delete the directories (the container has exited); raise CgroupError."""
        for path in self._unique():
            _remove_directory(path)


def open_cgroup(name: str, controllers: dict[str, int]) -> Cgroup:
    """Return container `name`'s cgroup for `controllers` ({controller: 1 or 2}); not created.

    Each controller is placed in its v1 hierarchy (1) or in the v2 tree (2).
    Raise CgroupError when that hierarchy is not mounted.
    """
    found = hierarchies()
    leaf = leaf_name(name)
    directories = {}
    for controller, version in controllers.items():
        if version == 1:
            point = found.v1.get(controller)
            if point is None:
                raise CgroupError(f"the cgroup v1 {controller} controller is not mounted")
        else:
            point = found.v2
            if point is None:
                raise CgroupError("no cgroup v2 hierarchy is mounted")
        directories[controller] = Path(point) / PARENT / leaf
    return Cgroup(name, directories)


def existing_cgroup(name: str) -> Cgroup | None:
    """Return the cgroup directories container `name` has now (for `exec` to join), or None."""
    leaf = leaf_name(name)
    directories = {}
    found = hierarchies()
    for controller, point in found.v1.items():
        if (Path(point) / PARENT / leaf).is_dir():
            directories[controller] = Path(point) / PARENT / leaf
    if found.v2 and (Path(found.v2) / PARENT / leaf).is_dir():
        directories["unified"] = Path(found.v2) / PARENT / leaf
    return Cgroup(name, directories) if directories else None


def remove_leftovers(name: str) -> None:
    """Remove container `name`'s cgroup from every hierarchy (it is not running); raise CgroupError.

    Orphans of other state directories are swept on the way (sweep_orphans).
    """
    cgroup = existing_cgroup(name)
    if cgroup is not None:
        cgroup.remove()
    for point in hierarchies().all_points():
        sweep_orphans(Path(point) / PARENT)


def sweep_orphans(parent: Path) -> None:
    """rmdir each empty cgroup in `parent` (a minict/ directory) older than ORPHAN_AGE.

    rmdir refuses a cgroup that has processes (EBUSY), so nothing running is
    touched; the age spares one that was just made and is about to get its
    first process.  Errors are ignored: sweeping is a courtesy, not a step.
    """
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            # The directory's time is when the cgroup was made (kernfs);
            # its control files are not directories.
            if entry.is_dir(follow_symlinks=False) and \
                    now - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_AGE:
                os.rmdir(entry.path)
        except OSError:
            pass


def _remove_directory(path: Path) -> None:
    """rmdir a container's cgroup, killing what is still in it; then its empty parent.

    Only a container that is not running (its lock held by us) comes here, so
    a process still inside is a leftover of a killed minict or one on its way
    out: it gets SIGKILL.
    """
    deadline = time.monotonic() + _EMPTY_WAIT
    while True:
        try:
            os.rmdir(path)
            break
        except FileNotFoundError:
            break
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove the cgroup {path}: {err.strerror}") from None
        _kill_members(path)
        time.sleep(0.01)
    try:
        os.rmdir(path.parent)  # minict/ itself, once no container uses it
    except OSError:
        pass  # other containers' cgroups are in it (ENOTEMPTY), or it is gone


def _kill_members(path: Path) -> None:
    try:
        # cgroup v2 (Linux 5.14) kills every member at once, new forks included.
        with open(path / "cgroup.kill", "w") as f:
            f.write("1")
        return
    except OSError:
        pass
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
