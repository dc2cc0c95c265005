"""GNU sparse members written by hand, in the four forms GNU tar writes, for what no tool writes.

    member = sparse_member("0.1", "f", real_size, [(offset, length), ...], data)
    archive = member + END                       # two zero blocks end an archive

GNU tar writes all four forms too (tests use it for the round trips); these
are for hostile maps and for random maps, read back by Python's tarfile as
the oracle.  `data` is the segments' bytes one after another.  Every field
can be set to a lie: nothing here checks the map against the data.
"""

import tarfile

END = bytes(1024)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def _octal(value: int, width: int) -> bytes:
    """A numeric field: octal when it fits, GNU base-256 otherwise."""
    text = b"%0*o\0" % (width - 1, value)
    if len(text) <= width:
        return text
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _checksummed(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def old_gnu(name: str, real_size: int, segments, data: bytes, *,
            extended_per_block: int = 21) -> bytes:
    """A type 'S' member: four map entries in the header, the rest in extension blocks."""
    entries = [_octal(o, 12) + _octal(n, 12) for o, n in segments]
    block = bytearray(512)
    block[0:100] = name.encode().ljust(100, b"\0")
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = _octal(len(data), 12)
    block[136:148] = _octal(1_700_000_000, 12)
    block[156:157] = b"S"
    block[257:265] = b"ustar  \0"
    block[386:386 + 24 * len(entries[:4])] = b"".join(entries[:4])
    rest = entries[4:]
    block[482] = 1 if rest else 0
    block[483:495] = _octal(real_size, 12)
    out = [_checksummed(block)]
    for start in range(0, len(rest), extended_per_block):
        chunk = rest[start:start + extended_per_block]
        extension = bytearray(512)
        extension[0:24 * len(chunk)] = b"".join(chunk)
        extension[504] = 1 if start + extended_per_block < len(rest) else 0
        out.append(bytes(extension))
    return b"".join(out) + _pad(data)


def _record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_member(name: str, records: list[tuple[str, str]], data: bytes) -> bytes:
    """A pax extended header of `records` (in order, keys may repeat), then a regular member."""
    text = b"".join(_record(k, v) for k, v in records)
    header = tarfile.TarInfo("PaxHeaders/" + name[-80:])
    header.type, header.size = tarfile.XHDTYPE, len(text)
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    return (header.tobuf(tarfile.USTAR_FORMAT) + _pad(text)
            + info.tobuf(tarfile.USTAR_FORMAT) + _pad(data))


def sparse_member(form: str, name: str, real_size: int, segments, data: bytes) -> bytes:
    """A sparse member in `form`: "gnu" (old 'S'), "0.0", "0.1" or "1.0", as GNU tar writes it."""
    segments = list(segments)
    if form == "gnu":
        return old_gnu(name, real_size, segments, data)
    if form == "1.0":
        text = f"{len(segments)}\n" + "".join(f"{o}\n{n}\n" for o, n in segments)
        return pax_member(f"GNUSparseFile.0/{name}"[:99], [
            ("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", name),
            ("GNU.sparse.realsize", str(real_size))], _pad(text.encode()) + data)
    records = [("GNU.sparse.size", str(real_size)), ("GNU.sparse.numblocks", str(len(segments)))]
    if form == "0.0":
        for offset, length in segments:
            records += [("GNU.sparse.offset", str(offset)), ("GNU.sparse.numbytes", str(length))]
    else:
        records.append(("GNU.sparse.map", ",".join(f"{o},{n}" for o, n in segments)))
    return pax_member(name, records, data)
