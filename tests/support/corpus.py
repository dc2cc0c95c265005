"""The compat corpus: images made by the tools that make real images, not by hand.

    base = merged_usr_layout(workdir)                 # umoci: busybox in /usr/bin, bin -> usr/bin
    tree = source_tree(workdir / "tree", FEATURES["posix"])
    gnu_tar_layer(tree, workdir / "layer.tar", "posix", xattrs=True)
    layout = with_layer(base, workdir / "image", workdir / "layer.tar", "tar posix")
    symlinked = umoci_symlinked_layout(base, workdir / "umoci")

Every layer here is written by a real tool from a real directory tree:
`umoci repack` and `umoci insert`, GNU tar, bsdtar (libarchive-tools).
The images are OCI layouts tagged TAG that skopeo pushes to the registry
fixture (tools.skopeo_push).  Nothing here imports pytest.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.support.tools import BUSYBOX, run

TAG = "latest"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The applets the containers' proof commands use, as symlinks in /usr/bin.
APPLETS = ("sh", "cat", "test", "readlink", "stat", "ls", "wc", "tail")
# mtime of every file of the source tree: a fraction, so the pax formats carry one.
TREE_MTIME_NS = 1_700_000_000_123_456_789
# Inserted through lib -> /usr/lib: a name no host has in its /usr/lib.
ABSOLUTE_LINKED = "lib/minict-corpus-abs.so"


@dataclass(frozen=True)
class Features:
    """What a tar format can carry; source_tree builds only that."""

    long_names: bool = True  # names past 100 and 255 bytes, link names past 100
    big_ids: bool = True  # a uid past the 7 octal digits of ustar (GNU base-256, pax)
    xattrs: bool = False
    sparse: bool = False
    wide_times: bool = False  # mtimes before 1970 and after 2242


def merged_usr_layout(workdir) -> Path:
    """Build the base image: busybox in /usr/bin with merged-/usr symlinks, as Debian 12 has.

    bin -> usr/bin, sbin -> usr/sbin (relative, as debootstrap makes them),
    lib -> /usr/lib (absolute, as some images have it), var/run -> ../run.
    One layer, by `umoci repack` of a rootfs on disk.
    """
    workdir = Path(workdir)
    layout, bundle = workdir / "layout", workdir / "bundle"
    image = f"{layout}:{TAG}"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", image)
    run("umoci", "config", "--image", image, "--config.cmd", "sh", "--config.env", PATH,
        "--config.workingdir", "/")
    run("umoci", "unpack", "--image", image, bundle)
    rootfs = bundle / "rootfs"
    for name, mode in [("usr/bin", 0o755), ("usr/sbin", 0o755), ("usr/lib", 0o755),
                       ("etc", 0o755), ("run", 0o755), ("var", 0o755), ("tmp", 0o1777),
                       ("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("root", 0o700)]:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / name, mode)
    shutil.copy(BUSYBOX, rootfs / "usr/bin/busybox")
    os.chmod(rootfs / "usr/bin/busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "usr/bin" / applet)
    os.symlink("usr/bin", rootfs / "bin")
    os.symlink("usr/sbin", rootfs / "sbin")
    os.symlink("/usr/lib", rootfs / "lib")
    os.symlink("../run", rootfs / "var/run")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    (rootfs / "usr/bin/oldtool").write_text("old\n")
    (rootfs / "usr/bin/oldtool2").write_text("old too\n")
    run("umoci", "repack", "--refresh-bundle", "--history.created_by", "merged /usr base",
        "--image", image, bundle)
    return layout


def umoci_symlinked_layout(base, workdir) -> Path:
    """Return a copy of `base` with layers umoci made through its symlinked directories.

    `umoci repack` of changes made on disk through bin -> usr/bin and
    var/run -> ../run (a new file, a hardlink, a deletion, a directory): its diff names
    the real paths.  Then `umoci insert` at symlinked paths, which writes
    the path as given: bin/inserted, var/run/inserted.pid, ABSOLUTE_LINKED
    (lib -> /usr/lib, absolute: followed on the host, it would land in its /usr/lib), a directory of two hardlinked files at
    bin/hl (the link's target goes through bin too), a whiteout
    bin/.wh.oldtool2 and an opaque directory var/run/opaque.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True)
    layout = copy_layout(base, workdir / "layout")
    image, bundle = f"{layout}:{TAG}", workdir / "bundle"
    run("umoci", "unpack", "--image", image, bundle)
    rootfs = bundle / "rootfs"
    # Only through the relative links: an absolute one would lead out to the host's /usr/lib.
    (rootfs / "bin/newtool").write_text("new through bin\n")
    (rootfs / "var/run/app.pid").write_text("42\n")
    os.link(rootfs / "bin/newtool", rootfs / "bin/newtool-hard")
    os.unlink(rootfs / "bin/oldtool")
    (rootfs / "var/run/opaque").mkdir()
    (rootfs / "var/run/opaque/hidden").write_text("hidden by the opaque whiteout\n")
    run("umoci", "repack", "--refresh-bundle", "--history.created_by", "changes through links",
        "--image", image, bundle)
    sources = workdir / "sources"
    (sources / "hl").mkdir(parents=True)
    (sources / "inserted").write_text("inserted at /bin/inserted\n")
    (sources / "pid").write_text("inserted at /var/run/inserted.pid\n")
    (sources / "so").write_text(f"inserted at /{ABSOLUTE_LINKED}\n")
    (sources / "hl/a").write_text("hardlinked under /bin/hl\n")
    os.link(sources / "hl/a", sources / "hl/b")
    (sources / "opaque").mkdir()
    (sources / "opaque/shown").write_text("the opaque directory's own\n")
    for source, target in [("inserted", "/bin/inserted"), ("pid", "/var/run/inserted.pid"),
                           ("so", f"/{ABSOLUTE_LINKED}"), ("hl", "/bin/hl")]:
        run("umoci", "insert", "--history.created_by", f"insert {target}", "--image", image,
            sources / source, target)
    run("umoci", "insert", "--history.created_by", "whiteout /bin/oldtool2", "--image", image,
        "--whiteout", "/bin/oldtool2")
    run("umoci", "insert", "--history.created_by", "opaque /var/run/opaque", "--image", image,
        "--opaque", sources / "opaque", "/var/run/opaque")
    return layout


