"""The container's /etc/hosts and /etc/resolv.conf: written in the bundle, bound read-only.

Written anew at each launch (network.py), beside config.json, so a container
never writes the files the next start reads.
"""

import os

from minict import fsutil, log, store
from minict.errors import NetworkError

RESOLV_SOURCES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")


def adjust_mounts(bundle, config: dict, hostname: str, lease: dict | None) -> None:
    """Mount a fresh sysfs; write hosts (and resolv.conf for bridge) in the bundle, bind them."""
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if lease is not None:
        hosts += f"{lease['address']}\t{hostname}\n"
    files = {"/etc/hosts": (store.HOSTS_NAME, hosts)}
    if lease is not None:
        files["/etc/resolv.conf"] = (store.RESOLV_NAME, resolv_conf())
    mounts = config.setdefault("mounts", [])
    # The host's /sys would show the host's interfaces under /sys/class/net;
    # a sysfs mounted in the new namespace shows the container's own.
    for entry in mounts:
        if entry.get("destination") == "/sys":
            entry.update(type="sysfs", source="sysfs", options=["nosuid", "noexec", "nodev", "ro"])
    for destination, (filename, text) in files.items():
        source = str(store.bundle_file(os.path.abspath(bundle), filename))
        write_file(source, text, mode=0o644)
        mounts[:] = [m for m in mounts if m.get("destination") != destination]
        mounts.append({"destination": destination, "type": "bind", "source": source,
                       "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})


def resolv_conf(sources=RESOLV_SOURCES) -> str:
    """Return the host's resolv.conf without loopback name servers (unreachable inside).

    A host whose only server is a local stub (systemd-resolved's 127.0.0.53)
    has its upstream servers in /run/systemd/resolve/resolv.conf; use those.
    """
    for path in sources:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        kept, servers = [], 0
        for line in lines:
            words = line.split()
            if words[:1] == ["nameserver"] and len(words) > 1:
                if _is_loopback(words[1]):
                    continue
                servers += 1
            kept.append(line)
        if servers:
            return "\n".join(kept) + "\n"
    log.warn("the host has only loopback name servers; the container gets none")
    return "# minict: the host's name servers are all on loopback, unreachable from here\n"


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def write_file(path, text: str, mode: int = 0o600) -> None:
    try:
        fsutil.write_atomic(path, text, fsync=False, mode=mode)
    except OSError as err:
        raise NetworkError(f"cannot write {path}: {err.strerror}") from None
