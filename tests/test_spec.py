"""config.json: the known ubuntu:20.04 document field by field, and the conversion rules."""

import json
from pathlib import Path

import pytest

from minict.bundle import spec

# ubuntu:20.04's image config as the seed article unpacked it (2020-11-25 build).
UBUNTU_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2020-11-25T22:25:29.546718343Z",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/bash"],
    },
    "rootfs": {"type": "layers", "diff_ids": []},
}
UBUNTU_PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
UBUNTU_GROUP = "root:x:0:\ndaemon:x:1:\n"

# The document umoci wrote for it (dissecting-minict.md), with the
# deliberate changes: hostname = the container's name; docker's 14 default
# capabilities with empty inheritable and ambient sets (CVE-2022-29162);
# docker's masked and read-only paths (plus /proc/pressure read-only); and
# docker's defaults for no_new_privs (off) and seccomp (below).
EXPECTED = json.loads("""
{
  "ociVersion": "1.0.0",
  "process": {
    "terminal": true,
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/bash"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm", "HOME=/root"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                   "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                   "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
      "effective": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
      "inheritable": [],
      "permitted": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
      "ambient": []
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": false
  },
  "root": {"path": "rootfs"},
  "hostname": "ubuntu-nanik",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "bind", "source": "/sys",
     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
     "options": ["noexec", "nosuid", "rbind", "ro"]}
  ],
  "annotations": {
    "org.opencontainers.image.architecture": "amd64",
    "org.opencontainers.image.author": "",
    "org.opencontainers.image.created": "2020-11-25T22:25:29.546718343Z",
    "org.opencontainers.image.exposedPorts": "",
    "org.opencontainers.image.os": "linux",
    "org.opencontainers.image.stopSignal": ""
  },
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                   {"type": "user"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore",
                    "/proc/keys", "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi",
                    "/proc/timer_list", "/proc/timer_stats", "/sys/devices/virtual/powercap",
                    "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/pressure", "/proc/sys",
                      "/proc/sysrq-trigger"],
    "resources": {"devices": [
      {"allow": false, "access": "rwm"},
      {"allow": true, "type": "c", "access": "m"},
      {"allow": true, "type": "b", "access": "m"},
      {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
      {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
      {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
      {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
      {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
      {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
      {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
      {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
      {"allow": true, "type": "c", "major": 136, "access": "rwm"},
      {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
    ]}
  }
}
""")
# docker's default seccomp profile as moby's setupSeccomp makes it for these three
# capabilities on amd64 with a kernel >= 4.8: written from moby's profiles/seccomp
# v0.2.3 default.json, not by minict (so the test needs an x86_64 host).
EXPECTED["linux"]["seccomp"] = json.loads(
    (Path(__file__).parent / "support" / "seccomp-default-amd64.json").read_text())


def _fields(doc, prefix=""):
    """Flatten a document to {"process.user.uid": 0, ...}; lists stay whole."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            out.update(_fields(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: doc}


GENERATED = spec.generate(UBUNTU_CONFIG, "ubuntu-nanik", UBUNTU_PASSWD, UBUNTU_GROUP)


@pytest.mark.parametrize("field", sorted(_fields(EXPECTED)))
def test_ubuntu_document_field_by_field(field):
    assert _fields(GENERATED).get(field) == _fields(EXPECTED)[field]


def test_ubuntu_document_has_no_extra_fields():
    assert sorted(_fields(GENERATED)) == sorted(_fields(EXPECTED))
    assert GENERATED == EXPECTED


def test_without_a_user_database_home_is_root():
    assert spec.generate(UBUNTU_CONFIG, "n")["process"]["env"][-1] == "HOME=/root"


def test_generate_is_pure():
    before = json.dumps(UBUNTU_CONFIG, sort_keys=True)
    one = spec.generate(UBUNTU_CONFIG, "n", UBUNTU_PASSWD, UBUNTU_GROUP)
    one["mounts"][0]["options"] = ["changed"]
    two = spec.generate(UBUNTU_CONFIG, "n", UBUNTU_PASSWD, UBUNTU_GROUP)
    assert "options" not in two["mounts"][0]
    assert json.dumps(UBUNTU_CONFIG, sort_keys=True) == before


# -- the conversion rules ------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1001:App:/home/app:/bin/sh
# a comment
broken line
svc:x:70:70::/var/svc:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:app,svc
app:x:1001:
staff:x:50:svc,app
audio:x:29:
"""


