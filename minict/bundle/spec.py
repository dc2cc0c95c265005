"""Turn an image config into the runtime config.json: a pure function.

The document is the one umoci writes for `umoci unpack --rootless` (the seed
article shows it for ubuntu:20.04), with deliberate changes: the hostname is
the container's name; the capabilities are docker's default set, in the
bounding, effective and permitted sets only (capabilities.py says why); and
the masked and read-only paths are docker's (moby daemon/pkg/oci DefaultLinuxSpec).
`--privileged` gives every capability and masks nothing.
Like docker's, the process also gets docker's default seccomp profile
(seccomp.py) and no no_new_privs, so setuid programs and file capabilities
in an image work.

The conversion follows image-spec conversion.md and umoci's
oci/config/convert: args = Entrypoint + Cmd, Env over the default PATH and
TERM, cwd = WorkingDir or "/", the user resolved through the rootfs's
/etc/passwd and /etc/group (moby/sys/user's rules), labels (but none under
minict's own org.minict.) and a few config fields as annotations, and each
Volume as a tmpfs mount.  The device rules (linux.resources.devices) are
runc's and docker's default allow list, plus run's --device and --privileged
(devices.py owns them).
"""

import copy
from dataclasses import dataclass

from minict.bundle import capabilities, seccomp, seccomp_profile
from minict.bundle import devices as device_rules

OCI_VERSION = "1.0.0"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]
DEFAULT_HOME = "/root"

# umoci's defaults as ToRootless leaves them (the seed document): /sys and
# /etc/resolv.conf become read-only rbinds at the end, devpts loses gid=5.
_MOUNTS_HEAD = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
]
_MOUNTS_TAIL = [
    {"destination": "/sys", "type": "bind", "source": "/sys",
     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
     "options": ["noexec", "nosuid", "rbind", "ro"]},
]
_VOLUME_OPTIONS = ["rw", "nosuid", "nodev", "noexec", "relatime"]
_NAMESPACES = ["pid", "ipc", "uts", "mount", "user"]
# moby's lists: what leaks the host's hardware, keys, timers and interrupts
# (GHSA-6fw5-f8r9-fgfm), energy counters (GHSA-jq35-85cj-fj4p), firmware;
# the init skips what this kernel lacks.  Read-only: the kernel's knobs in
# /proc (as uid 0 of an identity-mapped container, /proc/sys would take
# writes to the host's sysctls), plus /proc/pressure, whose files take
# writes that create PSI triggers in the host kernel.
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/pressure", "/proc/sys",
                  "/proc/sysrq-trigger"]
_ID_MAX = 2**31 - 1  # moby/sys/user's range for numeric ids
HOST_NAME_MAX = 64  # sethostname(2): the kernel's __NEW_UTS_LEN
DNS_LABEL_MAX = 63  # RFC 1035 2.3.4: a default host name is one label

ANNOTATION = "org.opencontainers.image."
# Annotations under this prefix are minict's own settings, which `start`
# repeats: an image's labels must never set them.
MINICT_ANNOTATION = "org.minict."
# run --no-new-keyring, kept for start: the OCI spec has no field for it (runc's flag).
NO_NEW_KEYRING = MINICT_ANNOTATION + "no-new-keyring"
ZERO_TIME = "0001-01-01T00:00:00Z"  # how Go prints an image without `created`


class SpecError(ValueError):
    """The image config cannot become a runtime config (bad Env, unknown user...)."""


@dataclass(frozen=True)
class Overrides:
    """What `run` was told to change, with docker run's meaning; None keeps the image's.

    `entrypoint` "" clears the image's Entrypoint; any other entrypoint also
    drops the image's Cmd (docker does: a Cmd is an Entrypoint's arguments).
    `cmd` replaces Cmd.  `env` entries (NAME=value) go over the image's Env.
    `cap_add` and `cap_drop` are capability names (capabilities.resolve);
    `privileged` gives every capability and drops the masked and read-only
    paths (other parts of the config read it too).
    `devices` (devices.Device, from --device) become `linux.devices` and
    allow rules; `privileged` allows every device.
    `no_new_keyring` leaves the container in minict's session keyring
    (runc's --no-new-keyring) instead of a new one of its own.
    """

    entrypoint: str | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    # --userns: "identity", "auto" or "host" (usermap.py, runtime/userns.py); for auto, the
    # (host uid, host gid, size) range container.run reserved.
    userns: str = "identity"
    userns_range: tuple[int, int, int] | None = None
    # --security-opt: no-new-privileges, and seccomp=unconfined or seccomp=PATH
    # (the profile read from PATH, docker's or the OCI format; None: docker's default).
    no_new_privileges: bool = False
    seccomp_unconfined: bool = False
    seccomp_profile: dict | None = None
    devices: tuple[device_rules.Device, ...] = ()
    no_new_keyring: bool = False


