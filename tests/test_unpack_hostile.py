"""Hostile layers: each is refused, or resolved inside the rootfs; nothing outside changes.

The rootfs sits next to an `outside/` directory (with a file, a directory and
a symlink) that the layers aim at; after each refusal the whole test
directory outside the rootfs must be exactly as before.  A layer that goes
through a symlink at `outside/` is not refused: the symlink is followed as if
the rootfs were `/` (what umoci does), so the entry lands below rootfs/,
where `umoci unpack` puts it too, and outside stays as it was.
"""

import os

import pytest

from minict.errors import UnpackError
from tests.support import ci
from tests.support.images import Dir, File, Hardlink, Image, Opaque, Symlink, Whiteout, tar_layer
from tests.support.layers import tree, unpack_layers
from tests.support.oracle import umoci_unpack

pytestmark = pytest.mark.root


def _outside(tmp_path):
    return str(tmp_path / "outside")


# Each case: (id, layers, the entry the error must name); layers may use {out},
# the absolute path of the outside directory.
CASES = [
    ("dotdot-file", [[File("../outside/secret", b"pwned")]], "../outside/secret"),
    ("dotdot-inner", [[Dir("a"), File("a/../../outside/secret", b"x")]], "a/../../outside/secret"),
    ("absolute-file", [[File("{out}/secret", b"x")]], "{out}/secret"),
    ("absolute-dir", [[Dir("{out}/newdir")]], "{out}/newdir/"),
    ("hardlink-dotdot", [[Hardlink("h", "../outside/secret")]], "h"),
    ("hardlink-through-symlink", [[Symlink("o", "{out}"), Hardlink("h", "o/secret")]], "h"),
    ("hardlink-absolute-outside", [[Hardlink("h", "{out}/secret")]], "h"),
    ("root-symlink", [[Symlink(".", "{out}")]], "."),
    ("root-symlink-slash", [[Symlink("./", "/")]], "./"),
    ("root-file", [[File(".", b"x")]], "."),
    ("root-absolute-symlink", [[Symlink("/", "{out}")]], "/"),
    ("absolute-dotdot", [[File("/../outside/secret", b"x")]], "/../outside/secret"),
    ("root-hardlink", [[File("f", b"x"), Hardlink(".", "f")]], "."),
    ("whiteout-dotdot", [[File("../outside/.wh.secret")]], "../outside/.wh.secret"),
    ("whiteout-of-dotdot", [[Dir("a"), File("a/.wh..."), ]], "a/.wh..."),
    ("whiteout-absolute", [[File("{out}/.wh.secret")]], "{out}/.wh.secret"),
    ("opaque-absolute", [[Opaque("{out}")]], "{out}/.wh..wh..opq"),
]

# Each case: (id, layers, where the entry lands in the rootfs, whether it exists
# after the last layer).  These were refused before minict resolved in root.
RESOLVED = [
    ("symlinked-parent-abs", [[Symlink("etc", "{out}"), File("etc/secret", b"x")]],
     "{out}/secret", True),
    ("symlinked-parent-rel", [[Symlink("up", "../outside"), File("up/secret", b"x")]],
     "outside/secret", True),
    ("symlinked-parent-later-layer", [[Symlink("etc", "{out}")], [File("etc/passwd", b"x")]],
     "{out}/passwd", True),
    ("symlinked-grandparent", [[Symlink("etc", "{out}"), Dir("etc/dir/sub")]],
     "{out}/dir/sub", True),
    ("dir-through-symlink", [[Symlink("etc", "{out}"), Dir("etc/dir")]], "{out}/dir", True),
    ("symlink-through-symlink", [[Symlink("etc", "{out}"), Symlink("etc/link", "/")]],
     "{out}/link", True),
    ("dir-replaced-by-symlink-then-member",
     [[Dir("d"), File("d/a", b"1"), Symlink("d", "{out}"), File("d/secret", b"x")]],
     "{out}/secret", True),
    ("lower-dir-replaced-by-symlink-then-member",
     [[Dir("d/e")], [File("d/e/a", b"1"), Symlink("d", "{out}"), Dir("d/e/f")]],
     "{out}/e/f", True),
    ("hardlink-into-symlinked-dir", [[File("f", b"x"), Symlink("o", "{out}"),
                                      Hardlink("o/h", "f")]], "{out}/h", True),
    ("whiteout-through-symlink",
     [[Symlink("o", "{out}"), File("o/secret", b"x")], [Whiteout("o/secret")]],
     "{out}/secret", False),
    ("whiteout-through-symlink-deep",
     [[Symlink("o", "{out}"), File("o/dir/inner", b"x")], [Whiteout("o/dir/inner")]],
     "{out}/dir/inner", False),
    ("opaque-through-symlink",
     [[Symlink("o", "{out}"), File("o/secret", b"x")], [Opaque("o")]], "{out}/secret", False),
]


