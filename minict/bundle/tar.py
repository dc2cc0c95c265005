"""The tar reader: a layer's uncompressed bytes in, its members out.

    stream = TarStream(pieces)              # pieces.read_piece() -> bytes, b"" at the end
    for member in members(stream):          # Member: name, type, size, mode, uid, gid, ...
        if member.type in REGULAR:
            for chunk in stream.data():     # its data, as memoryviews, as it arrives
                ...                         # (member.sparse set: tarsparse.place says where)
    stream.drain()                          # read to the end (the diff_id hashes it all)

The second of the three stages of applying a layer (layerstream -> tar ->
apply).  It owns the tar format: POSIX ustar headers, pax extended and
global headers (path, linkpath, uid, gid, size, mtime, SCHILY.xattr.*,
LIBARCHIVE.xattr.*; uname and gname are read past: owners are numeric, as
umoci's), GNU long names and long link names, GNU sparse members (their
maps are minict.bundle.tarsparse's), octal and GNU base-256 numbers; and the
bounds on what a header may make it hold.  It never touches the file
system: what a member means for the rootfs is minict.apply's business.

Bounds (a layer is a few hundred kilobytes that may inflate to gigabytes):
pax and GNU long name/link headers larger than 1 MiB are refused before
they are read (Go's archive/tar has the same cap), names and link names
longer than PATH_MAX too, and the numbers pax records carry must fit what
the system calls take.  A refusal is `Refused` (naming the member when the
reader got that far); a malformed stream is ValueError; a stream that ends
inside a member is UnpackError.

A regular member's data follows its header: read it with `stream.data()`
before asking for the next member, or leave it; `members` skips what was
not read.  Other types carry no data, whatever their size field says (as
Go's archive/tar).
"""

import base64
import struct
import urllib.parse

from minict.bundle import tarsparse
from minict.errors import UnpackError

# Go's archive/tar refuses pax and GNU long name/link headers past 1 MiB
# (maxSpecialFileSize); a name is a path on Linux: at most PATH_MAX bytes.
SPECIAL_MAX = 1 << 20
PATH_MAX = 4096
_SPECIAL = {b"x": "pax extended header", b"g": "pax global header",
            b"L": "GNU long name", b"K": "GNU long link name"}
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "no change" to chown(2)
_SIZE_MAX = 2**63 - 1  # off_t
_TIME_NS_MAX = 2**63 - 1  # what utimensat(2) takes, as Python passes it
_ZERO_BLOCK = bytes(512)
# name mode uid gid size mtime chksum typeflag linkname magic(6) [version uname gname
# devmajor devminor] prefix [pad]; devmajor/devminor are read from the block when needed.
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s82x155s12x")
# The type flags of members that carry data; 'S' is old GNU sparse (minict.bundle.tarsparse).
REGULAR = (b"0", b"\0", b"7", b"S")


class Refused(Exception):
    """A member the reader (or the applier) will not take: past a bound, or unsafe.

    `name` is the member's, when the header reader refuses it before there is a Member.
    """

    def __init__(self, message: str, name: bytes | None = None):
        super().__init__(message)
        self.name = name


class TarStream:
    """Exact-size reads over a stream's pieces, without copying file contents.

    `pieces` is anything with a `read_piece()` that returns the next bytes
    (b"" at the end) -- a minict.layerstream.LayerStream, say.
    """

    def __init__(self, pieces):
        self._stream = pieces
        self._buf = memoryview(b"")
        self._pos = 0
        self._left = 0  # bytes of the current member's data not read yet
        self._padding = 0  # and of its padding, skipped after them

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

    def skip(self, n: int) -> None:
        while n:
            if self._pos == len(self._buf) and not self._fill():
                raise UnpackError("layer tar stream ends in the middle of a file")
            start = self._pos
            self._pos = min(start + n, len(self._buf))
            n -= self._pos - start

    def data(self):
        """Yield memoryviews of the current member's data as the pieces arrive, then skip its padding."""
        while self._left:
            if self._pos == len(self._buf) and not self._fill():
                raise UnpackError("layer tar stream ends in the middle of a file")
            start = self._pos
            self._pos = min(start + self._left, len(self._buf))
            self._left -= self._pos - start
            yield self._buf[start:self._pos]
        if self._padding:
            padding, self._padding = self._padding, 0
            self.skip_padding(padding)

    def end_member(self) -> None:
        """Skip what the caller left of the current member's data, and its padding."""
        if self._left:
            left, self._left = self._left, 0
            self.skip(left)
        if self._padding:
            padding, self._padding = self._padding, 0
            self.skip_padding(padding)

    def skip_padding(self, n: int) -> None:
        """Skip a member's padding; the stream may end instead (see members)."""
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



# -- headers ----------------------------------------------------------------------