def override(image: dict, overrides: Overrides) -> dict:
    """Return a copy of the image config `image` with `overrides` applied to its config."""
    image = dict(image)
    config = dict(image.get("config") or {})
    if overrides.entrypoint is not None:
        config["Entrypoint"] = [overrides.entrypoint] if overrides.entrypoint else []
        if overrides.entrypoint:
            config["Cmd"] = []
    if overrides.cmd is not None:
        config["Cmd"] = list(overrides.cmd)
    if overrides.env:
        config["Env"] = _strings(config, "Env") + list(overrides.env)
    if overrides.workdir is not None:
        if not overrides.workdir.startswith("/"):
            raise SpecError(f"the working directory {overrides.workdir!r} is invalid: "
                            "it needs to be an absolute path")
        config["WorkingDir"] = overrides.workdir
    if overrides.user is not None:
        config["User"] = overrides.user
    image["config"] = config
    return image


def default_hostname(name: str) -> str:
    """Return the host name of container `name`: its first 63 bytes (a DNS label's most).

    Names may be 128 characters long; sethostname(2) takes 64 bytes.  The
    cut keeps whole UTF-8 characters, should a name ever hold others.
    """
    return name.encode()[:DNS_LABEL_MAX].decode(errors="ignore")


def generate(image: dict, hostname: str, passwd: str | None = None,
             group: str | None = None, overrides: Overrides | None = None,
             host_masked: tuple[str, ...] = ()) -> dict:
    """Return the runtime config.json document for `image` (a parsed image config blob).

    `hostname` is the container's name (cut by default_hostname) unless
    `overrides` name a host name.  `passwd` and `group` are the contents of
    the rootfs's /etc/passwd and /etc/group, or None when absent;
    `overrides` are run's options; `host_masked` are masked paths that
    depend on the host (bundle/create.py finds them).  Raise SpecError for what
    cannot be converted.
    """
    if overrides is None:
        overrides = Overrides()
    else:
        image = override(image, overrides)
    if overrides.hostname:
        hostname = overrides.hostname
        if len(hostname.encode()) > HOST_NAME_MAX:
            raise SpecError(f"host name {hostname!r} is longer than {HOST_NAME_MAX} bytes")
    else:
        hostname = default_hostname(hostname)
    config = image.get("config") or {}
    if not isinstance(config, dict):
        raise SpecError("image config's 'config' is not an object")

    env = list(DEFAULT_ENV)
    for item in _strings(config, "Env"):
        name, sep, _ = item.partition("=")
        if not sep or not name:
            raise SpecError(f"environment variable must look like NAME=value: {item!r}")
        _set_env(env, name, item)
    args = _strings(config, "Entrypoint") + _strings(config, "Cmd")
    user = resolve_user(_string(config, "User"), passwd, group)
    if not any(item.startswith("HOME=") for item in _strings(config, "Env")):
        _set_env(env, "HOME", "HOME=" + (user.pop("home") or DEFAULT_HOME))
    user.pop("home", None)

    annotations = {}
    labels = config.get("Labels") or {}
    if isinstance(labels, dict):
        annotations.update({str(k): str(v) for k, v in labels.items()
                            if not str(k).startswith(MINICT_ANNOTATION)})
    annotations.update({
        ANNOTATION + "architecture": _string(image, "architecture"),
        ANNOTATION + "author": _string(image, "author"),
        ANNOTATION + "created": _string(image, "created") or ZERO_TIME,
        ANNOTATION + "exposedPorts": ",".join(sorted(_keys(config, "ExposedPorts"))),
        ANNOTATION + "os": _string(image, "os"),
        ANNOTATION + "stopSignal": _string(config, "StopSignal"),
    })
    if overrides.no_new_keyring:
        annotations[NO_NEW_KEYRING] = "true"
    volumes = [{"destination": v, "type": "tmpfs", "source": "none",
                "options": list(_VOLUME_OPTIONS)} for v in sorted(_keys(config, "Volumes"))]
    linux = {
        "namespaces": [{"type": t} for t in _NAMESPACES],
        "maskedPaths": [] if overrides.privileged else MASKED_PATHS + list(host_masked),
        "readonlyPaths": [] if overrides.privileged else list(READONLY_PATHS),
        "resources": {"devices": device_rules.cgroup_rules(overrides.devices,
                                                           overrides.privileged)},
    }
    if overrides.devices:
        linux["devices"] = [device.oci() for device in overrides.devices]

    document = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": user,
            "args": args or ["sh"],
            "env": env,
            "cwd": _string(config, "WorkingDir") or "/",
            "capabilities": capabilities.process_sets(capabilities.resolve(
                overrides.cap_add, overrides.cap_drop, overrides.privileged)),
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": overrides.no_new_privileges,
        },
        "root": {"path": "rootfs"},
        "hostname": hostname,
        "mounts": copy.deepcopy(_MOUNTS_HEAD) + volumes + copy.deepcopy(_MOUNTS_TAIL),
        "annotations": annotations,
        "linux": linux,
    }
    section = _seccomp(overrides, document["process"]["capabilities"]["bounding"])
    if section is not None:
        document["linux"]["seccomp"] = section
    from minict.bundle import usermap

    usermap.configure(document, overrides.userns, overrides.userns_range)
    return document


