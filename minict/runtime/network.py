"""Container networking: `--network host|none|bridge` and published ports.

Every pyroute2 call minict makes is here; the nftables rules are firewall.py's,
the container's /etc/hosts and /etc/resolv.conf etc_files.py's.

    host     the host's network, as the original did: no namespace, nothing to do
    none     a network namespace of its own with only `lo`, brought up
    bridge   a namespace with `lo` and `eth0`, one end of a veth pair whose
             host end is a port of the bridge (`minict0`, subnet 10.254.37.0/24;
             MINICT_BRIDGE and MINICT_BRIDGE_SUBNET override them); the bridge's
             first address is the gateway, forwarding is on and outbound traffic
             is masqueraded; `-p HOST:CONTAINER[/tcp|udp]` publishes ports by DNAT

What a bridge container changes on the host, all in the current network
namespace: the bridge and its address (created on first use, kept), the
sysctls net.ipv4.ip_forward=1 and net.ipv4.conf.<bridge>.route_localnet=1
(so that 127.0.0.1:HOSTPORT reaches a published port), and the nftables
table `ip minict`: per bridge, masquerade for the subnet's outbound traffic
and for loopback-sourced traffic to the bridge, and a drop of packets from
the bridge to 127.0.0.0/8 (what route_localnet would otherwise let in);
per published port, a DNAT rule in prerouting and one in output.  Each rule
carries a comment naming its owner (`bridge <name>` or the veth).  Per
container: a veth pair `mct<hash>` (the hash of $MINICT_DIR and the name),
an address lease and its DNAT rules; all three go when the container exits,
and whatever a killed minict left is reclaimed by the next bridge
`run`/`start` or by `rm`.  Leases, and the host ports they publish, are
host-wide, shared by every $MINICT_DIR (leases.py, under $MINICT_RUN_DIR);
a host port some program listens on is refused, not taken over.  Every lease
and bridge change happens under the leases' flock, and every nftables change
is one `nft -f` transaction, so none is seen half done.

The bundle records the choice in network.json, so `start` does the same
again; /etc/hosts (and, with bridge, /etc/resolv.conf) come from files
written beside it at each launch and bound read-only over the rootfs's own.
"""

import contextlib
import os
import re

from minict import linux, log, store
from minict.errors import NetworkError
from minict.runtime import etc_files, firewall, leases, netsettings

DEFAULT_BRIDGE = "minict0"
# Rarely used by anything else (docker takes 172.17/16, podman 10.88/16).
DEFAULT_SUBNET = "10.254.37.0/24"
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")


# -- one container's network, from launch to exit ---------------------------------------

class Attachment:
    """The network of one launch: `config` adjusted, `attach(pid)` once, `release()` always."""

    def __init__(self, name: str, mode: str, lease: dict | None = None, sockets=()):
        # `sockets` hold the published host ports (leases.reserve_ports) while it runs.
        self.name, self.mode, self.lease, self.sockets = name, mode, lease, list(sockets)

    def attach(self, pid: int) -> None:
        """Configure the new network namespace of process `pid` (it has unshared)."""
        if self.mode == "host":
            return
        with _netlink("set up the container's network"), _NetnsRoute(pid) as inside:
            _up(inside, "lo")
            if self.mode == "bridge":
                _plug(self.lease, pid, inside)
        if self.mode == "bridge" and self.lease["publish"]:
            firewall.apply(firewall.dnat_rules(self.lease))

    def release(self) -> None:
        """Remove the veth, the DNAT rules and the lease (bridge), free the ports; safe twice."""
        if self.mode == "bridge" and self.lease is not None:
            with _netlink("release the container's network"), leases.Registry() as registry:
                current = registry.find(self.name)
                # `rm --force` removes a container (and its lease) whose minict
                # is stopped; when that minict goes on, nothing there is its own.
                if current is not None and current.get("owner") == self.lease.get("owner"):
                    _drop(registry, current)
            self.lease = None
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def prepare(name: str, bundle, config: dict) -> Attachment:
    """Set up the host side of container `name`'s network and adjust `config` for it.

    `config` (the parsed config.json) gets a network namespace, its own
    sysfs and the /etc/hosts (and resolv.conf) binds; config.json itself is
    not changed.
    For bridge, stale leases are reclaimed first, then the published host
    ports are reserved and an address is leased.  Raise NetworkError.
    """
    settings = netsettings.load(bundle)
    mode = settings["mode"]
    if mode == "host":
        return Attachment(name, mode)
    namespaces = config.setdefault("linux", {}).setdefault("namespaces", [])
    if not any(ns.get("type") == "network" for ns in namespaces):
        namespaces.append({"type": "network"})
    lease, sockets = None, []
    if mode == "bridge":
        with _netlink("set up the bridge"), leases.Registry() as registry:
            bridge = _ensure_bridge()
            _reclaim(registry)
            lease, sockets = _allocate(registry, name, bridge, settings["publish"])
    attachment = Attachment(name, mode, lease, sockets)
    hostname = config.get("hostname") or name
    try:
        etc_files.adjust_mounts(bundle, config, hostname, lease)
    except BaseException:
        attachment.release()
        raise
    return attachment


