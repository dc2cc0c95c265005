"""The layer applier: tar members in, files in the rootfs out, confined to it.

    with LayerStream(blob, compression) as stream:      # minict.layerstream
        apply_layer(root_fd, stream, digest)             # reads it with minict.tar

The last of the three stages of applying a layer (layerstream -> tar ->
apply): it takes the members minict.tar reads and writes each with dir-fd
system calls, and owns what a member means for the rootfs: confinement,
whiteouts, hardlinks, devices, owners, modes, xattrs and directory times.

Confinement: every parent directory is reached through minict.rootdirs, one
component at a time with `openat(..., O_NOFOLLOW | O_DIRECTORY)` from the
rootfs's own descriptor, so no path is ever resolved through a symlink,
inside the rootfs or out of it; files are made with dir-fd calls below it,
and a file replaced is a new inode.  Members named absolutely (but for the root itself, "/") or with `..`,
members under a symlink, hardlinks and whiteouts reaching outside, and
entries that would replace the root with a non-directory are refused with an
error naming the layer and the entry.  Hardlink targets may be absolute
(real images have them): they are taken relative to the rootfs, like
everything else.

Bounds: besides the reader's (minict.tar), what the applier remembers per
entry is a 16-byte digest of its path; only the paths of directories whose
times are set at the end are kept, up to DIR_NAMES_MAX bytes (a hostile
layer of long names is refused there).  Messages cut long names with an
ellipsis.

Whiteouts (layer.md "Whiteouts"): `.wh.<name>` removes `<name>` from the
layers below, `.wh..wh..opq` empties its directory of the layers below; a
whiteout never removes what the same layer wrote (umoci tracks the same).

Directory times match `umoci unpack`: a directory gets its own entry's
mtime, set after the layer; one a layer changes (adds to, removes from)
without listing it keeps the times it had before that layer.
"""

import errno
import hashlib
import os
import stat

from minict import log
from minict.bundle.rootdirs import RootDirs, split_name
from minict.bundle.tar import REGULAR, Member, Refused, TarStream, members
from minict.bundle.tarsparse import write_sparse
from minict.errors import UnpackError
from minict.fsutil import open_dir_at
from minict.rmtree import remove_at

_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# xattr failures that mean "this file system will not store it": warned about, not fatal.
_XATTR_REFUSED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES,
                  errno.E2BIG, errno.ENOSPC}
# The paths of directories whose times are set at the layer's end are kept
# until then: real layers keep a few megabytes, a hostile one is refused here.
DIR_NAMES_MAX = 64 << 20


class _PathSet:
    """A set of paths kept as 16-byte digests.

    A layer of many entries with names near PATH_MAX would otherwise hold
    all of them (kilobytes each) in memory: a megabyte of gzip made 230 MB.
    """

    __slots__ = ("_digests",)

    def __init__(self):
        self._digests: set[bytes] = set()

    def add(self, path: bytes) -> None:
        self._digests.add(hashlib.blake2b(path, digest_size=16).digest())

    def __contains__(self, path: bytes) -> bool:
        return hashlib.blake2b(path, digest_size=16).digest() in self._digests


