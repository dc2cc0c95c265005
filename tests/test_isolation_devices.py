"""Devices: a container can use only its curated /dev, and the devices cgroup allows only those.

Real containers, as root.  A static C probe opens device nodes and reports
errno, since busybox's tools say little about why an open failed.  Every
container test runs twice, once with the cgroup v1 devices controller and
once with the cgroup v2 eBPF program (MINICT_CGROUP_DEVICES): this hybrid
machine has both.

The emitter of the eBPF program is also checked without a kernel: a small
interpreter of the eight instructions it uses runs the program against a
reference model of the rules (cgroup v1's semantics) for every device and
access of a grid.
"""

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from minict import linux
from minict.bundle import devices, spec
from minict.runtime import cgroups, device_cgroup
from tests.support import ci, probes
from tests.support.images import CharDevice, Image, push, rootfs_entries
from tests.support.waiting import rmdir_when_empty
from tests.test_container import wait_running as running_pid

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* devprobe open r|w|rw PATH [TEXT]   -> "PATH ok" or "PATH EACCES" (+ " write ok|ERR" with TEXT)
   devprobe mknod PATH c|b MAJOR MINOR -> "mknod PATH ok|ERR"
   devprobe pty                        -> "pty ok" or "pty STEP ERR"                           */
static const char *err(void) { return strerrorname_np(errno); }

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "open") == 0) {
        int flags = strcmp(argv[2], "r") == 0 ? O_RDONLY : strcmp(argv[2], "w") == 0 ? O_WRONLY : O_RDWR;
        int fd = open(argv[3], flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) { printf("%s %s\n", argv[3], err()); return 0; }
        printf("%s ok", argv[3]);
        if (argc >= 5) {
            if (write(fd, argv[4], strlen(argv[4])) < 0) printf(" write %s", err());
            else printf(" write ok");
        }
        printf("\n");
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "mknod") == 0) {
        mode_t kind = argv[3][0] == 'b' ? S_IFBLK : S_IFCHR;
        if (mknod(argv[2], kind | 0666, makedev(atoi(argv[4]), atoi(argv[5]))) < 0)
            printf("mknod %s %s\n", argv[2], err());
        else
            printf("mknod %s ok\n", argv[2]);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "pty") == 0) {
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0) { printf("pty posix_openpt %s\n", err()); return 0; }
        if (grantpt(master) < 0 || unlockpt(master) < 0) { printf("pty unlockpt %s\n", err()); return 0; }
        int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
        if (slave < 0) { printf("pty open-slave %s\n", err()); return 0; }
        printf("pty ok\n");
        return 0;
    }
    fprintf(stderr, "usage: devprobe open r|w|rw PATH [TEXT] | mknod PATH c|b MAJ MIN | pty\n");
    return 2;
}
"""


@pytest.fixture(scope="module")
def probe():
    ci.require_tool("gcc")
    return probes.compile_probe("devprobe", PROBE_SOURCE)


@pytest.fixture(params=["v1", "v2"])
def version(request):
    """Which devices cgroup minict uses (both exist here): 'v1' or 'v2'."""
    if request.param == "v1" and "devices" not in cgroups.hierarchies().v1:
        pytest.skip("no cgroup v1 devices controller on this machine")
    if request.param == "v2" and cgroups.hierarchies().v2 is None:
        pytest.skip("no cgroup v2 hierarchy on this machine")
    return request.param


@pytest.fixture
def mc(minict, version):
    """minict(...) with MINICT_CGROUP_DEVICES set to the test's version."""

    def call(*args, env=None, **kw):
        return minict(*args, env={device_cgroup.ENV_VERSION: version, **(env or {})}, **kw)

    return call


@pytest.fixture
def probed_box(box, probe):
    """probed_box(cmd, name="box", edit=None) -> a busybox bundle with /usr/local/bin/devprobe."""

    def make(cmd, name="box", **kw):
        bundle = box(cmd, name=name, **kw)
        probes.install_probe(bundle / "rootfs", probe)
        return bundle

    return make


def sh(script):
    return ["sh", "-c", script]


def results(stdout: str) -> dict[str, str]:
    """Return {path: 'ok' | errno name [+ write ...]} from devprobe's lines."""
    found = {}
    for line in stdout.splitlines():
        head, _, rest = line.partition(" ")
        found[head] = rest
    return found


