"""The tar reader against Python's tarfile: what tarfile writes, minict.tar reads the same.

The archives are written by tarfile in its three formats (USTAR, GNU, PAX)
from members hypothesis draws: every type minict applies, long and unicode
names and link names, numbers past what octal fields hold (GNU writes them
base-256, PAX as records), fractional pax mtimes, SCHILY.xattr records.
The reader is fed the archive in pieces of random sizes, as the inflate
thread hands them over, and reads some members' data and leaves the rest
(the reader must skip what was not read).  GNU sparse members (random maps
in the four forms, which tarfile reads but does not write) are compared
with what tarfile reads of them.  No root: the reader writes nothing.
"""

import io
import random
import tarfile
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minict.bundle.tar import REGULAR, TarStream, members
from minict.bundle.tarsparse import place
from minict.errors import UnpackError
from tests.support.sparse_tar import END, sparse_member

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
_TEXT = st.characters(blacklist_categories=("Cs",))  # any character UTF-8 can encode
_NAME_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
# Short names, and long ones: past ustar's 100 bytes (ASCII ones ustar splits
# into prefix and name) and past 255, within PATH_MAX (4096).
names = st.one_of(
    st.lists(st.text(_NAME_CHAR, min_size=1, max_size=20), min_size=1, max_size=4),
    st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="/"),
                     min_size=10, max_size=30), min_size=4, max_size=8),
    st.lists(st.text(_NAME_CHAR, min_size=20, max_size=40), min_size=6, max_size=10),
).map("/".join)
# Small numbers fit every format's octal fields; large ones need base-256 or a pax record.
ids = st.one_of(st.integers(0, 65535), st.integers(0, 2**32 - 2))
# The reader takes mtimes up to what utimensat takes in nanoseconds (the year 2262).
MTIME_MAX = (2**63 - 1) // 1_000_000_000
mtimes = st.one_of(
    st.integers(0, 8**11 - 1),
    st.integers(8**11, MTIME_MAX),
    # A fraction: pax writes the float's text.  (Not one written with an
    # exponent, "1e-05": the reader, like Go's archive/tar, refuses that.)
    st.floats(0, MTIME_MAX - 1, allow_nan=False).filter(lambda f: "e" not in str(f)),
)
xattrs = st.dictionaries(
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="="),
            min_size=1, max_size=20).map(lambda k: "user." + k),
    st.text(_TEXT, max_size=30), max_size=3)


@st.composite
def tar_members(draw) -> tuple[tarfile.TarInfo, bytes | None, bool]:
    """Return (TarInfo, data for regular files, whether the reader should read it)."""
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE,
                                      tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                      tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid, info.gid, info.mtime = draw(ids), draw(ids), draw(mtimes)
    data = None
    if info.type in REGULAR:
        data = draw(st.binary(max_size=1200))
        info.size = len(data)
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(names)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor = draw(st.one_of(st.integers(0, 4095), st.integers(0, 2**31)))
        info.devminor = draw(st.one_of(st.integers(0, 2**20 - 1), st.integers(0, 2**31)))
    info.pax_headers = {"SCHILY.xattr." + k: v for k, v in draw(xattrs).items()}
    return info, data, draw(st.booleans())


class Pieces:
    """The archive handed over in pieces of the given sizes, as LayerStream.read_piece does."""

    def __init__(self, data: bytes, sizes: list[int]):
        self._data, self._sizes, self._pos = data, sizes, 0

    def read_piece(self) -> bytes:
        size = self._sizes[self._pos % len(self._sizes)] if self._sizes else len(self._data)
        piece = self._data[self._pos:self._pos + size]
        self._pos += len(piece)
        return piece


def write_archive(entries, fmt: int, global_pax: dict) -> tuple[bytes, list]:
    """Write `entries` with tarfile; return the archive and the entries it took.

    tarfile refuses what a format cannot hold (a 200-byte name in USTAR, a
    large uid in USTAR, a large device number outside GNU) with ValueError
    before it writes anything of that member: such a member is left out.
    """
    buf = io.BytesIO()
    written = []
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_pax) as tar:
        for info, data, read in entries:
            try:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
            except ValueError:
                continue
            written.append((info, data, read))
    return buf.getvalue(), written


def expected(info: tarfile.TarInfo, data: bytes | None, fmt: int) -> tuple:
    """The member as written: what the reader must return for it."""
    name = info.name.encode()
    if info.type == tarfile.DIRTYPE:
        name += b"/"  # tarfile writes a directory's name with a trailing slash
    if fmt == tarfile.PAX_FORMAT and isinstance(info.mtime, float):
        mtime_ns = int(Decimal(str(info.mtime)) * 1_000_000_000)  # the pax record's text
    else:
        mtime_ns = int(info.mtime) * 1_000_000_000  # the octal or base-256 field: whole seconds
    device = (info.devmajor, info.devminor) if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (0, 0)
    xattrs = None
    if fmt == tarfile.PAX_FORMAT and info.pax_headers:  # only pax carries records
        xattrs = {k[len("SCHILY.xattr."):].encode(): v.encode() for k, v in info.pax_headers.items()}
    return (name, info.type, info.size, info.mode, info.uid, info.gid, mtime_ns,
            info.linkname.encode(), *device, xattrs, data)


