"""The registry client's HTTP side (minict/http.py): proxies with credentials, docker's certs.d.

A forward proxy that wants a password (tests.support.auth_proxy) carries the
pull when HTTPS_PROXY names it with the right user and password, and the
pull fails in one line naming the proxy (never the password) with the wrong
ones.  A registry serving TLS with a certificate from a test CA is trusted
through `<certs.d>/<host:port>/ca.crt`, and one that demands a client
certificate gets `client.cert` + `client.key` from the same directory
(MINICT_CERTS_D stands for /etc/docker/certs.d).  One retry policy covers
drops, 429 and 503; `run` of a present image never imports requests.
"""

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.auth_proxy import AuthProxy
from tests.support.images import File, Image, push
from tests.support.procs import run_importing
from tests.support.registry import Registry
from tests.test_pull import fails, list_images, ok
from tests.test_pull_faults import TLSRegistry

NAME = "registry.minict.test"  # not loopback, so proxies apply; only the proxy resolves it
USER, PASSWORD = "proxyuser", "proxy-secret-1"


def small_image() -> Image:
    return Image([[File("etc/hello", b"hello through the proxy")]], config={"Cmd": ["sh"]})


# -- certificates ----------------------------------------------------------------

def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, issuer_name, issuer_key, key, *, ca=False, usage=None, names=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class TestCA:
    """A CA that signs one server certificate (127.0.0.1 and NAME) and one client certificate."""

    __test__ = False

    def __init__(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minict test CA")])
        cert = _certificate("minict test CA", name, key, key, ca=True)
        self.cert = self._write("ca.pem", cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self._issue(
            "server", name, key, ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(NAME)])
        self.client_cert, self.client_key = self._issue(
            "client", name, key, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _write(self, name: str, data: bytes):
        path = self.directory / name
        path.write_bytes(data)
        return path

    def _issue(self, who, issuer_name, issuer_key, usage, names):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, issuer_name, issuer_key, key, usage=usage, names=names)
        return (self._write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{who}-key.pem", _pem(key)))


class CARegistry(TLSRegistry):
    """The real registry serving HTTPS with the CA's server certificate; with
    `client_ca`, it also demands a client certificate the CA signed."""

    def __init__(self, workdir, ca: TestCA, client_ca: bool = False):
        super().__init__(workdir, ca.server_cert, ca.server_key)
        self.ca, self.client_ca = ca, client_ca

    def config(self) -> dict:
        config = super().config()
        if self.client_ca:
            config["http"]["tls"]["clientcas"] = [str(self.ca.cert)]
        return config

    def _wait_ready(self) -> bool:
        # Without a client certificate no request gets through: wait for the port instead.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False


def certs_d(tmp_path, host: str, **files) -> dict:
    """Make <tmp>/certs.d/<host>/ with `files` (name -> source path); return the env naming it."""
    root = tmp_path / "certs.d"
    (root / host).mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (root / host / name.replace("_", ".")).write_bytes(source.read_bytes())
    return {"MINICT_CERTS_D": str(root), "REQUESTS_CA_BUNDLE": ""}


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "ca")


@pytest.fixture
def tls_registry(tmp_path, ca, monkeypatch, require_tool):
    require_tool("docker-registry")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.cert))  # for the fixture's own pushes
    with CARegistry(tmp_path / "tls-registry", ca) as reg:
        push(reg.url, "test/app", "latest", small_image())
        yield reg


# -- certs.d -----------------------------------------------------------------------

def test_a_ca_in_certs_d_makes_the_registry_trusted(tls_registry, ca, minict, tmp_path):
    ref = f"{tls_registry.host}/test/app"
    fails(minict("pull", "--image", ref, env=certs_d(tmp_path, "elsewhere:1", ca_crt=ca.cert)),
          "TLS certificate of", "not trusted", "--insecure")
    assert list_images(minict) == []
    ok(minict("pull", "--image", ref, env=certs_d(tmp_path, tls_registry.host, ca_crt=ca.cert)))
    assert list_images(minict) == [f"{ref}:latest"]


def test_a_client_certificate_from_certs_d(tmp_path, ca, minict, require_tool):
    require_tool("docker-registry")
    # Pushed over plain HTTP into the storage the client-certificate registry then serves.
    with Registry(tmp_path / "registry") as plain:
        push(plain.url, "test/app", "latest", small_image())
    with CARegistry(tmp_path / "registry", ca, client_ca=True) as reg:
        ref = f"{reg.host}/test/app"
        fails(minict("pull", "--image", ref, env=certs_d(tmp_path, reg.host, ca_crt=ca.cert)),
              f"TLS handshake with {reg.host} failed")
        assert list_images(minict) == []
        lone = certs_d(tmp_path, reg.host, ca_crt=ca.cert, client_cert=ca.client_cert)
        fails(minict("pull", "--image", ref, env=lone), "missing key client.key for client "
              "certificate", "CA certificates must use the extension .crt")
        # The same directory, now with the key beside the certificate.
        env = certs_d(tmp_path, reg.host, client_key=ca.client_key)
        ok(minict("pull", "--image", ref, env=env))
        assert list_images(minict) == [f"{ref}:latest"]


# -- proxies -------------------------------------------------------------------------

@pytest.fixture
def proxy(tls_registry):
    with AuthProxy(USER, PASSWORD, hosts={NAME: "127.0.0.1"}) as started:
        yield started


def proxy_env(proxy, tmp_path, ca, port, user=USER, password=PASSWORD) -> dict:
    url = proxy.url_with(user, password)
    return {"HTTPS_PROXY": url, "HTTP_PROXY": url, "NO_PROXY": "",
            **certs_d(tmp_path, f"{NAME}:{port}", ca_crt=ca.cert)}


