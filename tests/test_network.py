"""Container networking (`--network host|none|bridge`, `-p`), as root, with real containers.

Every container test runs minict inside a network namespace the test makes
(`ip netns add`), so the bridge, the nftables table and ip_forward it sets
are that namespace's and vanish with it; the host's network is never
touched.  The bridge is `minict-t0` on 10.213.7.0/24 (MINICT_BRIDGE and
MINICT_BRIDGE_SUBNET), and the only addresses ever contacted are loopback
and that subnet's, inside the test's namespace.  The host-wide leases live
in a MINICT_RUN_DIR of the test's own, never in /run/minict.
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from minict.errors import NetworkError
from minict.runtime import etc_files, netsettings, network
from tests.support import ci
from tests.support.procs import hold_lock, is_gone, state_and_start
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

BRIDGE = "minict-t0"
SUBNET = ipaddress.IPv4Network("10.213.7.0/24")
GATEWAY = str(SUBNET[1])
ENV = {"MINICT_BRIDGE": BRIDGE, "MINICT_BRIDGE_SUBNET": str(SUBNET)}
EXITED = "Container process exited. It can be started again using the 'start' option."


# -- settings, without root -------------------------------------------------------------

@pytest.mark.parametrize("text, port", [
    ("8080:80", {"host": 8080, "container": 80, "protocol": "tcp"}),
    ("53:5353/udp", {"host": 53, "container": 5353, "protocol": "udp"}),
    ("1:65535/tcp", {"host": 1, "container": 65535, "protocol": "tcp"}),
])
def test_publish_parses(text, port):
    assert netsettings.parse_publish(text) == port


@pytest.mark.parametrize("text", ["80", "0:80", "80:65536", "a:b", "80:80/sctp", ":80",
                                  "80:80/", "1.2.3.4:80:80"])
def test_publish_refuses_what_it_cannot_do(text):
    with pytest.raises(NetworkError, match="invalid published port"):
        netsettings.parse_publish(text)


def test_ports_need_bridge_and_each_host_port_once():
    port = netsettings.parse_publish("8080:80")
    with pytest.raises(NetworkError, match="need --network bridge"):
        netsettings.check("host", [port])
    with pytest.raises(NetworkError, match="published twice"):
        netsettings.check("bridge", [port, netsettings.parse_publish("8080:81")])
    assert netsettings.check("bridge", [port, netsettings.parse_publish("8080:80/udp")])["publish"]


def test_bundle_without_network_json_keeps_the_host_network(tmp_path):
    assert netsettings.load(tmp_path) == {"mode": "host", "publish": []}
    settings = netsettings.check("bridge", [netsettings.parse_publish("8080:80")])
    netsettings.save(tmp_path, settings)
    assert netsettings.load(tmp_path) == settings


def test_resolv_conf_drops_loopback_servers(tmp_path):
    stub, upstream = tmp_path / "stub", tmp_path / "upstream"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\nsearch lan\n")
    upstream.write_text("nameserver ::1\nnameserver 192.0.2.53\nsearch lan\n")
    assert etc_files.resolv_conf([stub, upstream]) == "nameserver 192.0.2.53\nsearch lan\n"
    assert etc_files.resolv_conf([tmp_path / "missing", upstream]).startswith("nameserver 192.0.2")
    only_stub = etc_files.resolv_conf([stub])
    assert "nameserver" not in only_stub.replace("name servers", "")


@pytest.mark.parametrize("subnet", ["10.213.7.0/30", "not-a-subnet", "10.213.7.1/24"])
def test_bridge_subnet_is_checked(monkeypatch, subnet):
    monkeypatch.setenv("MINICT_BRIDGE_SUBNET", subnet)
    with pytest.raises(NetworkError, match="MINICT_BRIDGE_SUBNET"):
        network.bridge_settings()


def test_cli_refuses_unknown_modes_and_ports_without_bridge(minict):
    bad_mode = minict("run", "--image", "x", "--name", "c", "--network", "overlay")
    assert bad_mode.returncode == 2 and "overlay" in bad_mode.stderr
    no_bridge = minict("run", "--image", "x", "--name", "c", "-p", "8080:80")
    assert no_bridge.returncode == 1
    assert no_bridge.stderr.rstrip().endswith("published ports (-p) need --network bridge")
    bad_port = minict("run", "--image", "x", "--name", "c", "--network", "bridge", "-p", "99999:1")
    assert bad_port.returncode == 1 and "invalid published port '99999:1'" in bad_port.stderr


# -- a network namespace per test ---------------------------------------------------------

class Netns:
    """A network namespace of the test's own, and minict and servers run inside it."""

    def __init__(self, minict_dir, run_dir):
        self.name = f"minict-t{uuid.uuid4().hex[:8]}"
        self.minict_dir, self.run_dir = minict_dir, run_dir
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=True)

    def argv(self, *args):
        # nsenter, not `ip netns exec`: that also mounts a sysfs of its own
        # over /sys, which hides the host's cgroup hierarchies that minict
        # puts every container in (devices.py); minict reads nothing of /sys.
        return ["nsenter", f"--net=/run/netns/{self.name}", "--", *map(str, args)]

    def env(self, minict_dir=None):
        return dict(os.environ, MINICT_DIR=str(minict_dir or self.minict_dir),
                    MINICT_RUN_DIR=str(self.run_dir), **ENV)

    def minict(self, *args, input=None, timeout=60, minict_dir=None):
        """Run minict inside the namespace (with `minict_dir` or the test's); return the result."""
        return subprocess.run(self.argv(sys.executable, "-m", "minict", *args), input=input,
                              check=False, stdin=subprocess.DEVNULL if input is None else None,
                              capture_output=True, text=True, env=self.env(minict_dir),
                              timeout=timeout)

    def spawn(self, *args, minict_dir=None):
        """Start minict inside the namespace in the background; return the Popen."""
        return subprocess.Popen(self.argv(sys.executable, "-m", "minict", *args),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(minict_dir))

    def python(self, code: str, timeout=30) -> str:
        """Run Python `code` inside the namespace; return its standard output."""
        done = subprocess.run(self.argv(sys.executable, "-c", code), capture_output=True,
                              text=True, timeout=timeout, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.name, "-j", "link"], capture_output=True,
                             text=True, check=True).stdout
        return [link["ifname"] for link in json.loads(out)]

    def rules(self) -> list[dict]:
        """Return the rules of `table ip minict` in the namespace (nft's JSON)."""
        done = subprocess.run(self.argv("nft", "-j", "list", "table", "ip", "minict"),
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return []
        return [i["rule"] for i in json.loads(done.stdout)["nftables"] if "rule" in i]

    def all_leases(self) -> list[dict]:
        """Return every host-wide lease (all state directories)."""
        try:
            return json.loads((self.run_dir / "network" / "leases.json").read_text())["leases"]
        except FileNotFoundError:
            return []

    def leases(self, minict_dir=None) -> dict:
        """Return the leases of `minict_dir`'s (or the test's) containers by name."""
        wanted = str(minict_dir or self.minict_dir)
        return {lease["name"]: lease for lease in self.all_leases()
                if lease["minictDir"] == wanted}


@pytest.fixture
def ns(minict_dir, tmp_path, require_tool):
    ci.require_root()
    require_tool("ip")
    require_tool("nft")
    made = Netns(minict_dir, tmp_path / "run")
    yield made
    made.delete()


@pytest.fixture
def bridged(box):
    """bridged(script, name, *ports) -> a busybox bundle that runs `sh -c script` on the bridge."""

    def make(script, name, *ports):
        path = box(["sh", "-c", script], name=name)
        netsettings.save(path, netsettings.check("bridge", [netsettings.parse_publish(p) for p in ports]))
        return path

    return make


@pytest.fixture
def pulled(minict, busybox_image):
    done = minict("pull", "--image", busybox_image, "--insecure")
    assert done.returncode == 0, done.stderr
    return str(busybox_image)


def leftovers(ns, name):
    """Return what container `name` still holds: its veth, its lease, its rules."""
    veth = network.veth_name(name)  # it hashes $MINICT_DIR: _same_minict_dir sets it
    return ([link for link in ns.links() if link in (veth, "mcp" + veth[3:])],
            ns.leases().get(name), [r for r in ns.rules() if r.get("comment") == veth])


@pytest.fixture(autouse=True)
def _same_minict_dir(monkeypatch, minict_dir):
    # network.veth_name hashes $MINICT_DIR with the name, as minict does.
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))


