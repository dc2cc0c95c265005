"""Devices: which device nodes a container has, and which devices it may use.

Two walls, as runc and docker build them:

  1. Nodes.  Only the container's /dev holds usable nodes: the host's null,
     zero, full, random, urandom and tty bound in by init.py, the pty of its
     own devpts, and each node of config.json's `linux.devices` (`--device`,
     `--privileged`), bound from the host node with the same type and numbers
     (mknod(2) is refused in a user namespace; a node is known by its numbers,
     as mknod would make it).  The rootfs and every other mount are nodev
     (`forces_nodev`), so a node an image ships (/dev/kmsg as /opt/x) opens
     with EACCES.
  2. The devices cgroup.  `linux.resources.devices` of config.json, an
     ordered list of allow/deny rules (config-linux.md, "Allowed Device
     Cgroup"), is enforced by the kernel for every process of the container:
     on cgroup v1 by writing devices.deny and devices.allow, on cgroup v2 by
     an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the
     container's cgroup (runtime/device_cgroup.py).  spec.generate writes runc's and
     docker's default list (DEFAULT_RULES); a bundle without the section
     gets that list too.

Rule semantics, the same for both versions (they are cgroup v1's): the
rules start from "everything allowed" (what a new cgroup inherits), and for
each access (read, write, mknod) the last rule that matches the device and
names that access decides.  `a` with no numbers resets everything, as
`a *:* rwm` does on v1.
"""

import collections
import os
import stat

from minict.errors import MinictError

# runc's allow list (libcontainer/specconv AllowedDevices, which runc appends
# to every container's rules) after docker's deny-all (moby daemon/pkg/oci
# defaults.go, which adds 5:1): the devices a docker container may use.
DEFAULT_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},   # mknod of any node (runc: "allow mknod
    {"allow": True, "type": "b", "access": "m"},   # for any device"; a user namespace refuses it)
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},    # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},    # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},    # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},    # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},    # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},    # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},    # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},    # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},              # /dev/pts/*
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # net/tun (runc
]                                                                            # keeps it for compat)
ALLOW_ALL = [{"allow": True, "access": "rwm"}]

# Host /dev entries --privileged does not copy (containerd's HostDevices):
# the container has its own pts, shm and mqueue, and /dev/ptmx must stay the
# container's devpts (a host ptmx would open host ptys).
_NOT_COPIED = frozenset({"pts", "shm", "mqueue", "fd", "console", "ptmx", ".lxc", ".lxd-mounts",
                         ".udev"})
_ACCESS = "rwm"


class DeviceError(MinictError):
    """A --device option or a device rule of config.json that cannot be used."""


# -- rules --------------------------------------------------------------------------

# namedtuples, not typing.NamedTuple: importing typing costs `start` ~2 ms.
class Rule(collections.namedtuple("Rule", "allow type major minor access")):
    """One normalised rule: type 'a' (everything), 'c' or 'b'; None numbers mean any.

    allow (bool), type, major, minor, access ("rwm" or a part of it).
    """

    __slots__ = ()

    def v1_line(self) -> str:
        """Return the rule as devices.allow and devices.deny take it (`c 1:3 rwm`)."""
        if self.type == "a":
            return "a"
        major = "*" if self.major is None else self.major
        minor = "*" if self.minor is None else self.minor
        return f"{self.type} {major}:{minor} {self.access}"


def normalise(entries) -> list[Rule]:
    """Return config.json's `linux.resources.devices` entries as Rules; raise DeviceError.

    OCI's `a` means char and block: with numbers or a partial access it
    becomes one `c` and one `b` rule (cgroup v1 would read any line starting
    with `a` as "everything").
    """
    if not isinstance(entries, list):
        raise DeviceError("linux.resources.devices in config.json is not a list")
    rules = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("allow"), bool):
            raise DeviceError(f"device rule {entry!r} in config.json needs a boolean 'allow'")
        kind = entry.get("type") or "a"
        access = entry.get("access") or _ACCESS
        major, minor = entry.get("major"), entry.get("minor")
        if kind not in ("a", "c", "b"):
            raise DeviceError(f"device rule {entry!r}: type must be a, c or b")
        if not isinstance(access, str) or set(access) - set(_ACCESS):
            raise DeviceError(f"device rule {entry!r}: access must be letters of 'rwm'")
        for number in (major, minor):
            if number is not None and (not isinstance(number, int) or isinstance(number, bool)
                                       or not 0 <= number < 2**31):
                raise DeviceError(f"device rule {entry!r}: major and minor must be numbers")
        access = "".join(a for a in _ACCESS if a in access)
        if kind == "a" and (major, minor, access) == (None, None, _ACCESS):
            rules.append(Rule(entry["allow"], "a", None, None, _ACCESS))
        else:
            for each in (("c", "b") if kind == "a" else (kind,)):
                rules.append(Rule(entry["allow"], each, major, minor, access))
    return rules


def rules_of(config: dict) -> list[Rule]:
    """Return the device rules of a parsed config.json (DEFAULT_RULES when it has none)."""
    resources = (config.get("linux") or {}).get("resources") or {}
    entries = resources.get("devices")
    return normalise(DEFAULT_RULES if entries is None else entries)


