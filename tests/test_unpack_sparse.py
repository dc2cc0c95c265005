"""Hostile GNU sparse maps: each is one clear UnpackError naming the layer and the entry.

A sparse map is a few bytes that may claim anything: petabytes of holes,
millions of entries, segments past the real size or over each other, more or
less data than the member stores.  No tool writes these, so the members are
written by hand in the four forms GNU tar writes (tests.support.sparse_tar,
whose well-formed output tarfile reads: see tests/test_tar.py).  The
well-formed forms, as GNU tar writes them, are round-tripped in
tests/test_tar_builders.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minict.bundle.tarsparse import MAP_MAX, SPARSE_ENTRIES_MAX, SPARSE_SIZE_MAX
from minict.errors import UnpackError
from tests.support.layers import unpack_layers
from tests.support.sparse_tar import END, old_gnu, pax_member, sparse_member

pytestmark = pytest.mark.root

FORMS = ["gnu", "0.0", "0.1", "1.0"]


def refused(tmp_path, archive: bytes, *words: str) -> str:
    with pytest.raises(UnpackError) as caught:
        unpack_layers(tmp_path / "rootfs", [archive + END], name="sparse-layer")
    message = caught.value.message
    assert message.startswith("layer sparse-layer-0: entry 'f': ")
    for word in words:
        assert word in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("form", FORMS)
def test_a_map_claiming_a_petabyte(form, tmp_path):
    member = sparse_member(form, "f", 1 << 50, [(0, 4), (1 << 49, 4)], b"dataDATA")
    refused(tmp_path, member, f"sparse file of {1 << 50} bytes is larger than {SPARSE_SIZE_MAX}")
    assert not (tmp_path / "rootfs/f").exists()


@pytest.mark.parametrize("form", FORMS)
def test_segments_past_the_real_size(form, tmp_path):
    member = sparse_member(form, "f", 50, [(0, 10), (100, 10)], bytes(20))
    refused(tmp_path, member, "past the file's size (100+10 of 50 bytes)")


@pytest.mark.parametrize("form", FORMS)
def test_overlapping_segments(form, tmp_path):
    member = sparse_member(form, "f", 50, [(0, 10), (5, 10)], bytes(20))
    refused(tmp_path, member, "out of order, overlapping")


@pytest.mark.parametrize("form", FORMS)
def test_a_map_of_more_data_than_the_member_stores(form, tmp_path):
    member = sparse_member(form, "f", 5000, [(0, 100), (4000, 1000)], bytes(600))
    refused(tmp_path, member, "1100 bytes of data for 600 stored bytes")


@pytest.mark.parametrize("form", ["0.0", "0.1", "1.0"])
def test_ten_million_entries_are_refused_before_they_are_read(form, tmp_path):
    if form == "1.0":
        member = pax_member("GNUSparseFile.0/f", [
            ("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "f"),
            ("GNU.sparse.realsize", "100")], b"10000000\n0\n1\n".ljust(512, b"\0") + b"x")
    else:
        member = pax_member("f", [("GNU.sparse.size", "100"), ("GNU.sparse.numblocks", "10000000"),
                                  ("GNU.sparse.map", "0,1")], b"x")
    refused(tmp_path, member, f"sparse map of 10000000 entries (at most {SPARSE_ENTRIES_MAX})")


def test_an_old_gnu_chain_of_extension_blocks_past_the_entry_bound(tmp_path):
    segments = [(i, 0) for i in range(SPARSE_ENTRIES_MAX + 1)]  # 12,484 extension blocks
    member = old_gnu("f", SPARSE_ENTRIES_MAX + 1, segments, b"")
    refused(tmp_path, member, f"sparse map of {SPARSE_ENTRIES_MAX + 1} entries")


def test_a_pax_1_0_map_longer_than_a_mebibyte(tmp_path):
    count = SPARSE_ENTRIES_MAX  # allowed, but spelt with long numbers: 2.6 MB of map
    text = f"{count}\n".encode() + b"".join(b"%d\n0\n" % (10**8 + i) for i in range(count))
    member = pax_member("GNUSparseFile.0/f", [
        ("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "f"),
        ("GNU.sparse.realsize", str(2 * 10**8))], text.ljust(-(-len(text) // 512) * 512, b"\0"))
    refused(tmp_path, member, f"sparse map longer than its member's data or than {MAP_MAX} bytes")


_PEAK = """
import sys, tracemalloc
from tests.support.layers import unpack_layers
from tests.support.sparse_tar import END, old_gnu
from minict.bundle.tarsparse import SPARSE_ENTRIES_MAX
archive = old_gnu("f", 2 * SPARSE_ENTRIES_MAX, [(2 * i, 1) for i in range(SPARSE_ENTRIES_MAX)],
                  b"x" * SPARSE_ENTRIES_MAX) + END
tracemalloc.start()
unpack_layers(sys.argv[1], [archive])
print(tracemalloc.get_traced_memory()[1] // 1024)
"""


def test_the_largest_map_allowed_is_applied_in_bounded_memory(tmp_path):
    # 262,144 one-byte segments, each followed by a one-byte hole: the most a
    # map may hold.  The map is an array of 64-bit numbers (4 MiB); with the
    # pieces of the layer in flight the unpack peaks near 8 MiB (measured:
    # 7.4 MiB).  A list of tuples would take 30 MiB for the map alone.
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PEAK, tmp_path / "rootfs"], cwd=repo, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 16 * 1024  # KiB allocated at the peak (tracemalloc)
    content = (tmp_path / "rootfs/f").read_bytes()
    assert len(content) == 2 * SPARSE_ENTRIES_MAX and content[::2] == b"x" * SPARSE_ENTRIES_MAX
    assert content[1::2] == bytes(SPARSE_ENTRIES_MAX)