def kernel_log() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout


def leaf_name(minict_dir, name: str) -> str:
    """Return cgroups.leaf_name(name) as a minict with MINICT_DIR=minict_dir computes it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINICT_DIR", str(minict_dir))
        return cgroups.leaf_name(name)


def container_cgroups(minict_dir) -> list[Path]:
    """Return the cgroup directories of this test's MINICT_DIR that exist now."""
    prefix = leaf_name(minict_dir, "x")[:-1]
    found = []
    for point in cgroups.hierarchies().all_points():
        parent = Path(point) / cgroups.PARENT
        if parent.is_dir():
            found += [parent / name for name in os.listdir(parent) if name.startswith(prefix)]
    return found


# Host device nodes an image may ship, at paths outside /dev and inside its own /dev.
IMAGE_NODES = {
    "/kmsg": (1, 11), "/opt/x": (1, 11), "/opt/loop-control": (10, 237),
    "/vcsa": (7, 128), "/dev/kmsg": (1, 11), "/opt/null": (1, 3),
}


def mknod_all(rootfs: Path) -> None:
    for path, (major, minor) in IMAGE_NODES.items():
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(major, minor))


# -- nodes shipped in an image ---------------------------------------------------------

@pytest.mark.root
def test_device_nodes_in_the_rootfs_do_not_open(mc, probed_box):
    marker = f"minict-devices-test-{uuid.uuid4()}"
    paths = " ".join(IMAGE_NODES)
    bundle = probed_box(sh(f"for p in {paths}; do devprobe open rw $p {marker}; "
                           "devprobe open r $p; done; true"))
    mknod_all(bundle / "rootfs")
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 * len(IMAGE_NODES), done.stdout
    for line in lines:
        path, result = line.split(" ", 1)
        # /dev/kmsg of the image is under the container's own /dev: it is not there at all.
        # /opt/null is a device the cgroup allows: only nodev stops it.
        allowed = {"/dev/kmsg": ("ENOENT",), "/opt/null": ("EACCES",)}.get(
            path, ("EACCES", "EPERM", "ENXIO"))
        assert result in allowed, line
    assert marker not in kernel_log()


