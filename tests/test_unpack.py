"""Layer semantics: each case applies layers built by the test image builder.

Whiteouts, type changes, links, devices, modes, owners, mtimes, xattrs and
the three compressions go through the real LayerStream + apply_layer path.
"""

import gzip
import io
import os
import stat
import tarfile

import pytest

from minict.bundle.apply import apply_layer
from minict.bundle.layerstream import LayerStream
from minict.errors import UnpackError
from tests.support.images import (
    BlockDevice,
    CharDevice,
    Dir,
    Fifo,
    File,
    Hardlink,
    Opaque,
    Symlink,
    Whiteout,
    tar_layer,
)
from tests.support.layers import describe, tree, unpack_layers

pytestmark = pytest.mark.root  # owners, devices and trusted xattrs need root

BASE = [Dir("etc"), File("etc/hosts", b"127.0.0.1 localhost\n"), Dir("usr"), Dir("usr/lib"),
        File("usr/lib/a.so", b"AAA"), Dir("usr/lib/sub"), File("usr/lib/sub/b", b"B"),
        Symlink("lib", "usr/lib")]


def unpacked(tmp_path, *layers, compression=None):
    return unpack_layers(tmp_path / "rootfs", layers, compression)


# -- whiteouts ------------------------------------------------------------------


def test_whiteout_removes_a_lower_file(tmp_path):
    root = unpacked(tmp_path, BASE, [Whiteout("etc/hosts")])
    assert not (root / "etc/hosts").exists()
    assert (root / "etc").is_dir()


def test_whiteout_removes_a_lower_directory_tree(tmp_path):
    root = unpacked(tmp_path, BASE, [Whiteout("usr/lib")])
    assert os.listdir(root / "usr") == []
    assert (root / "lib").is_symlink()  # the symlink to it is another entry


def test_whiteout_of_a_symlink_removes_the_link_not_its_target(tmp_path):
    root = unpacked(tmp_path, BASE, [Whiteout("lib")])
    assert not os.path.lexists(root / "lib")
    assert (root / "usr/lib/a.so").read_bytes() == b"AAA"


def test_whiteout_never_removes_what_the_same_layer_wrote(tmp_path):
    # Both orders: the whiteout before and after the member it names.
    root = unpacked(tmp_path, BASE, [File("etc/new", b"1"), Whiteout("etc/new"),
                                     Whiteout("etc/later"), File("etc/later", b"2")])
    assert (root / "etc/new").read_bytes() == b"1"
    assert (root / "etc/later").read_bytes() == b"2"


def test_whiteout_of_a_lower_directory_spares_this_layers_members_in_it(tmp_path):
    root = unpacked(tmp_path, BASE, [File("usr/lib/new", b"N"), Whiteout("usr/lib")])
    assert sorted(os.listdir(root / "usr/lib")) == ["new"]


def test_whiteout_of_a_missing_path_is_harmless(tmp_path):
    root = unpacked(tmp_path, BASE, [Whiteout("etc/none"), Whiteout("nodir/none")])
    assert not (root / "nodir").exists()
    assert (root / "etc/hosts").exists()


@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_directory_hides_lower_content_only(tmp_path, opaque_first):
    upper = [Dir("usr/lib"), File("usr/lib/c", b"C")]
    upper = [Opaque("usr/lib")] + upper if opaque_first else upper + [Opaque("usr/lib")]
    root = unpacked(tmp_path, BASE, upper)
    assert sorted(os.listdir(root / "usr/lib")) == ["c"]
    assert (root / "usr/lib/c").read_bytes() == b"C"


def test_opaque_root_directory(tmp_path):
    root = unpacked(tmp_path, BASE, [Opaque(""), File("only", b"1")])
    assert os.listdir(root) == ["only"]


