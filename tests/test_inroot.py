"""The in-root resolver (minict.inroot), with openat2 and with the walk it falls back to.

Every test runs twice: `kernel` uses openat2(RESOLVE_IN_ROOT) where the
resolver can, `walk` forces the component-by-component walk of kernels
before 5.6.  The rootfs sits next to an `outside/` directory that links aim at.
"""

import errno
import os
import threading
import time

import pytest

from minict import inroot, linux
from minict.bundle import create as bundle


@pytest.fixture(params=["kernel", "walk"])
def mode(request, monkeypatch):
    if request.param == "kernel":
        try:
            os.close(linux.openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0, linux.RESOLVE_IN_ROOT))
        except OSError as err:  # a kernel before 5.6 has only the walk to test
            if err.errno in linux.OPENAT2_MISSING:
                pytest.skip("this kernel has no openat2")
            raise
        monkeypatch.setattr(inroot, "use_openat2", True)
    else:
        monkeypatch.setattr(inroot, "use_openat2", False)
    return request.param


@pytest.fixture
def root(tmp_path):
    """(rootfs path, O_PATH descriptor of it), next to tmp_path/outside with a secret."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("host\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/tool").write_text("in root\n")
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    yield rootfs, fd
    os.close(fd)


def same_file(fd, path) -> bool:
    a, b = os.fstat(fd), os.lstat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def opened(root_fd, path) -> int:
    return inroot.open_in_root(root_fd, path)


@pytest.mark.parametrize("link, target", [
    ("bin", "usr/bin"),                 # relative
    ("bin", "/usr/bin"),                # absolute: from the rootfs, not the host
    ("bin", "../../../../usr/bin"),     # `..` above the root stays at the root
    ("bin", "/../../usr/./bin/"),
])
def test_links_resolve_inside_the_root(mode, root, link, target):
    rootfs, fd = root
    os.symlink(target, rootfs / link)
    found = opened(fd, "bin/tool")
    try:
        assert same_file(found, rootfs / "usr/bin/tool")
    finally:
        os.close(found)


def test_dotdot_at_the_root_is_the_root(mode, root):
    rootfs, fd = root
    found = opened(fd, "../../../usr/bin/../../usr/bin/tool")
    try:
        assert same_file(found, rootfs / "usr/bin/tool")
    finally:
        os.close(found)


def test_an_absolute_link_to_a_host_path_never_reaches_the_host(mode, root, tmp_path):
    rootfs, fd = root
    os.symlink(tmp_path / "outside", rootfs / "out")
    os.symlink(tmp_path / "outside/secret", rootfs / "secret")
    for path in ("out/secret", "secret"):
        with pytest.raises(FileNotFoundError):
            os.close(opened(fd, path))
    # Made when asked: inside the rootfs, where the link leads from its root.
    found = inroot.resolve(fd, "secret", create=inroot.FILE)
    found.close()
    assert os.path.isfile(rootfs / str(tmp_path / "outside/secret").lstrip("/"))
    assert os.listdir(tmp_path / "outside") == ["secret"]


@pytest.mark.parametrize("links, fails", [(40, False), (41, True)])
def test_forty_links_resolve_and_forty_one_are_too_many(mode, root, links, fails):
    rootfs, fd = root
    os.symlink("usr/bin", rootfs / f"l{links}")
    for i in range(links - 1, 0, -1):  # l1 -> l2 -> ... -> l<links> -> usr/bin
        os.symlink(f"l{i + 1}", rootfs / f"l{i}")
    if fails:
        with pytest.raises(OSError) as err:
            os.close(opened(fd, "l1/tool"))
        assert err.value.errno == errno.ELOOP
    else:
        found = opened(fd, "l1/tool")
        assert same_file(found, rootfs / "usr/bin/tool")
        os.close(found)


@pytest.mark.parametrize("make", [
    lambda r: os.symlink("a", r / "a"),
    lambda r: (os.symlink("b/x", r / "a"), os.symlink("/a/y", r / "b")),
    lambda r: os.symlink("../a/", r / "a"),
])
def test_loops_are_eloop(mode, root, make):
    rootfs, fd = root
    make(rootfs)
    with pytest.raises(OSError) as err:
        os.close(opened(fd, "a/file"))
    assert err.value.errno == errno.ELOOP
    with pytest.raises(OSError) as err:  # and the walk that creates stops the same way
        inroot.resolve(fd, "a/file", create=inroot.FILE)
    assert err.value.errno == errno.ELOOP


def test_a_dangling_link_is_made_where_it_points(mode, root):
    rootfs, fd = root
    os.symlink("../run/systemd/stub", rootfs / "usr/link")
    found = inroot.resolve(fd, "/usr/link", create=inroot.FILE)
    try:
        assert found.name == b"stub"
        assert same_file(found.fd, rootfs / "run/systemd/stub")
    finally:
        found.close()


def test_the_last_link_is_kept_when_not_followed(mode, root):
    rootfs, fd = root
    os.symlink("/usr/bin", rootfs / "bin")
    found = inroot.resolve(fd, "bin", follow_last=False)
    try:
        assert found.name == b"bin" and same_file(found.fd, rootfs / "bin")
    finally:
        found.close()
    fd_, real = inroot.walk(fd, "bin/x/y", create=inroot.DIR)
    os.close(fd_)
    assert real == [b"usr", b"bin", b"x", b"y"] and (rootfs / "usr/bin/x/y").is_dir()


def test_a_file_on_the_way_is_not_a_directory(mode, root):
    _, fd = root
    with pytest.raises(NotADirectoryError):
        os.close(opened(fd, "usr/bin/tool/x"))
    with pytest.raises(NotADirectoryError):
        inroot.resolve(fd, "usr/bin/tool/x", create=inroot.DIR)


def test_a_magic_link_of_proc_never_leads_out(mode):
    # Below /proc/self as the root, `root` is the magic link to the host's /:
    # openat2 refuses it (ELOOP), the walk reads its text ("/") as a path in
    # the root, where there is no etc/: neither reaches the host's /etc.
    fd = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as err:
            os.close(opened(fd, "root/etc/hostname"))
        assert err.value.errno == (errno.ELOOP if mode == "kernel" else errno.ENOENT)
    finally:
        os.close(fd)


def test_a_link_swapped_during_resolution_never_leads_out(mode, root, tmp_path):
    """A thread flips `a` between links into the root, to the host and above the root."""
    rootfs, fd = root
    (rootfs / "real").mkdir()
    (rootfs / "real/secret").write_text("in root\n")
    outside = tmp_path / "outside"
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for make in (lambda: os.symlink(outside, rootfs / "a.new"),
                         lambda: os.symlink("real", rootfs / "a.new"),
                         lambda: os.symlink("../../../..", rootfs / "a.new")):
                make()
                os.rename(rootfs / "a.new", rootfs / "a")
                time.sleep(0)  # let the resolving thread meet each state

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    host = os.stat(outside / "secret")
    deadline = time.monotonic() + 20
    try:
        tries = 0
        while (tries := tries + 1) < 500 or len(seen) < 2 and time.monotonic() < deadline:
            try:
                found = opened(fd, "a/secret")
            except FileNotFoundError:
                seen.add("missing")
                continue
            st = os.fstat(found)
            os.close(found)
            assert (st.st_dev, st.st_ino) != (host.st_dev, host.st_ino)
            seen.add("in root")
    finally:
        stop.set()
        flipper.join()
    assert seen == {"missing", "in root"}  # both states were met, neither led out
    assert (outside / "secret").read_text() == "host\n"


def test_passwd_linked_elsewhere_in_the_rootfs_is_read_there(mode, root, tmp_path):
    rootfs, _ = root
    (rootfs / "etc").mkdir()
    (rootfs / "usr/share").mkdir()
    (rootfs / "usr/share/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("/usr/share/passwd", rootfs / "etc/passwd")
    os.symlink(tmp_path / "outside/secret", rootfs / "etc/group")  # a host path: not there
    assert bundle.read_user_databases(rootfs) == ("root:x:0:0::/root:/bin/sh\n", None)


def test_dotdot_after_a_link_is_the_parent_of_its_target(mode, root):
    # As the kernel does: `..` is taken on the resolved path, not on the text.
    rootfs, fd = root
    (rootfs / "usr/lib/deep").mkdir(parents=True)
    (rootfs / "usr/lib/file").write_text("x\n")
    os.symlink("usr/lib/deep", rootfs / "d")
    found = opened(fd, "d/../file")
    try:
        assert same_file(found, rootfs / "usr/lib/file")
    finally:
        os.close(found)