@pytest.mark.root
def test_device_nodes_of_an_image_layer_do_not_open(minict, registry, busybox_rootfs, probe,
                                                   tmp_path):
    """The issue's case end to end: the nodes come out of a pulled layer."""
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    probes.install_probe(rootfs, probe)
    nodes = [CharDevice("kmsg", 1, 11), CharDevice("opt/x", 1, 11),
             CharDevice("opt/loop-control", 10, 237), CharDevice("vcsa", 7, 128)]
    image = Image([rootfs_entries(rootfs), nodes], config={"Env": ["PATH=/usr/local/bin:/bin"]})
    push(registry.url, registry.repo("test/nodes"), "latest", image)
    marker = f"minict-devices-test-{uuid.uuid4()}"
    script = " ".join(f"devprobe open rw /{n.name} {marker};" for n in nodes) + " true"
    done = minict("run", "--pull", "missing", "--image", registry.ref("test/nodes:latest"),
                  "--name", "nodes", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    found = results(done.stdout)
    assert sorted(found) == sorted(f"/{n.name}" for n in nodes), done.stdout
    assert all(r in ("EACCES", "EPERM", "ENXIO") for r in found.values()), done.stdout
    assert marker not in kernel_log()


@pytest.mark.root
def test_a_device_node_in_a_bind_mounted_volume_does_not_open(mc, probed_box, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    os.mknod(volume / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # allowed by the cgroup

    def edit(config):
        config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                                 "options": ["rbind"]})

    probed_box(sh("devprobe open w /vol/null; grep ' /vol ' /proc/self/mounts"), edit=edit)
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "/vol/null EACCES"
    assert "nodev" in done.stdout.splitlines()[1]


# -- the devices cgroup ----------------------------------------------------------------

@pytest.mark.root
def test_the_defaults_still_work(mc, probed_box):
    probed_box(sh("echo hi > /dev/null && echo NULL-OK; head -c 8 /dev/urandom | wc -c;"
                  " head -c 4 /dev/zero | od -An -tx1; devprobe open w /dev/full x;"
                  " devprobe open r /dev/random; devprobe pty"))
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["NULL-OK", "8", " 00 00 00 00", "/dev/full ok write ENOSPC",
                                       "/dev/random ok", "pty ok", ""], done.stdout


@pytest.mark.root
def test_the_cgroup_denies_a_node_that_is_in_dev(mc, probed_box):
    """Host nodes bound into /dev (usable) without an allow rule: the cgroup alone refuses them.

    (Opening /dev/kmsg for reading needs CAP_SYSLOG too, so only a write-open
    shows the cgroup at work there; /dev/loop-control checks nothing on open.)
    """
    marker = f"minict-devices-test-{uuid.uuid4()}"

    def edit(config):
        config["linux"]["devices"] = [
            {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11},
            {"path": "/dev/loop-control", "type": "c", "major": 10, "minor": 237}]

    probed_box(sh(f"devprobe open w /dev/kmsg {marker}; devprobe open r /dev/loop-control;"
                  " devprobe mknod /dev/loopctl c 10 237; devprobe open rw /dev/loopctl;"
                  " cat /proc/self/cgroup"), edit=edit)
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["/dev/kmsg EPERM", "/dev/loop-control EPERM"], done.stdout
    # mknod is refused (a user namespace); had it worked, the open would be.
    assert lines[2] == "mknod /dev/loopctl EPERM" and lines[3] != "/dev/loopctl ok", done.stdout
    assert marker not in kernel_log()
    own = [line for line in lines[4:] if ":devices:" in line or line.startswith("0::")]
    assert any("/minict/" in line for line in own), done.stdout


@pytest.mark.root
def test_the_cgroup_holds_the_rules_while_running_and_is_gone_after(minict_dir, probed_box,
                                                                    version):
    bundle = probed_box(sh("echo up; read line"))
    proc = subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", "box"],
                            env=dict(os.environ, MINICT_DIR=str(minict_dir),
                                     **{device_cgroup.ENV_VERSION: version}),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        pid = running_pid(bundle)
        [directory] = container_cgroups(minict_dir)
        assert str(pid) in (directory / "cgroup.procs").read_text().split()
        if version == "v1":
            assert directory.parent.parent.name == "devices"
            listed = (directory / "devices.list").read_text().split("\n")
            assert "c 1:3 rwm" in listed and "c 136:* rwm" in listed and "a *:* rwm" not in listed
        else:
            assert (directory / "cgroup.controllers").exists()
    finally:
        _, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0, err
    assert container_cgroups(minict_dir) == []


@pytest.mark.root
def test_a_stale_cgroup_of_a_killed_minict_is_replaced_by_start_and_removed_by_rm(
        minict_dir, mc, probed_box, version):
    bundle = probed_box(sh("echo up; sleep 60"))
    proc = subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", "box"],
                            env=dict(os.environ, MINICT_DIR=str(minict_dir),
                                     **{device_cgroup.ENV_VERSION: version}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    [stale] = container_cgroups(minict_dir)
    proc.kill()  # minict dies without cleaning up; its container follows (PDEATHSIG)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while (stale / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stale.is_dir(), "the killed minict's cgroup should still be there for this test"
    stale_inode = stale.stat().st_ino

    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", f"cat /proc/self/cgroup; stat -c %i {stale}"]
    (bundle / "config.json").write_text(json.dumps(config))
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith(f"/minict/{stale.name}") for line in lines[:-1]), done.stdout
    assert int(lines[-1]) != stale_inode  # a new cgroup of the same name, not the stale one
    assert container_cgroups(minict_dir) == []

    # rm removes a stale one too.
    stale.mkdir(parents=True)
    done = mc("rm", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert container_cgroups(minict_dir) == []


@pytest.mark.root
def test_two_state_directories_with_the_same_name_get_two_cgroups(tmp_path, busybox_rootfs,
                                                                  probe, version):
    from tests.support.bundles import make_bundle

    dirs = [tmp_path / "one", tmp_path / "two"]
    procs = []
    try:
        for minict_dir in dirs:
            bundle = make_bundle(minict_dir, "web", busybox_rootfs,
                                 cmd=["sh", "-c", "cat /proc/self/cgroup; echo up; sleep 60"])
            probes.install_probe(bundle / "rootfs", probe)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "minict", "start", "--name", "web"],
                env=dict(os.environ, MINICT_DIR=str(minict_dir), **{device_cgroup.ENV_VERSION: version}),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        seen = []
        for proc in procs:
            lines = []
            while (line := proc.stdout.readline()) != "up\n":
                assert line, proc.stderr.read()
                lines.append(line)
            seen.append({line for line in lines if "/minict/" in line})
        assert seen[0] and seen[1] and not seen[0] & seen[1]
        assert all(len(container_cgroups(d)) == 1 for d in dirs)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)


