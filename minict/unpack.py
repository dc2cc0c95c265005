"""Apply image layers to a rootfs, confined to it, and fast.

A layer is a tar stream (image-spec layer.md).  `LayerStream` inflates it
on a second thread (the decompressors release the GIL) and hashes what it
hands over for the diff_id, while `apply_layer` parses the tar headers
itself and writes each entry with dir-fd system calls.

Confinement: every parent directory is reached one component at a time with
`openat(..., O_NOFOLLOW | O_DIRECTORY)` from the rootfs's own descriptor, so
no path is ever resolved through a symlink, inside the rootfs or out of it.
Members named absolutely (but for the root itself, "/") or with `..`,
members under a symlink, hardlinks and whiteouts reaching outside, and
entries that would replace the root with a non-directory are refused with an
error naming the layer and the entry.  Hardlink targets
may be absolute (real images have them): they are taken relative to the
rootfs, like everything else.

Bounds (a layer is a few hundred kilobytes that may inflate to gigabytes):
pax and GNU long name/link headers larger than 1 MiB are refused before
they are read (Go's archive/tar has the same cap), names and link names
longer than PATH_MAX too, and the numbers pax records carry must fit what
the system calls take.  Messages cut long names with an ellipsis.  What
the applier remembers per entry is a 16-byte digest of its path; only the
paths of directories whose times are set at the end are kept, up to
DIR_NAMES_MAX bytes (a hostile layer of long names is refused there).

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
import queue
import stat
import struct
import threading

from minict import log
from minict.errors import UnpackError
from minict.fsutil import open_dir_at
from minict.rmtree import remove_at

_READ_SIZE = 1 << 20  # compressed bytes read at a time
_PIECE_MAX = 1 << 20  # most uncompressed bytes handed over at a time (bounds a gzip bomb)
_QUEUE_PIECES = 16  # pieces buffered between the threads (~16 MiB)

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE_MAX = 256  # open directory descriptors kept per layer (the soft RLIMIT_NOFILE is 1024)
# xattr failures that mean "this file system will not store it": warned about, not fatal.
_XATTR_REFUSED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES,
                  errno.E2BIG, errno.ENOSPC}


# -- the uncompressed stream ----------------------------------------------------


def _inflate_gzip(f):
    """Yield the uncompressed pieces of a gzip file (all its members, as pigz may write)."""
    try:
        from isal import isal_zlib as zlib  # ISA-L inflates ~3x faster than zlib
    except ImportError:  # a platform without isal wheels still works, only slower
        import zlib
    inflater = zlib.decompressobj(31)
    fed = False  # whether the current gzip member has had any input
    while True:
        data = f.read(_READ_SIZE)
        if not data:
            break
        while data:
            fed = True
            piece = inflater.decompress(data, _PIECE_MAX)
            if piece:
                yield piece
            if inflater.eof:
                data = inflater.unused_data
                inflater, fed = zlib.decompressobj(31), False
            else:
                data = inflater.unconsumed_tail
    if fed and not inflater.eof:
        raise ValueError("gzip stream is truncated")


def _inflate_zstd(f):
    """Yield the uncompressed pieces of a zstd file (all its frames)."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=_READ_SIZE,
                                                        read_across_frames=True)
    while piece := reader.read(_PIECE_MAX):
        yield piece


def _read_plain(f):
    while piece := f.read(_PIECE_MAX):
        yield piece


_DECOMPRESSORS = {"gzip": _inflate_gzip, "zstd": _inflate_zstd, None: _read_plain}


