"""Every tar a builder writes: layers made by GNU tar and bsdtar, pulled from a real registry, unpacked.

Each layer is written by a real writer (GNU tar in its gnu, posix and ustar
formats, with --sparse in the four sparse forms; bsdtar with --xattrs),
checked to have the shape it is here for (a type 'S' header with extension
blocks, a pax 1.0 map, base-256 fields, "./" names...), pushed to the real
registry fixture, pulled with `minict pull` and unpacked with bundle.create.
The tree is checked against the source directory and against `umoci unpack`
of the same image, entry by entry (tests.support.layers.describe), where
umoci unpacks it.  No tool writes some shapes (a LIBARCHIVE.xattr record
without its SCHILY twin): those are written by hand, said so where they are.
"""

import base64
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from minict.bundle import create as bundle
from minict.image import reference
from tests.support import ci
from tests.support.images import File, Image, Layer, push, tar_layer, write_layout
from tests.support.layers import describe, tree

pytestmark = pytest.mark.root  # owners, capabilities and times as the layers say

MTIME = 1_700_000_000


def run(*argv, cwd=None) -> str:
    done = subprocess.run([ci.require_tool(argv[0]), *map(str, argv[1:])], capture_output=True,
                          text=True, check=False, cwd=cwd)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def gnu_tar(source: Path, *args, numeric=True) -> bytes:
    """The layer GNU tar writes of `source` (its members named as `args` end)."""
    out = source.parent / f"{source.name}.tar"
    run("tar", *(["--numeric-owner"] if numeric else []), "-C", source, "-cf", out, *args)
    return out.read_bytes()


@pytest.fixture
def pulled(registry, minict, minict_dir, monkeypatch):
    """pulled(name, image) -> the rootfs of `image`, pushed, pulled by minict and unpacked."""
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))

    def pull_and_unpack(name: str, image) -> Path:
        push(registry.url, registry.repo(name), "1", image)
        done = minict("pull", "--image", registry.ref(f"{name}:1"))
        assert done.returncode == 0, done.stderr
        return bundle.create(reference.parse(registry.ref(f"{name}:1")), name) / "rootfs"

    return pull_and_unpack


def umoci_unpack(work: Path, image) -> Path:
    """The rootfs `umoci unpack` makes of `image`."""
    layout = write_layout(work / "umoci-layout", "t", image)
    run("umoci", "unpack", "--image", f"{layout}:t", work / "umoci-bundle")
    return work / "umoci-bundle" / "rootfs"


def source_tree(root: Path) -> dict:
    """tree() of a source directory, as a layer of it unpacks (owners and times as they are)."""
    return tree(root)


# -- GNU sparse members -------------------------------------------------------------

SPARSE_FORMS = {
    "gnu": ["--format=gnu"],  # the old type 'S' header
    "0.0": ["--format=posix", "--sparse-version=0.0"],
    "0.1": ["--format=posix", "--sparse-version=0.1"],
    "1.0": ["--format=posix", "--sparse-version=1.0"],
}


def _has_form(layer: bytes, form: str) -> bool:
    if form == "gnu":
        # The first member: type 'S', its map past the header's four entries (extension blocks).
        return layer[156:157] == b"S" and layer[482] == 1
    marker = {"0.0": b"GNU.sparse.offset=", "0.1": b"GNU.sparse.map=", "1.0": b"GNU.sparse.major=1"}
    return marker[form] in layer


@pytest.fixture(scope="module")
def sparse_source(tmp_path_factory) -> Path:
    """Files with real holes: ten segments (more than a 'S' header holds), a trailing hole, none."""
    src = tmp_path_factory.mktemp("sparse") / "src"
    src.mkdir()
    with open(src / "segments", "wb") as f:
        for i in range(10):
            f.seek(i * 1_000_000 + i)
            f.write(os.urandom(5000 + i))
        f.truncate(12_500_000)  # ends in a hole
    with open(src / "tail", "wb") as f:
        f.seek(6_000_000)
        f.write(b"the end\n")
    (src / "dense").write_bytes(os.urandom(3000))
    for name in ("segments", "tail", "dense"):
        os.utime(src / name, (MTIME, MTIME))
    assert os.stat(src / "segments").st_blocks * 512 < 1_000_000  # the file system keeps holes
    return src