@pytest.mark.root
def test_a_process_that_joins_is_in_the_cgroup_and_so_is_what_it_forks(tmp_path, monkeypatch,
                                                                       version):
    # Cgroup.join as the container's first process calls it: in a child right
    # after fork (on v1 it moves the calling thread alone, through `tasks`).
    monkeypatch.setenv("MINICT_DIR", str(tmp_path))
    cgroup = cgroups.open_cgroup("joiner", {"devices": 1 if version == "v1" else 2})
    cgroup.create()
    try:
        done = subprocess.run(["sh", "-c", "cat /proc/$$/cgroup; echo --; cat /proc/self/cgroup"],
                              preexec_fn=cgroup.join,  # in the child after fork, as init.py calls it
                              capture_output=True, text=True, check=True)
    finally:
        cgroup.remove()
    inside = f"/{cgroups.PARENT}/{cgroups.leaf_name('joiner')}"
    wanted = ":devices:" if version == "v1" else "0::"
    for listing in done.stdout.split("--\n"):
        [line] = [line for line in listing.splitlines() if wanted in line]
        assert line.endswith(inside), done.stdout


# -- run --device, exec, --privileged ----------------------------------------------------

@pytest.fixture
def busybox(busybox_layout, minict_dir, probe, tmp_path):
    """The busybox image with devprobe, stored as `busybox:latest` as if pulled."""
    from tests.support.images import write_layout

    rootfs = tmp_path / "probe-rootfs"
    shutil.copytree(busybox_layout.parent / "rootfs", rootfs, symlinks=True)
    probes.install_probe(rootfs, probe)
    image = Image([rootfs_entries(rootfs)], config={"Env": ["PATH=/usr/local/bin:/bin"]})
    write_layout(minict_dir / "images" / "busybox", "latest", image)
    return "busybox"


@pytest.mark.root
def test_device_option_adds_a_node_with_its_permissions_and_start_repeats_it(mc, busybox,
                                                                            minict_dir):
    # Rules are per device number and add up, as docker's: a device the
    # defaults allow (zero, null) keeps rwm whatever --device says, so the
    # permissions are shown on devices outside the defaults.  A write-open of
    # /dev/kmsg writes nothing; its read-open also needs CAP_SYSLOG.
    script = ("devprobe open r /dev/lc; devprobe open w /dev/lc; devprobe open rw /dev/lc;"
              " devprobe open w /dev/mykmsg; devprobe open r /dev/myzero; devprobe open w"
              " /dev/myzero; ls /dev/loop-control /dev/kmsg 2>&1 | grep -c 'No such file'")
    done = mc("run", "--image", busybox, "--name", "dev", "--device", "/dev/loop-control:/dev/lc:r",
              "--device", "/dev/kmsg:/dev/mykmsg:w", "--device", "/dev/zero:/dev/myzero",
              "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    expected = ["/dev/lc ok", "/dev/lc EPERM", "/dev/lc EPERM", "/dev/mykmsg ok", "/dev/myzero ok",
                "/dev/myzero ok", "2"]
    assert done.stdout.splitlines() == expected
    config = json.loads((minict_dir / "containers/dev/config.json").read_text())
    assert {"path": "/dev/lc", "type": "c", "major": 10, "minor": 237, "fileMode": 0o600,
            "uid": 0, "gid": 0} in config["linux"]["devices"]
    assert {"allow": True, "type": "c", "major": 10, "minor": 237, "access": "r"} \
        in config["linux"]["resources"]["devices"]
    again = mc("start", "--name", "dev")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == expected