def cleanup(name: str, wait: float = leases.LOCK_WAIT) -> None:
    """Drop container `name`'s lease and the stale ones a killed minict left (`rm`).

    Call it only when nothing runs the container any more: its lock is held,
    or its container was killed (`rm --force` of a stopped minict's).  Wait
    at most `wait` seconds for the leases' lock; raise NetworkError.
    """
    if not os.path.exists(store.leases_dir() / store.LEASES_NAME):
        return  # nothing leased: spare `rm` the lock, netlink and nft work
    with _netlink("clean up the network"), leases.Registry(wait) as registry:
        lease = registry.find(name)
        if lease is not None:
            _drop(registry, lease)
        _reclaim(registry)


# -- bridge, addresses, leases ---------------------------------------------------------

def bridge_settings() -> tuple:
    """Return the bridge's name and subnet (MINICT_BRIDGE, MINICT_BRIDGE_SUBNET)."""
    import ipaddress  # here and below: `start` of a host-network container needs none of them

    name = os.environ.get("MINICT_BRIDGE") or DEFAULT_BRIDGE
    if not _IFNAME.match(name):
        raise NetworkError(f"MINICT_BRIDGE={name!r} is not an interface name (1-15 of "
                           "letters, digits, '_', '.', '-')")
    text = os.environ.get("MINICT_BRIDGE_SUBNET") or DEFAULT_SUBNET
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as err:
        raise NetworkError(f"MINICT_BRIDGE_SUBNET={text!r}: {err}") from None
    if subnet.prefixlen > 29:
        raise NetworkError(f"MINICT_BRIDGE_SUBNET={text!r} is too small: use at most /29")
    return name, subnet


def _ensure_bridge() -> dict:
    """Create or check the bridge, forwarding and the nftables table; return the bridge."""
    name, subnet = bridge_settings()
    gateway = f"{subnet[1]}/{subnet.prefixlen}"
    ipr = _route()
    with ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            with _tolerate(_EEXIST):  # a concurrent minict made it
                ipr.link("add", ifname=name, kind="bridge")
            found = ipr.link_lookup(ifname=name)
        index = found[0]
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
            raise NetworkError(f"{name} exists and is not a bridge (set MINICT_BRIDGE)")
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(family=_AF_INET, index=index)}
        if have and gateway not in have:
            raise NetworkError(f"bridge {name} has {', '.join(sorted(have))}, not {gateway}: "
                               "set MINICT_BRIDGE_SUBNET to match, or delete the bridge")
        if not have:
            with _tolerate(_EEXIST):
                ipr.addr("add", index=index, address=str(subnet[1]), prefixlen=subnet.prefixlen)
        ipr.link("set", index=index, state="up")
    _sysctl_on("net/ipv4/ip_forward")
    # Published ports reached at 127.0.0.1: the host's packet keeps its
    # loopback source on its way out to the bridge (then masqueraded).
    _sysctl_on(f"net/ipv4/conf/{name}/route_localnet")
    firewall.apply(firewall.base_rules(name, subnet))
    return {"name": name, "subnet": str(subnet), "gateway": str(subnet[1])}