@pytest.mark.parametrize("form", SPARSE_FORMS)
def test_gnu_tar_sparse_members_are_files_with_holes(form, sparse_source, pulled, tmp_path):
    layer = gnu_tar(sparse_source, "--sparse", *SPARSE_FORMS[form], "segments", "tail", "dense")
    assert _has_form(layer, form)
    image = Image([layer])
    root = pulled(f"sparse-{form.replace('.', '')}", image)
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:  # the other reader
        by_tarfile = {m.name: archive.extractfile(m).read() for m in archive}
    for name in ("segments", "tail", "dense"):
        content = (root / name).read_bytes()
        assert content == (sparse_source / name).read_bytes() == by_tarfile[name]
    for name in ("segments", "tail"):  # holes, not zeros written out
        assert os.stat(root / name).st_blocks * 512 < os.stat(root / name).st_size // 10
    assert tree(root) == source_tree(sparse_source)
    if form != "gnu":  # umoci 0.4.7 refuses type 'S' members ("unknown typeflag '\\x53'")
        assert tree(root) == tree(umoci_unpack(tmp_path, image))


@pytest.mark.parametrize("form", ["gnu", "1.0"])
def test_a_sparse_file_past_8_gib_has_its_size_in_base_256_or_a_record(form, pulled, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = 10 << 30  # past the 12-byte octal field (8 GiB)
    with open(src / "disk.img", "wb") as f:
        f.seek(size - 4096)
        f.write(b"\xaa" * 4096)
    layer = gnu_tar(src, "--sparse", *SPARSE_FORMS[form], "disk.img")
    if form == "gnu":
        assert layer[483] & 0x80  # the realsize field, in base-256
    else:
        assert b"GNU.sparse.realsize=%d" % size in layer
    root = pulled(f"huge-{form.replace('.', '')}", Image([layer]))
    st = os.stat(root / "disk.img")
    assert st.st_size == size and st.st_blocks * 512 < 1 << 20
    with open(root / "disk.img", "rb") as f:
        assert os.pread(f.fileno(), 8192, size - 8192) == bytes(4096) + b"\xaa" * 4096


# -- names ----------------------------------------------------------------------------


def _fixed_times(root: Path) -> None:
    for current, dirs, files in os.walk(root, topdown=False):
        for name in dirs + files:
            os.utime(os.path.join(current, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def test_dot_slash_names_and_a_layer_of_only_dot_slash(pulled, tmp_path):
    src = tmp_path / "src"
    (src / "etc/conf.d").mkdir(parents=True)
    (src / "etc/conf.d/app").write_text("x=1\n")
    os.symlink("conf.d/app", src / "etc/app.conf")
    os.link(src / "etc/conf.d/app", src / "etc/app.hard")
    _fixed_times(src)
    first = gnu_tar(src, ".")
    only = tmp_path / "only"
    only.mkdir(mode=0o750)
    os.chmod(only, 0o750)
    os.chown(only, 1234, 5678)
    os.utime(only, (MTIME + 5, MTIME + 5))
    second = gnu_tar(only, ".")
    # (tarfile strips the trailing "/" from the names it gives: the headers are read here.)
    assert first[:3] == b"./\0" and b"./etc/conf.d/\0" in first and b"./etc/conf.d/app\0" in first
    with tarfile.open(fileobj=io.BytesIO(second)) as t:
        assert len(t.getmembers()) == 1 and second[:3] == b"./\0"
    image = Image([first, second])
    root = pulled("dotslash", image)
    assert (root / "etc/conf.d/app").read_text() == "x=1\n"
    assert os.stat(root / "etc/app.hard").st_ino == os.stat(root / "etc/conf.d/app").st_ino
    assert describe(root)[:4] == (0o040000, 0o750, 1234, 5678)
    assert os.stat(root).st_mtime == MTIME + 5
    assert tree(root) == tree(umoci_unpack(tmp_path, image))


LONG_DIR = "/".join(["d" * 100, "e" * 120, "f" * 90])  # 312 bytes, no component past 255


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_long_names_and_long_link_names(fmt, pulled, tmp_path):
    src = tmp_path / "src"
    (src / ("p" * 60) / ("q" * 80)).mkdir(parents=True)
    (src / ("p" * 60) / ("q" * 80) / "ustar-splits-this").write_text("prefix + name\n")
    names = [("p" * 60)]
    if fmt != "ustar":  # ustar holds names up to 255 bytes and link names up to 100
        (src / LONG_DIR).mkdir(parents=True)
        (src / LONG_DIR / "file").write_text("long\n")
        os.symlink(LONG_DIR + "/file", src / "link")  # a 317-byte link name
        os.link(src / LONG_DIR / "file", src / "hard")  # a hardlink to a 317-byte name
        names += ["d" * 100, "link", "hard"]
    _fixed_times(src)
    layer = gnu_tar(src, f"--format={fmt}", *names)
    marker = {"gnu": b"././@LongLink", "posix": b" path=", "ustar": b"ustar\x0000"}[fmt]
    assert marker in layer
    image = Image([layer])
    root = pulled(f"long-{fmt}", image)
    assert tree(root) == source_tree(src) == tree(umoci_unpack(tmp_path, image))


def test_pax_owner_name_and_time_records(pulled, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "owned").write_text("pax\n")
    os.utime(src / "owned", ns=(MTIME * 10**9 + 123456789,) * 2)
    layer = gnu_tar(src, "--format=posix", "--owner=" + "u" * 40 + ":3000000",
                    "--group=" + "g" * 40 + ":4000000", "owned", numeric=False)
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        records = t.getmember("owned").pax_headers
    assert {"uid", "gid", "uname", "gname", "mtime"} <= set(records)
    image = Image([layer])
    root = pulled("paxrecords", image)
    st = os.lstat(root / "owned")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (3000000, 4000000, MTIME * 10**9 + 123456789)
    assert tree(root) == tree(umoci_unpack(tmp_path, image))


def test_base_256_owner_and_time_fields(pulled, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "far").write_text("future\n")
    future = 10_413_792_000  # 2300-01-01, past the 11-digit octal field
    os.utime(src / "far", (future, future))
    layer = gnu_tar(src, "--format=gnu", "--owner=3000000", "--group=4000000", "far")
    assert layer[108] & 0x80 and layer[116] & 0x80 and layer[136] & 0x80  # uid, gid, mtime
    image = Image([layer])
    root = pulled("base256", image)
    st = os.lstat(root / "far")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (3000000, 4000000, future)
    assert tree(root) == tree(umoci_unpack(tmp_path, image))


# -- xattrs ----------------------------------------------------------------------------

CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")  # cap_net_raw+ep


def test_bsdtar_xattr_records(pulled, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ping").write_bytes(b"ELF")
    os.setxattr(src / "ping", "user.note", b"\x00\xffbinary")
    os.setxattr(src / "ping", "security.capability", CAPABILITY)
    out = tmp_path / "bsd.tar"
    run("bsdtar", "--xattrs", "--format=pax", "--numeric-owner", "-C", src, "-cf", out, "ping")
    layer = out.read_bytes()
    assert b"LIBARCHIVE.xattr.user.note=AP9iaW5hcnk" in layer and b"SCHILY.xattr.user.note" in layer
    image = Image([layer])
    root = pulled("bsdtar", image)
    assert os.getxattr(root / "ping", "security.capability") == CAPABILITY
    assert os.getxattr(root / "ping", "user.note") == b"\x00\xffbinary"
    assert tree(root) == tree(umoci_unpack(tmp_path, image))


def test_a_libarchive_xattr_record_alone(pulled):
    # bsdtar writes LIBARCHIVE.xattr alone for a name that is not UTF-8, which
    # no test can make portably: written by hand, as libarchive spells it
    # (the name %-escaped, the value in base64 without its padding).
    info = tarfile.TarInfo("f")
    info.size = 1
    info.pax_headers = {
        "LIBARCHIVE.xattr.user.%C3%A9t%C3%A9": base64.b64encode(b"summer").decode().rstrip("="),
        "LIBARCHIVE.xattr.user.both": base64.b64encode(b"libarchive").decode().rstrip("="),
        "SCHILY.xattr.user.both": "schily",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info, io.BytesIO(b"1"))
    root = pulled("libarchive", Image([buf.getvalue()]))
    assert os.getxattr(root / "f", "user.été") == b"summer"
    assert os.getxattr(root / "f", "user.both") == b"schily"  # SCHILY's wins, as umoci's


# -- compressions and empty layers ------------------------------------------------------

# Docker's well-known empty layer: a gzip of 1024 zero bytes, 32 bytes long.
EMPTY_GZIP = bytes([31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 98, 24, 5, 163, 96, 20, 140, 88, 0, 8,
                    0, 0, 255, 255, 46, 175, 181, 239, 0, 4, 0, 0])
EMPTY_GZIP_DIGEST = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


@pytest.mark.parametrize("media, compression", [
    ("oci", None), ("docker", None), ("oci", "gzip"), ("docker", "gzip"), ("oci", "zstd")])
def test_layer_compressions_with_the_empty_layer_and_empty_layer_history(media, compression,
                                                                          pulled):
    empty = Layer(bytes(1024), "gzip", media=media, blob=EMPTY_GZIP)
    assert empty.digest == EMPTY_GZIP_DIGEST
    content = Layer(tar_layer([File("hello", b"hi\n")]), compression, media=media)
    history = [{"created_by": "FROM scratch", "empty_layer": True},
               {"created_by": "COPY hello /"},
               {"created_by": "ENV A=1", "empty_layer": True},
               {"created_by": "RUN true"},
               {"created_by": "CMD [\"sh\"]", "empty_layer": True}]
    image = Image([content, empty], media=media, extra={"history": history})
    assert len(image.config_doc["history"]) > len(image.config_doc["rootfs"]["diff_ids"])
    root = pulled(f"compress-{media}-{compression or 'none'}", image)
    assert (root / "hello").read_bytes() == b"hi\n"
    assert sorted(os.listdir(root)) == ["hello"]