def copy_layout(layout, destination) -> Path:
    """Copy an OCI layout (umoci changes the one it is given)."""
    shutil.copytree(layout, destination, symlinks=True)
    return Path(destination)


def with_layer(base, destination, layer_tar, created_by: str) -> Path:
    """Return a copy of layout `base` at `destination` with the tar `layer_tar` on top.

    `umoci raw add-layer` stores the tar's bytes as they are (gzipped), so
    the layer is the archiver's own.
    """
    layout = copy_layout(base, destination)
    run("umoci", "raw", "add-layer", "--history.created_by", created_by,
        "--image", f"{layout}:{TAG}", layer_tar)
    return layout


# -- a real directory tree for the archivers ------------------------------------------


def source_tree(root, features: Features) -> Path:
    """Create the directory tree the archivers read, under `root/corpus`; return `root`.

    Long names and link names, hardlinks (one with a long name), symlinks
    (relative, absolute, dangling), unicode names, owners and special modes,
    devices and a fifo (root only), xattrs and sparse files if asked.
    """
    root = Path(root)
    top = root / "corpus"
    (top / "dir/sub").mkdir(parents=True)
    (top / "dir/file").write_text("plain file\n")
    (top / "dir/sub/exec").write_bytes(b"#!/bin/sh\necho run\n")
    os.chmod(top / "dir/sub/exec", 0o4755)
    (top / "sticky").mkdir()
    os.chmod(top / "sticky", 0o1777)
    os.link(top / "dir/file", top / "dir/hard-1")
    os.link(top / "dir/file", top / "hard-2")
    os.symlink("dir/file", top / "rel-link")
    os.symlink("/corpus/dir/file", top / "abs-link")
    os.symlink("../nowhere/at/all", top / "dangling")
    unicode = top / "unicodé"
    unicode.mkdir()
    (unicode / "日本語.txt").write_text("こんにちは\n")
    (unicode / "emoji-🐳").write_text("whale\n")
    os.symlink("日本語.txt", unicode / "ссылка")
    (top / "owned").write_text("owned by 1000\n")
    os.chmod(top / "owned", 0o644)
    os.link(top / "rel-link", top / "hard-to-symlink", follow_symlinks=False)
    (top / "setgid-dir").mkdir()
    os.chmod(top / "setgid-dir", 0o2775)
    (top / "read-only-dir").mkdir()
    (top / "read-only-dir/no-access").write_text("mode 000\n")
    os.chmod(top / "read-only-dir/no-access", 0)
    (top / "empty-dir").mkdir()
    (top / "with spaces, \\ and\nnewline").write_text("odd name\n")
    if os.geteuid() == 0:
        os.chown(top / "owned", 1000, 1001)
        os.mkfifo(top / "fifo", 0o640)
        os.mknod(top / "null", 0o666 | 0o020000, os.makedev(1, 3))
        os.chmod(top / "null", 0o666)
        os.mknod(top / "loop", 0o660 | 0o060000, os.makedev(7, 0))
        if features.big_ids:
            (top / "big-id").write_text("uid past 2097151\n")
            os.chown(top / "big-id", 3_000_000, 3_000_001)
    if features.long_names:
        # A path past 255 bytes in directories of 60, and a name of 200 bytes.
        deep = top.joinpath(*[f"{i}" * 60 for i in range(5)])
        deep.mkdir(parents=True)
        (deep / ("f" * 200)).write_text("long name\n")
        os.link(deep / ("f" * 200), top / "hard-to-long")
        os.symlink(os.path.relpath(deep / ("f" * 200), top), top / "long-link")
    else:
        # ustar: a path up to 255 bytes split at a '/' (prefix + name), link names up to 100.
        deep = top.joinpath(*[f"{i}" * 40 for i in range(3)])
        deep.mkdir(parents=True)
        (deep / ("f" * 90)).write_text("ustar name\n")
        os.symlink("0" * 40 + "/" + "1" * 40, top / "long-ish-link")
    if features.xattrs:
        os.setxattr(top / "dir/file", "user.corpus", b"a value")
        os.setxattr(top / "dir/sub/exec", "security.capability",
                    bytes.fromhex("0100000200040000000000000000000000000000"))
        os.setxattr(top / "dir", "user.on-a-dir", b"dir value")
    if features.sparse:
        _sparse_files(top / "sparse")
    for path in [top, *sorted(top.rglob("*"))]:
        os.utime(path, ns=(TREE_MTIME_NS, TREE_MTIME_NS), follow_symlinks=False)
    os.chmod(top / "read-only-dir", 0o500)
    if features.wide_times:
        # Past ustar's 11 octal digits both ways: GNU base-256 (negative too), pax mtime.
        # Not past 2262: umoci (Go's UnixNano) turns those into 1901.
        (top / "before-1970").write_text("1966\n")
        os.utime(top / "before-1970", ns=(-(10**17) - 5, -(10**17) - 5))
        (top / "after-2242").write_text("2252\n")
        os.utime(top / "after-2242", ns=(8_900_000_000 * 10**9 + 7,) * 2)
        os.utime(top, ns=(TREE_MTIME_NS, TREE_MTIME_NS))
    return root


