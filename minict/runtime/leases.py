"""Host-wide leases of bridge addresses and published host ports, shared by every MINICT_DIR.

    $MINICT_RUN_DIR/network/        (default /run/minict/network, mode 0700)
      lock                          flock(2)ed around every change of the leases, the
                                    bridge or the nftables table `ip minict`
      leases.json                   {"leases": [lease, ...]}, replaced by rename;
                                    deleted when the last lease goes

A lease is one running bridge container's claim:

    {"minictDir": "/var/lib/minict", "name": "web",       whose container it is
     "netns": 4026531840,                                the network namespace it is in
     "owner": {"pid": 4242, "startTime": 1234567,        the minict that runs it
               "pidns": 4026531836},
     "bridge": "minict0", "address": "10.254.37.2", "prefixlen": 24,
     "gateway": "10.254.37.1", "veth": "mct1a2b3c4d",
     "publish": [{"host": 8080, "container": 80, "protocol": "tcp"}]}

Why not in $MINICT_DIR: the bridge, its subnet, the nftables table and the
host's ports belong to the network namespace, which every state directory on
the host shares; leases kept per state directory let two of them hand out the
same address and DNAT the same port.  /run is a tmpfs, so leases end with the
boot that made them, as their containers do.

Stale leases.  A minict releases its lease on every way out but SIGKILL (or a
crash), and its container dies with it (PDEATHSIG).  So a lease is live while
its owner runs: while the owner's pid names a process with the recorded start
time (/proc/<pid>/stat field 22; a pid alone may have been reused).  That can
be checked whichever state directory the lease came from, where a look at the
container's lock could judge only the current one's.  Pids mean something
only in their pid namespace, so an owner in another one (a minict in a
container sharing /run/minict) is taken to be alive.  Stale leases are
reclaimed, under the lock, by the next bridge `run`/`start` or `rm`.

Network namespaces.  Addresses and ports conflict only within one network
namespace (each has its own bridge, table and ports), and a lease's veth and
rules can be deleted only from inside its own; so a lease counts, and is
reclaimed, only in the namespace it was made in (the inode of
/proc/self/ns/net).  A stale lease of a namespace that is gone stays in the
file until the next boot: it is a few bytes and conflicts with nothing.

Host ports.  Before a lease publishes a port, minict binds it on 0.0.0.0: TCP
with SO_REUSEADDR and then listen(2), as moby's port mapper does, so that a
connection in TIME_WAIT does not count but any listener does, on any address
(127.0.0.1 and a dual-stack [::] included); UDP with a plain bind, which any
other socket on the port refuses.  A port a program already uses is refused
("address already in use") instead of being silently taken over by the DNAT
rule, and the sockets stay open while the container runs, so no program can
start listening on the port meanwhile.  Nothing ever reaches them: the DNAT
rules take every packet for a local address first.
"""

import contextlib
import errno
import fcntl
import os
import time

from minict import fsutil, linux, store
from minict.errors import NetworkError

# Only the wildcard: a bind there conflicts with a listener on any address.
_HOST_ADDRESS = "0.0.0.0"
# How long a command waits for the leases' lock.  Its holders keep it for a
# few nft and netlink calls; one stopped while holding it (SIGSTOP, Ctrl-Z)
# would otherwise hold up every bridge container on the host for good.
LOCK_WAIT = 10.0


def owner_self() -> dict:
    """Return this process as a lease's owner: its pid, start time and pid namespace."""
    pid = os.getpid()
    return {"pid": pid, "startTime": linux.process_stat(pid).start_time,
            "pidns": _pid_namespace()}


def is_alive(owner) -> bool:
    """Return whether the process a lease's `owner` names still runs (or cannot be seen)."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or owner["pid"] <= 0:
        return False
    if owner.get("pidns", _pid_namespace()) != _pid_namespace():
        return True  # its pid names nothing here: assume the worst, that it runs
    stat = linux.process_stat(owner["pid"])
    # A zombie has closed its descriptors (its sockets, its container's lock): it is gone.
    return stat is not None and stat.start_time == owner.get("startTime") \
        and stat.state not in ("Z", "X")


def current_netns() -> int:
    """Return the inode of this process's network namespace (it names it while it exists)."""
    return os.stat("/proc/self/ns/net").st_ino


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