def test_a_whiteout_carrying_data_is_read_past(tmp_path):
    # Whiteouts are empty files; one with data must not have that data read as headers.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((".wh.hosts", b"x" * 600), ("after", b"1")):
            info = tarfile.TarInfo(f"etc/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    root = unpacked(tmp_path, BASE, buf.getvalue())
    assert not (root / "etc/hosts").exists()
    assert (root / "etc/after").read_bytes() == b"1"


def test_whiteout_entries_are_not_materialised(tmp_path):
    root = unpacked(tmp_path, BASE, [Whiteout("etc/hosts"), Opaque("usr"),
                                     File("usr/.wh..wh.plnk", b"")])
    names = [p for p in tree(root) if ".wh." in p]
    assert names == []


# -- a path changing type across layers ------------------------------------------

KINDS = {
    "file": (lambda p: [File(p, b"file")], stat.S_IFREG),
    "dir": (lambda p: [Dir(p), File(p + "/inner", b"i")], stat.S_IFDIR),
    "symlink": (lambda p: [Symlink(p, "etc/hosts")], stat.S_IFLNK),
}


@pytest.mark.parametrize("lower", KINDS)
@pytest.mark.parametrize("upper", KINDS)
def test_type_changes_across_layers(tmp_path, lower, upper):
    root = unpacked(tmp_path, BASE + KINDS[lower][0]("x"), KINDS[upper][0]("x"))
    assert stat.S_IFMT(os.lstat(root / "x").st_mode) == KINDS[upper][1]
    if upper == "dir":
        assert os.listdir(root / "x") == ["inner"]
    if upper == "file":
        assert (root / "x").read_bytes() == b"file"
    assert (root / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"


def test_replacing_a_hardlinked_file_leaves_its_other_name_alone(tmp_path):
    root = unpacked(tmp_path, [File("a", b"old"), Hardlink("b", "a")], [File("a", b"new")])
    assert (root / "a").read_bytes() == b"new"
    assert (root / "b").read_bytes() == b"old"


# -- links --------------------------------------------------------------------------


@pytest.mark.parametrize("linkname", ["usr/lib/a.so", "/usr/lib/a.so", "./usr/lib/a.so"])
def test_hardlinks_share_the_inode(tmp_path, linkname):
    root = unpacked(tmp_path, BASE + [Hardlink("etc/a.so", linkname)])
    assert os.stat(root / "etc/a.so").st_ino == os.stat(root / "usr/lib/a.so").st_ino
    assert os.stat(root / "etc/a.so").st_nlink == 2


def test_hardlink_to_a_lower_layers_file(tmp_path):
    root = unpacked(tmp_path, BASE, [Hardlink("hosts2", "etc/hosts")])
    assert os.stat(root / "hosts2").st_ino == os.stat(root / "etc/hosts").st_ino


def test_hardlink_to_a_symlink_links_the_symlink(tmp_path):
    root = unpacked(tmp_path, BASE + [Symlink("out", "/etc/shadow"), Hardlink("out2", "out")])
    assert os.readlink(root / "out2") == "/etc/shadow"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../etc", "usr/lib", "missing/x"])
def test_symlinks_are_kept_verbatim(tmp_path, target):
    root = unpacked(tmp_path, BASE + [Symlink("s", target, uid=7, gid=8, mtime=1234)])
    assert os.readlink(root / "s") == target
    st = os.lstat(root / "s")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (7, 8, 1234)


# -- owners, modes, mtimes ------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o4755, 0o2755, 0o6711, 0o1777, 0o000, 0o7777])
def test_file_modes_with_special_bits_survive_chown(tmp_path, mode):
    root = unpacked(tmp_path, [File("f", b"x", mode=mode, uid=1000, gid=1001),
                               Dir("d", mode=mode | 0o700, uid=5, gid=6)])
    st = os.stat(root / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 1000, 1001)
    st = os.stat(root / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode | 0o700, 5, 6)


def test_large_ids_in_base_256(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("big")
        info.uid, info.gid, info.size = 3_000_000, 4_000_000, 2
        tar.addfile(info, io.BytesIO(b"hi"))
    root = unpacked(tmp_path, buf.getvalue())
    st = os.stat(root / "big")
    assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)


def test_mtimes_and_directories_last(tmp_path):
    root = unpacked(tmp_path, [Dir("d", mtime=1_000_000), File("d/f", b"x", mtime=2_000_000),
                               Dir("d/e", mtime=3_000_000), File("d/e/g", mtime=4_000_000)])
    assert os.stat(root / "d").st_mtime == 1_000_000
    assert os.stat(root / "d/e").st_mtime == 3_000_000
    assert os.stat(root / "d/f").st_mtime == 2_000_000


LOWER_DIRS = [Dir("d", mtime=1_000_000), File("d/old", b"o"), Dir("d/sub", mtime=1_500_000),
              File("d/sub/x", b"x")]


# (second layer, expected mtimes): a directory the layer changes without listing
# it keeps the lower layer's mtime (umoci restores it); one it lists gets its own.
@pytest.mark.parametrize(("upper", "expected"), [
    ([File("d/new", b"n", mtime=9_000_000)], {"d": 1_000_000, "d/new": 9_000_000}),
    ([File("d/sub/deeper/new", b"n")], {"d": 1_000_000, "d/sub": 1_500_000}),
    ([Whiteout("d/old")], {"d": 1_000_000}),
    ([Opaque("d")], {"d": 1_000_000}),
    ([File("d/old", b"replaced")], {"d": 1_000_000}),
    ([Dir("d", mtime=7_000_000), File("d/new", b"n")], {"d": 7_000_000}),
    ([File("d/new", b"n"), Dir("d", mtime=7_000_000)], {"d": 7_000_000}),
    ([Dir("d", mtime=7_000_000), Whiteout("d/sub")], {"d": 7_000_000}),
    ([File("top", b"t")], {"d": 1_000_000, "d/sub": 1_500_000}),
], ids=["add", "add-below-new-dir", "whiteout", "opaque", "replace", "listed", "listed-after",
        "listed-whiteout", "elsewhere"])
def test_directory_mtimes_across_layers(tmp_path, upper, expected):
    root = unpacked(tmp_path, [Dir(".", mtime=500_000), *LOWER_DIRS], upper)
    mtimes = {path: os.lstat(root / path).st_mtime_ns // 1_000_000_000 for path in expected}
    assert mtimes == expected
    assert os.lstat(root).st_mtime_ns == 500_000 * 1_000_000_000  # the root, changed too


def test_pax_mtime_keeps_nanoseconds(tmp_path):
    root = unpacked(tmp_path, [File("f", b"x", pax={"mtime": "1606343129.546718343"})])
    assert os.stat(root / "f").st_mtime_ns == 1606343129_546718343


@pytest.mark.parametrize("name", [".", "./", "/", "//", "/."])
def test_root_entry_sets_the_roots_metadata(tmp_path, name):
    # umoci writes the root as "." in repacked layers and as "/" in inserted ones.
    root = unpacked(tmp_path, [Dir(name, mode=0o751, uid=3, gid=4), File("./a", b"1")])
    st = os.stat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o751, 3, 4)


def test_missing_parents_are_created(tmp_path):
    root = unpacked(tmp_path, [File("x/y/z", b"1")])
    assert (root / "x/y/z").read_bytes() == b"1"
    assert stat.S_IMODE(os.stat(root / "x/y").st_mode) == 0o755


def test_long_names_pax_and_gnu(tmp_path):
    long = "/".join(["d" * 60] * 3) + "/" + "f" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("g" * 150)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"g"))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.SYMTYPE, "t" * 200
        tar.addfile(link)
    root = unpacked(tmp_path, [File(long, b"p")], buf.getvalue())
    assert (root / long).read_bytes() == b"p"
    assert (root / ("g" * 150)).read_bytes() == b"g"
    assert os.readlink(root / "l") == "t" * 200


