"""The oracle: an image made by real tools, unpacked by umoci and by minict, must match.

umoci builds a four-layer image from a rootfs on disk (owners, special
modes, hardlinks, symlinks, a fifo, a device, xattrs; then deletions and type
changes, which its repack writes as whiteouts; then an opaque directory
through `umoci insert --opaque`; then files inserted at "/").  `umoci unpack` and minict's bundle.create
unpack it, and the two rootfs trees are compared entry by entry: type, mode,
uid, gid, size, content hash, link target, xattrs, device number, link count,
and mtime to the nanosecond: directories included (a directory a later layer
adds to without listing it keeps its older mtime, as umoci restores it) and
symlinks too (umoci sets their times with lutimes, minict with
utime(follow_symlinks=False)).
"""

import gzip
import json
import os
import shutil
import subprocess

import pytest

from minict.bundle import create as bundle
from minict.image import reference
from tests.support import ci
from tests.support.layers import tree, tree_differences

pytestmark = pytest.mark.root


def umoci(*args):
    done = subprocess.run(["umoci", *map(str, args)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"umoci {args}: {done.stderr}"


def _populate(rootfs):
    """The first layer's tree: what images carry, made with the real system calls."""
    for d in ("bin", "etc/apt/apt.conf.d", "usr/share/doc/pkg", "usr/lib/deep/er/still",
              "var/empty", "tmp", "dev", "data"):
        os.makedirs(rootfs / d, exist_ok=True)
    (rootfs / "bin/busybox").write_bytes(os.urandom(70_000))
    os.chmod(rootfs / "bin/busybox", 0o4755)
    for applet in ("sh", "ls", "cat"):
        os.link(rootfs / "bin/busybox", rootfs / "bin" / applet)
    os.symlink("/bin/busybox", rootfs / "bin/abs-link")
    os.symlink("../usr/lib", rootfs / "bin/rel-link")
    os.symlink("/nonexistent/target", rootfs / "bin/dangling")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (rootfs / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(rootfs / "etc/shadow", 0o640)
    os.chown(rootfs / "etc/shadow", 0, 42)
    for i in range(5):
        (rootfs / f"etc/apt/apt.conf.d/{i:02d}conf").write_text(f"setting {i};\n")
    (rootfs / "usr/share/doc/pkg/copyright").write_text("GPL\n")
    (rootfs / "usr/lib/deep/er/still/lib.so").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(rootfs / "tmp", 0o1777)
    os.chmod(rootfs / "var/empty", 0o2750)
    os.chown(rootfs / "data", 1000, 1000)
    (rootfs / "data/owned").write_text("mine\n")
    os.chown(rootfs / "data/owned", 1000, 1000)
    os.mkfifo(rootfs / "dev/initctl", 0o600)
    os.mknod(rootfs / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(rootfs / "dev/null", 0o666)
    os.setxattr(rootfs / "data/owned", "user.origin", b"oracle")
    os.setxattr(rootfs / "bin/busybox", "security.capability",
                bytes.fromhex("0100000200040000000000000000000000000000"))
    (rootfs / "empty-file").write_bytes(b"")
    (rootfs / "file-becomes-dir").write_text("file\n")
    (rootfs / "dir-becomes-file").mkdir()
    (rootfs / "dir-becomes-file/inner").write_text("x\n")
    (rootfs / "dir-becomes-link").mkdir()
    (rootfs / "dir-becomes-link/child").write_text("gone\n")
    os.symlink("usr", rootfs / "link-becomes-dir")


def _change(rootfs):
    """The second layer: deletions and type changes (whiteouts in the repacked layer)."""
    shutil.rmtree(rootfs / "usr/share/doc")
    os.unlink(rootfs / "bin/cat")
    os.unlink(rootfs / "bin/dangling")
    os.unlink(rootfs / "file-becomes-dir")
    (rootfs / "file-becomes-dir").mkdir()
    (rootfs / "file-becomes-dir/now").write_text("dir\n")
    shutil.rmtree(rootfs / "dir-becomes-file")
    (rootfs / "dir-becomes-file").write_text("file now\n")
    shutil.rmtree(rootfs / "dir-becomes-link")
    os.symlink("/etc", rootfs / "dir-becomes-link")
    os.unlink(rootfs / "link-becomes-dir")
    (rootfs / "link-becomes-dir").mkdir(mode=0o700)
    (rootfs / "etc/passwd").write_text(  # changed content
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
        "new:x:1001:1001::/home/new:/bin/sh\n")
    os.link(rootfs / "etc/passwd", rootfs / "etc/passwd-")
    os.chmod(rootfs / "usr/lib/deep/er/still/lib.so", 0o755)  # metadata-only change


@pytest.fixture(scope="module")
def oracle_image(tmp_path_factory):
    ci.require_tool("umoci")
    work = tmp_path_factory.mktemp("oracle")
    layout = work / "layout"
    image = f"{layout}:t"
    umoci("init", "--layout", layout)
    umoci("new", "--image", image)
    build = work / "build"
    umoci("unpack", "--image", image, build)
    _populate(build / "rootfs")
    umoci("repack", "--refresh-bundle", "--image", image, build)
    _change(build / "rootfs")
    umoci("repack", "--refresh-bundle", "--image", image, build)
    replacement = work / "apt.conf.d"
    replacement.mkdir()
    (replacement / "99only").write_text("only this;\n")
    os.symlink("99only", replacement / "link")
    umoci("insert", "--image", image, "--opaque", replacement, "/etc/apt/apt.conf.d")
    # Inserting at "/" writes the root entry as "/" (the busybox fixture is made so).
    overlay = work / "overlay"
    (overlay / "opt/added").mkdir(parents=True)
    (overlay / "opt/added/file").write_text("added\n")
    umoci("insert", "--image", image, overlay, "/")
    # The user exists only now that the layers made /etc/passwd.
    umoci("config", "--image", image, "--config.cmd", "/bin/sh", "--config.user", "app")
    reference_bundle = work / "umoci-bundle"
    umoci("unpack", "--image", image, reference_bundle)
    return layout, reference_bundle / "rootfs"


def test_the_oracle_image_has_whiteouts_and_an_opaque_directory(oracle_image):
    layout, _ = oracle_image
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                          .read_text())
    assert len(manifest["layers"]) == 4
    listing = subprocess.run(
        ["tar", "-tzf", layout / "blobs/sha256" / manifest["layers"][1]["digest"][7:]],
        capture_output=True, text=True, check=True).stdout
    assert "usr/share/.wh.doc" in listing and "bin/.wh.cat" in listing
    listing = subprocess.run(
        ["tar", "-tzf", layout / "blobs/sha256" / manifest["layers"][2]["digest"][7:]],
        capture_output=True, text=True, check=True).stdout
    assert "etc/apt/apt.conf.d/.wh..wh..opq" in listing
    # (GNU tar refuses this one: umoci ends it without padding or end blocks.)
    inserted = gzip.decompress(
        (layout / "blobs/sha256" / manifest["layers"][3]["digest"][7:]).read_bytes())
    assert inserted[:2] == b"/\0"


def test_minict_unpacks_what_umoci_unpacks(oracle_image, tmp_path, monkeypatch):
    layout, umoci_rootfs = oracle_image
    monkeypatch.setenv("MINICT_DIR", str(tmp_path / "minict"))
    shutil.copytree(layout, tmp_path / "minict/images/oracle", symlinks=True)
    made = bundle.create(reference.parse("oracle:t"), "oracle")
    assert len(tree(umoci_rootfs)) > 30
    assert tree_differences(made / "rootfs", umoci_rootfs) == {}
    # Spot checks that the comparison saw what it should.
    assert sorted(os.listdir(made / "rootfs/etc/apt/apt.conf.d")) == ["99only", "link"]
    assert not (made / "rootfs/usr/share/doc").exists()
    assert (made / "rootfs/opt/added/file").read_text() == "added\n"
    config = json.loads((made / "config.json").read_text())
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert "HOME=/home/app" in config["process"]["env"]
