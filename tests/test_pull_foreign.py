"""Non-distributable (foreign) layers: pulled from their `urls` when the registry has no blob.

The registry is the real one (distribution, with basic auth, so minict has
an Authorization header it could leak); the manifests are pushed without the
foreign layer's blob, which distribution accepts for these media types (it
checks their URLs instead).  The blob is served by loopback HTTP servers
that record every request: minict must fetch it from there, verify its
digest, send no credentials, and name the layer and the URL when it fails.
"""

import base64
import json
import threading

import pytest

from minict.bundle import create as bundle
from minict.image import reference
from tests.support import ci, loopback_http
from tests.support.images import (
    File,
    Image,
    Layer,
    push_blob,
    push_manifest,
    tar_layer,
)
from tests.support.registry import Registry, write_htpasswd

pytestmark = pytest.mark.root  # the unpack sets owners

USER, PASSWORD = "carol", "f0reign-Layers"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"


class ForeignLayer(Layer):
    """A layer whose descriptor names the URLs it may be fetched from."""

    def __init__(self, tar: bytes, compression, media_type: str, urls: list[str]):
        super().__init__(tar, compression, media_type=media_type)
        self.urls = urls

    def descriptor(self) -> dict:
        return {**super().descriptor(), "urls": self.urls}


class BlobServer:
    """A loopback HTTP server answering by path from `routes` {path: (status, headers, body)}."""

    def __init__(self, routes=None, host="127.0.0.1"):
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.server = loopback_http.serve(self._answer, host)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _answer(self, handler):
        with self._lock:
            self.requests.append((handler.path, dict(handler.headers)))
        loopback_http.send(handler, *self.routes.get(handler.path, (404, {}, b"not here\n")))

    def stop(self):
        loopback_http.stop(self.server)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    ci.require_tool("docker-registry")
    workdir = tmp_path_factory.mktemp("foreign-registry")
    htpasswd = write_htpasswd(workdir / "htpasswd", USER, PASSWORD, ci.require_tool("htpasswd"))
    with Registry(workdir / "registry", htpasswd=htpasswd,
                  url_allow=[r"^http://127\.0\.0\.1:[0-9]+/"]) as reg:
        yield reg


@pytest.fixture
def servers():
    started = []

    def start(routes=None, host="127.0.0.1"):
        server = BlobServer(routes, host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def pull(auth_registry, minict, minict_dir, tmp_path, monkeypatch):
    """pull(name, image) -> the CompletedProcess of `minict pull`, with the registry's credentials."""
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    config = tmp_path / "docker-config"
    config.mkdir()
    secret = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": secret}}}))

    def push_and_pull(name: str, image: Image):
        auth = (USER, PASSWORD)
        for layer in image.layers:
            if not isinstance(layer, ForeignLayer):
                push_blob(auth_registry.url, name, layer.blob, auth=auth)
        push_blob(auth_registry.url, name, image.config_bytes, auth=auth)
        push_manifest(auth_registry.url, name, "1", image.manifest_bytes, image.media_type,
                      auth=auth)
        return minict("pull", "--image", f"{auth_registry.host}/{name}:1",
                      env={"DOCKER_CONFIG": str(config)})

    return push_and_pull


def image_with(foreign: ForeignLayer, media: str) -> Image:
    base = Layer(tar_layer([File("base", b"from the registry\n")]), "gzip", media=media)
    return Image([base, foreign], media=media)


def unpacked(auth_registry, name: str) -> dict[str, bytes]:
    ref = reference.parse(f"{auth_registry.host}/{name}:1")
    rootfs = bundle.create(ref, name.replace("/", "-")) / "rootfs"
    return {p.name: p.read_bytes() for p in rootfs.iterdir()}


FOREIGN_TYPES = [
    ("docker", DOCKER_FOREIGN + ".gzip", "gzip"),
    ("docker", DOCKER_FOREIGN, None),
    ("oci", OCI_NONDISTRIBUTABLE + "+gzip", "gzip"),
    ("oci", OCI_NONDISTRIBUTABLE, None),
]


@pytest.mark.parametrize("media, media_type, compression", FOREIGN_TYPES)
def test_a_foreign_layer_is_fetched_from_its_url_without_credentials(
        media, media_type, compression, pull, servers, auth_registry):
    tar = tar_layer([File("licensed", b"not redistributable\n")])
    blob_bytes = Layer(tar, compression, media_type=media_type).blob
    # The first URL redirects to another server (127.0.0.2): neither may see credentials.
    storage = servers({"/storage/layer": (200, {}, blob_bytes)}, host="127.0.0.2")
    front = servers({"/layer": (302, {"Location": f"{storage.base}/storage/layer"}, b"")})
    foreign = ForeignLayer(tar, compression, media_type, [f"{front.base}/layer"])
    name = f"foreign/{media}-{compression or 'none'}"
    done = pull(name, image_with(foreign, media))
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in front.requests] == ["/layer"]
    assert [path for path, _ in storage.requests] == ["/storage/layer"]
    for _, headers in front.requests + storage.requests:
        assert "Authorization" not in headers and "authorization" not in headers
    assert unpacked(auth_registry, name) == {
        "base": b"from the registry\n", "licensed": b"not redistributable\n"}


