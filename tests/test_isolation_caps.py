"""Capabilities, --cap-add/--cap-drop/--privileged, masked paths, and apt-get as root.

Real containers, as root.  What a container holds is read where the kernel
keeps it, /proc/self/status inside the container, and decoded to names; the
expected sets are written out here (docker's 14), not taken from minict.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from minict import linux
from tests.support import ci
from tests.support.probes import compile_probe, install_probe

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root

# moby daemon/pkg/oci/caps DefaultCapabilities, and what podman grants.
DOCKER_DEFAULT = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}
SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
_NAMES = {bit: name for name, bit in linux.CAPABILITIES.items()}


def kernel_caps() -> set[str]:
    """Every capability the running kernel has, by name (bit<N> for one minict cannot name)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return {_NAMES.get(bit, f"bit{bit}") for bit in range(last + 1)}


def decode(status: str) -> dict[str, set[str]]:
    """Return {"CapEff": {"CAP_CHOWN", ...}, ...} from the text of /proc/<pid>/status."""
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    result = {}
    for key in SETS:
        mask = int(fields[key], 16)
        result[key] = {_NAMES.get(bit, f"bit{bit}") for bit in range(mask.bit_length())
                       if mask >> bit & 1}
    return result


def expect(bounding, effective=None):
    """The five sets for a process holding `bounding`, `effective` (= permitted) of it."""
    effective = bounding if effective is None else effective
    return {"CapBnd": set(bounding), "CapEff": set(effective), "CapPrm": set(effective),
            "CapInh": set(), "CapAmb": set()}


@pytest.fixture
def busybox(busybox_layout, minict_dir):
    """The busybox image stored as `busybox:latest`, as if pulled."""
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    return "busybox"


def sh(script):
    return ["--", "sh", "-c", script]


# -- the default set ------------------------------------------------------------------

def test_root_gets_dockers_default_capabilities(minict, busybox):
    done = minict("run", "--image", busybox, "--name", "c", "--rm", "--", "cat",
                  "/proc/self/status")
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout) == expect(DOCKER_DEFAULT)


@pytest.mark.parametrize("user", ["1000", "app", "1234:55"])
def test_non_root_user_keeps_the_bounding_set_only(minict, busybox, user):
    # As under docker: execve of a program without file capabilities by a
    # non-root uid empties the effective and permitted sets (capabilities(7));
    # a setuid-root program could still get up to the bounding set.
    done = minict("run", "--image", busybox, "--name", "c", "--rm", "-u", user, "--", "cat",
                  "/proc/self/status")
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout) == expect(DOCKER_DEFAULT, effective=set())


# -- --cap-add, --cap-drop ------------------------------------------------------------------

@pytest.mark.parametrize("options, bounding", [
    (["--cap-add", "NET_ADMIN"], DOCKER_DEFAULT | {"CAP_NET_ADMIN"}),
    (["--cap-add", "cap_sys_ptrace", "--cap-drop", "Cap_Chown", "--cap-drop", "mknod"],
     DOCKER_DEFAULT - {"CAP_CHOWN", "CAP_MKNOD"} | {"CAP_SYS_PTRACE"}),
    (["--cap-drop", "ALL"], set()),
    (["--cap-drop", "all", "--cap-add", "kill", "--cap-add", "CAP_SYS_TIME"],
     {"CAP_KILL", "CAP_SYS_TIME"}),
    (["--cap-add", "all"], None),  # every capability of the kernel
    (["--cap-add", "ALL", "--cap-drop", "sys_admin", "--cap-drop", "ALL"], "all-but-admin"),
    (["--cap-add", "chown"], DOCKER_DEFAULT),  # already there: no change
])
def test_cap_options_are_seen_inside_and_start_repeats_them(minict, busybox, options,
                                                             bounding):
    if bounding is None:
        bounding = kernel_caps()
    elif bounding == "all-but-admin":
        # moby: ALL in --cap-add wins over ALL in --cap-drop; named drops still apply.
        bounding = kernel_caps() - {"CAP_SYS_ADMIN"}
    done = minict("run", "--image", busybox, "--name", "c", *options, "--", "cat",
                  "/proc/self/status")
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout) == expect(bounding)
    again = minict("start", "--name", "c")
    assert again.returncode == 0, again.stderr
    assert decode(again.stdout) == expect(bounding)