def _sparse_files(directory: Path) -> None:
    """Files with holes: data between holes, a hole at the end, nothing but a hole."""
    directory.mkdir()
    with open(directory / "holes", "wb") as f:
        for offset in (0, 3 << 20, 7 << 20):
            f.seek(offset)
            f.write(os.urandom(5000) + b"data at %d\n" % offset)
        f.truncate(10 << 20)
    with open(directory / "hole-only", "wb") as f:
        f.truncate(4 << 20)
    with open(directory / "tail", "wb") as f:
        f.seek(1 << 20)
        f.write(b"the end\n")


# -- the archivers ----------------------------------------------------------------------


def gnu_tar_layer(tree, out, tar_format: str, *, xattrs=False, sparse_version=None,
                  members=("corpus",)) -> Path:
    """Archive `members` of `tree` with GNU tar in `tar_format` (gnu, oldgnu, posix, ustar).

    `sparse_version` ("0.0", "0.1", "1.0" for posix; "" for gnu's own)
    turns on --sparse; `xattrs` stores extended attributes (posix only).
    """
    argv = ["tar", f"--format={tar_format}", "-C", tree, "-cf", out]
    if xattrs:
        argv += ["--xattrs", "--xattrs-include=*"]
    if sparse_version is not None:
        argv.append("--sparse")
        if sparse_version:
            argv.append(f"--sparse-version={sparse_version}")
    run(*argv, "--", *members)
    return Path(out)


