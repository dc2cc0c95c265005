"""The container's mount table, built by its PID 1 before pivot_root.

config.json's mounts in order, the curated /dev (host device nodes bound in,
as mknod(2) is refused in a user namespace), masked and read-only paths,
then pivot_root.  Every target is resolved inside the rootfs as if it were
`/` (minict.inroot: `/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`
or `/dev/shm -> /run/shm` lead to their targets in the rootfs, made when
missing; an absolute link or `..` never leaves it), held by a descriptor and
mounted on through /proc/self/fd/N, as runc does since CVE-2021-30465: a
symlink planted in the image, or by an earlier run of the container, cannot
move a mount onto the host, nor can one swapped in after the resolution.
"""

import os
import stat

from minict import inroot, linux
from minict.bundle import devices
from minict.runtime.steps import SetupError, fail

# Device nodes bind-mounted from the host: mknod(2) is refused in a user
# namespace, and the OCI runtime spec requires these six (config-linux.md,
# "Default Devices").
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                    ("ptmx", "pts/ptmx"))

# mount(8) option words -> (flag, set it?) as the OCI runtime spec lists them.
_FLAG_OPTIONS = {
    "ro": (linux.MS_RDONLY, True), "rw": (linux.MS_RDONLY, False),
    "nosuid": (linux.MS_NOSUID, True), "suid": (linux.MS_NOSUID, False),
    "nodev": (linux.MS_NODEV, True), "dev": (linux.MS_NODEV, False),
    "noexec": (linux.MS_NOEXEC, True), "exec": (linux.MS_NOEXEC, False),
    "sync": (linux.MS_SYNCHRONOUS, True), "async": (linux.MS_SYNCHRONOUS, False),
    "dirsync": (linux.MS_DIRSYNC, True), "remount": (linux.MS_REMOUNT, True),
    "mand": (linux.MS_MANDLOCK, True), "nomand": (linux.MS_MANDLOCK, False),
    "noatime": (linux.MS_NOATIME, True), "atime": (linux.MS_NOATIME, False),
    "nodiratime": (linux.MS_NODIRATIME, True), "diratime": (linux.MS_NODIRATIME, False),
    "relatime": (linux.MS_RELATIME, True), "norelatime": (linux.MS_RELATIME, False),
    "strictatime": (linux.MS_STRICTATIME, True), "nostrictatime": (linux.MS_STRICTATIME, False),
    "nosymfollow": (linux.MS_NOSYMFOLLOW, True), "symfollow": (linux.MS_NOSYMFOLLOW, False),
    "bind": (linux.MS_BIND, True), "rbind": (linux.MS_BIND | linux.MS_REC, True),
}
_PROPAGATION_OPTIONS = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}


def pin_bind_sources(bundle: str, mounts: list) -> list:
    """Return `mounts` with each bind source opened now (O_PATH) and named by its descriptor.

    Opened before giving up host root's ids, they stay reachable after:
    /proc/self/fd/N leads to the file without searching its directories.
    """
    pinned = []
    for entry in mounts:
        flags, _, _ = parse_options(entry.get("options") or [])
        if entry.get("type") == "bind" or flags & linux.MS_BIND:
            source = entry.get("source") or ""
            if not source.startswith("/"):
                source = os.path.join(bundle, source)
            try:
                fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                pinned.append(entry)  # mount_entry says so
                continue
            except OSError as err:
                raise fail(f"open the bind source {source}", err) from None
            entry = {**entry, "source": proc_fd(fd)}
        pinned.append(entry)
    return pinned


def mount(source, target, fstype, flags, data=None, *, step):
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise fail(step, err) from None


def clean(destination: str) -> str:
    return "/".join(p for p in destination.split("/") if p and p != ".")


def parse_options(options):
    """Return (flags, propagation, data) for a list of mount(8) option words."""
    flags, propagation, data = 0, 0, []
    for word in options:
        if word in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[word]
            flags = flags | bit if on else flags & ~bit
        elif word in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[word]
        else:
            data.append(word)
    return flags, propagation, ",".join(data)


def open_target(root_fd: int, destination: str, create=None) -> inroot.Found:
    """Resolve `destination` inside the rootfs, its symlinks followed there; return it found.

    `create` (inroot.DIR or inroot.FILE) makes what is missing, the
    directories on the way included.  Raise FileNotFoundError when something
    is missing and not `create`, OSError for a loop or a file on the way.
    """
    parts = [p for p in destination.split("/") if p and p != "."]
    if not destination.startswith("/") or not parts or ".." in parts:
        raise SetupError(f"mount destination {destination!r} must be an absolute path "
                         "without '..' and other than /")
    return inroot.resolve(root_fd, destination, create=create)


def proc_fd(fd: int) -> str:
    # Mounting on the descriptor's magic link mounts on exactly the inode we
    # checked, even if the path were swapped after the check.
    return f"/proc/self/fd/{fd}"