def test_urls_are_tried_in_order_until_one_serves_the_layer(pull, servers, auth_registry):
    tar = tar_layer([File("licensed", b"second url\n")])
    media_type = DOCKER_FOREIGN + ".gzip"
    server = servers({"/good": (200, {}, Layer(tar, "gzip", media_type=media_type).blob)})
    foreign = ForeignLayer(tar, "gzip", media_type, [f"{server.base}/missing", f"{server.base}/good"])
    done = pull("foreign/order", image_with(foreign, "docker"))
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in server.requests] == ["/missing", "/good"]


def test_a_layer_the_registry_has_is_not_fetched_from_its_urls(pull, servers, auth_registry):
    tar = tar_layer([File("licensed", b"on the registry after all\n")])
    media_type = OCI_NONDISTRIBUTABLE + "+gzip"
    server = servers()
    foreign = ForeignLayer(tar, "gzip", media_type, [f"{server.base}/never"])
    push_blob(auth_registry.url, "foreign/held", foreign.blob, auth=(USER, PASSWORD))
    done = pull("foreign/held", image_with(foreign, "oci"))
    assert done.returncode == 0, done.stderr
    assert server.requests == []


def test_a_layer_its_urls_do_not_serve_names_the_layer_and_each_url(pull, servers):
    tar = tar_layer([File("licensed", b"x\n")])
    media_type = DOCKER_FOREIGN + ".gzip"
    server = servers()
    urls = [f"{server.base}/gone?X-Signature=secret", "http://127.0.0.1:1/refused"]
    foreign = ForeignLayer(tar, "gzip", media_type, urls)
    done = pull("foreign/missing", image_with(foreign, "docker"))
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if "fatal" in line]
    assert f"layer {foreign.digest} is not on the registry, and its URLs failed" in line
    assert f"{server.base}/gone?…: HTTP 404" in line and "http://127.0.0.1:1/refused: " in line
    assert "secret" not in done.stderr


def test_a_url_serving_other_bytes_fails_the_digest_check(pull, servers):
    tar = tar_layer([File("licensed", b"the real one\n")])
    other = tar_layer([File("licensed", b"a substitute\n")])  # as long: only the digest differs
    assert len(other) == len(tar)
    server = servers({"/layer": (200, {}, other)})
    foreign = ForeignLayer(tar, None, OCI_NONDISTRIBUTABLE, [f"{server.base}/layer"])
    done = pull("foreign/substitute", image_with(foreign, "oci"))
    assert done.returncode == 1
    assert f"blob {foreign.digest} does not match its digest" in done.stderr
    assert f"(fetched from {server.base}/layer)" in done.stderr


# -- what distribution will not store: served by the lying registry ---------------------
# distribution 2.8 refuses URLs on a +zstd non-distributable layer and any URL
# that is not http(s); a registry may still serve such manifests, so these go
# through tests.support.hostile_registry, serving honestly all but the blob.


@pytest.fixture
def lying_pull(minict, minict_dir, monkeypatch):
    from tests.support.hostile_registry import HostileRegistry

    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    with HostileRegistry() as reg:
        def push_and_pull(name: str, image: Image):
            reg.add_image(name, "1", image)
            for layer in image.layers:
                if isinstance(layer, ForeignLayer):
                    del reg.blobs[layer.digest]
            done = minict("pull", "--image", f"{reg.host}/{name}:1")
            return done, reg

        yield push_and_pull


def test_only_http_and_https_urls_are_fetched(lying_pull, servers, tmp_path):
    tar = tar_layer([File("licensed", b"zstd\n")])
    media_type = OCI_NONDISTRIBUTABLE + "+zstd"
    server = servers({"/layer": (200, {}, Layer(tar, "zstd", media_type=media_type).blob)})
    secret = tmp_path / "secret"
    secret.write_bytes(Layer(tar, "zstd").blob)  # the right bytes, at a file:// URL
    foreign = ForeignLayer(tar, "zstd", media_type, [f"file://{secret}", "ftp://127.0.0.1/x",
                                                     f"{server.base}/layer"])
    done, _ = lying_pull("foreign/schemes", image_with(foreign, "oci"))
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in server.requests] == ["/layer"]

    foreign = ForeignLayer(tar, "zstd", media_type, [f"file://{secret}"])
    done, _ = lying_pull("foreign/file-only", image_with(foreign, "oci"))
    assert done.returncode == 1
    assert f"layer {foreign.digest} is not on the registry, and its URLs failed: " \
           f"file://{secret}: not an http or https URL" in done.stderr


def test_the_urls_of_a_distributable_layer_are_not_followed(lying_pull, servers):
    tar = tar_layer([File("ordinary", b"x\n")])
    server = servers({"/layer": (200, {}, Layer(tar, "gzip").blob)})
    ordinary = ForeignLayer(tar, "gzip", "application/vnd.oci.image.layer.v1.tar+gzip",
                            [f"{server.base}/layer"])
    done, _ = lying_pull("foreign/ordinary", image_with(ordinary, "oci"))
    assert done.returncode == 1
    assert f"fetching blob {ordinary.digest}" in done.stderr
    assert server.requests == []