# -- devices, fifos, xattrs ------------------------------------------------------------


def test_devices_and_fifos(tmp_path):
    root = unpacked(tmp_path, [Dir("dev"), CharDevice("dev/null", 1, 3, mode=0o666),
                               BlockDevice("dev/loop9", 7, 9, mode=0o660, gid=6),
                               Fifo("dev/initctl", mode=0o600)])
    st = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(root / "dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 9) and st.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(root / "dev/initctl").st_mode)


CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")  # cap_net_raw+ep


def test_xattrs_including_security_capability(tmp_path):
    root = unpacked(tmp_path, [
        File("ping", b"ELF", mode=0o755, uid=0, gid=0,
             xattrs={"security.capability": CAPABILITY, "user.note": b"\x00\xffbinary"}),
        Dir("d", xattrs={"trusted.overlay.opaque": b"y"}),
    ])
    assert os.getxattr(root / "ping", "security.capability") == CAPABILITY
    assert os.getxattr(root / "ping", "user.note") == b"\x00\xffbinary"
    assert os.getxattr(root / "d", "trusted.overlay.opaque") == b"y"


def test_an_xattr_the_file_system_refuses_is_a_warning(tmp_path, capsys):
    root = unpacked(tmp_path, [File("f", b"1", xattrs={"bogus.ns": b"v"})])
    assert (root / "f").read_bytes() == b"1"
    assert "cannot set xattr bogus.ns" in capsys.readouterr().err


# -- compression and stream checks -----------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_compressions(tmp_path, compression):
    data = os.urandom(3 << 20)  # spans many pieces between the threads
    root = unpacked(tmp_path, BASE + [File("big", data)], compression=compression)
    assert (root / "big").read_bytes() == data
    assert describe(root / "usr/lib/a.so")[5] is not None


def test_multi_member_gzip(tmp_path):
    tar = tar_layer(BASE)
    blob = gzip.compress(tar[:5000]) + gzip.compress(tar[5000:])
    (tmp_path / "blob").write_bytes(blob)
    (tmp_path / "rootfs").mkdir()
    fd = os.open(tmp_path / "rootfs", os.O_RDONLY)
    try:
        with LayerStream(tmp_path / "blob", "gzip") as stream:
            apply_layer(fd, stream, "two-members")
    finally:
        os.close(fd)
    assert (tmp_path / "rootfs/usr/lib/sub/b").read_bytes() == b"B"


def test_truncated_gzip_is_an_error(tmp_path):
    blob = gzip.compress(tar_layer(BASE + [File("big", os.urandom(1 << 20))]))
    (tmp_path / "blob").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "rootfs").mkdir()
    fd = os.open(tmp_path / "rootfs", os.O_RDONLY)
    try:
        with pytest.raises(UnpackError, match="truncated|ends in the middle"), \
                LayerStream(tmp_path / "blob", "gzip") as stream:
            apply_layer(fd, stream, "cut")
    finally:
        os.close(fd)


