"""Which capabilities a container's process gets: docker's defaults, --cap-add, --cap-drop.

The default is docker's and podman's set of 14 (moby daemon/pkg/oci/caps
DefaultCapabilities): enough for package managers (setgroups, setgid,
setuid), entrypoint scripts that chown, and servers that bind low ports and
then drop to another user; without CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE
and the rest.  The capabilities are those of the container's own user
namespace: they act on what that namespace owns (its mount, uts, ipc and pid
namespaces, a network namespace of its own), never on the host's network
namespace or anything else the initial user namespace owns.

The chosen list goes into the bounding, effective and permitted sets; the
inheritable and ambient sets stay empty, as docker and containerd leave
them since CVE-2022-24769 (and runc since CVE-2022-29162): a filled
inheritable set let a program keep capabilities across the execve of an
unprivileged one.  A non-root user therefore ends with empty effective and
permitted sets after its execve (capabilities(7), "Transformation of
capabilities during execve()"), exactly as under docker, and keeps the
bounding set for a setuid-root or file-capability binary.
"""

from minict import linux
from minict.errors import MinictError

# moby's order, so a config.json reads like docker's.
DEFAULT = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
           "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
           "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
# Every capability minict knows, in bit order; the container's init skips
# those the running kernel lacks (as runc does).
ALL = tuple(sorted(linux.CAPABILITIES, key=linux.CAPABILITIES.get))
ALL_WORD = "ALL"


class CapabilityError(MinictError):
    """A --cap-add or --cap-drop name that is no capability."""


def normalize(names) -> tuple[str, ...]:
    """Return `names` upper-cased with the CAP_ prefix; "all" becomes "ALL".

    Accept "chown", "CAP_CHOWN", "Cap_Chown" alike (moby's
    NormalizeLegacyCapabilities).  Raise CapabilityError for an unknown name.
    """
    result = []
    for name in names:
        word = name.strip().upper()
        if word == ALL_WORD:
            result.append(word)
            continue
        if not word.startswith("CAP_"):
            word = "CAP_" + word
        if word not in linux.CAPABILITIES:
            raise CapabilityError(f"unknown capability {name!r}: see capabilities(7) for "
                                  "the names (CHOWN or CAP_CHOWN), or use ALL")
        result.append(word)
    return tuple(result)


def resolve(add=(), drop=(), privileged: bool = False) -> list[str]:
    """Return the capability list for run's --cap-add `add`, --cap-drop `drop`, --privileged.

    moby's TweakCapabilities rules: privileged gets every capability; ALL in
    `add` gives every capability but those in `drop`; otherwise ALL in
    `drop` leaves only `add`; otherwise the default minus `drop`, plus
    `add`.  Raise CapabilityError for an unknown name.
    """
    if privileged:
        return list(ALL)
    add, drop = normalize(add), normalize(drop)
    if ALL_WORD in add:
        chosen = [c for c in ALL if c not in drop]
    elif ALL_WORD in drop:
        chosen = list(add)
    else:
        chosen = [c for c in DEFAULT if c not in drop] + list(add)
    return list(dict.fromkeys(chosen))  # once each, first place kept


def process_sets(chosen) -> dict:
    """Return config.json's process.capabilities for the list `chosen`."""
    return {"bounding": list(chosen), "effective": list(chosen), "inheritable": [],
            "permitted": list(chosen), "ambient": []}
