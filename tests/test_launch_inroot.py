"""Mount destinations and working directories that are symlinks in the rootfs.

Each is followed inside the rootfs, as if it were `/` (runc does the same):
the mount lands on the link's target there, made when missing, and never on
the host path an absolute link names.  The canary is a host directory such
links aim at; it must not change.  (These were refused before.)
"""

import os

import pytest

from tests.support.layers import tree

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root


def sh(script):
    return ["sh", "-c", script]


def host_resolv_conf() -> str:
    with open("/etc/resolv.conf") as f:
        return f.read()




def in_rootfs(bundle, host_path) -> str:
    """Where an absolute link to `host_path` leads when resolved inside the rootfs."""
    return str(bundle / "rootfs" / str(host_path).lstrip("/"))


def test_resolv_conf_linked_to_a_host_path_is_bound_inside_the_rootfs(minict, box, canary):
    before = tree(canary)
    bundle = box(sh(f"cat /etc/resolv.conf; echo ---; cat {canary}/resolv.conf"))
    os.symlink(canary / "resolv.conf", bundle / "rootfs/etc/resolv.conf")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{host_resolv_conf()}---\n{host_resolv_conf()}"
    assert tree(canary) == before
    assert os.path.isfile(in_rootfs(bundle, canary / "resolv.conf"))


def test_resolv_conf_linked_into_run_gets_its_target_made(minict, box):
    bundle = box(sh("cat /run/systemd/resolve/stub-resolv.conf"))
    os.symlink("../run/systemd/resolve/stub-resolv.conf", bundle / "rootfs/etc/resolv.conf")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == host_resolv_conf()
    assert os.readlink(bundle / "rootfs/etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"


def test_hosts_linked_above_the_root_stays_below_it(minict, box, tmp_path, canary):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.8.7 bound\n")

    def bind_hosts(config):
        config["mounts"].append({"destination": "/etc/hosts", "type": "bind",
                                 "source": str(hosts), "options": ["rbind", "ro"]})

    before = tree(canary)
    bundle = box(sh("cat /usr/share/hosts"), edit=bind_hosts)
    # `..` past the root stays at the root: this is /usr/share/hosts.
    os.symlink("../../../../../../usr/share/hosts", bundle / "rootfs/etc/hosts")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "10.9.8.7 bound\n"
    assert tree(canary) == before


@pytest.mark.parametrize("link", ["/run/shm", "canary"])
def test_dev_shm_linked_elsewhere_gets_its_tmpfs_there(minict, box, canary, link):
    target = str(canary / "shm") if link == "canary" else link

    def rootfs_dev(config):
        # Without a tmpfs on /dev, the image's own /dev (and its symlinks) is what is mounted on.
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/dev"]

    before = tree(canary)
    bundle = box(sh(f"grep -c ' {target} tmpfs ' /proc/mounts; readlink /dev/shm"), edit=rootfs_dev)
    os.symlink(target, bundle / "rootfs/dev/shm")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"1\n{target}\n"
    assert tree(canary) == before
    assert os.path.isdir(in_rootfs(bundle, target))


def test_proc_linked_to_a_host_directory_is_mounted_inside_the_rootfs(minict, box, canary):
    bundle = box(sh("grep -c ^Pid: /proc/self/status; readlink /proc"))
    os.rmdir(bundle / "rootfs/proc")
    os.symlink(canary / "dir", bundle / "rootfs/proc")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"1\n{canary / 'dir'}\n"
    assert os.listdir(canary / "dir") == []
    assert os.path.isdir(in_rootfs(bundle, canary / "dir"))


@pytest.mark.parametrize("link", ["/srv/app", "../../../../srv/app"])
def test_working_directory_through_a_dangling_link_is_made_inside_the_rootfs(minict, box, link):
    bundle = box(sh("pwd -P; touch here"), workdir="/app")
    os.symlink(link, bundle / "rootfs/app")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "/srv/app\n"
    assert os.path.isfile(bundle / "rootfs/srv/app/here")


def test_a_link_planted_by_an_earlier_run_is_resolved_inside_the_rootfs(minict, box, canary):
    # `start` reuses the rootfs: what the container did to it last time is hostile now.
    before = tree(canary)
    bundle = box(sh("if [ -L /etc/resolv.conf ]; then cat /etc/resolv.conf; else"
                    " mv /etc /etc.old && mkdir /etc && cp /etc.old/passwd /etc.old/group /etc/"
                    f" && ln -s {canary}/resolv.conf /etc/resolv.conf && echo planted; fi"))
    first = minict("start", "--name", "box")
    assert first.stdout == "planted\n", first.stderr
    second = minict("start", "--name", "box")
    assert second.returncode == 0, second.stderr
    assert second.stdout == host_resolv_conf()
    assert tree(canary) == before
    assert os.path.isfile(in_rootfs(bundle, canary / "resolv.conf"))
