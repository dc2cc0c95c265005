"""bundle.create and bundle.remove_tree: stored image -> containers/N, atomically.

Images are written straight into $MINICT_DIR/images with the test image
builder (no registry needed); interruption tests run bundle.create in a
child process and kill it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minict import store
from minict.bundle import create as bundle
from minict.bundle import spec
from minict.errors import MinictError, UnpackError
from minict.image import reference
from tests.support.images import Dir, File, Image, Index, Layer, Symlink, tar_layer, write_layout
from tests.support.layers import tree

pytestmark = pytest.mark.root

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nwheel:x:10:app\n"
ROOTFS = [Dir("etc"), File("etc/passwd", PASSWD.encode()), File("etc/group", GROUP.encode()),
          Dir("bin"), File("bin/sh", b"#!fake\n", mode=0o755)]


@pytest.fixture
def home(minict_dir, monkeypatch):
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    return minict_dir


def store_image(name_tag, image):
    ref = reference.parse(name_tag)
    write_layout(store.image_dir(ref), ref.tag, image)
    return ref


def test_create_builds_rootfs_config_and_mark(home, capsys, tmp_path):
    upper = [File("etc/motd", b"hi\n"), Symlink("bin/ash", "sh")]
    image = Image([ROOTFS, upper], config={"Cmd": ["/bin/sh"], "User": "app",
                                           "Labels": {"team": "x"}})
    ref = store_image("app:1", image)
    path = bundle.create(ref, "box")
    assert path == home / "containers/box"
    assert sorted(os.listdir(path)) == [".minict-complete", "config.json", "rootfs"]
    assert bundle.is_complete(path)
    mark = json.loads((path / ".minict-complete").read_text())
    assert mark["image"] == "app:1" and mark["manifest"] == image.digest
    text = (path / "config.json").read_text()
    assert text.startswith('{\n\t"ociVersion"')  # tab-indented like the original's
    assert json.loads(text) == spec.generate(image.config_doc, "box", PASSWD, GROUP)
    assert json.loads(text)["process"]["user"] == {"uid": 1000, "gid": 1000,
                                                    "additionalGids": [10]}
    assert (path / "rootfs/etc/motd").read_bytes() == b"hi\n"
    err = capsys.readouterr().err
    for layer in image.layers:
        assert f"info unpack layer: {layer.digest}" in err
    assert f"info unpacked image bundle: {path}" in err


@pytest.mark.parametrize("media, compression", [
    ("oci", None), ("oci", "gzip"), ("oci", "zstd"), ("docker", None), ("docker", "gzip"),
])  # Docker has no zstd layer media type
def test_media_types(home, media, compression):
    image = Image([ROOTFS], media=media, compression=compression)
    path = bundle.create(store_image("m:1", image), "m")
    assert (path / "rootfs/bin/sh").read_bytes() == b"#!fake\n"


def test_an_index_resolves_to_this_hosts_image(home):
    from tests.support.images import host_platform

    other = Image([[File("wrong", b"")]], architecture="s390x" if host_platform()[
        "architecture"] != "s390x" else "arm64")
    mine = Image([ROOTFS])
    index = Index([(other, {"os": "linux", "architecture": other.config_doc["architecture"]}),
                   (mine, host_platform())])
    path = bundle.create(store_image("multi:1", index), "multi")
    assert (path / "rootfs/bin/sh").exists() and not (path / "rootfs/wrong").exists()


@pytest.mark.unprivileged
def test_an_image_that_was_not_pulled(minict):
    done = minict("run", "--image", "nope:1", "--name", "x")
    assert done.returncode == 1
    assert done.stderr.rstrip("\n").endswith(
        "fatal Failed to unpack image. Error received: image nope:1 not found; "
        "pull it first with 'minict pull --image nope:1'")
    assert done.stderr.count("\n") == 1


def _assert_refused_without_leftovers(home, ref, *fragments):
    with pytest.raises(UnpackError) as refused:
        bundle.create(ref, "bad")
    for fragment in fragments:
        assert fragment in str(refused.value)
    containers = home / "containers"
    assert not containers.exists() or os.listdir(containers) == []
    return refused.value


def test_a_wrong_diff_id_is_refused_and_nothing_remains(home):
    good = Layer(tar_layer(ROOTFS))
    wrong = "sha256:" + "0" * 64
    image = Image([good], extra={"rootfs": {"type": "layers", "diff_ids": [wrong]}})
    _assert_refused_without_leftovers(home, store_image("w:1", image), good.digest, wrong,
                                      good.diff_id)


def test_a_hostile_layer_is_refused_and_nothing_remains(home):
    image = Image([ROOTFS, [File("../../escape", b"x")]])
    _assert_refused_without_leftovers(home, store_image("h:1", image),
                                      f"layer {image.layers[1].digest}", "'../../escape'")
    assert not (home / "escape").exists() and not (home / "containers/escape").exists()


@pytest.mark.parametrize("change, message", [
    ({"extra": {"os": "windows"}}, "minict runs linux images only"),
    ({"extra": {"rootfs": {"type": "layers", "diff_ids": []}}}, "0 diff_ids for 1 layers"),
    ({"config": {"User": "nobody"}}, "cannot find user 'nobody'"),
    ({"manifest_extra": {"mediaType": "application/vnd.oci.image.index.v1+json"}},
     "unsupported manifest media type"),
])
def test_bad_images_are_refused_and_nothing_remains(home, change, message):
    image = Image([ROOTFS], **change)
    _assert_refused_without_leftovers(home, store_image("b:1", image), message)


@pytest.mark.unprivileged
def test_an_unknown_layer_media_type_is_refused(home):
    layer = Layer(tar_layer(ROOTFS), None, media_type="application/x-tar")
    _assert_refused_without_leftovers(home, store_image("u:1", Image([layer])),
                                      "unsupported layer media type 'application/x-tar'")


def test_a_user_database_symlinked_out_of_the_rootfs_is_not_read(home):
    # Through the host's /etc/passwd, "daemon" would resolve; inside, it must not.
    image = Image([[Dir("etc"), Symlink("etc/passwd", "/etc/passwd")]],
                  config={"User": "daemon"})
    _assert_refused_without_leftovers(home, store_image("s:1", image),
                                      "cannot find user 'daemon'")


@pytest.mark.parametrize("stale", ["r", ".partial-r"])
def test_a_bundle_without_its_mark_is_replaced_one_with_it_is_not(home, stale):
    ref = store_image("r:1", Image([ROOTFS]))
    (home / "containers" / stale / "rootfs/junk").mkdir(parents=True)
    path = bundle.create(ref, "r")
    assert not (path / "rootfs/junk").exists() and bundle.is_complete(path)
    assert os.listdir(home / "containers") == ["r"]
    with pytest.raises(UnpackError, match="already exists"):
        bundle.create(ref, "r")
    assert bundle.is_complete(path)


# -- interruption ----------------------------------------------------------------------

CREATE = ("import sys; from minict.bundle import create; from minict.image import reference; "
          "create.create(reference.parse(sys.argv[1]), sys.argv[2])")


def _big_image():
    # ~60 MB of incompressible files: long enough to interrupt in the middle.
    files = [File(f"f/{i:05d}", os.urandom(12_000)) for i in range(5000)]
    return Image([[Dir("f")] + files], compression=None)


def _start_create(home, ref, name):
    env = dict(os.environ, MINICT_DIR=str(home))
    return subprocess.Popen([sys.executable, "-c", CREATE, ref, name], env=env,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.002)


def _interrupted_create(home, name, signo):
    """Start creating bundle `name` of big:1 and send `signo` in the middle; return the child.

    On a loaded machine the create may finish before the signal lands: then
    its bundle is removed and it is tried again, so the test sees a real
    interruption (or fails saying it never got one).
    """
    for _ in range(5):
        child = _start_create(home, "big:1", name)
        _wait_for(home / f"containers/.partial-{name}/rootfs/f/00100", child)
        child.send_signal(signo)
        child.wait(timeout=60)
        if not (home / "containers" / name).exists():
            return child
        bundle.remove_tree(home / "containers" / name)  # finished first: not an interruption
    raise AssertionError(f"the create of {name} always finished before signal {signo}")


def test_kill_9_leaves_no_container_and_the_next_create_cleans_up(home, minict):
    ref = store_image("big:1", _big_image())
    _interrupted_create(home, "k", signal.SIGKILL)
    leftover = home / "containers/.partial-k"
    assert not (leftover / "rootfs/f/04999").exists()  # it was cut short
    assert not bundle.is_complete(leftover)
    assert os.listdir(home / "containers") == [".partial-k"]
    listed = minict("list-containers", env={"MINICT_DIR": str(home)})
    assert json.loads(listed.stdout) == []
    path = bundle.create(ref, "k")
    assert bundle.is_complete(path) and len(os.listdir(path / "rootfs/f")) == 5000
    assert os.listdir(home / "containers") == ["k"]


def test_ctrl_c_removes_the_half_made_bundle(home):
    store_image("big:1", _big_image())
    child = _interrupted_create(home, "c", signal.SIGINT)
    err = child.stderr.read()
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    assert os.listdir(home / "containers") == []


# -- remove_tree -------------------------------------------------------------------------


@pytest.mark.unprivileged
def test_remove_tree_removes_symlinks_not_their_targets(tmp_path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir/file").write_text("keep\n")
    victim = tmp_path / "victim"
    (victim / "a/b").mkdir(parents=True)
    (victim / "a/b/file").write_text("x")
    os.symlink(outside, victim / "a/to-outside")
    os.symlink(outside / "dir", victim / "a/b/to-dir")
    os.symlink("/", victim / "root-link")
    before = tree(outside)
    bundle.remove_tree(victim)
    assert not os.path.lexists(victim)
    assert tree(outside) == before


@pytest.mark.unprivileged
def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target/file").write_text("keep\n")
    os.symlink(tmp_path / "target", tmp_path / "link")
    bundle.remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link")
    assert (tmp_path / "target/file").read_text() == "keep\n"


@pytest.mark.unprivileged
def test_remove_tree_of_a_missing_path_is_fine(tmp_path):
    bundle.remove_tree(tmp_path / "none")


def test_remove_tree_does_not_enter_a_mount(tmp_path):
    victim = tmp_path / "victim"
    (victim / "mnt").mkdir(parents=True)
    (victim / "other").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", victim / "mnt"], check=True)
    try:
        (victim / "mnt/precious").write_text("keep\n")
        with pytest.raises(MinictError, match="is still mounted"):
            bundle.remove_tree(victim)
        assert (victim / "mnt/precious").read_text() == "keep\n"
    finally:
        subprocess.run(["umount", victim / "mnt"], check=True)
    bundle.remove_tree(victim)
    assert not victim.exists()


def test_remove_at_refuses_another_device(tmp_path):
    # The st_dev check on its own, below remove_tree's mountinfo check.
    from minict import rmtree

    victim = tmp_path / "victim"
    (victim / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", victim / "mnt"], check=True)
    try:
        (victim / "mnt/precious").write_text("keep\n")
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(OSError, match="mount point"):
                rmtree.remove_at(fd, "victim", os.stat(tmp_path).st_dev)
        finally:
            os.close(fd)
        assert (victim / "mnt/precious").read_text() == "keep\n"
    finally:
        subprocess.run(["umount", victim / "mnt"], check=True)


@pytest.mark.unprivileged
def test_an_unreadable_index_is_not_reported_as_not_pulled(home):
    ref = store_image("broken:1", Image([ROOTFS]))
    (store.image_dir(ref) / "index.json").write_text("{not json")
    with pytest.raises(UnpackError, match="index.json is not valid JSON"):
        bundle.create(ref, "broken")