@pytest.mark.unprivileged
def test_not_a_tar_is_an_error(tmp_path):
    with pytest.raises(UnpackError, match="layer junk-0: invalid tar: .*not a tar stream"):
        unpack_layers(tmp_path / "rootfs", [os.urandom(2048)], name="junk")


def test_a_stream_cut_after_the_last_files_data_is_accepted(tmp_path):
    # What umoci 0.4.7's `insert` writes: no padding, no end-of-archive blocks.
    tar = tar_layer([Dir("d"), File("d/f", b"abcdef")])
    cut = tar[:512 * 2 + 6]  # d/, d/f's header, its data
    root = unpacked(tmp_path, cut)
    assert (root / "d/f").read_bytes() == b"abcdef"


def test_a_stream_cut_inside_a_files_data_is_an_error(tmp_path):
    tar = tar_layer([Dir("d"), File("d/f", b"abcdef")])
    with pytest.raises(UnpackError, match="ends in the middle of a file"):
        unpacked(tmp_path, tar[:512 * 2 + 3])


def test_many_directories_leak_no_descriptors(tmp_path):
    # More directories than the descriptor cache holds, revisited out of order.
    layer = [Dir(f"d{i}") for i in range(600)]
    layer += [File(f"d{i}/f", b"x") for i in range(599, -1, -7)]
    before = len(os.listdir("/proc/self/fd"))
    root = unpacked(tmp_path, layer, [Whiteout("d3"), File("d5/g", b"y")])
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(os.listdir(root)) == 599 and (root / "d5/g").exists()