def _sysctl_on(name: str) -> None:
    """Set the sysctl `name` (as under /proc/sys) to 1."""
    path = f"/proc/sys/{name}"
    try:
        with open(path, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1\n")
    except OSError as err:
        raise NetworkError(f"set {name.replace('/', '.')}=1: {err.strerror}") from None


def _allocate(registry, name: str, bridge: dict, publish: list) -> tuple[dict, list]:
    """Reserve the host ports and lease the lowest free address to `name`.

    Return the lease and the sockets that hold the ports (leases.py).  Raise
    NetworkError ("address already in use") if another container or a
    program on the host has one of the ports.
    """
    import ipaddress

    for port in publish:
        other = registry.publisher(port)
        if other is not None:  # live, so not ours: we hold our container's lock
            where = ("" if other.get("minictDir") == str(store.root())
                     else f" of MINICT_DIR {other.get('minictDir')}")
            raise NetworkError(f"host port {port['host']}/{port['protocol']} is already "
                               f"published by container {other.get('name')}{where}: "
                               "address already in use")
    own = registry.find(name)
    if own is not None:  # a stale lease of our own (a killed minict's)
        _drop(registry, own)
    subnet = ipaddress.IPv4Network(bridge["subnet"])
    taken = registry.addresses() | _host_addresses()
    address = next((str(a) for a in subnet.hosts() if str(a) not in taken
                    and a != subnet[1]), None)
    if address is None:
        raise NetworkError(f"no free address left in {subnet} on bridge {bridge['name']}")
    sockets = leases.reserve_ports(publish)  # last: a refusal leaves nothing to undo
    lease = registry.add(name, {"address": address, "prefixlen": subnet.prefixlen,
                                "gateway": bridge["gateway"], "bridge": bridge["name"],
                                "veth": veth_name(name), "publish": publish})
    return lease, sockets


def _drop(registry, lease: dict) -> None:
    """Delete `lease`'s veth and DNAT rules, then the lease (the registry locked, its netns)."""
    veth = lease.get("veth")
    if isinstance(veth, str) and _IFNAME.match(veth):
        ipr = _route()
        with ipr:
            for index in ipr.link_lookup(ifname=veth):
                with _tolerate(_ENODEV):  # its namespace died and took it along
                    ipr.link("del", index=index)  # deleting one end deletes the pair
        firewall.delete_tagged(veth)
    registry.remove(lease)


def _reclaim(registry) -> None:
    """Drop the leases of this network namespace whose minict is gone (killed)."""
    for lease in registry.stale():
        log.debug(f"network: reclaiming the stale lease of container {lease.get('name')} "
                  f"of {lease.get('minictDir')}")
        _drop(registry, lease)


def veth_name(name: str) -> str:
    """Return the host end's name for container `name`: `mct` and 8 hex digits."""
    import hashlib

    digest = hashlib.sha256(f"{store.root()}\0{name}".encode()).hexdigest()
    return f"mct{digest[:8]}"


def _host_addresses() -> set[str]:
    ipr = _route()
    with ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=_AF_INET)}


# -- inside the container's namespace ------------------------------------------------------

class _NetnsRoute:
    """An IPRoute whose netlink socket lives in process `pid`'s network namespace.

    The socket is made by a short-lived thread that setns(2)es into the
    namespace (a network namespace is per thread, so minict's own stays
    where it is); a socket keeps the namespace it was created in.  No
    named netns under /run/netns is needed, so nothing is left behind.
    """

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        import threading

        result = {}

        def make():
            try:
                fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    linux.setns(fd, linux.CLONE_NEWNET)
                finally:
                    os.close(fd)
                import socket

                result["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM
                                               | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
            except OSError as err:
                result["error"] = err

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if "error" in result:
            raise NetworkError(f"enter the container's network namespace: "
                               f"{result['error'].strerror or result['error']}")
        from pyroute2 import IPRoute

        self.ipr = IPRoute(fileno=result["sock"].detach())
        return self.ipr

    def __exit__(self, *exc):
        self.ipr.close()


def _up(ipr, ifname: str) -> None:
    for index in ipr.link_lookup(ifname=ifname):
        ipr.link("set", index=index, state="up")


def _plug(lease: dict, pid: int, inside) -> None:
    """Make the veth pair, join the bridge, move the peer in as eth0 with its address."""
    host, peer = lease["veth"], "mcp" + lease["veth"][3:]
    with _netlink(f"connect the container to bridge {lease['bridge']}"):
        ipr = _route()
        with ipr:
            for index in ipr.link_lookup(ifname=peer):  # an interrupted earlier attach
                ipr.link("del", index=index)
            ipr.link("add", ifname=host, kind="veth", peer=peer)
            bridge = ipr.link_lookup(ifname=lease["bridge"])
            if not bridge:
                raise NetworkError(f"bridge {lease['bridge']} disappeared")
            (peer_index,) = ipr.link_lookup(ifname=peer)
            ipr.link("set", index=peer_index, net_ns_pid=pid)
            (host_index,) = ipr.link_lookup(ifname=host)
            ipr.link("set", index=host_index, master=bridge[0], state="up")
        (index,) = inside.link_lookup(ifname=peer)
        inside.link("set", index=index, ifname="eth0")
        inside.addr("add", index=index, address=lease["address"], prefixlen=lease["prefixlen"])
        inside.link("set", index=index, state="up")
        inside.route("add", dst="0.0.0.0/0", gateway=lease["gateway"])


def _route():
    from pyroute2 import IPRoute

    return IPRoute()


_AF_INET = 2
_EEXIST, _ENODEV = 17, 19


@contextlib.contextmanager
def _netlink(step: str):
    """Turn a netlink failure inside into NetworkError naming `step`."""
    from pyroute2 import NetlinkError

    try:
        yield
    except NetlinkError as err:
        raise NetworkError(f"{step}: {os.strerror(err.code) if err.code else err}") from None


@contextlib.contextmanager
def _tolerate(code: int):
    """Ignore a netlink failure with errno `code` (the state asked for is already there)."""
    from pyroute2 import NetlinkError

    try:
        yield
    except NetlinkError as err:
        if err.code != code:
            raise