@pytest.mark.parametrize("option, message", [
    ("/etc/passwd", "--device /etc/passwd: not a character or block device"),
    ("/dev/no-such-device", "--device /dev/no-such-device: No such file or directory"),
    ("/dev/zero:relative", "the container path 'relative' must be an absolute path"),
    ("/dev/zero:/dev/z:rwx", "the permissions 'rwx' must be letters of 'rwm'"),
    ("/dev/zero:/dev/../etc/z", "must be an absolute path without '..'"),
    ("/dev/zero:/a:r:w", "use /dev/HOSTDEV[:CONTAINERPATH][:rwm]"),
])
def test_a_bad_device_option_is_one_clear_error(minict, busybox, minict_dir, option, message):
    done = minict("run", "--image", busybox, "--name", "bad", "--device", option, "--", "true")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert " fatal " in line and message in line, line
    assert not (minict_dir / "containers" / "bad").exists()


@pytest.mark.root
def test_exec_joins_the_cgroup_and_cannot_open_a_denied_device(mc, busybox, minict_dir, version,
                                                               monkeypatch):
    from tests.test_manage_run import spawn, wait_running

    monkeypatch.setenv(device_cgroup.ENV_VERSION, version)  # spawn() passes the environment on
    proc = spawn(minict_dir, "run", "--image", busybox, "--name", "ex", "--device",
                 "/dev/loop-control:/dev/lc:r", "--", "sh", "-c", "sleep 60")
    try:
        wait_running(minict_dir, "ex")
        done = mc("exec", "--name", "ex", "--", "sh", "-c",
                  "devprobe open w /dev/lc; devprobe open r /dev/lc; cat /proc/self/cgroup")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[:2] == ["/dev/lc EPERM", "/dev/lc ok"], done.stdout
        assert any("/minict/" in line for line in lines[2:]), done.stdout
    finally:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.root
def test_privileged_gives_the_host_devices(mc, busybox):
    done = mc("run", "--image", busybox, "--name", "priv", "--privileged", "--", "sh", "-c",
              "devprobe open w /dev/kmsg; devprobe open rw /dev/loop-control;"
              " readlink /dev/ptmx; devprobe pty")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["/dev/kmsg ok", "/dev/loop-control ok", "pts/ptmx",
                                        "pty ok"]


# -- what root in the container tries --------------------------------------------------

