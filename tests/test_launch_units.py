"""The child's path walking and exec lookup, without namespaces (no root needed)."""

import os

import pytest

from minict import inroot
from minict.runtime import execute, mounts, steps


@pytest.fixture
def root(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    yield rootfs, fd
    os.close(fd)


def test_missing_directories_are_created_inside_the_rootfs(root):
    rootfs, fd = root
    target = mounts.open_target(fd, "/dev/pts", inroot.DIR)
    target.close()
    assert target.name == b"pts" and (rootfs / "dev" / "pts").is_dir()
    mounts.open_target(fd, "/etc/resolv.conf", inroot.FILE).close()
    assert (rootfs / "etc" / "resolv.conf").is_file()


@pytest.mark.parametrize("link", ["etc", "etc/resolv.conf"])
def test_a_symlink_on_the_way_to_the_host_leads_inside_the_rootfs(root, tmp_path, link):
    rootfs, fd = root
    outside = tmp_path / "outside"
    outside.mkdir()
    if link == "etc":
        (rootfs / "etc").symlink_to(outside)
    else:
        (rootfs / "etc").mkdir()
        (rootfs / "etc" / "resolv.conf").symlink_to(outside / "resolv.conf")
    target = mounts.open_target(fd, "/etc/resolv.conf", inroot.FILE)
    try:
        made = rootfs / str(outside).lstrip("/") / "resolv.conf"  # both ways
        assert os.stat(made).st_ino == os.fstat(target.fd).st_ino
    finally:
        target.close()
    assert os.listdir(outside) == []


@pytest.mark.parametrize("destination", ["/", "relative/path", "/a/../../b", ""])
def test_destinations_that_are_not_plain_absolute_paths_are_refused(root, destination):
    with pytest.raises(steps.SetupError, match="absolute path"):
        mounts.open_target(root[1], destination, inroot.DIR)


def test_a_missing_path_is_reported_when_not_asked_to_create(root):
    with pytest.raises(FileNotFoundError):
        mounts.open_target(root[1], "/proc/kcore")


@pytest.mark.parametrize("cwd", ["/proc/self/fd/3", "/proc/1/fd", "/proc/self/task/1/fd/7",
                                 "/proc//self/fd/../fd/4"])
def test_working_directories_through_proc_fd_are_recognised(cwd):
    assert execute.FD_PATH.match(os.path.normpath(cwd))


@pytest.mark.parametrize("cwd", ["/", "/proc", "/proc/self", "/home/fd", "/srv/proc/1/fd"])
def test_ordinary_working_directories_pass(cwd):
    assert not execute.FD_PATH.match(os.path.normpath(cwd))


def test_what_a_child_said_before_closing_is_read_though_it_left_our_message_unread():
    # A child that exits with a message of ours unread resets the connection:
    # the first recv reports ECONNRESET even though the child's own last
    # message (its error) is queued; reading on must still find it.
    import socket

    from minict.runtime import launch

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.send(b"reaped")  # never read by the child
    theirs.send(b"error 1 mount /proc: Operation not permitted")
    theirs.close()
    child = os.fork()
    if child == 0:
        os._exit(0)
    started = launch._handshake(ours, child, "/nonexistent", {}, None)
    ours.close()
    assert started.error == (1, "mount /proc: Operation not permitted")
