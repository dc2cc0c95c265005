"""`minict pull` when the network misbehaves: a fault proxy in front of the real registry.

Dropped connections resume with Range requests, 429 and 503 are retried,
redirects to blob storage carry no Authorization, a pull killed with
SIGKILL at any point leaves nothing listed and the next pull finishes it
without downloading again what was verified, and TLS failures name --insecure.
"""

import datetime
import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import waiting
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import Dir, File, Image, push, sha256
from tests.support.registry import Registry
from tests.test_pull import fails, layout_dir, list_images, ok, stored_manifest
from tests.test_pull_auth import PASSWORD, USER, basic, basic_registry, docker_config  # noqa: F401

wait_for = functools.partial(waiting.wait_for, timeout=20.0)  # the 20 s these waits always had


@pytest.fixture
def proxy(registry):
    with FaultProxy(registry.url) as started:
        yield started


def two_layer_image(big=3_000_000) -> Image:
    """A small layer and a big incompressible one (so its body takes many chunks)."""
    small = [Dir("etc"), File("etc/small", b"small layer")]
    large = [Dir("data"), File("data/blob", os.urandom(big))]
    return Image([small, large], config={"Cmd": ["sh"]}, compression="gzip")


def blob_gets(proxy, digest, since=0) -> list[dict]:
    return [r for r in proxy.requests[since:] if r["method"] == "GET" and digest in r["path"]]


def assert_layout_valid(minict_dir, repo, tag, image):
    _, manifest = stored_manifest(minict_dir, repo, tag)
    blobs = layout_dir(minict_dir, repo) / "blobs" / "sha256"
    for d in [manifest["config"], *manifest["layers"]]:
        data = (blobs / d["digest"][7:]).read_bytes()
        assert sha256(data) == d["digest"] and len(data) == d["size"]
    assert [d["digest"] for d in manifest["layers"]] == [layer.digest for layer in image.layers]


