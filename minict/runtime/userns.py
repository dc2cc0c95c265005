"""Which user namespace a container gets (`run --userns`), and the host ids behind it.

    identity  (default) a new user namespace mapping all 2**32-1 ids onto
              themselves: container root is host uid 0 for file access; its
              capabilities count only inside its own namespaces.
    auto      a new user namespace mapping container ids 0..65535 onto 65,536
              host ids of minict's subordinate ranges (subids.py) that no other
              container holds: container root is an unprivileged host user.
              The rootfs is shown through an idmapped mount (mount_setattr(2),
              MOUNT_ATTR_IDMAP), so files keep the image's owners on disk.
    host      no user namespace of its own: container root is host root,
              limited only by its capabilities (docker's default).

An `auto` container's range lives as long as the container, not only while
it runs, as podman reserves it: config.json's linux.uidMappings/gidMappings
hold it so `start` (and runc) use the same ids again, and anything the
container wrote through a mount that is not idmapped (a tmpfs it kept, a
volume one day) stays owned by ids no other container can be given.

    $MINICT_USERNS_DIR/allocations.json   (default /var/lib/minict-userns)
        {"allocations": [{"minictDir", "name", "uid", "gid", "size"}, ...]}
    $MINICT_USERNS_DIR/allocations.lock   flock'ed while the record is read or changed

The record is host-wide, outside any $MINICT_DIR, so containers of two
minict directories never share ids, and on disk so it outlives a reboot.  A
range is freed when its container is removed (`rm`, `run --rm`, `prune`) or,
when allocating, if its container no longer exists and nobody holds its lock.
"""

import errno
import fcntl
import os

from minict import fsutil, linux, store
from minict.errors import LaunchError, MinictError
from minict.runtime import subids

SIZE = 65536  # container ids 0..65535: every id an image's files normally use
DEFAULT_RECORD_DIR = "/var/lib/minict-userns"
_IDMAP_KERNEL = (5, 12)


def record_dir() -> str:
    return os.environ.get("MINICT_USERNS_DIR") or DEFAULT_RECORD_DIR


# -- the idmapped rootfs (the parent, host root) ---------------------------------------

def idmapped_rootfs(rootfs: str, pid: int) -> int:
    """Return a detached mount of `rootfs` idmapped through `pid`'s user namespace.

    Idmapping needs CAP_SYS_ADMIN over the file system's own (initial) user
    namespace, which the container has given up: so minict makes the mount
    here and the container's init attaches it (move_mount) as its root,
    as runc 1.2 passes idmapped mount descriptors to its init.  Raise LaunchError.
    """
    try:
        st = os.lstat(rootfs)
    except OSError as err:
        raise LaunchError(f"the rootfs {rootfs}: {err.strerror}") from None
    if not (st.st_mode & 0o170000 == 0o040000):
        raise LaunchError(f"the rootfs {rootfs} is not a directory")
    userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    tree = None
    try:
        tree = linux.open_tree_clone(rootfs)
        linux.mount_setattr("", linux.MOUNT_ATTR_IDMAP, dir_fd=tree, userns_fd=userns_fd)
    except OSError as err:
        if tree is not None:
            os.close(tree)
        if err.errno == errno.ENOSYS:
            raise LaunchError("this kernel has no idmapped mounts, which --userns auto needs "
                              "(Linux 5.12 or later)") from None
        raise LaunchError(f"cannot idmap the rootfs {rootfs} (its file system may not "
                          f"support idmapped mounts): {err.strerror}") from None
    finally:
        os.close(userns_fd)
    return tree


def check_kernel(release: str | None = None) -> None:
    """Raise MinictError if the running kernel is older than idmapped mounts (5.12)."""
    release = release or os.uname().release
    try:
        version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return  # an odd release string: let the mount itself tell
    if version < _IDMAP_KERNEL:
        raise MinictError(f"--userns auto needs idmapped mounts, which Linux {release} "
                          "lacks (5.12 or later)")


# -- the host-wide allocation record -------------------------------------------------

def reserve(minict_dir, name: str) -> tuple[int, int, int]:
    """Allocate a free (uid, gid, SIZE) range for container `name` of `minict_dir` and record it.

    Raise MinictError when minict has no subordinate ids, or none are left.
    """
    check_kernel()
    uid_file, gid_file = subids.subuid_path(), subids.subgid_path()
    uid_ranges, gid_ranges = subids.ranges_of(uid_file), subids.ranges_of(gid_file)
    for path, ranges in ((uid_file, uid_ranges), (gid_file, gid_ranges)):
        if not ranges:
            raise MinictError(f"--userns auto: {path} grants no ids to the user "
                              f"'{subids.USER}'; run 'make install' or add a line such as "
                              f"'{subids.USER}:{subids.PREFERRED_FIRST}:{subids.INSTALL_COUNT}' "
                              "(subuid(5))")
        if any(first == 0 for first, _ in ranges):
            raise MinictError(f"--userns auto: {path} grants {subids.USER} the id 0 (host "
                              "root); refusing a range that would make container root host root")
    key = _key(minict_dir, name)
    with _Record() as record:
        entries = [e for e in record.entries if not _stale(e) and _key_of(e) != key]
        uid = _first_free(uid_ranges, [(e["uid"], e["size"]) for e in entries])
        gid = _first_free(gid_ranges, [(e["gid"], e["size"]) for e in entries])
        if uid is None or gid is None:
            path = uid_file if uid is None else gid_file
            raise MinictError(f"--userns auto: every range of {SIZE} ids that {path} grants "
                              f"{subids.USER} is taken ({len(entries)} containers hold one); "
                              "remove containers or grant more ids")
        entries.append({"minictDir": key[0], "name": name, "uid": uid, "gid": gid,
                        "size": SIZE})
        record.save(entries)
    return uid, gid, SIZE