def running(path):
    from minict.runtime import state as states

    return states.read_state(path).get("status") == "running"


# -- none ---------------------------------------------------------------------------------

@pytest.mark.root
def test_none_has_only_lo_and_it_is_up(ns, pulled):
    done = ns.minict("run", "--image", pulled, "--name", "quiet", "--network", "none",
                     input="ip -o link; ip -o -4 addr; cat /etc/hosts; ls /sys/class/net\n")
    assert done.returncode == 0, done.stderr
    links = [line for line in done.stdout.splitlines() if ": <" in line]
    assert len(links) == 1, done.stdout
    assert links[0].split(": ")[1] == "lo"
    assert "UP" in links[0].split("<")[1].split(">")[0].split(",")
    assert "inet 127.0.0.1/8" in done.stdout
    assert "127.0.0.1\tlocalhost" in done.stdout
    assert done.stdout.endswith("\nlo\n")  # its own sysfs, not the host's interfaces
    # Nothing on the host side: no bridge, no rules, no lease.
    assert ns.links() == ["lo"] and ns.rules() == [] and ns.leases() == {}
    # `start` repeats the recorded mode.
    again = ns.minict("start", "--name", "quiet")
    assert again.returncode == 0, again.stderr
    assert json.loads((ns.minict_dir / "containers/quiet/network.json").read_text())["mode"] \
        == "none"