@pytest.mark.parametrize("user, expected, home", [
    ("", {"uid": 0, "gid": 0}, "/root"),
    ("0", {"uid": 0, "gid": 0}, "/root"),
    ("app", {"uid": 1000, "gid": 1001, "additionalGids": [10, 50]}, "/home/app"),
    ("1000", {"uid": 1000, "gid": 1001, "additionalGids": [10, 50]}, "/home/app"),
    ("app:staff", {"uid": 1000, "gid": 50}, "/home/app"),
    ("app:29", {"uid": 1000, "gid": 29}, "/home/app"),
    ("1000:4242", {"uid": 1000, "gid": 4242}, "/home/app"),
    ("4242", {"uid": 4242, "gid": 0}, "/root"),
    ("4242:4343", {"uid": 4242, "gid": 4343}, "/root"),
    ("svc", {"uid": 70, "gid": 70, "additionalGids": [10, 50]}, "/var/svc"),
])
def test_user_resolution(user, expected, home):
    doc = spec.generate({"config": {"User": user}}, "n", PASSWD, GROUP)
    assert doc["process"]["user"] == expected
    assert f"HOME={home}" in doc["process"]["env"]


@pytest.mark.parametrize("user, message", [
    ("nobody", "cannot find user 'nobody'"),
    ("app:nogroup", "cannot find group 'nogroup'"),
    ("99999999999", "out of range"),
])
def test_unknown_users_are_errors(user, message):
    with pytest.raises(spec.SpecError, match=message):
        spec.generate({"config": {"User": user}}, "n", PASSWD, GROUP)


def test_numeric_user_without_a_user_database():
    doc = spec.generate({"config": {"User": "1234:5678"}}, "n")
    assert doc["process"]["user"] == {"uid": 1234, "gid": 5678}


def test_args_env_cwd_annotations_and_volumes():
    image = {
        "architecture": "arm64", "os": "linux", "author": "someone",
        "config": {
            "Entrypoint": ["/entry", "-x"], "Cmd": ["run", "it"],
            "Env": ["TERM=dumb", "HOME=/data", "A=1=2", "PATH=/bin"],
            "WorkingDir": "/srv",
            "Labels": {"org.example.team": "infra", "version": "3"},
            "ExposedPorts": {"443/tcp": {}, "80/tcp": {}},
            "Volumes": {"/var/lib/db": {}, "/cache": {}},
            "StopSignal": "SIGQUIT",
        },
    }
    doc = spec.generate(image, "box", PASSWD, GROUP)
    assert doc["process"]["args"] == ["/entry", "-x", "run", "it"]
    assert doc["process"]["env"] == ["PATH=/bin", "TERM=dumb", "HOME=/data", "A=1=2"]
    assert doc["process"]["cwd"] == "/srv"
    assert doc["annotations"] == {
        "org.example.team": "infra", "version": "3",
        "org.opencontainers.image.architecture": "arm64",
        "org.opencontainers.image.author": "someone",
        "org.opencontainers.image.created": "0001-01-01T00:00:00Z",
        "org.opencontainers.image.exposedPorts": "443/tcp,80/tcp",
        "org.opencontainers.image.os": "linux",
        "org.opencontainers.image.stopSignal": "SIGQUIT",
    }
    destinations = [m["destination"] for m in doc["mounts"]]
    assert destinations == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                            "/cache", "/var/lib/db", "/sys", "/etc/resolv.conf"]
    assert doc["mounts"][5] == {"destination": "/cache", "type": "tmpfs", "source": "none",
                                "options": ["rw", "nosuid", "nodev", "noexec", "relatime"]}


def test_no_entrypoint_or_cmd_runs_sh():
    assert spec.generate({"config": {}}, "n")["process"]["args"] == ["sh"]


@pytest.mark.parametrize("config, message", [
    ({"Env": ["NOEQUALS"]}, "NAME=value"),
    ({"Env": ["=value"]}, "NAME=value"),
    ({"Cmd": "not a list"}, "'Cmd' is not a list"),
    ({"User": 5}, "'User' is not a string"),
    ({"Volumes": ["/x"]}, "'Volumes' is not an object"),
])
def test_malformed_configs_are_errors(config, message):
    with pytest.raises(spec.SpecError, match=message):
        spec.generate({"config": config}, "n")