def test_exec_gets_the_containers_capabilities(minict, minict_dir, busybox):
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    proc = subprocess.Popen([sys.executable, "-m", "minict", "run", "--image", busybox,
                             "--name", "c", "--cap-drop", "ALL", "--cap-add", "NET_RAW",
                             "--", "sh", "-c", "echo up; sleep 60"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        done = minict("exec", "--name", "c", "--", "cat", "/proc/self/status")
        assert done.returncode == 0, done.stderr
        assert decode(done.stdout) == expect({"CAP_NET_RAW"})
    finally:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.unprivileged
@pytest.mark.parametrize("option", ["--cap-add", "--cap-drop"])
@pytest.mark.parametrize("name", ["NOPE", "CAP_", "cap_chown,kill", ""])
def test_unknown_capability_is_one_line_and_creates_nothing(minict, minict_dir, busybox,
                                                            option, name):
    done = minict("run", "--image", busybox, "--name", "c", option, name, "--", "true")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert f" fatal unknown capability {name!r}" in done.stderr
    assert not (minict_dir / "containers" / "c").exists()


# -- what real images need as root ----------------------------------------------------------

DROP_TO_USER = r"""
#include <grp.h>
#include <stdio.h>
#include <unistd.h>

/* What apt does for its _apt sandbox and what su, gosu and servers do:
   setgroups, setgid, setuid, in that order; then the way back must be shut. */
int main(void) {
    gid_t groups[] = {100, 1001};
    if (setgroups(2, groups) != 0) { perror("setgroups"); return 1; }
    if (setgid(1000) != 0) { perror("setgid"); return 1; }
    if (setuid(1000) != 0) { perror("setuid"); return 1; }
    gid_t now[8];
    int n = getgroups(8, now);
    printf("uid=%d gid=%d groups=%d", (int)getuid(), (int)getgid(), n);
    for (int i = 0; i < n; i++) printf(",%d", (int)now[i]);
    printf("\n");
    if (setuid(0) == 0) { printf("got root back\n"); return 1; }
    return 0;
}
"""


def test_root_can_chown_and_drop_to_another_user(minict, box, require_tool):
    require_tool("gcc")
    probe = compile_probe("droptouser", DROP_TO_USER)
    script = ("touch /tmp/x && chown 1000:1001 /tmp/x && stat -c %u:%g /tmp/x"
              " && mknod /tmp/fifo p && droptouser")
    bundle = box(["sh", "-c", script])
    install_probe(bundle / "rootfs", probe, "droptouser")
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "1000:1001\nuid=1000 gid=1000 groups=2,100,1001\n"


# -- masked and read-only paths -------------------------------------------------------------

# moby's DefaultLinuxSpec lists (daemon/pkg/oci/defaults.go), and /proc/pressure.
MASKED = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
          "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
          "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/pressure", "/proc/sys",
            "/proc/sysrq-trigger"]
SHOW = ("for p in {paths}; do if [ -d $p ]; then echo \"$p:$(ls -A $p | head -c 40)\";"
        " elif [ -e $p ]; then echo \"$p:$(head -c 40 $p | tr -d '\\n' | head -c 40)\";"
        " else echo \"$p:absent\"; fi; done")


def shown(stdout: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in stdout.splitlines() if line.startswith("/"))


def mount_options(stdout: str) -> dict[str, list[str]]:
    """Mount point -> options of its top mount, from a copy of /proc/self/mounts."""
    result = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) == 6 and words[0] != "/" and words[1].startswith("/"):
            result[words[1]] = words[3].split(",")
    return result