def _seccomp(overrides: Overrides, bounding: list[str]) -> dict | None:
    """Return the linux.seccomp section: docker's default profile unless told otherwise."""
    if overrides.privileged or overrides.seccomp_unconfined:
        return None
    profile = overrides.seccomp_profile
    try:
        return seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE if profile is None else profile, bounding)
    except seccomp.SeccompError as err:
        raise SpecError(err.message) from None


def resolve_user(spec: str, passwd: str | None, group: str | None) -> dict:
    """Return {"uid", "gid", ["additionalGids"], "home"} for an image's `User`.

    `spec` is "", "user" or "user:group", each a name or a number (moby/sys/user
    GetExecUser): a name must exist in passwd (group); a number need not.
    A matched user brings its primary gid and home; without an explicit
    group, the groups listing the user by name become additional gids.
    """
    user_arg, _, group_arg = spec.partition(":")
    uid, gid, home, matched = 0, 0, None, None
    users = _database(passwd, 7)
    if user_arg == "":
        found = [u for u in users if _int(u[2]) == 0]
    elif user_arg.isdigit():
        found = [u for u in users if _int(u[2]) == int(user_arg)]
    else:
        found = [u for u in users if u[0] == user_arg]
    if found:
        matched = found[0][0]
        uid, gid, home = _int(found[0][2]), _int(found[0][3]), found[0][5]
    elif user_arg:
        if not user_arg.isdigit():
            raise SpecError(f"cannot find user {user_arg!r} in the image's /etc/passwd")
        uid = _check_id(user_arg, "uid")

    additional = []
    groups = _database(group, 4)
    if group_arg:
        if group_arg.isdigit():
            gid = _check_id(group_arg, "gid")
        else:
            named = [g for g in groups if g[0] == group_arg]
            if not named:
                raise SpecError(f"cannot find group {group_arg!r} in the image's /etc/group")
            gid = _int(named[0][2])
    elif matched is not None:
        # moby/sys/user lists supplementary groups only for an implicit group.
        additional = [_int(g[2]) for g in groups if matched in g[3].split(",")]

    user = {"uid": uid, "gid": gid}
    if additional:
        user["additionalGids"] = additional
    user["home"] = home
    return user


def _database(text: str | None, fields: int) -> list[list[str]]:
    """Parse colon-separated /etc/passwd or /etc/group lines, skipping malformed ones."""
    rows = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        row = line.split(":")
        if len(row) < 3 or not row[2].isdigit():
            continue
        rows.append((row + [""] * fields)[:fields])
    return rows


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _check_id(text: str, what: str) -> int:
    value = int(text)
    if value > _ID_MAX:
        raise SpecError(f"{what} {value} is out of range")
    return value


def _set_env(env: list[str], name: str, item: str) -> None:
    """Replace `name`'s entry in `env` in place, or append it (umoci's appendEnv)."""
    for i, old in enumerate(env):
        if old.startswith(name + "="):
            env[i] = item
            return
    env.append(item)


def _string(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"image config field {key!r} is not a string")
    return value


def _strings(obj: dict, key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"image config field {key!r} is not a list of strings")
    return list(value)


def _keys(obj: dict, key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise SpecError(f"image config field {key!r} is not an object")
    return [str(k) for k in value]