class LayerStream:
    """A layer blob's uncompressed bytes, inflated on a second thread, and hashed.

    Use as a context manager; `read_piece()` returns the next piece (b"" at the
    end) and re-raises the worker's failure; `diff_id` is the sha256 of all
    uncompressed bytes once the end was read.
    """

    def __init__(self, path, compression: str | None):
        if compression not in _DECOMPRESSORS:
            raise UnpackError(f"unsupported layer compression {compression!r}")
        self.path = path
        self.diff_id: str | None = None
        self._digest = hashlib.sha256()
        self._decompress = _DECOMPRESSORS[compression]
        self._queue: queue.Queue = queue.Queue(_QUEUE_PIECES)
        self._stopped = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="inflate", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            with open(self.path, "rb") as f:
                for piece in self._decompress(f):
                    if not self._put(piece):
                        return
            self._put(b"")
        except BaseException as err:  # noqa: BLE001 -- handed to the reading thread, raised there
            self._put(err)

    def read_piece(self) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            if isinstance(item, OSError):
                raise UnpackError(f"cannot read layer blob {self.path}: {item.strerror or item}")
            raise UnpackError(f"cannot decompress layer blob {self.path}: {item}")
        if item:
            # Hashed here, not by the inflating thread: inflate is the longer
            # task of the two, and update() releases the GIL either way.
            self._digest.update(item)
        else:
            self._done = True
            self.diff_id = "sha256:" + self._digest.hexdigest()
        return item

    def close(self):
        """Stop the worker (it may be blocked handing over a piece) and wait for it."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()


class _Reader:
    """Exact-size reads over the stream's pieces, without copying file contents."""

    def __init__(self, stream: LayerStream):
        self._stream = stream
        self._buf = memoryview(b"")
        self._pos = 0

    def _fill(self) -> bool:
        piece = self._stream.read_piece()
        if not piece:
            return False
        rest = self._buf[self._pos:]
        self._buf = memoryview(bytes(rest) + piece if len(rest) else piece)
        self._pos = 0
        return True

    def read(self, n: int, end_ok: bool = False) -> bytes:
        """Return exactly n bytes; raise UnpackError if the stream ends first.

        With `end_ok`, return b"" if the stream ends cleanly before them.
        """
        while len(self._buf) - self._pos < n:
            if not self._fill():
                if end_ok and self._pos == len(self._buf):
                    return b""
                raise UnpackError("layer tar stream ends in the middle of an entry")
        start = self._pos
        self._pos += n
        return bytes(self._buf[start:self._pos])

    def chunks(self, n: int):
        """Yield memoryviews covering the next n bytes, as the pieces arrive."""
        while n:
            if self._pos == len(self._buf) and not self._fill():
                raise UnpackError("layer tar stream ends in the middle of a file")
            take = min(n, len(self._buf) - self._pos)
            start = self._pos
            self._pos += take
            n -= take
            yield self._buf[start:self._pos]

    def skip(self, n: int) -> None:
        for _ in self.chunks(n):
            pass

    def skip_padding(self, n: int) -> None:
        """Skip a member's padding; the stream may end instead (see _entries)."""
        while len(self._buf) - self._pos < n:
            if not self._fill():
                self._pos = len(self._buf)
                return
        self._pos += n

    def drain(self) -> None:
        """Read to the end, so that the whole stream is hashed."""
        self._buf, self._pos = memoryview(b""), 0
        while self._stream.read_piece():
            pass


# -- tar headers (POSIX ustar, pax and GNU extensions) ---------------------------

# Go's archive/tar refuses pax and GNU long name/link headers past 1 MiB
# (maxSpecialFileSize); a name is a path on Linux: at most PATH_MAX bytes.
SPECIAL_MAX = 1 << 20
PATH_MAX = 4096
_SPECIAL = {b"x": "pax extended header", b"g": "pax global header",
            b"L": "GNU long name", b"K": "GNU long link name"}
# The paths of directories whose times are set at the layer's end are kept
# until then: real layers keep a few megabytes, a hostile one is refused here.
DIR_NAMES_MAX = 64 << 20
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "no change" to chown(2)
_SIZE_MAX = 2**63 - 1  # off_t
_TIME_NS_MAX = 2**63 - 1  # what utimensat(2) takes, as Python passes it
_ZERO_BLOCK = bytes(512)
# name mode uid gid size mtime chksum typeflag linkname magic(6) [version uname gname
# devmajor devminor] prefix [pad]; devmajor/devminor are read from the block when needed.
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s82x155s12x")
_REGULAR = (b"0", b"\0", b"7")