def test_dropped_connection_resumes_with_range(registry, proxy, minict, minict_dir):
    image = two_layer_image()
    push(registry.url, registry.repo("test/app"), "latest", image)
    big = image.layers[1]
    proxy.add(Fault(f"/blobs/{big.digest}", drop_after=len(big.blob) // 2))
    done = ok(minict("--debug", "pull", "--image", f"{proxy.host}/{registry.repo('test/app')}"))
    first, second = blob_gets(proxy, big.digest)
    assert "Range" not in first["headers"]
    offset = int(second["headers"]["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= len(big.blob) // 2
    assert "resuming in" in done.stderr
    assert_layout_valid(minict_dir, f"{proxy.host}/{registry.repo('test/app')}", "latest", image)


def test_429_with_retry_after_and_503_are_retried(registry, proxy, minict, minict_dir):
    image = two_layer_image(big=10_000)
    push(registry.url, registry.repo("test/app"), "latest", image)
    proxy.add(Fault("/manifests/", status=429, headers={"Retry-After": "1"}))
    proxy.add(Fault("/blobs/", status=503))
    started = time.monotonic()
    done = ok(minict("--debug", "pull", "--image", f"{proxy.host}/{registry.repo('test/app')}"))
    assert time.monotonic() - started >= 1.0
    assert len(proxy.paths("GET", "/manifests/")) == 2
    assert "HTTP 429; retrying in 1.0s" in done.stderr and "HTTP 503; retrying" in done.stderr
    assert_layout_valid(minict_dir, f"{proxy.host}/{registry.repo('test/app')}", "latest", image)


def test_a_registry_that_keeps_failing_gives_up(registry, proxy, minict):
    push(registry.url, registry.repo("test/app"), "latest", two_layer_image(big=10_000))
    proxy.add(Fault("/blobs/", status=503, times=1000, headers={"Retry-After": "0"}))
    fails(minict("pull", "--image", f"{proxy.host}/{registry.repo('test/app')}"), "HTTP 503")
    assert list_images(minict) == []
    assert len(proxy.paths("GET", "/blobs/")) <= 3 * 5  # bounded: 5 tries for each of 3 blobs


def test_redirect_to_another_host_carries_no_authorization(basic_registry, minict, tmp_path):  # noqa: F811
    image = two_layer_image(big=100_000)
    push(basic_registry.url, "team/app", "latest", image, auth=(USER, PASSWORD))
    with FaultProxy(basic_registry.url) as proxy:
        proxy.add(Fault("/blobs/", redirect=True, times=100))
        env = docker_config(tmp_path, {"auths": {proxy.host: {"auth": basic()}}})
        done = ok(minict("--debug", "pull", "--image", f"{proxy.host}/team/app", env=env))
    assert len(proxy.storage_requests) == 3  # two layers and the config
    for request in proxy.storage_requests:
        assert "authorization" not in {k.lower() for k in request["headers"]}, request
    # The credentials were in use on the registry's own host.
    assert all("Authorization" in r["headers"] for r in proxy.requests if "/blobs/" in r["path"])
    assert "not-a-secret" not in done.stderr  # signed query strings are not logged
    assert PASSWORD not in done.stderr


def start_pull(minict_dir, ref) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minict", "--debug", "pull", "--image", ref],
                            env={**os.environ, "MINICT_DIR": str(minict_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("point", ["manifest", "config", "layer"])
def test_kill_9_then_repull(registry, proxy, minict, minict_dir, point):
    image = two_layer_image()
    push(registry.url, registry.repo("test/app"), "latest", image)
    small, big = image.layers
    repo = f"{proxy.host}/{registry.repo('test/app')}"
    blobs = layout_dir(minict_dir, repo) / "blobs" / "sha256"
    partial = layout_dir(minict_dir, repo) / ".partial" / big.digest[7:]
    stall_at = len(big.blob) // 2
    target = {"manifest": ("/manifests/", 10), "config": (image.config_digest, 10),
              "layer": (big.digest, stall_at)}[point]
    proxy.add(Fault(target[0], stall_after=target[1]))

    pull = start_pull(minict_dir, repo)
    try:
        assert proxy.stalled.wait(20), "the pull never reached the stalled request"
        if point == "layer":
            # Let the small layer land and the big one's received half reach its partial file.
            wait_for(lambda: (blobs / small.digest[7:]).exists(), "the small layer")
            wait_for(lambda: partial.exists() and partial.stat().st_size == stall_at,
                     "the partial big layer")
    finally:
        pull.send_signal(signal.SIGKILL)
        pull.communicate(timeout=20)
        proxy.release()
    assert list_images(minict) == []

    before = len(proxy.requests)
    ok(minict("--debug", "pull", "--image", repo))
    if point == "layer":
        assert blob_gets(proxy, small.digest, before) == []  # verified: never fetched again
        (again,) = blob_gets(proxy, big.digest, before)
        assert again["headers"]["Range"] == f"bytes={stall_at}-"
    assert list_images(minict) == [f"{repo}:latest"]
    assert_layout_valid(minict_dir, repo, "latest", image)


# -- TLS ----------------------------------------------------------------------


def self_signed(tmp_path) -> tuple:
    """Write a certificate for 127.0.0.1 and its key; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TLSRegistry(Registry):
    """The real registry serving HTTPS with a self-signed certificate."""

    def __init__(self, workdir, cert, key):
        super().__init__(workdir)
        self.cert, self.key = cert, key

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config(self) -> dict:
        config = super().config()
        config["http"]["tls"] = {"certificate": str(self.cert), "key": str(self.key)}
        return config


def test_tls_failure_names_insecure_and_trusted_ca_works(tmp_path, minict, monkeypatch,
                                                         require_tool):
    require_tool("docker-registry")
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # for the fixture's own requests
    with TLSRegistry(tmp_path / "registry", cert, key) as reg:
        image = two_layer_image(big=10_000)
        push(reg.url, "test/app", "latest", image)
        ref = f"{reg.host}/test/app"
        untrusted = {"REQUESTS_CA_BUNDLE": ""}
        fails(minict("pull", "--image", ref, env=untrusted), "TLS", "not trusted", "--insecure")
        assert list_images(minict) == []
        ok(minict("pull", "--image", ref, env={"REQUESTS_CA_BUNDLE": str(cert)}))
        ok(minict("pull", "--insecure", "--image", ref, env=untrusted))
        assert json.loads(minict("list-images").stdout) == [f"{ref}:latest"]