@pytest.mark.root
def test_host_mode_is_the_default_and_shares_the_host_network(ns, pulled):
    done = ns.minict("run", "--image", pulled, "--name", "hosted", input="ip -o link\n")
    assert done.returncode == 0, done.stderr
    assert ns.links() == ["lo"]
    assert not (ns.minict_dir / "containers/hosted/network.json").exists()


# -- bridge -------------------------------------------------------------------------------

@pytest.mark.root
def test_bridge_container_gets_an_address_and_reaches_the_host(ns, bridged, tmp_path):
    bridged("true", "first")  # creates the bridge, so the server can bind its address
    assert ns.minict("start", "--name", "first").returncode == 0
    assert BRIDGE in ns.links()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the host\n")
    server = subprocess.Popen(ns.argv(sys.executable, "-m", "http.server", "--bind", GATEWAY,
                                      "--directory", site, "18080"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bridged("ip -o -4 addr show dev eth0; ip route; cat /etc/hosts /etc/resolv.conf;"
                f"for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://{GATEWAY}:18080/"
                " && exit 0; sleep 0.3; done; exit 1", "client")
        done = ns.minict("start", "--name", "client")
    finally:
        server.terminate()
        server.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    address = done.stdout.split(" inet ")[1].split()[0]
    assert ipaddress.IPv4Interface(address).network == SUBNET
    assert address != f"{GATEWAY}/24"
    assert f"default via {GATEWAY} dev eth0" in done.stdout
    assert f"{address.split('/')[0]}\tclient\n" in done.stdout
    assert etc_files.resolv_conf() in done.stdout
    assert done.stdout.endswith("hello from the host\n")


@pytest.mark.root
def test_two_containers_reach_each_other(ns, bridged, box):
    server = bridged("while true; do echo from-a | nc -l -p 7000; done", "a")
    proc = ns.spawn("start", "--name", "a")
    try:
        wait_for(lambda: running(server) and "a" in ns.leases(), "container a")
        address = ns.leases()["a"]["address"]
        bridged(f"for i in 1 2 3 4 5 6 7 8 9 10; do nc {address} 7000 && exit 0; sleep 0.3;"
                " done; exit 1", "b")
        done = ns.minict("start", "--name", "b")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("from-a\n")
    finally:
        killed = ns.minict("rm", "--force", "--name", "a")
        proc.communicate(timeout=30)
    assert killed.returncode == 0, killed.stderr
    assert leftovers(ns, "a") == ([], None, [])


@pytest.mark.root
def test_published_port_reaches_a_server_in_the_container(ns, bridged):
    path = bridged("for i in 1 2; do echo hello-$i | nc -l -p 80; done", "web", "18081:80",
                   "18082:81/udp")
    proc = ns.spawn("start", "--name", "web")
    try:
        wait_for(lambda: running(path) and len(leftovers(ns, "web")[2]) == 4, "the port rules")
        address = ns.leases()["web"]["address"]
        table = subprocess.run(ns.argv("nft", "list", "table", "ip", "minict"),
                               capture_output=True, text=True, check=True).stdout
        for rule in (f"tcp dport 18081 dnat to {address}:80", f"udp dport 18082 dnat to {address}:81"):
            assert table.count(f"fib daddr type local {rule}") == 2  # prerouting and output
        # The host connects to its bridge address, then to 127.0.0.1; DNAT
        # takes both to the container's server.
        got = ns.python(
            "import socket, time\n"
            f"for address in ({GATEWAY!r}, '127.0.0.1'):\n"
            "    for _ in range(50):\n"
            "        try:\n"
            "            s = socket.create_connection((address, 18081), timeout=5)\n"
            "            data = s.recv(100)\n"
            "            s.close()\n"
            "            if data:\n"
            "                print(address, data.decode(), end='')\n"
            "                break\n"
            "        except ConnectionRefusedError:\n"
            "            pass\n"
            "        time.sleep(0.1)\n")
        assert got == f"{GATEWAY} hello-1\n127.0.0.1 hello-2\n"
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert EXITED in err
    # Exit: the veth, the lease and both DNAT rules per port are gone.
    assert leftovers(ns, "web") == ([], None, [])


@pytest.mark.root
def test_a_host_port_is_published_by_one_container_at_a_time(ns, bridged):
    first = bridged("sleep 30", "one", "18083:80")
    bridged("true", "two", "18083:8080")
    proc = ns.spawn("start", "--name", "one")
    try:
        wait_for(lambda: running(first), "container one")
        done = ns.minict("start", "--name", "two")
        assert done.returncode == 1
        assert done.stderr.rstrip().endswith("fatal host port 18083/tcp is already published "
                                             "by container one: address already in use")
        assert "two" not in ns.leases()
    finally:
        ns.minict("rm", "--force", "--name", "one")
        proc.communicate(timeout=30)


@pytest.mark.root
def test_ten_concurrent_runs_get_ten_distinct_addresses(ns, pulled):
    procs = [subprocess.Popen(ns.argv(sys.executable, "-m", "minict", "run", "--image", pulled,
                                      "--name", f"c{i}", "--network", "bridge"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ns.env())
             for i in range(10)]
    addresses = []
    for proc in procs:
        # The sleep keeps all ten alive together while the others start.
        out, err = proc.communicate("ip -o -4 addr show dev eth0; sleep 1\n", timeout=120)
        assert proc.returncode == 0, err
        addresses.append(out.split(" inet ")[1].split("/")[0])
    assert len(set(addresses)) == 10, addresses
    settings = json.loads((ns.minict_dir / "containers/c0/network.json").read_text())
    assert settings == {"mode": "bridge", "publish": []}  # what `start` will do again
    assert all(ipaddress.IPv4Address(a) in SUBNET and a != GATEWAY for a in addresses)
    assert ns.leases() == {}
    assert ns.links() == ["lo", BRIDGE]


@pytest.mark.root
def test_a_crashed_minict_leaves_nothing_rm_cannot_clean(ns, bridged):
    path = bridged("sleep 60", "crash", "18084:80")
    proc = ns.spawn("start", "--name", "crash")
    wait_for(lambda: running(path) and len(leftovers(ns, "crash")[2]) == 2, "the port rules")
    veths, lease, rules = leftovers(ns, "crash")
    assert len(veths) == 1 and lease["address"] and len(rules) == 2
    # `ip netns exec` execs minict: this pid is minict's.  Its container dies with it.
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert leftovers(ns, "crash")[1] is not None  # the lease outlived the crash...
    done = ns.minict("rm", "--name", "crash")
    assert done.returncode == 0, done.stderr
    assert leftovers(ns, "crash") == ([], None, [])  # ...and rm took everything


@pytest.mark.root
def test_the_next_run_reclaims_what_a_crash_left(ns, bridged):
    path = bridged("sleep 60", "lost", "18085:80")
    proc = ns.spawn("start", "--name", "lost")
    wait_for(lambda: running(path) and "lost" in ns.leases(), "container lost")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    bridged("true", "next", "18085:80")  # the same host port: free again once reclaimed
    done = ns.minict("start", "--name", "next")
    assert done.returncode == 0, done.stderr
    assert leftovers(ns, "lost") == ([], None, [])
    assert ns.leases() == {}


@pytest.mark.root
def test_a_bridge_that_does_not_fit_is_one_clear_line(ns, bridged):
    bridged("true", "odd")
    subprocess.run(["ip", "-n", ns.name, "link", "add", BRIDGE, "type", "veth"], check=True)
    done = ns.minict("start", "--name", "odd")
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(f"fatal {BRIDGE} exists and is not a bridge "
                                         "(set MINICT_BRIDGE)")
    subprocess.run(["ip", "-n", ns.name, "link", "del", BRIDGE], check=True)
    subprocess.run(["ip", "-n", ns.name, "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns.name, "addr", "add", "10.213.8.1/24", "dev", BRIDGE],
                   check=True)
    done = ns.minict("start", "--name", "odd")
    assert done.returncode == 1
    assert f"fatal bridge {BRIDGE} has 10.213.8.1/24, not {GATEWAY}/24" in done.stderr
    assert "Traceback" not in done.stderr
    assert ns.leases() == {} and ns.rules() == []


# -- host-wide: state directories, host ports, a stopped minict -------------------------------

def bridged_in(minict_dir, rootfs, script, name, *ports):
    """A busybox bundle in another MINICT_DIR that runs `sh -c script` on the bridge."""
    from tests.support.bundles import make_bundle  # a plugin of this module: not at import

    path = make_bundle(minict_dir, name, rootfs, cmd=["sh", "-c", script])
    netsettings.save(path, netsettings.check("bridge", [netsettings.parse_publish(p) for p in ports]))
    return path


def eth0_address(path, timeout=10):
    """Return the address the container of bundle `path` wrote to /addr (see ADDRESS)."""
    wait_for(lambda: (path / "rootfs/addr").exists() and (path / "rootfs/addr").read_text(),
             "the container's address")
    return (path / "rootfs/addr").read_text().split(" inet ")[1].split("/")[0]


# The container writes eth0's address where the test can read it, then stays.
ADDRESS = "ip -o -4 addr show dev eth0 > /addr; sleep 60"


@pytest.mark.root
def test_two_state_directories_get_different_addresses_and_share_host_ports(
        ns, bridged, busybox_rootfs, tmp_path):
    other_dir = tmp_path / "other-minict"
    first = bridged(ADDRESS, "one", "18087:80")
    second = bridged_in(other_dir, busybox_rootfs, ADDRESS, "one")  # the same name, elsewhere
    bridged_in(other_dir, busybox_rootfs, "true", "two", "18087:8080")
    procs = [ns.spawn("start", "--name", "one"),
             ns.spawn("start", "--name", "one", minict_dir=other_dir)]
    try:
        addresses = [eth0_address(first), eth0_address(second)]
        assert addresses[0] != addresses[1], addresses
        assert all(ipaddress.IPv4Address(a) in SUBNET and a != GATEWAY for a in addresses)
        assert network.veth_name("one") in ns.links()  # each its own veth, too
        assert len([link for link in ns.links() if link.startswith("mct")]) == 2
        # The port `one` of the first directory publishes is taken for the second.
        done = ns.minict("start", "--name", "two", minict_dir=other_dir)
        assert done.returncode == 1
        assert done.stderr.rstrip().endswith(
            f"fatal host port 18087/tcp is already published by container one of MINICT_DIR "
            f"{ns.minict_dir}: address already in use")
        assert "two" not in ns.leases(other_dir)
    finally:
        ns.minict("rm", "--force", "--name", "one")
        ns.minict("rm", "--force", "--name", "one", minict_dir=other_dir)
        for proc in procs:
            proc.communicate(timeout=30)
    assert ns.all_leases() == []
    assert [r for r in ns.rules() if "dnat" in json.dumps(r["expr"])] == []


LISTENER = """
import socket, sys
address, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket(type=socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
sock.bind((address, port))
if kind == "tcp":
    sock.listen()
print("ready", flush=True)
while True:
    if kind == "tcp":
        conn, _ = sock.accept()
        conn.sendall(b"from the host\\n")
        conn.close()
    else:
        data, peer = sock.recvfrom(100)
        sock.sendto(b"from the host\\n", peer)
"""

ASK = """
import socket, sys
address, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket(type=socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
sock.settimeout(5)
sock.connect((address, port))
if kind == "udp":
    sock.send(b"hello")
print(sock.recv(100).decode(), end="")
"""


@pytest.mark.root
@pytest.mark.parametrize("address, kind", [("127.0.0.1", "tcp"), ("0.0.0.0", "tcp"),
                                           ("127.0.0.1", "udp")])
def test_a_host_listener_keeps_its_port(ns, pulled, address, kind):
    port = 18088
    listener = subprocess.Popen(ns.argv(sys.executable, "-c", LISTENER, address, port, kind),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "ready\n", listener.stderr.read()
        done = ns.minict("run", "--image", pulled, "--name", "web", "--network", "bridge",
                         "-p", f"{port}:80/{kind}", "--", "sh", "-c", "sleep 5")
        assert done.returncode == 1, done.stderr
        assert done.stderr.rstrip().endswith(
            f"fatal host port {port}/{kind} is in use on this host (bind 0.0.0.0:{port}): "
            "address already in use")
        assert "Traceback" not in done.stderr
        # Nothing was published, and the host's program still gets what is sent to it.
        assert ns.leases() == {} and not [r for r in ns.rules() if "dnat" in json.dumps(r)]
        for target in ("127.0.0.1", GATEWAY) if address == "0.0.0.0" else ("127.0.0.1",):
            got = subprocess.run(ns.argv(sys.executable, "-c", ASK, target, port, kind),
                                 capture_output=True, text=True, timeout=30, check=False)
            assert got.stdout == "from the host\n", got.stderr
    finally:
        listener.kill()
        listener.communicate()


@pytest.mark.root
def test_a_published_port_stays_reserved_while_the_container_runs(ns, bridged):
    path = bridged("sleep 60", "holder", "18090:80", "18091:81/udp")
    proc = ns.spawn("start", "--name", "holder")
    try:
        wait_for(lambda: running(path) and len(leftovers(ns, "holder")[2]) == 4, "the port rules")
        # minict holds the sockets; the container never got them.
        pid = json.loads((path / "state.json").read_text())["pid"]
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        # A program that starts now cannot bind the port the container publishes.
        for kind, port in (("tcp", 18090), ("udp", 18091)):
            done = subprocess.run(ns.argv(sys.executable, "-c", LISTENER, "127.0.0.1", port, kind),
                                  capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 1 and "Address already in use" in done.stderr
    finally:
        ns.minict("rm", "--force", "--name", "holder")
        proc.communicate(timeout=30)
    # Given back when the container is gone.
    free = subprocess.Popen(ns.argv(sys.executable, "-c", LISTENER, "127.0.0.1", 18090, "tcp"),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert free.stdout.readline() == "ready\n"
    finally:
        free.kill()
        free.communicate()


@pytest.mark.root
def test_stale_host_wide_leases_are_reclaimed_from_another_state_directory(
        ns, bridged, busybox_rootfs, tmp_path):
    path = bridged("sleep 60", "lost", "18089:80")
    proc = ns.spawn("start", "--name", "lost")
    wait_for(lambda: running(path) and len(leftovers(ns, "lost")[2]) == 2, "container lost")
    proc.send_signal(signal.SIGKILL)  # ip netns exec execs minict: this pid is minict's
    proc.communicate(timeout=30)
    assert len(leftovers(ns, "lost")[2]) == 2  # its port rules outlived it
    # Another state directory publishes the port: free again once reclaimed.
    other_dir = tmp_path / "other-minict"
    bridged_in(other_dir, busybox_rootfs, "true", "next", "18089:80")
    done = ns.minict("start", "--name", "next", minict_dir=other_dir)
    assert done.returncode == 0, done.stderr
    assert leftovers(ns, "lost") == ([], None, [])
    assert ns.all_leases() == []


@pytest.mark.root
def test_a_lease_whose_owner_pid_now_names_another_process_is_stale(ns, bridged):
    bridged("true", "first")
    assert ns.minict("start", "--name", "first").returncode == 0  # the bridge, the table
    # The owner's pid is alive (ours), but it started at another time: not the owner.
    me = os.getpid()
    (ns.run_dir / "network" / "leases.json").write_text(json.dumps({"leases": [{
        "minictDir": "/elsewhere", "name": "ghost",
        "netns": os.stat(f"/run/netns/{ns.name}").st_ino,
        "owner": {"pid": me, "startTime": state_and_start(me)[1] + 1},
        "bridge": BRIDGE, "address": str(SUBNET[2]), "prefixlen": 24, "gateway": GATEWAY,
        "veth": "mctghost0", "publish": [{"host": 18092, "container": 80, "protocol": "tcp"}]}]}))
    path = bridged(ADDRESS, "next", "18092:81")
    proc = ns.spawn("start", "--name", "next")
    try:
        assert eth0_address(path) == str(SUBNET[2])  # the ghost's address, free again
        assert [lease["name"] for lease in ns.all_leases()] == ["next"]
    finally:
        ns.minict("rm", "--force", "--name", "next")
        proc.communicate(timeout=30)


@pytest.mark.root
def test_rm_force_of_a_stopped_minicts_container_takes_its_network_too(ns, bridged):
    path = bridged("sleep 1000", "hung", "18086:80")
    proc = ns.spawn("start", "--name", "hung")
    try:
        wait_for(lambda: running(path) and len(leftovers(ns, "hung")[2]) == 2, "the port rules")
        pid = json.loads((path / "state.json").read_text())["pid"]
        start = state_and_start(pid)[1]
        os.kill(proc.pid, signal.SIGSTOP)  # ip netns exec execs minict: this pid is minict's
        began = time.monotonic()
        done = ns.minict("rm", "--force", "--name", "hung", timeout=30)
        assert time.monotonic() - began < 15
        assert done.returncode == 0, done.stderr
        assert "Container removed successfully." in done.stderr
        assert is_gone(pid, start)  # a zombie at most: only its stopped parent can reap it
        assert not path.exists()
        assert leftovers(ns, "hung") == ([], None, [])
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 137, err
        assert "was removed while it ran" in err and "Traceback" not in err
        # It went on without writing anything back.
        assert os.listdir(ns.minict_dir / "containers") == []
        assert leftovers(ns, "hung") == ([], None, []) and ns.all_leases() == []
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.communicate()


@pytest.mark.root
def test_a_stopped_holder_of_the_leases_lock_holds_nothing_up_for_long(ns, bridged):
    bridged("true", "waits")
    lock = ns.run_dir / "network" / "lock"
    lock.parent.mkdir(parents=True)
    holder = hold_lock(lock)
    os.kill(holder.pid, signal.SIGSTOP)  # as a minict stopped (Ctrl-Z) while it holds the lock
    try:
        began = time.monotonic()
        done = ns.minict("start", "--name", "waits", timeout=60)
        assert time.monotonic() - began < 15
        assert done.returncode == 1
        assert done.stderr.rstrip().endswith(
            f"fatal the host-wide network lock {lock} is held by pid {holder.pid} (stopped) and "
            "was not released in 10 s; if it hangs, continue or kill it")
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.communicate()


@pytest.mark.root
def test_rm_force_is_bounded_even_when_the_leases_lock_is_held_too(ns, bridged):
    path = bridged("sleep 1000", "stuck", "18093:80")
    proc = ns.spawn("start", "--name", "stuck")
    holder = None
    try:
        wait_for(lambda: running(path) and len(leftovers(ns, "stuck")[2]) == 2, "the port rules")
        os.kill(proc.pid, signal.SIGSTOP)
        (ns.run_dir / "network").mkdir(parents=True, exist_ok=True)
        holder = hold_lock(ns.run_dir / "network" / "lock")
        os.kill(holder.pid, signal.SIGSTOP)
        began = time.monotonic()
        done = ns.minict("rm", "--force", "--name", "stuck", timeout=60)
        assert time.monotonic() - began < 15
        assert done.returncode == 0, done.stderr
        assert "the network of container stuck is left to its minict" in done.stderr
        assert not path.exists()
        # Once both go on, the container's own minict takes its network down.
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.communicate()
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 137, err
        assert leftovers(ns, "stuck") == ([], None, []) and ns.all_leases() == []
        assert os.listdir(ns.minict_dir / "containers") == []
    finally:
        for stopped in (holder, proc):
            if stopped is not None and stopped.poll() is None:
                os.kill(stopped.pid, signal.SIGCONT)
                stopped.kill()
                stopped.communicate()


@pytest.mark.root
def test_leases_count_and_are_reclaimed_only_in_their_own_network_namespace(ns, bridged):
    other = Netns(ns.minict_dir, ns.run_dir)  # another host, as far as the network goes
    try:
        first = bridged(ADDRESS, "a", "18094:80")
        second = bridged(ADDRESS, "b", "18094:80")
        proc_a = ns.spawn("start", "--name", "a")
        wait_for(lambda: running(first) and len(leftovers(ns, "a")[2]) == 2, "container a")
        proc_b = other.spawn("start", "--name", "b")
        # Its own bridge, addresses and ports: the same address, the same host port.
        assert eth0_address(second) == eth0_address(first) == str(SUBNET[2])
        wait_for(lambda: len(leftovers(other, "b")[2]) == 2, "b's port rules")
        for proc in (proc_a, proc_b):
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        # Reclaiming in one namespace leaves the other's stale lease and rules alone...
        bridged("true", "c", "18094:80")
        assert ns.minict("start", "--name", "c").returncode == 0
        assert leftovers(ns, "a") == ([], None, [])
        assert len(leftovers(other, "b")[2]) == 2 and "b" in ns.leases()
        # ...until a minict runs there.
        assert other.minict("rm", "--name", "c").returncode == 0
        assert leftovers(other, "b") == ([], None, []) and ns.all_leases() == []
    finally:
        # The killed containers' cgroups go with them (rm), not with the test's MINICT_DIR.
        for name in ("a", "b"):
            ns.minict("rm", "--name", name)
        other.delete()
