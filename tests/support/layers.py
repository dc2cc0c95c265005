"""Apply test layers with minict.apply and describe the resulting trees.

    root = unpack_layers(tmp_path / "rootfs", [[File("a", b"x")], [Whiteout("a")]])
    tree(root)  ->  {"path": (type, mode, uid, gid, size, sha256, link, xattrs, rdev, nlink)}

The layers go through the real path: a blob file on disk, LayerStream
(inflate on its thread, diff_id), apply_layer.
"""

import hashlib
import os
import stat
from pathlib import Path

from minict.bundle.apply import apply_layer
from minict.bundle.layerstream import LayerStream
from tests.support.images import Layer, compress, sha256, tar_layer


def layer_blob(directory: Path, layer, compression=None) -> tuple[Path, str]:
    """Write a layer (entries, tar bytes or Layer) as a blob file; return (path, diff_id)."""
    if isinstance(layer, Layer):
        blob, diff_id = layer.blob, layer.diff_id
    else:
        tar = layer if isinstance(layer, (bytes, bytearray)) else tar_layer(layer)
        blob, diff_id = compress(bytes(tar), compression), sha256(bytes(tar))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / sha256(blob).split(":")[1]
    path.write_bytes(blob)
    return path, diff_id


def unpack_layers(root: Path, layers, compression=None, name="test-layer") -> Path:
    """Apply `layers` in order to `root` (created if missing); check each diff_id."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, layer in enumerate(layers):
            path, diff_id = layer_blob(root.parent / "blobs", layer, compression)
            with LayerStream(path, compression) as stream:
                apply_layer(fd, stream, f"{name}-{i}")
            assert stream.diff_id == diff_id
    finally:
        os.close(fd)
    return root


def describe(path) -> tuple:
    """Return (type, mode, uid, gid, size, sha256, link, xattrs, rdev, nlink) of one path."""
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    digest = link = None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(path)
    try:
        names = os.listxattr(path, follow_symlinks=False)
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}
    except OSError:
        xattrs = None
    is_dir = stat.S_ISDIR(st.st_mode)
    rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0 if is_dir else st.st_size,
            digest, link, xattrs, rdev, 0 if is_dir else st.st_nlink)


def tree(root) -> dict[str, tuple]:
    """Return {relative path: describe(path)} for everything below `root` (not root)."""
    root = os.fspath(root)
    found = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            found[os.path.relpath(path, root)] = describe(path)
    return found


def with_mtimes(root) -> dict[str, tuple]:
    """Return tree(root) with each entry's mtime in nanoseconds appended."""
    return {path: (*described, os.lstat(os.path.join(root, path)).st_mtime_ns)
            for path, described in tree(root).items()}


def tree_differences(ours, theirs) -> dict[str, tuple]:
    """Compare two unpacked rootfs trees entry by entry: {path: (ours, theirs)} that differ.

    Each entry is with_mtimes' description (type, mode, owner, size,
    content hash, link target, xattrs, device, link count, mtime); the
    root itself, as ".", by type, mode and owner.  {} when they match.
    """
    mine, other = with_mtimes(ours), with_mtimes(theirs)
    mine["."], other["."] = describe(ours)[:4], describe(theirs)[:4]
    return {path: (mine.get(path), other.get(path))
            for path in sorted(set(mine) | set(other)) if mine.get(path) != other.get(path)}