def cgroup_rules(devices, privileged: bool) -> list[dict]:
    """Return `linux.resources.devices` for config.json: the defaults plus each --device."""
    if privileged:
        return [dict(rule) for rule in ALLOW_ALL]
    return [dict(rule) for rule in DEFAULT_RULES] + [device.rule() for device in devices]


# -- --device and --privileged ---------------------------------------------------------

class Device(collections.namedtuple("Device",
                                     "path type major minor file_mode uid gid access")):
    """A host device node given to the container (an OCI `linux.devices` entry).

    path: in the container; type: "c" or "b"; major, minor; file_mode: the
    permission bits; uid, gid; access: "rwm" or a part of it.
    """

    __slots__ = ()

    def oci(self) -> dict:
        return {"path": self.path, "type": self.type, "major": self.major, "minor": self.minor,
                "fileMode": self.file_mode, "uid": self.uid, "gid": self.gid}

    def rule(self) -> dict:
        return {"allow": True, "type": self.type, "major": self.major, "minor": self.minor,
                "access": self.access}


def from_options(options, privileged: bool) -> tuple[Device, ...]:
    """Return the devices `run --device` options (docker's syntax) and --privileged give.

    With `privileged`, every device node of the host's /dev comes first, as
    docker does; a --device at a path of its own is added.  Raise DeviceError.
    """
    devices = [parse_option(option) for option in options]
    if not privileged:
        return tuple(devices)
    host = host_devices()
    paths = {device.path for device in host}
    return tuple(host + [d for d in devices if d.path not in paths])


def parse_option(text: str) -> Device:
    """Parse `/dev/HOST[:/CONTAINER][:rwm]` and look the host node up; raise DeviceError."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise DeviceError(f"invalid --device {text!r}: use /dev/HOSTDEV[:CONTAINERPATH][:rwm]")
    host, target, access = parts[0], parts[0], _ACCESS
    if len(parts) == 3:
        target, access = parts[1], parts[2]
    elif len(parts) == 2:
        if parts[1] and _is_access(parts[1]):
            access = parts[1]
        else:
            target = parts[1]
    if not _is_access(access):
        raise DeviceError(f"invalid --device {text!r}: the permissions {access!r} must be "
                          "letters of 'rwm', each at most once")
    if not target.startswith("/") or ".." in target.split("/") or os.path.normpath(target) == "/dev":
        raise DeviceError(f"invalid --device {text!r}: the container path {target!r} must be "
                          "an absolute path without '..'")
    try:
        st = os.stat(host)  # a symlink (/dev/disk/by-id/...) counts as its target, as docker does
    except OSError as err:
        raise DeviceError(f"--device {host}: {err.strerror}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DeviceError(f"--device {host}: not a character or block device")
    return _device(os.path.normpath(target), st, "".join(a for a in _ACCESS if a in access))


def _is_access(text: str) -> bool:
    return bool(text) and set(text) <= set(_ACCESS) and len(set(text)) == len(text)


def _device(path: str, st: os.stat_result, access: str) -> Device:
    return Device(path, "c" if stat.S_ISCHR(st.st_mode) else "b", os.major(st.st_rdev),
                  os.minor(st.st_rdev), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, access)


def host_devices(top: str = "/dev") -> list[Device]:
    """Return every char and block node below the host's `top`, at the same path, sorted."""
    found = []
    for current, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not (current == top and d in _NOT_COPIED))
        for name in sorted(files):
            if current == top and name in _NOT_COPIED:
                continue
            path = os.path.join(current, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # gone since the listing
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append(_device(path, st, _ACCESS))
    return found


# -- nodes: what init.py binds ------------------------------------------------------

def host_node(entry: dict) -> str:
    """Return a host path of the node a `linux.devices` entry names; raise DeviceError.

    The same path on the host is preferred; otherwise the first node in the
    host's /dev with the same type and numbers.
    """
    path, kind = entry.get("path"), entry.get("type")
    major, minor = entry.get("major"), entry.get("minor")
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
        raise DeviceError(f"device {entry!r} in config.json needs an absolute 'path'")
    if kind not in ("c", "u", "b") or not isinstance(major, int) or not isinstance(minor, int):
        raise DeviceError(f"device {path} in config.json: only char (c, u) and block (b) "
                          "devices with major and minor numbers can be given")
    wanted = (stat.S_IFBLK if kind == "b" else stat.S_IFCHR, os.makedev(major, minor))

    def same(candidate: str) -> bool:
        try:
            st = os.lstat(candidate)
        except OSError:
            return False
        return (stat.S_IFMT(st.st_mode), st.st_rdev) == wanted

    if same(path):
        return path
    for current, dirs, files in os.walk("/dev"):
        dirs[:] = sorted(d for d in dirs if not (current == "/dev" and d in _NOT_COPIED))
        for name in sorted(files):
            if same(os.path.join(current, name)):
                return os.path.join(current, name)
    raise DeviceError(f"device {path} ({kind} {major}:{minor}) in config.json: the host has "
                      "no such device node in /dev")


def forces_nodev(destination: str, options) -> bool:
    """Return whether a config.json mount at `destination` must be nodev.

    Everything but /dev and what is below it, unless its options say `dev`
    explicitly (the bundle's author asked for device nodes there).
    """
    parts = [p for p in destination.split("/") if p and p != "."]
    return parts[:1] != ["dev"] and "dev" not in (options or [])