def confirm(minict_dir, name: str, config: dict) -> None:
    """Check that the record still gives `config`'s ids to container `name`; re-record them.

    A record lost (deleted by hand, another MINICT_USERNS_DIR) must not let
    two containers run with the same host ids.  Raise LaunchError if another
    container holds them now.
    """
    linux_config = config.get("linux") or {}
    try:
        (uids,), (gids,) = linux_config["uidMappings"], linux_config["gidMappings"]
        mine = {"uid": uids["hostID"], "gid": gids["hostID"], "size": uids["size"]}
    except (KeyError, TypeError, ValueError):
        raise LaunchError("config.json asks for --userns auto without one uid and one gid "
                          "mapping") from None
    key = _key(minict_dir, name)
    with _Record() as record:
        others = [e for e in record.entries if _key_of(e) != key]
        for other in others:
            if _overlaps(other, mine) and not _stale(other):
                raise LaunchError(f"the host ids of {name} ({mine['uid']}...) are held by "
                                  f"container {other['name']} of {other['minictDir']} now; "
                                  "remove one of them")
        entry = {"minictDir": key[0], "name": name, **mine}
        if entry not in record.entries:
            record.save(others + [entry])


def _overlaps(a: dict, b: dict) -> bool:
    return any(a[k] < b[k] + b["size"] and b[k] < a[k] + a["size"] for k in ("uid", "gid"))


def release(minict_dir, name: str) -> None:
    """Free the range of container `name` of `minict_dir`, if it has one."""
    if not os.path.exists(os.path.join(record_dir(), _RECORD)):
        return  # no container was ever given a range: spare `rm` the lock
    key = _key(minict_dir, name)
    with _Record() as record:
        kept = [e for e in record.entries if _key_of(e) != key]
        if len(kept) != len(record.entries):
            record.save(kept)


def holders(minict_dir=None) -> list[dict]:
    """Return the recorded allocations (of `minict_dir` only, if given)."""
    with _Record() as record:
        entries = record.entries
    if minict_dir is not None:
        entries = [e for e in entries if e.get("minictDir") == _key(minict_dir, "")[0]]
    return entries


_RECORD = "allocations.json"
_LOCK = "allocations.lock"


class _Record:
    """The record, read under its lock: `with _Record() as r: r.entries; r.save(new)`."""

    def __enter__(self):
        directory = record_dir()
        try:
            os.makedirs(directory, 0o700, exist_ok=True)
            self.lock = os.open(os.path.join(directory, _LOCK),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise MinictError(f"cannot open the user namespace record in {directory}: "
                              f"{err.strerror}") from None
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.path = os.path.join(directory, _RECORD)
        try:
            document = fsutil.load_json(self.path)
            self.entries = [e for e in document.get("allocations", []) if _valid(e)]
        except FileNotFoundError:
            self.entries = []
        except (OSError, ValueError, AttributeError) as err:
            os.close(self.lock)
            raise MinictError(f"cannot read {self.path}: {err}") from None
        return self

    def save(self, entries: list[dict]) -> None:
        # Synced: a range handed out must not be forgotten by a crash.
        fsutil.write_json_atomic(self.path, {"allocations": entries}, fsync=True, indent="\t")
        self.entries = entries

    def __exit__(self, *exc):
        os.close(self.lock)


def _valid(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("minictDir"), str) \
        and isinstance(entry.get("name"), str) \
        and all(isinstance(entry.get(k), int) for k in ("uid", "gid", "size"))


def _key(minict_dir, name: str) -> tuple[str, str]:
    return os.path.realpath(minict_dir), name


def _key_of(entry: dict) -> tuple[str, str]:
    return entry["minictDir"], entry["name"]


def _first_free(granted, taken) -> int | None:
    """Return the first id of a SIZE-block inside `granted` that overlaps nothing `taken`."""
    for first, count in granted:
        for start in range(first, first + count - SIZE + 1, SIZE):
            if all(start + SIZE <= t or t + size <= start for t, size in taken):
                return start
    return None


def _stale(entry: dict) -> bool:
    """Return whether `entry`'s container is gone: no bundle, no half-made one, no lock held.

    `run` takes the container's lock before it reserves and keeps it until
    the bundle exists, so a range being set up is never taken for stale.
    """
    base, name = entry["minictDir"], entry["name"]
    if not store.CONTAINER_NAME.match(name):
        return False  # no minict wrote this name: never free what cannot be checked
    if any(os.path.lexists(p) for p in (store.container_dir(name, base),
                                        store.partial_bundle_dir(name, base))):
        return False
    try:
        fd = os.open(store.container_lock(name, base),
                     os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