def bsdtar_layer(tree, out, tar_format: str, *, members=("corpus",)) -> Path:
    """Archive `members` of `tree` with bsdtar (libarchive) in `tar_format`.

    pax and restricted pax (bsdtar's default, "paxr") carry xattrs, both as
    LIBARCHIVE.xattr.* and SCHILY.xattr.*, and sparse files as pax sparse 1.0.
    """
    run("bsdtar", "--format", tar_format, "--xattrs", "-C", tree, "-cf", out, "--", *members)
    return Path(out)


# -- skopeo and the oracle ---------------------------------------------------------------


def skopeo_copy(source: str, destination: str, *options) -> None:
    """`skopeo copy` between any two transports; the registry fixture speaks plain HTTP."""
    run("skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
        "--dest-tls-verify=false", *options, source, destination)


def umoci_rootfs(reference: str, workdir) -> Path:
    """Return the rootfs `umoci unpack` makes of `reference` as the registry serves it.

    skopeo copies it into an OCI layout first, gzipping every layer:
    umoci 0.4.7 reads neither Docker manifests nor zstd layers, and the
    compression does not change the tree.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True)
    layout = workdir / "layout"
    skopeo_copy(f"docker://{reference}", f"oci:{layout}:{TAG}", "--format", "oci",
                "--dest-compress-format", "gzip")
    run("umoci", "unpack", "--image", f"{layout}:{TAG}", workdir / "bundle")
    return workdir / "bundle/rootfs"


def repeated_and_empty_layout(base, workdir) -> Path:
    """Return a copy of `base` with layers builders repeat or leave empty.

    The same `umoci insert` twice (one blob, listed twice, as `RUN` steps
    that change nothing twice make), GNU tar's archive of nothing twice
    (10240 zero bytes), and a layer whose only entry is "./" (`tar -C empty -c .`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True)
    layout = copy_layout(base, workdir / "layout")
    image = f"{layout}:{TAG}"
    (workdir / "same").write_text("inserted twice\n")
    for _ in range(2):
        run("umoci", "insert", "--image", image, workdir / "same", "/same")
    run("tar", "-cf", workdir / "nothing.tar", "-T", "/dev/null")
    (workdir / "empty").mkdir()
    os.chmod(workdir / "empty", 0o755)
    run("tar", "-C", workdir / "empty", "-cf", workdir / "dot.tar", ".")
    for layer in ("nothing.tar", "nothing.tar", "dot.tar"):
        run("umoci", "raw", "add-layer", "--image", image, workdir / layer)
    return layout


def etc_links_layout(base, workdir) -> Path:
    """Return a copy of `base` whose /etc/resolv.conf and /etc/hosts are symlinks (`umoci repack`).

    resolv.conf -> ../run/systemd/resolve/stub-resolv.conf, as systemd-resolved
    hosts have it, and hosts -> /run/hosts-file (absolute); neither target exists.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True)
    layout = copy_layout(base, workdir / "layout")
    image, bundle = f"{layout}:{TAG}", workdir / "bundle"
    run("umoci", "unpack", "--image", image, bundle)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", bundle / "rootfs/etc/resolv.conf")
    os.symlink("/run/hosts-file", bundle / "rootfs/etc/hosts")
    run("umoci", "repack", "--refresh-bundle", "--history.created_by", "etc links",
        "--image", image, bundle)
    return layout


def symlinked_tree(root) -> tuple[Path, tuple[str, ...]]:
    """A tree with the base's bin -> usr/bin and var/run -> ../run, and files below them.

    Return the tree and the member names to archive, which go through the
    links (bin/gnutool, var/run/gnu.pid): a tar names a file as it is asked to.
    """
    root = Path(root)
    (root / "usr/bin").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "var").mkdir()
    os.symlink("usr/bin", root / "bin")
    os.symlink("../run", root / "var/run")
    (root / "bin/gnutool").write_text("archived as bin/gnutool\n")
    (root / "var/run/gnu.pid").write_text("archived as var/run/gnu.pid\n")
    return root, ("bin/gnutool", "var/run/gnu.pid")