def read_archive(archive: bytes, sizes: list[int], read_data: list[bool]) -> list[tuple]:
    stream = TarStream(Pieces(archive, sizes))
    found = []
    for i, m in enumerate(members(stream)):
        data = None
        if m.type in REGULAR and read_data[i]:
            data = b"".join(bytes(chunk) for chunk in stream.data())
        found.append((m.name, m.type, m.size, m.mode, m.uid, m.gid, m.mtime_ns, m.linkname,
                      m.devmajor, m.devminor, m.xattrs, data))
    stream.drain()
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(FORMATS)),
       entries=st.lists(tar_members(), min_size=1, max_size=6),
       sizes=st.lists(st.integers(1, 3000), max_size=4),
       comment=st.none() | st.text(_TEXT, max_size=20))
def test_reads_what_tarfile_writes(fmt, entries, sizes, comment):
    fmt = FORMATS[fmt]
    global_pax = {"comment": comment} if comment is not None and fmt == tarfile.PAX_FORMAT else {}
    archive, written = write_archive(entries, fmt, global_pax)
    want = [expected(info, data if read else None, fmt) for info, data, read in written]
    assert read_archive(archive, sizes, [read for _, _, read in written]) == want


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("size", [8**11, 2**40 + 3, 2**63 - 1])
def test_sizes_past_the_octal_field_are_read_before_the_data(fmt, size):
    # Sizes no test can write out: the header alone, as tarfile writes it
    # (base-256 for GNU, a size record for PAX); the data is then missing.
    info = tarfile.TarInfo("big")
    info.size = size
    archive = info.tobuf(FORMATS[fmt])
    assert (archive[124] & 0x80) if fmt == "gnu" else (b"size=" in archive)
    stream = TarStream(Pieces(archive + b"x" * 600, []))
    member = next(members(stream))
    assert (member.name, member.size) == (b"big", size)
    with pytest.raises(UnpackError, match="ends in the middle of a file"):
        for _ in stream.data():
            pass


@pytest.mark.parametrize("mtime", [-1, -86400 * 365 * 100, -(8**11) - 5])
def test_a_time_before_1970_is_read_as_gnu_tar_writes_it(mtime):
    # GNU tar (and tarfile's GNU format) writes a negative mtime in
    # two's-complement base-256; Go's archive/tar and umoci read it.
    info = tarfile.TarInfo("old")
    info.mtime = mtime
    archive = info.tobuf(tarfile.GNU_FORMAT)
    assert archive[136] == 0xFF
    member = next(members(TarStream(Pieces(archive + bytes(1024), []))))
    assert member.mtime_ns == mtime * 1_000_000_000


def test_a_negative_size_or_id_is_still_refused():
    info = tarfile.TarInfo("bad")
    info.uid = -5
    archive = info.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(ValueError, match="negative number"):  # apply.py: "invalid tar: ..."
        next(members(TarStream(Pieces(archive + bytes(1024), []))))


# -- GNU sparse members, read as tarfile reads them ---------------------------------

@st.composite
def sparse_maps(draw) -> tuple[int, list[tuple[int, int]]]:
    """Return (real size, [(offset, length), ...]): segments in order, holes between and after."""
    segments, end = [], 0
    for gap, length in draw(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 1500)),
                                     max_size=30)):
        segments.append((end + gap, length))
        end += gap + length
    return end + draw(st.integers(0, 3000)), segments


def _read_sparse_archive(archive: bytes, sizes: list[int]) -> list[tuple]:
    stream = TarStream(Pieces(archive, sizes))
    found = []
    for m in members(stream):
        content = bytearray(m.size)
        if m.sparse is None:
            content[:] = b"".join(bytes(chunk) for chunk in stream.data())
        else:
            for offset, piece in place(m.sparse, stream.data()):
                content[offset:offset + len(piece)] = piece
        found.append((m.name, m.size, bytes(content)))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(["gnu", "0.0", "0.1", "1.0"]), sparse=sparse_maps(),
       name=st.text(_NAME_CHAR, min_size=1, max_size=20), seed=st.integers(0, 2**32),
       sizes=st.lists(st.integers(1, 3000), max_size=4))
def test_reads_sparse_members_as_tarfile_does(form, sparse, name, seed, sizes):
    # No tool writes random maps: the members are written by hand in the four
    # forms GNU tar writes (tests.support.sparse_tar), and tarfile reads them too.
    real_size, segments = sparse
    assume(segments or form != "0.1")  # tarfile fails on an empty GNU.sparse.map (GNU tar too)
    data = random.Random(seed).randbytes(sum(length for _, length in segments))
    after = tarfile.TarInfo("after")  # the reader must land on the next member
    after.size = 3
    archive = (sparse_member(form, name, real_size, segments, data)
               + after.tobuf(tarfile.GNU_FORMAT) + b"abc".ljust(512, b"\0") + END)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        want = [(m.name.encode(), m.size, tar.extractfile(m).read()) for m in tar]
    assert _read_sparse_archive(archive, sizes) == want
    assert want[0][1] == real_size
