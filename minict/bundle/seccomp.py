"""System-call filtering: docker's default profile, its OCI form, and the libseccomp filter.

This module is the first two stages; runtime/seccomp_filter.py the third.

Three stages, in the order a container meets them:

    DEFAULT_PROFILE   docker's default profile as data (seccomp_profile.py:
                      moby/profiles seccomp v0.2.3, default.json), in docker's
                      format: rules that apply only with a capability, on an
                      architecture or from a kernel version on
    to_oci()          docker's format -> config.json's `linux.seccomp`
                      (runtime-spec config-linux.md#seccomp), deciding those
                      conditions for this container and this host, as moby's
                      setupSeccomp does; `run` stores the result, so `start`
                      and runc load the very same filter
    program()         `linux.seccomp` -> BPF code, made by libseccomp's Python
                      binding (Debian's python3-seccomp) and cached in the
                      bundle; the container's init loads it last (init.py)

What is not allowed fails with EPERM, but a system call the filter cannot
know (newer than libseccomp, or no system call at all) fails with ENOSYS, so
programs fall back to an older call as they do on an older kernel (runc's
patchbpf does the same with a hand-written BPF prologue).  With libseccomp
alone that takes two stacked filters: the profile's, then one that allows
every system call libseccomp knows and answers ENOSYS to the rest.  The
kernel runs both and keeps the stronger verdict, and of two errnos the one of
the filter loaded last (seccomp(2), "Filter return values"): a known call
gets the profile's answer, an unknown one ENOSYS.
"""

import os
import re

from minict import fsutil, linux
from minict.errors import MinictError


class SeccompError(MinictError):
    """A seccomp profile minict cannot honour, or no libseccomp binding."""


# `uname -m` -> (docker's name of the architecture, as `includes.arches` and
# `excludes.arches` use it; the SCMP_ARCH_ of its native system calls).
# The machines are those of pull.py's platform table.
MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"), "amd64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("x86", "SCMP_ARCH_X86"), "i686": ("x86", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"), "arm64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv8l": ("arm", "SCMP_ARCH_ARM"), "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"), "armv5tel": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"), "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"), "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}

# runtime-spec config-linux.md#seccomp: the names, and libseccomp's for each.
ARCHES = {
    "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64", "SCMP_ARCH_MIPS": "MIPS",
    "SCMP_ARCH_MIPS64": "MIPS64", "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL", "SCMP_ARCH_MIPSEL64": "MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32", "SCMP_ARCH_PPC": "PPC", "SCMP_ARCH_PPC64": "PPC64",
    "SCMP_ARCH_PPC64LE": "PPC64LE", "SCMP_ARCH_S390": "S390", "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_PARISC": "PARISC", "SCMP_ARCH_PARISC64": "PARISC64",
    "SCMP_ARCH_RISCV64": "RISCV64", "SCMP_ARCH_LOONGARCH64": "LOONGARCH64",
}
ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}
OPERATORS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
             "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": linux.SECCOMP_FILTER_FLAG_TSYNC,
         "SECCOMP_FILTER_FLAG_LOG": linux.SECCOMP_FILTER_FLAG_LOG,
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW": linux.SECCOMP_FILTER_FLAG_SPEC_ALLOW}
_ERRNO_MAX = 4095  # the kernel reads -1..-4095 as an error (MAX_ERRNO)
_U64 = 2**64


# -- docker's format -> OCI --------------------------------------------------------

def to_oci(profile: dict, bounding, machine: str | None = None,
           kernel: str | None = None) -> dict | None:
    """Return the `linux.seccomp` section for a docker- or OCI-format `profile`; None: none.

    Rules with `includes`/`excludes` are kept or dropped for a container
    whose bounding set is `bounding`, on `machine` (`uname -m`) with kernel
    release `kernel` (both default to this host's), as moby's setupSeccomp
    decides them.  An OCI-format section passes through (checked).  Raise
    SeccompError for what cannot be converted or loaded.
    """
    if not isinstance(profile, dict):
        raise SeccompError("a seccomp profile must be a JSON object")
    # moby: no default action and no rules means no filter at all.
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    uname = os.uname()
    machine = machine or uname.machine
    native, native_arch = MACHINES.get(machine, (machine, None))
    if profile.get("architectures") and profile.get("archMap"):
        raise SeccompError("a seccomp profile gives both 'architectures' and 'archMap'")
    section = {key: profile[key] for key in ("defaultAction", "defaultErrnoRet",
                                             "architectures", "flags", "listenerPath",
                                             "listenerMetadata") if key in profile}
    if "archMap" in profile:
        section["architectures"] = _architectures(profile["archMap"], native_arch)
    rules = []
    for rule in _list(profile, "syscalls"):
        if not isinstance(rule, dict):
            raise SeccompError(f"seccomp rule {rule!r} is not an object")
        if _applies(rule, native, set(bounding), kernel or uname.release):
            rules.append(_oci_rule(rule))
    section["syscalls"] = rules
    check(section)
    # A copy: the caller may change the document, never DEFAULT_PROFILE.
    import copy  # here: `start` only loads a built filter

    return copy.deepcopy(section)


def _architectures(arch_map, native_arch) -> list[str]:
    if not isinstance(arch_map, list):
        raise SeccompError("seccomp profile's 'archMap' is not a list")
    for entry in arch_map:
        if isinstance(entry, dict) and entry.get("architecture") == native_arch:
            return [native_arch, *(entry.get("subArchitectures") or [])]
    # moby leaves the list empty, which means the native architecture alone.
    return [native_arch] if native_arch else []


