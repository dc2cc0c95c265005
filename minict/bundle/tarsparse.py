"""GNU sparse members: where a sparse file's data lies, read from the archive and bounded.

    sparse = old_gnu_map(block, reader, stored, number)     # type 'S': header + extensions
    sparse, left = pax_map(version, records, reader, stored)  # pax 0.0, 0.1, 1.0
    write_sparse(fd, sparse, stream.data())   # the segments where they go, holes between

A sparse member stores only its data segments, one after another; the map
says at which offset of the real file each goes, and the real size (the
file may end in a hole).  minict.bundle.tar calls this module while it reads
a member's header; minict.bundle.apply has write_sparse write the segments
where `place` says, seeking over the holes.  The four forms GNU tar writes,
read as Go's archive/tar and Python's tarfile read them:

    old GNU   type 'S': four (offset, length) pairs in the header, then
              512-byte extension blocks of 21 while "isextended" is set;
              the real size in the header's realsize field.
    pax 0.0   GNU.sparse.size, GNU.sparse.numblocks and GNU.sparse.offset /
              GNU.sparse.numbytes records repeated (minict.bundle.tar collects
              them, in order, into GNU.sparse.map, as Go does).
    pax 0.1   GNU.sparse.size, GNU.sparse.numblocks, GNU.sparse.map "o,n,o,n,...".
    pax 1.0   GNU.sparse.major=1, GNU.sparse.minor=0, GNU.sparse.realsize,
              GNU.sparse.name; the map opens the data: decimal lines (the
              count, then offset and length for each), padded to 512 bytes.

Bounds (a map is a few bytes that may claim anything): at most
SPARSE_ENTRIES_MAX entries (what a 1 MiB map can spell, and the cap Go's
archive/tar puts on the pax records 0.x maps live in), a 1.0 map of at most
MAP_MAX bytes, held as one array of 64-bit numbers (4 MiB at most); a
real size of at most SPARSE_SIZE_MAX; segments in order, not overlapping,
within the real size; and the segments' lengths must add up to the data the
member stores.  Past any of them, or for a malformed map: SparseError (which
minict.bundle.tar raises as its Refused, naming the member).
"""

import os
from array import array

# As minict.bundle.tar's SPECIAL_MAX: Go's archive/tar caps pax headers (where 0.x maps live) at 1 MiB.
MAP_MAX = 1 << 20
SPARSE_ENTRIES_MAX = MAP_MAX // 4  # "0\n0\n" is the shortest entry a map can spell
# ext4's largest file (16 TiB with 4 KiB blocks); a map claiming more is hostile.
SPARSE_SIZE_MAX = 1 << 44
_OFFSET_MAX = 2**63 - 1  # off_t


class SparseError(ValueError):
    """A sparse map that is malformed or past a bound."""


class SparseMap:
    """The real size of a sparse file and its data segments: `entries` is [offset, length, ...]."""

    __slots__ = ("entries", "size")

    def __init__(self, size: int, entries: array):
        self.size = size
        self.entries = entries

    def segments(self):
        """Yield (offset, length) of each data segment, in order."""
        entries = self.entries
        for i in range(0, len(entries), 2):
            yield entries[i], entries[i + 1]


def _check(sparse: SparseMap, stored: int) -> SparseMap:
    """Return `sparse` if it is a map of `stored` bytes of data; raise SparseError otherwise."""
    if not 0 <= sparse.size <= SPARSE_SIZE_MAX:
        raise SparseError(f"sparse file of {sparse.size} bytes is larger than "
                          f"{SPARSE_SIZE_MAX} bytes")
    end = total = 0
    for offset, length in sparse.segments():
        if offset < end or length < 0 or offset + length > sparse.size:
            raise SparseError("sparse map with a segment out of order, overlapping or past "
                              f"the file's size ({offset}+{length} of {sparse.size} bytes)")
        end = offset + length
        total += length
    if total != stored:
        raise SparseError(f"sparse map of {total} bytes of data for {stored} stored bytes")
    return sparse


def _count(n: int) -> int:
    if not 0 <= n <= SPARSE_ENTRIES_MAX:
        raise SparseError(f"sparse map of {n} entries (at most {SPARSE_ENTRIES_MAX})")
    return n