class _Applier:
    """The state of applying one layer: open parent directories, what it wrote."""

    def __init__(self, root_fd: int, layer: str):
        self.root_fd = root_fd
        self.dev = os.fstat(root_fd).st_dev
        self.layer = layer
        self.dirs = RootDirs(root_fd, before_mkdir=self.keep_times)  # open directories
        self.written = _PathSet()  # paths this layer created (whiteouts spare them)
        self.written_below = _PathSet()  # directories with a written path below
        self.dir_times: list[tuple[bytes, int, int]] = []  # directories' mtimes, set last
        self.dir_names = 0  # bytes of the paths dir_times and kept_times hold
        # (atime, mtime) of directories this layer changed but does not list,
        # as they were before it: restored at the end, as umoci does.
        self.kept_times: dict[bytes, tuple[int, int]] = {}

    def close(self):
        self.dirs.close()

    def wrote(self, path: bytes) -> None:
        """Record that this layer created `path` (and so something below each parent)."""
        self.written.add(path)
        parent = path.rpartition(b"/")[0]
        while parent and parent not in self.written_below:
            self.written_below.add(parent)
            parent = parent.rpartition(b"/")[0]

    def keep_times(self, path: bytes, fd: int) -> None:
        """Remember directory `path`'s times before this layer first changes its entries.

        umoci restores a parent's metadata after each entry it creates or
        removes, so a directory the layer does not list keeps its old mtime.
        """
        if path not in self.written and path not in self.kept_times:
            st = os.fstat(fd)
            self.count_dir_name(path)
            self.kept_times[path] = (st.st_atime_ns, st.st_mtime_ns)

    def count_dir_name(self, path: bytes) -> None:
        """Count a directory path kept until the layer's end; refuse past DIR_NAMES_MAX bytes."""
        self.dir_names += len(path) + 64  # and the tuple around it
        if self.dir_names > DIR_NAMES_MAX:
            raise Refused(f"the layer's directories need more than {DIR_NAMES_MAX} bytes "
                          "of names kept in memory")

    def remove(self, parent_fd: int, base: bytes, path: bytes) -> None:
        self.dirs.forget(path)
        remove_at(parent_fd, base, self.dev)

    # Entries -------------------------------------------------------------------

    def apply(self, e: Member, reader: TarStream) -> None:
        parent, base = split_name(e.name)
        if base.startswith(b".wh."):
            self.whiteout(parent, base[4:])
            return
        if not base:
            self.root_entry(e)
            return
        # Symlinks on the way are followed inside the rootfs; the entry
        # itself (base) never is: it replaces whatever is there.
        parent_fd, parent = self.dirs.resolve(parent)
        path = parent + b"/" + base if parent else base
        self.keep_times(parent, parent_fd)
        kind = e.type
        if kind in REGULAR:
            self.regular(e, reader, parent_fd, base, path)
        elif kind == b"5":
            self.directory(e, parent_fd, base, path)
        elif kind == b"2":
            self.create(lambda: os.symlink(e.linkname, base, dir_fd=parent_fd), parent_fd, base, path)
            os.chown(base, e.uid, e.gid, dir_fd=parent_fd, follow_symlinks=False)
            self.set_xattrs_at(e, parent_fd, base)
            os.utime(base, ns=(e.mtime_ns, e.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        elif kind == b"1":
            self.hardlink(e, parent_fd, base, path)
        elif kind in (b"3", b"4", b"6"):
            if kind == b"6":
                make = lambda: os.mkfifo(base, 0o600, dir_fd=parent_fd)
            else:
                fmt = stat.S_IFCHR if kind == b"3" else stat.S_IFBLK
                device = os.makedev(e.devmajor, e.devminor)
                make = lambda: os.mknod(base, fmt | 0o600, device, dir_fd=parent_fd)
            self.create(make, parent_fd, base, path)
            os.chown(base, e.uid, e.gid, dir_fd=parent_fd, follow_symlinks=False)
            os.chmod(base, e.mode, dir_fd=parent_fd, follow_symlinks=False)
            self.set_xattrs_at(e, parent_fd, base)
            os.utime(base, ns=(e.mtime_ns, e.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        else:
            raise Refused(f"unsupported tar entry type {kind!r}")

    def create(self, make, parent_fd: int, base: bytes, path: bytes):
        """Run `make()`; if the name exists (from a lower layer), remove it and retry."""
        try:
            result = make()
        except FileExistsError:
            self.remove(parent_fd, base, path)
            result = make()
        self.wrote(path)
        return result

    def regular(self, e: Member, reader: TarStream, parent_fd: int, base: bytes, path: bytes):
        # A new inode, never the old one opened for writing: that could be a
        # hardlink shared with a lower layer's file.
        fd = self.create(lambda: os.open(base, _O_NEW_FILE, 0o600, dir_fd=parent_fd),
                         parent_fd, base, path)
        try:
            if e.sparse is None:
                for chunk in reader.data():
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
            else:
                write_sparse(fd, e.sparse, reader.data())
            # chown clears setuid/setgid and security.capability: chmod and xattrs after it.
            os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            if e.xattrs:
                self.set_xattrs(e, fd)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)

    def directory(self, e: Member, parent_fd: int, base: bytes, path: bytes):
        try:
            os.mkdir(base, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a file or symlink becomes a directory
                self.remove(parent_fd, base, path)
                os.mkdir(base, 0o700, dir_fd=parent_fd)
        fd = open_dir_at(parent_fd, base)
        self.dirs.remember(path, fd)  # its members usually follow
        self.wrote(path)
        self.set_dir_metadata(e, fd, path)

    def root_entry(self, e: Member):
        if e.type != b"5":
            raise Refused("it would replace the rootfs itself")
        self.set_dir_metadata(e, self.root_fd, b"")

    def set_dir_metadata(self, e: Member, fd: int, path: bytes):
        os.fchown(fd, e.uid, e.gid)
        os.fchmod(fd, e.mode)
        if e.xattrs:
            self.set_xattrs(e, fd)
        # Writing members into a directory changes its mtime: set it after the layer.
        self.count_dir_name(path)
        self.dir_times.append((path, e.mtime_ns, e.mtime_ns))

    def hardlink(self, e: Member, parent_fd: int, base: bytes, path: bytes):
        # Link names are rootfs paths; real images write them absolute too.
        target_parent, target_base = split_name(e.linkname.lstrip(b"/"), "link name")
        if not target_base:
            raise Refused("hardlink to the rootfs itself")
        # The target's directory is resolved in root too; its last name is not followed.
        found = self.dirs.resolve(target_parent, create=False)
        if found is None:
            raise Refused(f"hardlink target {e.linkname!r} does not exist")
        target_fd, target_parent = found
        target_path = target_parent + b"/" + target_base if target_parent else target_base
        if target_path == path:
            return  # a link to itself: the file is already there
        # (The target's lookup may have evicted parent_fd; `path` is resolved already.)
        parent_fd = self.dirs.dir_fd(path.rpartition(b"/")[0])
        try:
            self.create(lambda: os.link(target_base, base, src_dir_fd=target_fd,
                                        dst_dir_fd=parent_fd, follow_symlinks=False),
                        parent_fd, base, path)
        except FileNotFoundError:
            raise Refused(f"hardlink target {e.linkname!r} does not exist") from None

    # Whiteouts -------------------------------------------------------------------

    def whiteout(self, parent: bytes, name: bytes):
        if name in (b"", b".", b".."):
            raise Refused("whiteout of an invalid name")
        try:
            self.dirs.dir_fd(parent, create=False)  # does the path go through a symlink?
        except Refused:
            # umoci writes `dir -> target` and then `dir/.wh.child` when a
            # directory became a symlink: below a path this layer replaced,
            # nothing of the lower layers is left to remove.
            parts = parent.split(b"/")
            if any(b"/".join(parts[:i]) in self.written for i in range(1, len(parts) + 1)):
                return
        # Otherwise the whiteout's directory is resolved in root, as umoci does.
        found = self.dirs.resolve(parent, create=False)
        if found is not None:
            self._whiteout(*found, name)

    def _whiteout(self, parent_fd: int, parent: bytes, name: bytes):
        if name == b".wh..opq":
            self.keep_times(parent, parent_fd)
            for child in os.listdir(parent_fd):
                child_path = parent + b"/" + os.fsencode(child) if parent else os.fsencode(child)
                self.remove_lower(parent_fd, os.fsencode(child), child_path)
            return
        if name.startswith(b".wh."):
            return  # aufs metadata (.wh..wh.plnk and such): nothing to apply
        self.keep_times(parent, parent_fd)
        self.remove_lower(parent_fd, name, parent + b"/" + name if parent else name)

    def remove_lower(self, parent_fd: int, name: bytes, path: bytes):
        """Remove `path` as the layers below made it, sparing what this layer wrote."""
        if path in self.written:
            return
        if path not in self.written_below:
            self.remove(parent_fd, name, path)
            return
        fd = self.dirs.dir_fd(path, create=False)
        self.keep_times(path, fd)
        for child in os.listdir(fd):
            self.remove_lower(fd, os.fsencode(child), path + b"/" + os.fsencode(child))

    # Metadata ----------------------------------------------------------------------

    def set_xattrs(self, e: Member, target) -> None:
        for key, value in e.xattrs.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno not in _XATTR_REFUSED:
                    raise
                log.warn(f"layer {self.layer}: entry {e.name.decode(errors='replace')}: "
                         f"cannot set xattr {key.decode(errors='replace')}: {err.strerror}")

    def set_xattrs_at(self, e: Member, parent_fd: int, base: bytes) -> None:
        # setxattr has no dir_fd form; the fd's /proc path reaches the same
        # (already resolved) directory, and the last component is not followed.
        if e.xattrs:
            self.set_xattrs(e, b"/proc/self/fd/%d/%s" % (parent_fd, base))

    def set_dir_times(self) -> None:
        """Give back kept directories their old times, then set the listed ones'.

        In this order, a directory the layer lists gets the layer's mtime even
        if it was kept first (a member came before its directory's entry).
        utime changes no parent's mtime, so the order is free otherwise.
        """
        kept = [(path, atime, mtime) for path, (atime, mtime) in self.kept_times.items()]
        for path, atime_ns, mtime_ns in kept + self.dir_times:
            if not path:
                os.utime(self.root_fd, ns=(atime_ns, mtime_ns))
                continue
            fd = self.dirs.cached(path)
            if fd is not None:  # still open: the same directory, no lookup
                os.utime(fd, ns=(atime_ns, mtime_ns))
                continue
            parent, _, base = path.rpartition(b"/")
            try:
                parent_fd = self.dirs.dir_fd(parent, create=False)
                if parent_fd is None:
                    continue
                fd = open_dir_at(parent_fd, base)
            except (Refused, FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced later in the layer
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                continue
            try:
                os.utime(fd, ns=(atime_ns, mtime_ns))
            finally:
                os.close(fd)


def apply_layer(root_fd: int, stream, layer: str) -> None:
    """Apply the tar stream of `layer` (its digest, for messages) to the rootfs at `root_fd`.

    `stream` gives the layer's uncompressed bytes (a minict.layerstream.LayerStream).

    Raise UnpackError naming the layer and entry for anything unsafe or failing.
    """
    reader = TarStream(stream)
    applier = _Applier(root_fd, layer)
    name = None
    try:
        entries = members(reader)
        while True:
            name = None
            try:
                e = next(entries)
            except StopIteration:
                break
            name = e.name
            applier.apply(e, reader)
        name = None
        applier.set_dir_times()
    except Refused as err:
        name = err.name if err.name is not None else name
        raise UnpackError(f"layer {layer}: entry {_show(name)}: refused: {err}") from None
    except OSError as err:
        where = f"entry {_show(name)}: " if name is not None else ""
        raise UnpackError(f"layer {layer}: {where}{err.strerror or err}") from None
    except (ValueError, OverflowError) as err:  # overflow: a base-256 number past what C takes
        where = f"entry {_show(name)}: " if name is not None else ""
        raise UnpackError(f"layer {layer}: {where}invalid tar: {err}") from None
    finally:
        applier.close()
    reader.drain()


_SHOWN_MAX = 200  # characters of an entry name in a message; more is cut with an ellipsis


def _show(name: bytes | None) -> str:
    """Return an entry name for a message: quoted, escaped, and cut if long."""
    if name is None:
        return "?"
    shown = repr(name[:_SHOWN_MAX].decode(errors="backslashreplace"))
    return shown if len(name) <= _SHOWN_MAX else f"{shown[:-1]}…{shown[-1]} ({len(name)} bytes)"