def _applies(rule: dict, native: str, bounding: set, release: str) -> bool:
    includes = _filter(rule, "includes")
    excludes = _filter(rule, "excludes")
    if native in _strings(excludes, "arches"):
        return False
    if any(cap in bounding for cap in _strings(excludes, "caps")):
        return False
    if excludes.get("minKernel") and _kernel_at_least(release, excludes["minKernel"]):
        return False
    if _strings(includes, "arches") and native not in _strings(includes, "arches"):
        return False
    if not all(cap in bounding for cap in _strings(includes, "caps")):
        return False
    minimum = includes.get("minKernel")
    return not minimum or _kernel_at_least(release, minimum)


def _oci_rule(rule: dict) -> dict:
    if rule.get("name") and rule.get("names"):
        raise SeccompError("a seccomp rule gives both 'name' and 'names'")
    names = [rule["name"]] if rule.get("name") else rule.get("names")
    out = {"names": names}
    for key in ("action", "errnoRet", "args"):
        if key in rule:
            out[key] = rule[key]
    return out


def _kernel_at_least(release: str, wanted) -> bool:
    """Compare `uname -r`'s major.minor with docker's "<kernel>.<major>" (moby kernel_linux.go)."""
    try:
        want = tuple(int(p) for p in str(wanted).split("."))
        if len(want) != 2:
            raise ValueError
    except ValueError:
        raise SeccompError(f"invalid kernel version {wanted!r} in a seccomp profile: "
                           "expected <kernel>.<major>") from None
    # "6.18.0-1-amd64", "3.12-rc5": the first two numbers count.
    have = re.match(r"(\d+)(?:\.(\d+))?", release)
    return (int(have[1]), int(have[2] or 0)) >= want if have else False


def _filter(rule: dict, key: str) -> dict:
    value = rule.get(key) or {}
    if not isinstance(value, dict):
        raise SeccompError(f"seccomp rule's {key!r} is not an object")
    return value


def _list(obj: dict, key: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SeccompError(f"seccomp profile's {key!r} is not a list")
    return value


def _strings(obj: dict, key: str) -> list[str]:
    value = _list(obj, key)
    if not all(isinstance(v, str) for v in value):
        raise SeccompError(f"seccomp profile's {key!r} is not a list of strings")
    return value


def read_profile(path: str, bounding=()) -> dict | None:
    """Read a profile file for `--security-opt seccomp=PATH`; return its parsed JSON.

    Docker's format and the OCI `linux.seccomp` format are both accepted;
    the file is converted once here (for `bounding`) so that a bad one is
    one error line before anything is unpacked.  Raise SeccompError.
    """
    try:
        document = fsutil.load_json(path)  # bounded: a deep one is an error, not a RecursionError
    except OSError as err:
        raise SeccompError(f"cannot read seccomp profile {path}: {err.strerror}") from None
    except ValueError as err:
        raise SeccompError(f"seccomp profile {path} is not JSON: {err}") from None
    try:
        to_oci(document, bounding)
    except SeccompError as err:
        raise SeccompError(f"seccomp profile {path}: {err.message}") from None
    return document


# -- checking the OCI section -------------------------------------------------------

def check(section: dict) -> None:
    """Raise SeccompError unless minict can load `section` (config.json's linux.seccomp)."""
    if not isinstance(section, dict):
        raise SeccompError("linux.seccomp is not an object")
    _action(section.get("defaultAction"), section.get("defaultErrnoRet"), "defaultAction")
    for arch in _strings(section, "architectures"):
        if arch not in ARCHES:
            raise SeccompError(f"unknown seccomp architecture {arch!r}")
    for flag in _strings(section, "flags"):
        if flag not in FLAGS:
            raise SeccompError(f"seccomp flag {flag!r} is not supported")
    if section.get("listenerPath"):
        raise SeccompError("seccomp listenerPath (SCMP_ACT_NOTIFY) is not supported")
    for rule in _list(section, "syscalls"):
        if not isinstance(rule, dict):
            raise SeccompError(f"seccomp rule {rule!r} is not an object")
        names = _strings(rule, "names")
        if not names:
            raise SeccompError(f"seccomp rule {rule!r} names no system call")
        _action(rule.get("action"), rule.get("errnoRet"), f"the rule for {names[0]}")
        for arg in _list(rule, "args"):
            _check_arg(arg, names[0])


def _action(action, errno_ret, where: str) -> None:
    if action not in ACTIONS:
        raise SeccompError(f"unknown seccomp action {action!r} in {where}")
    if errno_ret is not None and (type(errno_ret) is not int
                                  or not 0 <= errno_ret <= _ERRNO_MAX):
        raise SeccompError(f"seccomp errnoRet {errno_ret!r} in {where} is not an errno "
                           f"(0-{_ERRNO_MAX})")


def _check_arg(arg, name: str) -> None:
    if not isinstance(arg, dict):
        raise SeccompError(f"seccomp argument {arg!r} of {name} is not an object")
    if arg.get("op") not in OPERATORS:
        raise SeccompError(f"unknown seccomp operator {arg.get('op')!r} for {name}")
    index = arg.get("index")
    if type(index) is not int or not 0 <= index <= 5:
        raise SeccompError(f"seccomp argument index {index!r} for {name} is not 0-5")
    for key in ("value", "valueTwo"):
        value = arg.get(key, 0)
        if type(value) is not int or not 0 <= value < _U64:
            raise SeccompError(f"seccomp {key} {value!r} for {name} is not a 64-bit number")