class Registry:
    """The host-wide leases, locked: `with Registry() as leases:`; changes are written on exit.

    Entering raises NetworkError if the lock cannot be had within `wait` seconds.
    """

    def __init__(self, wait: float = LOCK_WAIT):
        self.wait = wait

    def __enter__(self):
        path = store.leases_dir()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
            self.fd = os.open(path / store.LEASES_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                              | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise NetworkError(f"cannot lock {path}: {err.strerror}") from None
        try:
            _flock_within(self.fd, self.wait, path / store.LEASES_LOCK_NAME)
            self.leases = _read(path / store.LEASES_NAME)
            self.netns = current_netns()
        except BaseException:
            os.close(self.fd)
            raise
        self.changed = False
        return self

    def __exit__(self, *exc):
        try:
            if self.changed:
                _write(store.leases_dir() / store.LEASES_NAME, self.leases)
        finally:
            os.close(self.fd)

    def here(self) -> list[dict]:
        """Return the leases of this network namespace."""
        return [lease for lease in self.leases if lease.get("netns") == self.netns]

    def find(self, name: str) -> dict | None:
        """Return the lease of container `name` of this MINICT_DIR in this network namespace.

        One made in another namespace can be undone only there, so it is left
        to that namespace's next minict (it is stale once its owner is gone).
        """
        root = str(store.root())
        return next((lease for lease in self.here()
                     if (lease.get("minictDir"), lease.get("name")) == (root, name)), None)

    def stale(self) -> list[dict]:
        """Return the leases of this network namespace whose owner is gone."""
        return [lease for lease in self.here() if not is_alive(lease.get("owner"))]

    def publisher(self, port: dict) -> dict | None:
        """Return the live lease of this namespace that publishes host `port`, if any."""
        key = (port["host"], port["protocol"])
        for lease in self.here():
            if any((p.get("host"), p.get("protocol")) == key for p in lease.get("publish", [])) \
                    and is_alive(lease.get("owner")):
                return lease
        return None

    def addresses(self) -> set[str]:
        """Return the addresses leased in this network namespace."""
        return {lease.get("address") for lease in self.here()}

    def add(self, name: str, lease: dict) -> dict:
        """Record `lease` as container `name`'s, owned by this process; return it."""
        lease = {"minictDir": str(store.root()), "name": name, "netns": self.netns,
                 "owner": owner_self(), **lease}
        self.leases.append(lease)
        self.changed = True
        return lease

    def remove(self, lease: dict) -> None:
        self.leases = [other for other in self.leases if other is not lease]
        self.changed = True


def _flock_within(fd: int, seconds: float, path) -> None:
    """Take the flock of `fd` (the file `path`) within `seconds`; raise NetworkError."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    holder = linux.flock_holder(path)
    stat = linux.process_stat(holder) if holder is not None else None
    who = ("another process" if holder is None else f"pid {holder}"
           + (" (stopped)" if stat is not None and stat.state in ("T", "t") else ""))
    raise NetworkError(f"the host-wide network lock {path} is held by {who} and was not "
                       f"released in {seconds:g} s; if it hangs, continue or kill it")


def _read(path) -> list[dict]:
    try:
        document = fsutil.load_json(path)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise NetworkError(f"cannot read {path}: {err}") from None
    leases = document.get("leases") if isinstance(document, dict) else None
    if not isinstance(leases, list) or not all(isinstance(lease, dict) for lease in leases):
        raise NetworkError(f"{path} is not minict's list of leases; delete it if no bridge "
                           "container runs")
    return leases


def _write(path, leases: list[dict]) -> None:
    try:
        if not leases:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        fsutil.write_json_atomic(path, {"leases": leases}, fsync=False, indent=1, sort_keys=True)
    except OSError as err:
        raise NetworkError(f"cannot write {path}: {err.strerror}") from None


# -- host ports ---------------------------------------------------------------------------

def reserve_ports(publish) -> list:
    """Bind every host port of `publish` (see the module's docstring); return the sockets.

    Close them to give the ports back.  Raise NetworkError ("address already
    in use") if a program on the host uses one.
    """
    held = []
    try:
        for port in publish:
            held.append(_bind(port))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def _bind(port: dict):
    import socket  # only bridge containers with published ports need it

    tcp = port["protocol"] == "tcp"
    # Python's sockets are close-on-exec: the container never inherits them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((_HOST_ADDRESS, port["host"]))
        if tcp:
            sock.listen(1)
    except OSError as err:
        sock.close()
        reason = ("address already in use" if err.errno == errno.EADDRINUSE
                  else (err.strerror or str(err)).lower())
        raise NetworkError(f"host port {port['host']}/{port['protocol']} is in use on this host "
                           f"(bind {_HOST_ADDRESS}:{port['host']}): {reason}") from None
    return sock