def _number(field: bytes) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 for large values."""
    if field[-1] in (0, 32):  # the usual "0000644\0": one int() call (it takes bytes)
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    if field[0] & 0x80:
        if field[0] == 0xFF:
            raise ValueError("negative number in a tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValueError("malformed number in a tar header (not a tar stream?)") from None


def _cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _header_name(name: bytes, prefix: bytes, magic: bytes) -> bytes:
    """Return the name a header block itself carries (a special header's, say)."""
    name = _cstring(name)
    return _cstring(prefix) + b"/" + name if magic == b"ustar\0" and prefix[0] else name


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """Parse `<length> <key>=<value>\\n` records (pax extended header)."""
    records = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("bad pax record length")
        record = data[space + 1:pos + length]
        if not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        records[key] = value
        pos += length
    return records


def _pax_int(records: dict[bytes, bytes], key: bytes, limit: int) -> int:
    """Return pax record `key` as an integer from 0 to `limit`; raise ValueError otherwise."""
    value = records[key]
    if not value.isdigit() or len(value) > 20 or int(value) > limit:
        raise ValueError(f"pax record {key.decode()} is not a number from 0 to {limit}")
    return int(value)


def _pax_time_ns(value: bytes) -> int:
    whole, _, frac = value.partition(b".")
    if not whole.lstrip(b"-").isdigit() or not (frac.isdigit() or not frac):
        raise ValueError("pax record mtime is not a number")
    if len(whole) > 12:  # past the year 30000
        raise ValueError("pax record mtime is out of range")
    sign = -1 if whole.startswith(b"-") else 1
    ns = int(whole) * 1_000_000_000 + sign * int((frac + b"000000000")[:9] or b"0")
    if not -_TIME_NS_MAX <= ns <= _TIME_NS_MAX:
        raise ValueError("pax record mtime is out of range")
    return ns


class Entry:
    """One tar member, with pax and GNU long-name overrides applied."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "size",
        "type",
        "uid",
        "xattrs",
    )


def _entries(reader: _Reader):
    """Yield the members of the tar stream; stop at the end-of-archive block."""
    global_pax: dict[bytes, bytes] = {}
    pax: dict[bytes, bytes] = {}
    long_name = long_link = None
    while True:
        # umoci 0.4.7's `insert` ends its layers right after the last file's
        # data, without padding or end-of-archive blocks; Go's archive/tar
        # (umoci, containerd, docker) accepts that, and so does minict.
        block = reader.read(512, end_ok=True)
        if block == _ZERO_BLOCK or not block:
            return
        (name, mode, uid, gid, size, mtime, checksum, kind, linkname, magic,
         prefix) = _HEADER.unpack(block)
        # The checksum counts its own field as eight spaces (8 * 32 = 256).
        if _number(checksum) != sum(block) - sum(checksum) + 256:
            raise ValueError("tar header checksum mismatch (not a tar stream?)")
        size = _number(size)
        if kind in _SPECIAL:
            # Bounded before anything is read: a few hundred kilobytes of gzip
            # can declare a header of gigabytes (Go's archive/tar caps it too).
            if size > SPECIAL_MAX:
                raise _Refused(f"{_SPECIAL[kind]} of {size} bytes is larger than "
                               f"{SPECIAL_MAX} bytes", _header_name(name, prefix, magic))
            data = reader.read(size)
            reader.skip(-size % 512)
            if kind == b"x":
                pax = _pax_records(data)
            elif kind == b"g":
                global_pax.update(_pax_records(data))
                if sum(len(k) + len(v) for k, v in global_pax.items()) > SPECIAL_MAX:
                    raise _Refused(f"global pax headers of more than {SPECIAL_MAX} bytes",
                                   _header_name(name, prefix, magic))
            elif kind == b"L":
                long_name = _cstring(data)
            else:
                long_link = _cstring(data)
            continue
        e = Entry()
        name = _header_name(name, prefix, magic)  # POSIX: a prefix field extends the name
        records = {**global_pax, **pax} if global_pax else pax
        if records:
            e.name = records.get(b"path", long_name or name)
            e.linkname = records.get(b"linkpath", long_link or _cstring(linkname))
            e.uid = _pax_int(records, b"uid", _ID_MAX) if b"uid" in records else _number(uid)
            e.gid = _pax_int(records, b"gid", _ID_MAX) if b"gid" in records else _number(gid)
            e.size = _pax_int(records, b"size", _SIZE_MAX) if b"size" in records else size
            e.mtime_ns = (_pax_time_ns(records[b"mtime"]) if b"mtime" in records
                          else _number(mtime) * 1_000_000_000)
        else:
            e.name = long_name or name
            e.linkname = long_link or _cstring(linkname)
            e.uid, e.gid, e.size = _number(uid), _number(gid), size
            e.mtime_ns = _number(mtime) * 1_000_000_000
        for what, value in (("name", e.name), ("link name", e.linkname)):
            if len(value) > PATH_MAX:
                raise _Refused(f"its {what} is {len(value)} bytes long, more than PATH_MAX "
                               f"({PATH_MAX})", e.name)
        e.type = kind
        e.mode = _number(mode) & 0o7777
        if kind in (b"3", b"4"):
            e.devmajor, e.devminor = _number(block[329:337]), _number(block[337:345])
        e.xattrs = None
        if records:
            if any(k.startswith(b"GNU.sparse.") for k in records):
                raise ValueError(f"sparse file {e.name!r} is not supported")
            xattrs = {k[13:]: v for k, v in records.items() if k.startswith(b"SCHILY.xattr.")}
            e.xattrs = xattrs or None
        pax, long_name, long_link = {}, None, None
        # Only regular files carry data (apply_layer consumes it); the other
        # types are header-only whatever their size field says (as Go's archive/tar).
        yield e


# -- applying one layer --------------------------------------------------------------


class _Refused(Exception):
    """An entry that would reach outside the rootfs or is otherwise not allowed.

    `name` is the entry's, when the header reader refuses it before there is an Entry.
    """

    def __init__(self, message: str, name: bytes | None = None):
        super().__init__(message)
        self.name = name


def _split(name: bytes, what: str = "name") -> tuple[bytes, bytes]:
    """Return (parent, base) of a member name, normalised; raise _Refused if unsafe.

    Parent is b"" for the top level; base is b"" for the root itself.
    """
    if name.startswith(b"/"):
        if all(p in (b"", b".") for p in name.split(b"/")):
            return b"", b""  # the root spelled absolutely: `umoci insert SRC /` writes "/"
        raise _Refused(f"absolute {what}")
    if name.startswith(b"./"):
        name = name[2:]
    name = name.rstrip(b"/")
    if b"//" in name or b"./" in name or name.endswith(b".") or b"/." in name:
        parts = [p for p in name.split(b"/") if p and p != b"."]
        if b".." in parts:
            raise _Refused(f"'..' in {what}")
        name = b"/".join(parts)
    parent, _, base = name.rpartition(b"/")
    return parent, base


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
        self.dirs: dict[bytes, int] = {}  # resolved parent path -> open fd, in LRU order
        self.written = _PathSet()  # paths this layer created (whiteouts spare them)
        self.written_below = _PathSet()  # directories with a written path below
        self.dir_times: list[tuple[bytes, int, int]] = []  # directories' mtimes, set last
        self.dir_names = 0  # bytes of the paths dir_times and kept_times hold
        # (atime, mtime) of directories this layer changed but does not list,
        # as they were before it: restored at the end, as umoci does.
        self.kept_times: dict[bytes, tuple[int, int]] = {}

    def close(self):
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    # Parent directories ------------------------------------------------------

    def dir_fd(self, path: bytes, create: bool = True) -> int | None:
        """Return an fd of directory `path` (b"" is the root), resolved without symlinks.

        Missing directories are created (0755, root) when `create`, else None
        is returned.  Raise _Refused for a symlink or non-directory on the way.
        """
        if not path:
            return self.root_fd
        fd = self.dirs.pop(path, None)
        if fd is not None:
            self.dirs[path] = fd  # most recently used last
            return fd
        # Walk down from the deepest directory already open (a loop, not
        # recursion: hostile layers nest deeper than Python recurses).
        parts = path.split(b"/")
        known = len(parts) - 1
        while known and (fd := self.dirs.get(b"/".join(parts[:known]))) is None:
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
            self.keep_times(path.rpartition(b"/")[0], parent_fd)
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
            raise _Refused(f"its parent {path.decode(errors='replace')!r} is {what}") from None
        self._remember(path, fd)
        return fd

    def _remember(self, path: bytes, fd: int) -> None:
        old = self.dirs.pop(path, None)
        if old is not None:
            os.close(old)
        self.dirs[path] = fd
        if len(self.dirs) > _DIR_CACHE_MAX:
            oldest = next(iter(self.dirs))
            os.close(self.dirs.pop(oldest))

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
            raise _Refused(f"the layer's directories need more than {DIR_NAMES_MAX} bytes "
                           "of names kept in memory")

    def forget(self, path: bytes) -> None:
        """Drop cached fds of `path` and below: it is being removed or replaced."""
        below = path + b"/"
        for p in [p for p in self.dirs if p == path or p.startswith(below)]:
            os.close(self.dirs.pop(p))

    def remove(self, parent_fd: int, base: bytes, path: bytes) -> None:
        self.forget(path)
        remove_at(parent_fd, base, self.dev)

    # Entries -------------------------------------------------------------------

    def apply(self, e: Entry, reader: _Reader) -> None:
        parent, base = _split(e.name)
        if base.startswith(b".wh."):
            self.whiteout(parent, base[4:])
            return
        path = parent + b"/" + base if parent else base
        if not base:
            self.root_entry(e)
            return
        parent_fd = self.dir_fd(parent)
        self.keep_times(parent, parent_fd)
        kind = e.type
        if kind in _REGULAR:
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
            raise _Refused(f"unsupported tar entry type {kind!r}")

    def create(self, make, parent_fd: int, base: bytes, path: bytes):
        """Run `make()`; if the name exists (from a lower layer), remove it and retry."""
        try:
            result = make()
        except FileExistsError:
            self.remove(parent_fd, base, path)
            result = make()
        self.wrote(path)
        return result

    def regular(self, e: Entry, reader: _Reader, parent_fd: int, base: bytes, path: bytes):
        # A new inode, never the old one opened for writing: that could be a
        # hardlink shared with a lower layer's file.
        fd = self.create(lambda: os.open(base, _O_NEW_FILE, 0o600, dir_fd=parent_fd),
                         parent_fd, base, path)
        try:
            for chunk in reader.chunks(e.size):
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
            # chown clears setuid/setgid and security.capability: chmod and xattrs after it.
            os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            if e.xattrs:
                self.set_xattrs(e, fd)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)
        reader.skip_padding(-e.size % 512)

    def directory(self, e: Entry, parent_fd: int, base: bytes, path: bytes):
        try:
            os.mkdir(base, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a file or symlink becomes a directory
                self.remove(parent_fd, base, path)
                os.mkdir(base, 0o700, dir_fd=parent_fd)
        fd = os.open(base, _O_DIR, dir_fd=parent_fd)
        self._remember(path, fd)  # its members usually follow
        self.wrote(path)
        self.set_dir_metadata(e, fd, path)

    def root_entry(self, e: Entry):
        if e.type != b"5":
            raise _Refused("it would replace the rootfs itself")
        self.set_dir_metadata(e, self.root_fd, b"")

    def set_dir_metadata(self, e: Entry, fd: int, path: bytes):
        os.fchown(fd, e.uid, e.gid)
        os.fchmod(fd, e.mode)
        if e.xattrs:
            self.set_xattrs(e, fd)
        # Writing members into a directory changes its mtime: set it after the layer.
        self.count_dir_name(path)
        self.dir_times.append((path, e.mtime_ns, e.mtime_ns))

    def hardlink(self, e: Entry, parent_fd: int, base: bytes, path: bytes):
        # Link names are rootfs paths; real images write them absolute too.
        target_parent, target_base = _split(e.linkname.lstrip(b"/"), "link name")
        if not target_base:
            raise _Refused("hardlink to the rootfs itself")
        target_path = target_parent + b"/" + target_base if target_parent else target_base
        if target_path == path:
            return  # a link to itself: the file is already there
        target_fd = self.dir_fd(target_parent, create=False)
        if target_fd is None:
            raise _Refused(f"hardlink target {e.linkname!r} does not exist")
        parent_fd = self.dir_fd(path.rpartition(b"/")[0])  # target_fd's lookup may have evicted it
        try:
            self.create(lambda: os.link(target_base, base, src_dir_fd=target_fd,
                                        dst_dir_fd=parent_fd, follow_symlinks=False),
                        parent_fd, base, path)
        except FileNotFoundError:
            raise _Refused(f"hardlink target {e.linkname!r} does not exist") from None

    # Whiteouts -------------------------------------------------------------------

    def whiteout(self, parent: bytes, name: bytes):
        if name in (b"", b".", b".."):
            raise _Refused("whiteout of an invalid name")
        try:
            self._whiteout(parent, name)
        except _Refused:
            # umoci writes `dir -> target` and then `dir/.wh.child` when a
            # directory became a symlink: below a path this layer replaced,
            # nothing of the lower layers is left to remove.
            parts = parent.split(b"/")
            if any(b"/".join(parts[:i]) in self.written for i in range(1, len(parts) + 1)):
                return
            raise

    def _whiteout(self, parent: bytes, name: bytes):
        if name == b".wh..opq":
            parent_fd = self.dir_fd(parent, create=False)
            if parent_fd is not None:
                self.keep_times(parent, parent_fd)
                for child in os.listdir(parent_fd):
                    child_path = parent + b"/" + os.fsencode(child) if parent else os.fsencode(child)
                    self.remove_lower(parent_fd, os.fsencode(child), child_path)
            return
        if name.startswith(b".wh."):
            return  # aufs metadata (.wh..wh.plnk and such): nothing to apply
        parent_fd = self.dir_fd(parent, create=False)
        if parent_fd is not None:
            self.keep_times(parent, parent_fd)
            self.remove_lower(parent_fd, name, parent + b"/" + name if parent else name)

    def remove_lower(self, parent_fd: int, name: bytes, path: bytes):
        """Remove `path` as the layers below made it, sparing what this layer wrote."""
        if path in self.written:
            return
        if path not in self.written_below:
            self.remove(parent_fd, name, path)
            return
        fd = self.dir_fd(path, create=False)
        self.keep_times(path, fd)
        for child in os.listdir(fd):
            self.remove_lower(fd, os.fsencode(child), path + b"/" + os.fsencode(child))

    # Metadata ----------------------------------------------------------------------

    def set_xattrs(self, e: Entry, target) -> None:
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

    def set_xattrs_at(self, e: Entry, parent_fd: int, base: bytes) -> None:
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
            fd = self.dirs.get(path)
            if fd is not None:  # still open: the same directory, no lookup
                os.utime(fd, ns=(atime_ns, mtime_ns))
                continue
            parent, _, base = path.rpartition(b"/")
            try:
                parent_fd = self.dir_fd(parent, create=False)
                if parent_fd is None:
                    continue
                fd = open_dir_at(parent_fd, base)
            except (_Refused, FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced later in the layer
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                continue
            try:
                os.utime(fd, ns=(atime_ns, mtime_ns))
            finally:
                os.close(fd)


def apply_layer(root_fd: int, stream: LayerStream, layer: str) -> None:
    """Apply the tar stream of `layer` (its digest, for messages) to the rootfs at `root_fd`.

    Raise UnpackError naming the layer and entry for anything unsafe or failing.
    """
    reader = _Reader(stream)
    applier = _Applier(root_fd, layer)
    name = None
    try:
        entries = _entries(reader)
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
    except _Refused as err:
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