def test_pull_through_a_proxy_with_credentials_in_its_url(proxy, tls_registry, ca, minict,
                                                         tmp_path):
    ref = f"{NAME}:{tls_registry.port}/test/app"
    ok(minict("pull", "--image", ref, env=proxy_env(proxy, tmp_path, ca, tls_registry.port)))
    assert list_images(minict) == [f"{ref}:latest"]
    assert proxy.requests and all(method == "CONNECT" and authorized
                                  for method, _, authorized in proxy.requests), proxy.requests
    assert {target for _, target, _ in proxy.requests} == {f"{NAME}:{tls_registry.port}"}


def test_wrong_proxy_credentials_are_one_clear_line(proxy, tls_registry, ca, minict, tmp_path):
    env = proxy_env(proxy, tmp_path, ca, tls_registry.port, password="wrong-secret-2")
    done = minict("--debug", "pull", "--image", f"{NAME}:{tls_registry.port}/test/app", env=env)
    fails(done, f"the proxy {proxy.host} failed: 407 Proxy Authentication Required",
          "HTTPS_PROXY")
    assert "wrong-secret-2" not in done.stderr and USER not in done.stderr
    assert len(proxy.requests) == 1  # refused credentials are not tried again
    assert list_images(minict) == []


def test_plain_http_through_the_proxy(registry, minict, tmp_path):
    # --insecure: HTTPS is tried first (the tunnel reaches a plain HTTP server), then HTTP,
    # which the proxy forwards.
    push(registry.url, registry.repo("test/app"), "latest", small_image())
    with AuthProxy(USER, PASSWORD, hosts={NAME: "127.0.0.1"}) as proxy:
        ref = f"{NAME}:{registry.port}/{registry.repo('test/app')}"
        env = {"HTTP_PROXY": proxy.url_with(USER, PASSWORD),
               "HTTPS_PROXY": proxy.url_with(USER, PASSWORD), "NO_PROXY": ""}
        ok(minict("pull", "--insecure", "--image", ref, env=env))
    forwarded = [target for method, target, authorized in proxy.requests
                 if method != "CONNECT" and authorized]
    assert f"http://{ref.split('/')[0]}/v2/" in forwarded
    assert any("/blobs/sha256:" in target for target in forwarded)
    assert list_images(minict) == [f"{ref}:latest"]


def test_a_forwarding_proxy_refusing_credentials_raises_proxy_failed(monkeypatch):
    from minict.image import http, http_errors

    with AuthProxy(USER, PASSWORD) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url_with(USER, "wrong"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        session = http.Session(insecure=False)
        with pytest.raises(http_errors.ProxyFailed, match="407") as caught:
            session.send("GET", f"http://{NAME}:1/v2/", {})
        session.close()
    assert "wrong" not in str(caught.value)
    assert proxy.requests == [("GET", f"http://{NAME}:1/v2/", False)]


def test_loopback_registries_bypass_the_proxy(registry, minict):
    push(registry.url, registry.repo("test/app"), "latest", small_image())
    with AuthProxy(USER, PASSWORD) as proxy:
        url = proxy.url_with(USER, PASSWORD)
        ok(minict("pull", "--image", registry.ref("test/app"),
                  env={"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": ""}))
    assert proxy.requests == []


# -- the one retry policy ------------------------------------------------------------

def test_one_retry_policy_for_drops_429_and_503():
    from minict.image import http, http_errors
    from tests.support import loopback_http

    script = ["drop", "429", "503", "200"]
    seen = []

    def answer(handler):
        step = script[len(seen)] if len(seen) < len(script) else script[-1]
        seen.append(step)
        if step == "drop":  # the connection closes before any answer
            handler.close_connection = True
            return
        handler.send_response(int(step))
        handler.send_header("Retry-After", "0")
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    server = loopback_http.serve(answer)
    session = http.Session(insecure=False)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v2/"
        with session.request("GET", url, {}, what="ping") as response:
            assert response.status_code == 200
        assert seen == script
        # Always 503: the last answer comes back after exactly RETRY.attempts tries.
        script[:] = ["503"]
        seen.clear()
        with session.request("GET", url, {}, what="ping") as response:
            assert response.status_code == 503
        assert len(seen) == http_errors.RETRY.attempts
    finally:
        session.close()
        loopback_http.stop(server)


# -- requests only where a registry is asked ---------------------------------------

@pytest.mark.root
def test_run_of_a_present_image_never_imports_requests(busybox_layout, minict_dir):
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    env = {**os.environ, "MINICT_DIR": str(minict_dir)}
    env.pop("MINICT_LOG_LEVEL", None)
    done, imported = run_importing(["-m", "minict", "run", "--image", "busybox", "--name",
                                    "imports", "--rm", "--pull", "missing", "--", "true"],
                                   env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "minict.runtime.container" in imported  # the check sees what ran
    assert not imported & {"requests", "urllib3", "minict.image.http", "minict.image.registry"}


def test_a_connection_nobody_accepts_times_out_once(monkeypatch):
    # A listener that never accepts, its queue full: the kernel drops further SYNs,
    # as a firewall that drops packets does.  One connect timeout, not five.
    from minict.image import http, http_errors

    monkeypatch.setattr(http, "CONNECT_TIMEOUT", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        queued.append(client)
    time.sleep(0.2)
    session = http.Session(insecure=False)
    started = time.monotonic()
    try:
        with pytest.raises(http_errors.ConnectTimedOut) as caught:
            session.request("GET", f"http://127.0.0.1:{port}/v2/", {}, what="ping")
    finally:
        session.close()
        for sock in [listener, *queued]:
            sock.close()
    assert time.monotonic() - started < 3
    assert http_errors.describe(caught.value, "reg") == "reg did not answer in time"