def mount_entry(root_fd: int, bundle: str, entry: dict) -> None:
    """Mount one entry of config.json's `mounts` inside the rootfs."""
    destination = entry.get("destination") or ""
    kind = entry.get("type") or ""
    source = entry.get("source") or kind
    flags, propagation, data = parse_options(entry.get("options") or [])
    if devices.forces_nodev(destination, entry.get("options")):
        flags |= linux.MS_NODEV
    bind = kind == "bind" or flags & linux.MS_BIND
    step = f"mount {kind or 'bind'} on {destination}"
    if bind:
        if not source.startswith("/"):
            source = os.path.join(bundle, source)
        is_dir = os.path.isdir(source)
        if not is_dir and not os.path.exists(source):
            raise SetupError(f"{step}: source {source} does not exist")
    else:
        is_dir = True
    try:
        target = open_target(root_fd, destination, inroot.DIR if is_dir else inroot.FILE)
    except SetupError:
        raise
    except OSError as err:
        raise fail(f"{step}: prepare the target", err) from None
    try:
        if bind:
            # A bind mount ignores all flags but MS_REC; ro, nosuid, nodev and
            # noexec are added to the new mount afterwards (mount(2)).
            mount(source, proc_fd(target.fd), None, flags & (linux.MS_BIND | linux.MS_REC),
                  step=step)
            attrs = _mount_attrs(flags)
            if attrs:
                _setattr_at(target, attrs, bool(flags & linux.MS_REC), step)
        else:
            mount(source, proc_fd(target.fd), kind, flags & ~linux.MS_PROPAGATION, data, step=step)
        if propagation:
            top = _mount_on_top(target)
            try:
                mount(None, proc_fd(top), None, propagation, step=f"{step}: propagation")
            finally:
                os.close(top)
    finally:
        target.close()


def _mount_attrs(flags: int) -> int:
    return sum(attr for ms, attr in linux.MS_TO_MOUNT_ATTR.items() if flags & ms)


def _mount_on_top(target: inroot.Found) -> int:
    """Return an O_PATH descriptor of the mount just made on `target`."""
    # Looking the name up again in its parent crosses into the new mount;
    # the old descriptor would still name the directory underneath it.
    return os.open(target.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=target.parent_fd)


def _setattr_at(target: inroot.Found, attrs: int, recursive: bool, step: str) -> None:
    """Add `attrs` to the mount now on top of `target`."""
    top = _mount_on_top(target)
    try:
        setattr_path(proc_fd(top), attrs, recursive, step)
    finally:
        os.close(top)


def setattr_path(path: str, attrs: int, recursive: bool, step: str) -> None:
    try:
        linux.mount_setattr(path, attrs, recursive=recursive)
    except OSError as err:
        raise fail(step, err) from None


def populate_dev(root_fd: int, extra: list) -> None:
    """Bind the host's device nodes into /dev (the defaults and `extra`, config.json's
    linux.devices) and add the usual symlinks."""
    nodes = {}
    for entry in extra:
        if not isinstance(entry, dict) or os.path.normpath(str(entry.get("path"))) == "/dev/ptmx":
            continue  # /dev/ptmx stays the container's own devpts (runc does the same)
        try:
            nodes[os.path.normpath(entry["path"])] = devices.host_node(entry)
        except devices.DeviceError as err:
            raise SetupError(err.message) from None
    for name in DEFAULT_DEVICES:
        nodes.setdefault(f"/dev/{name}", f"/dev/{name}")
    for destination, source in nodes.items():
        try:
            target = open_target(root_fd, destination, inroot.FILE)
        except OSError as err:
            raise fail(f"create {destination}", err) from None
        try:
            mount(source, proc_fd(target.fd), None, linux.MS_BIND, step=f"bind {destination}")
        finally:
            target.close()
    try:
        dev = open_target(root_fd, "/dev", inroot.DIR)
    except OSError as err:
        raise fail("open /dev", err) from None
    try:
        for name, link in DEFAULT_SYMLINKS:
            try:
                os.symlink(link, name, dir_fd=dev.fd)
            except FileExistsError:
                pass  # the image or an earlier run has one; /dev is a fresh tmpfs normally
            except OSError as err:
                raise fail(f"create /dev/{name}", err) from None
    finally:
        dev.close()


def _existing_target(root_fd: int, path: str, step: str) -> inroot.Found | None:
    """open_target, or None when nothing is there (/proc/kcore on some kernels)."""
    try:
        return open_target(root_fd, path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise fail(step, err) from None


def mask(root_fd: int, path: str) -> None:
    """Hide `path`: /dev/null over a file, an empty read-only tmpfs over a directory."""
    target = _existing_target(root_fd, path, f"mask {path}")
    if target is None:
        return
    try:
        if stat.S_ISDIR(os.fstat(target.fd).st_mode):
            mount("tmpfs", proc_fd(target.fd), "tmpfs", linux.MS_RDONLY, step=f"mask {path}")
        else:
            mount("/dev/null", proc_fd(target.fd), None, linux.MS_BIND, step=f"mask {path}")
    finally:
        target.close()


def make_readonly(root_fd: int, path: str) -> None:
    """Bind `path` on itself, then make that mount (and those below) read-only."""
    target = _existing_target(root_fd, path, f"make {path} read-only")
    if target is None:
        return
    try:
        mount(proc_fd(target.fd), proc_fd(target.fd), None, linux.MS_BIND | linux.MS_REC,
              step=f"bind {path} on itself")
        _setattr_at(target, linux.MOUNT_ATTR_RDONLY, True, f"make {path} read-only")
    finally:
        target.close()


def pivot_root(root_fd: int) -> None:
    """Make the rootfs (open at `root_fd`) `/` and detach the host's tree (pivot_root(2),
    'new_root and put_old may be the same directory')."""
    try:
        # By descriptor: container root may not search the bundle's path.
        os.fchdir(root_fd)
        linux.pivot_root(".", ".")
        # The old root is now stacked on top of the new one at ".": detach it
        # lazily, so nothing of the host stays reachable.
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")
    except OSError as err:
        raise fail("pivot_root", err) from None