def _decimal(text: bytes, what: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise SparseError(f"sparse map: {what} is not a number")
    value = int(text)
    if value > _OFFSET_MAX:
        raise SparseError(f"sparse map: {what} is out of range")
    return value


# -- old GNU ----------------------------------------------------------------------


def old_gnu_map(block: bytes, reader, stored: int, number) -> SparseMap:
    """Return the map of a type 'S' member whose header is `block`; read its extension blocks.

    `number` parses a numeric header field (minict.bundle.tar's, octal or base-256).
    """
    if block[257:265] != b"ustar  \0":
        raise SparseError("type 'S' member that is not in the GNU format")
    entries = array("q")
    _old_gnu_entries(block[386:482], 4, entries, number)
    extended = block[482]
    while extended:
        extension = reader.read(512)
        _old_gnu_entries(extension, 21, entries, number)
        extended = extension[504]
    return _check(SparseMap(number(block[483:495]), entries), stored)


def _old_gnu_entries(data: bytes, count: int, entries: array, number) -> None:
    for i in range(count):
        field = data[i * 24:i * 24 + 24]
        if field[0] == 0:  # the end of the list, as GNU and BSD tar (and Go) read it
            return
        _count(len(entries) // 2 + 1)
        for value in (number(field[:12]), number(field[12:])):
            if value > _OFFSET_MAX:
                raise SparseError("sparse map: an offset or length is out of range")
            entries.append(value)


# -- pax --------------------------------------------------------------------------


def pax_version(records: dict[bytes, bytes]) -> str | None:
    """Return "0.x" or "1.0" for a member the records make sparse, None for others."""
    major, minor = records.get(b"GNU.sparse.major"), records.get(b"GNU.sparse.minor")
    if major == b"0" and minor in (b"0", b"1"):
        return "0.x"
    if major == b"1" and minor == b"0":
        return "1.0"
    if major is not None or minor is not None:
        return None  # a version nobody writes: not read as sparse (Go does the same)
    # Go asks for a map; GNU tar and tarfile read GNU.sparse.size alone as a
    # 0.0 member without segments (all hole), and so does minict.
    return "0.x" if b"GNU.sparse.map" in records or b"GNU.sparse.size" in records else None


def pax_map(version: str, records: dict[bytes, bytes], reader,
            stored: int) -> tuple[SparseMap, int]:
    """Return (the map, the bytes of data left) of a pax sparse member.

    For 1.0 the map is read from the start of the member's data (`stored`
    bytes); for 0.x it is in the records.
    """
    size = records.get(b"GNU.sparse.size", records.get(b"GNU.sparse.realsize"))
    if size is None:
        raise SparseError("sparse member without GNU.sparse.size or GNU.sparse.realsize")
    real_size = _decimal(size, "the real size")
    entries = array("q")
    if version == "1.0":
        used = _read_map_1x0(reader, stored, entries)
        stored -= used
    else:
        count = _count(_decimal(records.get(b"GNU.sparse.numblocks", b""), "numblocks"))
        text = records.get(b"GNU.sparse.map", b"")
        numbers = text.split(b",") if text else []
        if len(numbers) != 2 * count:
            raise SparseError(f"sparse map of {len(numbers) // 2} entries where numblocks "
                              f"says {count}")
        entries.extend(_decimal(n, "an offset or length") for n in numbers)
    return _check(SparseMap(real_size, entries), stored), stored


def _read_map_1x0(reader, stored: int, entries: array) -> int:
    """Read a 1.0 map from the data into `entries`; return the bytes it took (512s)."""
    blocks: list[bytes] = []
    lines = 0  # newlines read so far
    count = None
    while count is None or lines < 2 * count + 1:
        if 512 * (len(blocks) + 1) > min(stored, MAP_MAX):
            raise SparseError("sparse map longer than its member's data or than "
                              f"{MAP_MAX} bytes")
        block = reader.read(512)
        blocks.append(block)
        lines += block.count(b"\n")
        if count is None:  # the count's line fits in the first block
            count = _count(_decimal(block.split(b"\n", 1)[0], "the entry count"))
    numbers = b"".join(blocks).split(b"\n", 2 * count + 1)[1:2 * count + 1]
    entries.extend(_decimal(n, "an offset or length") for n in numbers)
    return 512 * len(blocks)


def collect_pax_0x0(key: bytes, value: bytes, pairs: list[bytes]) -> None:
    """Keep a pax 0.0 GNU.sparse.offset or .numbytes record, in order (Go's check of the order)."""
    want = b"GNU.sparse.offset" if len(pairs) % 2 == 0 else b"GNU.sparse.numbytes"
    if key != want or b"," in value:
        raise SparseError("pax 0.0 sparse records out of order")
    pairs.append(value)


# -- writing ----------------------------------------------------------------------


def place(sparse: SparseMap, chunks):
    """Yield (offset in the real file, piece) for the member's stored data `chunks`."""
    segments = sparse.segments()
    offset = left = 0
    for chunk in chunks:
        while chunk:
            while not left:
                offset, left = next(segments)  # the map was checked to cover the data
            piece = chunk[:left]
            yield offset, piece
            offset += len(piece)
            left -= len(piece)
            chunk = chunk[len(piece):]


def write_sparse(fd: int, sparse: SparseMap, chunks) -> None:
    """Write a sparse member's data `chunks` into the new file `fd`: holes are skipped over."""
    for offset, piece in place(sparse, chunks):
        while piece:
            written = os.pwrite(fd, piece, offset)
            piece, offset = piece[written:], offset + written
    os.ftruncate(fd, sparse.size)  # the file may end in a hole