def host_has(path: str) -> bool:
    if os.path.isdir(path):
        return bool(os.listdir(path))
    try:
        with open(path, "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


def test_dockers_masked_paths_are_empty_and_its_readonly_paths_read_only(minict, box):
    visible = [p for p in MASKED if host_has(p)]
    assert "/proc/timer_list" in visible and "/sys/firmware" in visible, visible
    box(["sh", "-c", SHOW.format(paths=" ".join(MASKED)) + "; echo MOUNTS; cat /proc/self/mounts;"
         " echo 1 > /proc/sys/kernel/domainname && echo WROTE-SYSCTL;"
         " echo h > /proc/sysrq-trigger && echo WROTE-SYSRQ; true"])
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    seen = shown(done.stdout.split("MOUNTS")[0])
    for path in MASKED:
        if os.path.exists(path):
            assert seen[path] == "", (path, seen[path])  # /dev/null or an empty tmpfs
        else:
            assert seen[path] == "absent"  # /proc/kcore and /proc/sched_debug here
    options = mount_options(done.stdout.split("MOUNTS")[1])
    for path in READONLY:
        if os.path.exists(path):
            assert "ro" in options[path], (path, options.get(path))
    assert "WROTE" not in done.stdout


def test_root_cannot_undo_a_mask(minict, box):
    # Without CAP_SYS_ADMIN (not in the default set) no mount can be removed
    # or changed.  With it the container can: the masks are mounts made
    # inside the container's own user namespace, which the kernel does not
    # lock (MNT_LOCKED locks only mounts inherited from a more privileged one).
    script = ("umount /proc/timer_list && echo UNMOUNTED-MASK;"
              " umount -l /sys/firmware && echo UNMOUNTED-DIR;"
              " mount -o remount,rw,bind /proc/sys && echo REMOUNTED;"
              " umount /proc/sys && echo UNMOUNTED-RO; head -c 20 /proc/timer_list | wc -c")
    box(["sh", "-c", script])
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_privileged_lifts_each_restriction(minict, busybox):
    paths = "/proc/timer_list /proc/interrupts /sys/firmware"
    script = (SHOW.format(paths=paths) + "; grep -E '^Cap(Bnd|Eff|Prm)' /proc/self/status;"
              " echo 1 > /proc/sys/kernel/domainname && echo WROTE-SYSCTL;"
              " mkdir -p /mnt && mount -t tmpfs none /mnt && echo MOUNTED;"
              " grep ' /sys ' /proc/self/mounts; grep '^Seccomp:' /proc/self/status")
    done = minict("run", "--image", busybox, "--name", "p", "--privileged", *sh(script))
    assert done.returncode == 0, done.stderr
    seen = shown(done.stdout)
    for path in ("/proc/timer_list", "/proc/interrupts", "/sys/firmware"):
        assert seen[path] not in ("", "absent"), (path, seen)
    fields = dict(line.split(":\t") for line in done.stdout.splitlines() if line.startswith("Cap"))
    everything = (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1
    assert {k: int(v, 16) for k, v in fields.items()} == {
        "CapBnd": everything, "CapEff": everything, "CapPrm": everything}
    assert "WROTE-SYSCTL" in done.stdout  # the container's own uts domainname
    assert "MOUNTED" in done.stdout
    assert "Seccomp:\t0" in done.stdout  # no system-call filter (the devices: test_isolation_devices)
    # /sys stays read-only: the container's uid 0 is the host's, and many
    # sysfs files check nothing but that; the container may remount it.
    [sys_line] = [line for line in done.stdout.splitlines() if " /sys " in line]
    assert "ro" in sys_line.split()[3].split(","), sys_line


def test_privileged_is_repeated_by_start(minict, busybox):
    done = minict("run", "--image", busybox, "--name", "p", "--privileged",
                  *sh("head -c 20 /proc/timer_list | wc -c"))
    assert done.returncode == 0 and done.stdout.strip() == "20", done.stderr
    again = minict("start", "--name", "p")
    assert again.stdout == done.stdout, again.stderr


# -- --network host: the host's network belongs to the host's user namespace -----------------

def test_net_admin_does_not_reach_the_hosts_network(minict, busybox):
    # The host's network namespace is owned by the initial user namespace;
    # the container's capabilities are those of its own user namespace.
    link = "mctcaps0"
    mtu = Path("/sys/class/net/lo/mtu").read_text().strip()
    script = (f"grep CapEff /proc/self/status; ip link add {link} type dummy || echo ADD-REFUSED;"
              f" ip link set dev lo mtu {mtu} || echo MTU-REFUSED")
    try:
        done = minict("run", "--image", busybox, "--name", "n", "--rm", "--network", "host",
                      "--cap-add", "NET_ADMIN", *sh(script))
        assert not Path(f"/sys/class/net/{link}").exists()
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    eff = int(done.stdout.split()[1], 16)
    assert eff >> linux.CAPABILITIES["CAP_NET_ADMIN"] & 1  # held, yet useless on the host's
    assert "ADD-REFUSED" in done.stdout and "MTU-REFUSED" in done.stdout
    assert done.stderr.count("Operation not permitted") == 2, done.stderr


def test_net_admin_works_on_a_network_of_its_own(minict, busybox):
    # The control for the test above: the same capability acts on a network
    # namespace the container's user namespace owns.
    done = minict("run", "--image", busybox, "--name", "n", "--rm", "--network", "none",
                  "--cap-add", "NET_ADMIN", *sh("ip link set dev lo mtu 1400 && ip link show lo"))
    assert done.returncode == 0, done.stderr
    assert "mtu 1400" in done.stdout


# -- apt-get in a Debian image ------------------------------------------------------------

APT_SOURCES = [Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")]
APT_CONF = Path("/etc/apt/apt.conf.d")


def _mirror_answers() -> str | None:
    """Return None if the host's Debian mirror serves bookworm's Release, else why not."""
    from bench import image

    url = image.debian_mirror().rstrip("/") + "/dists/bookworm/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10):
            return None
    except OSError as err:
        return f"the Debian mirror {url} does not answer: {err}"


def host_apt_config() -> bytes:
    """A tar of the host's apt sources and the apt.conf.d files that say how to reach them.

    The host's mirror is the one this machine can reach; a proxy or relaxed
    date checks for it live in apt.conf.d `Acquire::` settings.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in APT_SOURCES:
            if path.is_file():
                tar.add(path, arcname=path.name)
            elif path.is_dir():
                for entry in sorted(path.iterdir()):
                    if entry.suffix in (".list", ".sources") and entry.is_file():
                        tar.add(entry, arcname=f"sources.list.d/{entry.name}")
        for entry in sorted(APT_CONF.iterdir()) if APT_CONF.is_dir() else []:
            if entry.is_file() and "Acquire::" in entry.read_text(errors="replace"):
                tar.add(entry, arcname=f"apt.conf.d/{entry.name}")
    return buffer.getvalue()


def test_apt_get_update_and_install_as_root(minict, minict_dir, debian_layout):
    reason = _mirror_answers()
    if reason:
        ci.skip_or_fail(reason)
    from bench import image

    shutil.copytree(debian_layout, minict_dir / "images" / "debian", symlinks=True)
    # The image's own sources (debootstrap's) give way to the host's.
    script = ("set -e; export DEBIAN_FRONTEND=noninteractive; cd /etc/apt; rm -rf sources.list sources.list.d; mkdir sources.list.d;"
              " base64 -d | tar -x --no-same-owner; apt-get update -q;"
              " apt-get install -y -q --no-install-recommends hello; hello")
    done = minict("run", "--image", f"debian:{image.TAG}", "--name", "deb", "--network", "host",
                  "--", "sh", "-c", script,
                  input=base64.b64encode(host_apt_config()).decode(), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("Hello, world!"), done.stdout[-2000:]
    assert "setgroups" not in done.stderr
    config = json.loads((minict_dir / "containers" / "deb" / "config.json").read_text())
    assert set(config["process"]["capabilities"]["bounding"]) == DOCKER_DEFAULT


# -- the config itself ---------------------------------------------------------------------

@pytest.mark.unprivileged
def test_privileged_config_has_every_capability_and_no_masks():
    from minict.bundle import spec

    doc = spec.generate({"config": {}}, "n", overrides=spec.Overrides(privileged=True),
                        host_masked=("/sys/devices/system/cpu/cpu0/thermal_throttle",))
    caps = doc["process"]["capabilities"]
    assert set(caps["bounding"]) == set(caps["effective"]) == set(caps["permitted"]) \
        == set(linux.CAPABILITIES)
    assert caps["inheritable"] == caps["ambient"] == []
    assert doc["linux"]["maskedPaths"] == doc["linux"]["readonlyPaths"] == []


@pytest.mark.unprivileged
def test_host_masked_paths_come_after_dockers_list():
    from minict.bundle import spec

    extra = ("/sys/devices/system/cpu/cpu0/thermal_throttle",)
    doc = spec.generate({"config": {}}, "n", host_masked=extra)
    assert doc["linux"]["maskedPaths"] == MASKED + list(extra)
    assert doc["linux"]["readonlyPaths"] == READONLY


@pytest.mark.unprivileged
def test_thermal_throttle_paths_are_the_hosts():
    from minict.bundle import create as bundle

    expected = sorted(str(p) for p in Path("/sys/devices/system/cpu").glob(
        "cpu[0-9]*/thermal_throttle") if p.is_dir())
    assert sorted(bundle.thermal_throttle_paths()) == expected