@pytest.mark.root
def test_root_cannot_loosen_or_leave_its_devices_cgroup(mc, probed_box):
    script = """
    mine=$(grep -E ':devices:|^0::' /proc/self/cgroup | grep /minict/ | head -1 | cut -d: -f3)
    for d in /sys/fs/cgroup/devices$mine /sys/fs/cgroup/unified$mine; do
        echo a > $d/devices.allow 2>/dev/null && echo LOOSENED
        echo $$ > $(dirname $(dirname $d))/cgroup.procs 2>/dev/null && echo LEFT
    done
    mkdir -p /mnt/cg; mount -t cgroup2 none /mnt/cg 2>/dev/null && echo MOUNTED
    mount -t cgroup -o devices none /mnt/cg 2>/dev/null && echo MOUNTED
    ln /dev/null /tmp/null 2>/dev/null && echo LINKED
    grep -q /minict/ /proc/self/cgroup && echo STILL-IN
    devprobe open r /dev/loop-control
    """

    def edit(config):
        config["linux"]["devices"] = [{"path": "/dev/loop-control", "type": "c", "major": 10,
                                       "minor": 237}]

    probed_box(sh(script), edit=edit)
    done = mc("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["STILL-IN", "/dev/loop-control EPERM"], done.stdout


# -- config.json and the rules ----------------------------------------------------------

def test_config_json_carries_runcs_default_rules_and_the_device_options():
    zero = devices.Device("/dev/myzero", "c", 1, 5, 0o666, 0, 0, "r")
    config = spec.generate({"config": {}}, "x", overrides=spec.Overrides(devices=(zero,)))
    rules = config["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[:-1] == devices.DEFAULT_RULES
    assert rules[-1] == {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"}
    assert config["linux"]["devices"] == [zero.oci()]
    privileged = spec.generate({"config": {}}, "x", overrides=spec.Overrides(privileged=True))
    assert privileged["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    plain = spec.generate({"config": {}}, "x")
    assert "devices" not in plain["linux"]
    assert devices.rules_of({}) == devices.rules_of(plain)  # an old bundle gets the defaults


def test_normalise_splits_oci_all_into_char_and_block():
    assert devices.normalise([{"allow": True, "major": 1, "minor": 3, "access": "rw"}]) == [
        devices.Rule(True, "c", 1, 3, "rw"), devices.Rule(True, "b", 1, 3, "rw")]
    assert devices.normalise([{"allow": False}]) == [devices.Rule(False, "a", None, None, "rwm")]
    assert [r.v1_line() for r in devices.normalise(devices.DEFAULT_RULES)][:4] == [
        "a", "c *:* m", "b *:* m", "c 1:3 rwm"]
    for bad in ([{"allow": "yes"}], [{"allow": True, "type": "x"}],
                [{"allow": True, "access": "rwx"}], [{"allow": True, "major": "1"}], {}):
        with pytest.raises(devices.DeviceError):
            devices.normalise(bad)


def test_device_option_syntax_is_dockers():
    assert devices.parse_option("/dev/zero") == devices.Device(
        "/dev/zero", "c", 1, 5, 0o666, 0, 0, "rwm")
    assert devices.parse_option("/dev/zero:r").path == "/dev/zero"
    assert devices.parse_option("/dev/zero:r").access == "r"
    assert devices.parse_option("/dev/zero:/dev/z").access == "rwm"
    assert devices.parse_option("/dev/zero:/dev/z:mw").access == "wm"


def test_cgroup_names_differ_per_state_directory(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("MINICT_DIR", str(tmp_path / "a"))
    first = cgroups.leaf_name("web")
    monkeypatch.setenv("MINICT_DIR", str(tmp_path / "b"))
    second = cgroups.leaf_name("web")
    assert first != second and first.endswith("-web") and second.endswith("-web")
    (tmp_path / "link").symlink_to(tmp_path / "b")
    monkeypatch.setenv("MINICT_DIR", str(tmp_path / "link"))
    assert cgroups.leaf_name("web") == second  # one state directory, one name
    (tmp_path / "b").rename(tmp_path / "c")
    monkeypatch.setenv("MINICT_DIR", str(tmp_path / "c"))
    assert cgroups.leaf_name("web") == second


# -- the eBPF emitter, against a reference model -----------------------------------------

def reference_allows(rules, kind, major, minor, access: str) -> bool:
    """cgroup v1's answer: per access, the last matching rule naming it decides; else allowed."""
    for letter in access:
        decided = None
        for rule in rules:
            if rule.type == "a" or (rule.type == kind and rule.major in (None, major)
                                    and rule.minor in (None, minor) and letter in rule.access):
                decided = rule.allow
        if decided is False:
            return False
    return True


def run_program(insns, kind, major, minor, access: str) -> int:
    """Interpret the emitter's eight opcodes on one struct bpf_cgroup_dev_ctx."""
    bits = sum(device_cgroup._ACCESS_BITS[a] for a in access)
    ctx = {0: ({"b": device_cgroup.DEV_BLOCK, "c": device_cgroup.DEV_CHAR}[kind] | bits << 16), 4: major,
           8: minor}
    regs = [0] * 11
    pc = 0
    for _ in range(10000):
        i = insns[pc]
        pc += 1
        if i.code == device_cgroup.LDX_W:
            assert i.src == 1
            regs[i.dst] = ctx[i.off]
        elif i.code == device_cgroup.AND32_K:
            regs[i.dst] &= i.imm & 0xFFFFFFFF
        elif i.code == device_cgroup.RSH32_K:
            regs[i.dst] = (regs[i.dst] & 0xFFFFFFFF) >> i.imm
        elif i.code == device_cgroup.MOV32_K:
            regs[i.dst] = i.imm & 0xFFFFFFFF
        elif i.code == device_cgroup.MOV32_X:
            regs[i.dst] = regs[i.src] & 0xFFFFFFFF
        elif i.code == device_cgroup.JNE_K:
            pc += i.off if regs[i.dst] != i.imm else 0
        elif i.code == device_cgroup.JEQ_K:
            pc += i.off if regs[i.dst] == i.imm else 0
        elif i.code == device_cgroup.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {i.code:#x}")
    raise AssertionError("the program did not end")


RULE_SETS = [
    devices.DEFAULT_RULES,
    devices.ALLOW_ALL,
    [],
    devices.DEFAULT_RULES + [{"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"}],
    [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 5,
                                         "access": "r"},
     {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "w"}],
    [{"allow": True, "type": "c", "major": 1, "access": "rwm"},
     {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}],
    [{"allow": False, "type": "b", "access": "rw"}, {"allow": True, "access": "rwm"},
     {"allow": False, "major": 7, "access": "m"}],
]


@pytest.mark.parametrize("entries", RULE_SETS)
def test_the_program_decides_as_cgroup_v1_would(entries):
    rules = devices.normalise(entries)
    insns = device_cgroup.program(rules)
    accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"]
    for kind in ("c", "b"):
        for major, minor in [(1, 3), (1, 5), (1, 11), (5, 2), (136, 4), (7, 0), (10, 200)]:
            for access in accesses:
                want = reference_allows(rules, kind, major, minor, access)
                got = run_program(insns, kind, major, minor, access)
                assert got == int(want), (entries, kind, major, minor, access)


def test_the_program_is_eight_bytes_an_instruction():
    insns = device_cgroup.program(devices.normalise(devices.DEFAULT_RULES))
    raw = device_cgroup.encode(insns)
    assert len(raw) == 8 * len(insns)
    assert raw[:8] == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])  # r2 = *(u32 *)(r1 + 0)


@pytest.mark.root
def test_the_kernel_verifier_accepts_random_rule_sets():
    rng = random.Random(7)
    for _ in range(30):
        entries = []
        for _ in range(rng.randrange(0, 12)):
            entry = {"allow": rng.random() < 0.6, "access": "".join(
                a for a in "rwm" if rng.random() < 0.6) or "r"}
            if rng.random() < 0.8:
                entry["type"] = rng.choice("cb")
            if rng.random() < 0.7:
                entry["major"] = rng.randrange(0, 300)
            if rng.random() < 0.6:
                entry["minor"] = rng.randrange(0, 300)
            entries.append(entry)
        fd = linux.bpf_prog_load(linux.BPF_PROG_TYPE_CGROUP_DEVICE,
                                 device_cgroup.encode(device_cgroup.program(devices.normalise(entries))), "MIT")
        os.close(fd)



def test_a_bad_cgroup_version_choice_is_one_clear_error_and_runs_nothing(minict, minict_dir,
                                                                         probed_box):
    bundle = probed_box(["touch", "/ran"])
    bad = minict("start", "--name", "box", env={device_cgroup.ENV_VERSION: "v3"})
    assert bad.returncode == 1
    [line] = bad.stderr.splitlines()
    assert "fatal Failed to run image. Error received: MINICT_CGROUP_DEVICES='v3': use v1 or v2" \
        in line
    assert not (bundle / "rootfs" / "ran").exists()
    assert container_cgroups(minict_dir) == []


@pytest.mark.root
def test_orphans_of_gone_state_directories_are_swept_and_nothing_running_is(mc, minict_dir,
                                                                           probed_box, version):
    """A killed minict whose $MINICT_DIR is deleted too leaves a cgroup no start would name."""
    point = cgroups.hierarchies().v1["devices"] if version == "v1" else cgroups.hierarchies().v2
    parent = Path(point) / cgroups.PARENT
    parent.mkdir(exist_ok=True)
    old = time.time() - 2 * cgroups.ORPHAN_AGE
    orphan, young, busy = (parent / f"0-0-test-{kind}-{uuid.uuid4().hex[:8]}"
                           for kind in ("orphan", "young", "busy"))
    for path in (orphan, young, busy):
        path.mkdir()
    os.utime(orphan, (old, old))
    os.utime(busy, (old, old))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        probed_box(["true"])
        done = mc("start", "--name", "box")
        assert done.returncode == 0, done.stderr
        assert not orphan.exists()
        assert young.is_dir() and busy.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (orphan, young, busy):
            rmdir_when_empty(path)