def _number(field: bytes, *, signed: bool = False) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 for large values.

    Base-256 is two's complement (0xFF first: negative).  Only a time may be
    negative (GNU tar writes an mtime before 1970 so, and Go reads it); a
    negative size, id or device number is refused.
    """
    if field[-1] in (0, 32):  # the usual "0000644\0": one int() call (it takes bytes)
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    if field[0] & 0x80:
        if field[0] == 0xFF:
            if not signed:
                raise ValueError("negative number in a tar header")
            return int.from_bytes(field, "big", signed=True)
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
    sparse_pairs: list[bytes] = []  # pax 0.0 sparse maps repeat two keys
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
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            tarsparse.collect_pax_0x0(key, value, sparse_pairs)
        else:
            records[key] = value
        pos += length
    if sparse_pairs:
        records[b"GNU.sparse.map"] = b",".join(sparse_pairs)  # as pax 0.1 spells it (and Go)
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


class Member:
    """One tar member, with pax and GNU long-name overrides applied.

    Names are bytes as the archive has them (a directory's may end in "/");
    `type` is the type flag (b"0", b"5", ...); `mtime_ns` in nanoseconds;
    `devmajor`/`devminor` are 0 but for devices; `xattrs` (from pax
    SCHILY.xattr.* and LIBARCHIVE.xattr.* records) is None when there are
    none.  A GNU sparse member (any of its four forms) has `size` its real
    size and `sparse` its minict.bundle.tarsparse.SparseMap; `data()` then yields
    the stored segments, which tarsparse.place puts where they go.  Others
    have `sparse` None.
    """

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "size",
        "sparse",
        "type",
        "uid",
        "xattrs",
    )


def members(reader: TarStream):
    """Yield the members of the tar stream; stop at the end-of-archive block.

    Raise Refused past a bound, ValueError for a malformed header.
    """
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
                raise Refused(f"{_SPECIAL[kind]} of {size} bytes is larger than "
                              f"{SPECIAL_MAX} bytes", _header_name(name, prefix, magic))
            data = reader.read(size)
            reader.skip(-size % 512)
            if kind == b"x":
                pax = _pax_records(data)
            elif kind == b"g":
                global_pax.update(_pax_records(data))
                if sum(len(k) + len(v) for k, v in global_pax.items()) > SPECIAL_MAX:
                    raise Refused(f"global pax headers of more than {SPECIAL_MAX} bytes",
                                  _header_name(name, prefix, magic))
            elif kind == b"L":
                long_name = _cstring(data)
            else:
                long_link = _cstring(data)
            continue
        e = Member()
        name = _header_name(name, prefix, magic)  # POSIX: a prefix field extends the name
        records = {**global_pax, **pax} if global_pax else pax
        if records:
            e.name = records.get(b"path", long_name or name)
            e.linkname = records.get(b"linkpath", long_link or _cstring(linkname))
            e.uid = _pax_int(records, b"uid", _ID_MAX) if b"uid" in records else _number(uid)
            e.gid = _pax_int(records, b"gid", _ID_MAX) if b"gid" in records else _number(gid)
            e.size = _pax_int(records, b"size", _SIZE_MAX) if b"size" in records else size
            e.mtime_ns = (_pax_time_ns(records[b"mtime"]) if b"mtime" in records
                          else _number(mtime, signed=True) * 1_000_000_000)
            if tarsparse.pax_version(records):  # its path is GNU tar's made-up one
                e.name = records.get(b"GNU.sparse.name", e.name)
        else:
            e.name = long_name or name
            e.linkname = long_link or _cstring(linkname)
            e.uid, e.gid, e.size = _number(uid), _number(gid), size
            e.mtime_ns = _number(mtime, signed=True) * 1_000_000_000
        for what, value in (("name", e.name), ("link name", e.linkname)):
            if len(value) > PATH_MAX:
                raise Refused(f"its {what} is {len(value)} bytes long, more than PATH_MAX "
                              f"({PATH_MAX})", e.name)
        e.type = kind
        e.mode = _number(mode) & 0o7777
        if kind in (b"3", b"4"):
            e.devmajor, e.devminor = _number(block[329:337]), _number(block[337:345])
        else:
            e.devmajor = e.devminor = 0
        e.xattrs = _xattrs(records) if records else None
        pax, long_name, long_link = {}, None, None
        e.sparse = None
        stored, padding = e.size, -e.size % 512  # the data that follows the header
        if kind == b"S" or (records and tarsparse.pax_version(records)):
            stored = _read_sparse(e, block, records, reader)  # a 1.0 map took 512s of it
        # Only regular files carry data (the caller may read it with
        # reader.data()); the other types are header-only whatever their size
        # field says (as Go's archive/tar).
        if kind in REGULAR:
            reader._left, reader._padding = stored, padding  # what data() reads
            yield e
            if reader._left or reader._padding:  # the caller did not read it all
                reader.end_member()
        else:
            yield e


def _read_sparse(e: Member, block: bytes, records: dict[bytes, bytes], reader: TarStream) -> int:
    """Read a GNU sparse member's map into e.sparse, e.size its real size; return its data's size."""
    if e.type not in REGULAR:
        raise Refused(f"a sparse map on a member of type {e.type!r}", e.name)
    try:
        if e.type == b"S":
            e.sparse, stored = tarsparse.old_gnu_map(block, reader, e.size, _number), e.size
        else:
            version = tarsparse.pax_version(records)
            e.sparse, stored = tarsparse.pax_map(version, records, reader, e.size)
    except tarsparse.SparseError as err:
        raise Refused(str(err), e.name) from None
    e.size = e.sparse.size
    return stored


def _xattrs(records: dict[bytes, bytes]) -> dict[bytes, bytes] | None:
    """Return the xattrs pax records carry: SCHILY.xattr.NAME=VALUE, LIBARCHIVE.xattr.*.

    bsdtar writes LIBARCHIVE.xattr.<NAME, %-escaped>=<VALUE in unpadded
    base64>, and SCHILY.xattr for the same xattr unless its name is not
    UTF-8; where both name one, SCHILY's wins, as Go's archive/tar (which
    reads only those) and so umoci apply it.
    """
    xattrs = {}
    for key, value in records.items():
        if key.startswith(b"LIBARCHIVE.xattr."):
            try:
                name = urllib.parse.unquote_to_bytes(key[17:])
                padded = value + b"=" * (-len(value) % 4)  # libarchive leaves out the padding
                xattrs.setdefault(name, base64.b64decode(padded, validate=True))
            except ValueError:
                raise ValueError(f"pax record {key[:60]!r} is not base64") from None
    xattrs.update((k[13:], v) for k, v in records.items() if k.startswith(b"SCHILY.xattr."))
    return xattrs or None