def _fill(case, out):
    if isinstance(case, list):
        return [_fill(c, out) for c in case]
    if isinstance(case, str):
        return case.replace("{out}", out)
    for attr in ("name", "linkname"):
        setattr(case, attr, getattr(case, attr).replace("{out}", out))
    return case


@pytest.fixture
def outside(tmp_path):
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "secret").write_bytes(b"keep me")
    (out / "dir/inner").write_bytes(b"keep me too")
    os.symlink("secret", out / "link")
    return out


@pytest.mark.parametrize("case_id, layers, entry", CASES, ids=[c[0] for c in CASES])
def test_hostile_layer_is_refused(tmp_path, outside, case_id, layers, entry):
    out = str(outside)
    layers = [tar_layer(_fill(layer, out)) for layer in layers]
    entry = _fill(entry, out)
    before = tree(tmp_path)
    with pytest.raises(UnpackError) as refused:
        unpack_layers(tmp_path / "rootfs", layers, name="evil")
    message = str(refused.value)
    assert message.startswith("Failed to unpack image. Error received: layer evil-")
    assert repr(entry) in message, message
    after = {k: v for k, v in tree(tmp_path).items()
             if not k.startswith(("rootfs", "blobs"))}
    assert after == {k: v for k, v in before.items() if not k.startswith(("rootfs", "blobs"))}


@pytest.mark.parametrize("case_id, layers, landed, exists", RESOLVED,
                         ids=[c[0] for c in RESOLVED])
def test_symlinked_path_is_resolved_inside_the_rootfs(tmp_path, outside, case_id, layers, landed,
                                                      exists):
    ci.require_tool("umoci")
    out = str(outside)
    layers = [_fill(layer, out) for layer in layers]
    before = tree(tmp_path)
    root = unpack_layers(tmp_path / "rootfs", [tar_layer(layer) for layer in layers])
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith(("rootfs", "blobs"))}
    assert after == {k: v for k, v in before.items() if not k.startswith(("rootfs", "blobs"))}
    assert os.path.lexists(root / _fill(landed, out).lstrip("/")) == exists
    theirs = umoci_unpack(tmp_path / "umoci", Image(layers))
    assert tree(root) == tree(theirs)


def test_deep_nesting_is_no_recursion_problem(tmp_path):
    # Deeper than Python's recursion limit: creating and whiting out must both work.
    deep = "/".join(["d"] * 1500)
    root = unpack_layers(tmp_path / "rootfs", [[File(deep + "/f", b"x")], [Whiteout("d")]])
    assert os.listdir(root) == []


def test_a_symlink_inside_the_rootfs_is_followed_inside_it(tmp_path):
    root = unpack_layers(tmp_path / "rootfs", [[Dir("usr"), Symlink("lib", "usr"),
                                                File("lib/x", b"1")]])
    assert (root / "usr/x").read_bytes() == b"1"
    assert os.readlink(root / "lib") == "usr"


def test_whiteouts_below_a_path_this_layer_replaced_are_ignored(tmp_path, outside):
    # umoci's repack writes `d -> target` then `d/.wh.child` when a directory
    # became a symlink: the lower `d/child` is already gone with `d`.
    root = unpack_layers(tmp_path / "rootfs", [
        [Dir("d"), File("d/child", b"1")],
        [Symlink("d", str(outside)), Whiteout("d/child"), Whiteout("d/x/y")],
    ])
    assert os.readlink(root / "d") == str(outside)
    assert (outside / "secret").read_bytes() == b"keep me"


def _chain(count):
    """Symlinks l1 -> l2 -> ... -> l<count> -> d, then a member below l1."""
    links = [Symlink(f"l{i}", f"l{i + 1}") for i in range(1, count)]
    return [Dir("d"), Symlink(f"l{count}", "d"), *links, File("l1/x", b"1")]


@pytest.mark.parametrize("entries", [
    [Symlink("a", "b"), Symlink("b", "/a"), File("a/x", b"1")],
    [Symlink("a", "./a/"), File("a/x", b"1")],
    _chain(41),
], ids=["loop", "self-loop", "41-links"])
def test_a_link_loop_or_41_links_is_an_error_naming_the_layer_and_entry(tmp_path, entries):
    with pytest.raises(UnpackError, match=r"layer loop-0: entry '.*/x': more than 40 symbolic "
                                          r"links \(or a loop\)"):
        unpack_layers(tmp_path / "rootfs", [entries], name="loop")


def test_forty_links_are_followed(tmp_path):
    root = unpack_layers(tmp_path / "rootfs", [_chain(40)])
    assert (root / "d/x").read_bytes() == b"1"
