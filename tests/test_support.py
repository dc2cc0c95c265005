"""The test infrastructure itself: a real registry serves what images.py pushes."""

import datetime
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest
import requests

from minict.image.layout import Layout
from minict.image.reference import parse
from tests.support import ci
from tests.support.images import (
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    BlockDevice,
    CharDevice,
    Dir,
    Fifo,
    File,
    Hardlink,
    Image,
    Index,
    Opaque,
    Symlink,
    Whiteout,
    push,
    tar_layer,
    write_layout,
)
from tests.support.mounts import mounts_under
from tests.support.registry import Namespace, Registry, RegistryError

ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"
CAP_NET_BIND = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def get_manifest(reg, repo, ref, auth=None):
    response = requests.get(f"{reg.url}/v2/{repo}/manifests/{ref}",
                            headers={"Accept": ACCEPT}, auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    return response


def get_blob(reg, repo, digest):
    response = requests.get(f"{reg.url}/v2/{repo}/blobs/{digest}", timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def two_layer_image(**kw):
    return Image(
        [[Dir("etc"), File("etc/hostname", b"box\n")],
         [Dir("bin"), File("bin/tool", b"#!/bin/sh\n", mode=0o755), Whiteout("etc/hostname")]],
        config={"Cmd": ["/bin/tool"], "Env": ["PATH=/bin"]}, **kw)


def test_registry_answers_v2_and_stops(tmp_path):
    reg = Registry(tmp_path).start()
    try:
        assert requests.get(f"{reg.url}/v2/", timeout=5).status_code == 200
        assert reg.host.startswith("127.0.0.1:") and reg.url == f"http://{reg.host}"
        pid = reg.process.pid
    finally:
        reg.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{reg.url}/v2/", timeout=2)


def test_a_namespace_sees_only_its_own_repositories(registry):
    """Tests share one registry process: what one pushes, another cannot pull."""
    other = Namespace(registry.registry, f"{registry.prefix}-other")
    mine, theirs = two_layer_image(), two_layer_image(media="docker")
    push(registry.url, registry.repo("test/app"), "v1", mine)
    assert registry.ref("test/app:v1") == f"{registry.host}/{registry.prefix}/test/app:v1"
    response = requests.get(f"{other.url}/v2/{other.repo('test/app')}/manifests/v1",
                            headers={"Accept": ACCEPT}, timeout=10)
    assert response.status_code == 404, response.text
    push(other.url, other.repo("test/app"), "v1", theirs)
    assert get_manifest(registry, registry.repo("test/app"), "v1").content == mine.manifest_bytes
    with pytest.raises(RegistryError, match="own_registry"):
        registry.stop()  # the session's registry: no test may stop it for the others
    assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 200


def test_push_oci_image_and_fetch_it_back(registry):
    image = two_layer_image()
    digest = push(registry.url, registry.repo("test/app"), "v1", image)
    assert digest == image.digest

    response = get_manifest(registry, registry.repo("test/app"), "v1")
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.content == image.manifest_bytes
    manifest = response.json()
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER["gzip"]] * 2

    config = json.loads(get_blob(registry, registry.repo("test/app"), manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    for layer in image.layers:
        blob = get_blob(registry, registry.repo("test/app"), layer.digest)
        assert blob == layer.blob
        assert registry.blob_data_path(layer.digest).read_bytes() == blob
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            assert "sha256:" + hashlib.sha256(layer.tar).hexdigest() == layer.diff_id
            assert tar.getnames()


@pytest.mark.own_registry  # a stored blob's mtime: no one else's push
def test_push_skips_blobs_the_registry_has(registry):
    image = two_layer_image()
    push(registry.url, registry.repo("test/app"), "v1", image)
    mtime = registry.blob_data_path(image.layers[0].digest).stat().st_mtime_ns
    push(registry.url, registry.repo("test/app"), "v2", image)
    assert registry.blob_data_path(image.layers[0].digest).stat().st_mtime_ns == mtime
    assert get_manifest(registry, registry.repo("test/app"), "v2").content == image.manifest_bytes


def test_push_docker_media_types(registry):
    image = two_layer_image(media="docker")
    push(registry.url, registry.repo("test/docker"), "latest", image)
    response = get_manifest(registry, registry.repo("test/docker"), "latest")
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    manifest = response.json()
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER["gzip"]}
    with pytest.raises(ValueError):
        Image([[File("a")]], media="docker", compression="zstd")


@pytest.mark.parametrize("media,list_type", [("oci", OCI_INDEX), ("docker", DOCKER_LIST)])
def test_push_index_with_children(registry, media, list_type):
    amd64 = two_layer_image(media=media, architecture="amd64")
    arm = Image([[File("arm", b"v7")]], media=media, architecture="arm", variant="v7")
    index = Index([(amd64, {"os": "linux", "architecture": "amd64"}),
                   (arm, {"os": "linux", "architecture": "arm", "variant": "v7"})], media=media)
    assert push(registry.url, registry.repo("test/multi"), "latest", index) == index.digest

    response = get_manifest(registry, registry.repo("test/multi"), "latest")
    assert response.headers["Content-Type"] == list_type
    children = response.json()["manifests"]
    assert [c["platform"]["architecture"] for c in children] == ["amd64", "arm"]
    assert children[1]["platform"]["variant"] == "v7"
    for child, image in zip(children, index.images):
        child_manifest = get_manifest(registry, registry.repo("test/multi"), child["digest"])
        assert child_manifest.content == image.manifest_bytes


def test_zstd_and_uncompressed_layers(registry):
    tar = tar_layer([File("z", b"zz" * 1000)])
    image = Image([tar, tar_layer([File("plain", b"p")])], compression="zstd")
    assert image.layers[0].media_type == OCI_LAYER["zstd"]
    assert image.layers[0].blob[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    unpacked = subprocess.run(["zstd", "-d", "-c"], input=image.layers[0].blob,
                              capture_output=True, check=True).stdout
    assert unpacked == tar
    raw = Image([tar], compression=None)
    assert raw.layers[0].media_type == OCI_LAYER[None] and raw.layers[0].blob == tar
    push(registry.url, registry.repo("test/zstd"), "latest", image)
    zstd_repo = registry.repo("test/zstd")
    assert get_blob(registry, zstd_repo, image.layers[0].digest) == image.layers[0].blob


def test_tar_layer_writes_every_entry_kind():
    data = tar_layer([
        Dir("usr", mode=0o755, uid=1, gid=2, mtime=1234),
        File("usr/su", b"x", mode=0o4755),
        File("usr/sg", b"y", mode=0o2755),
        Dir("tmp", mode=0o1777),
        File("usr/cap", b"c", xattrs={"security.capability": CAP_NET_BIND,
                                      "user.note": "hello"}),
        Symlink("usr/link", "../etc/x"),
        Hardlink("usr/hard", "usr/su"),
        Whiteout("etc/gone"), Whiteout("top"), Opaque("var/lib"),
        CharDevice("dev/null", 1, 3), BlockDevice("dev/loop0", 7, 0), Fifo("run/fifo"),
    ], compression="gzip")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("usr/su").read() == b"x"
    assert members["usr"].isdir() and (members["usr"].uid, members["usr"].gid) == (1, 2)
    assert members["usr"].mtime == 1234
    assert members["usr/su"].mode == 0o4755 and members["usr/sg"].mode == 0o2755
    assert members["tmp"].mode == 0o1777
    cap = members["usr/cap"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP_NET_BIND
    assert members["usr/cap"].pax_headers["SCHILY.xattr.user.note"] == "hello"
    assert members["usr/link"].issym() and members["usr/link"].linkname == "../etc/x"
    assert members["usr/hard"].islnk() and members["usr/hard"].linkname == "usr/su"
    assert {"etc/.wh.gone", ".wh.top", "var/lib/.wh..wh..opq"} <= set(members)
    assert members["dev/null"].ischr() and members["dev/null"].devminor == 3
    assert members["dev/loop0"].isblk() and members["dev/loop0"].devmajor == 7
    assert members["run/fifo"].isfifo()


def test_write_layout_is_readable_by_minict(tmp_path):
    image = two_layer_image()
    write_layout(tmp_path / "app", "v1", image)
    write_layout(tmp_path / "app", "v2", Image([[File("other")]]))
    layout = Layout(tmp_path / "app")
    assert layout.exists()
    descriptor = layout.resolve(parse("app:v1"))
    assert descriptor["digest"] == image.digest
    manifest = layout.read_json_blob(descriptor["digest"])
    assert layout.read_json_blob(manifest["config"]["digest"])["config"]["Cmd"] == ["/bin/tool"]
    for layer in image.layers:
        assert layout.blob_path(layer.digest).read_bytes() == layer.blob
    assert sorted(name for name, _ in layout.refs()) == ["v1", "v2"]


def test_basic_auth_registry(tmp_path, require_tool):
    htpasswd = tmp_path / "htpasswd"
    subprocess.run([require_tool("htpasswd"), "-Bbc", str(htpasswd), "alice", "s3cret"],
                   check=True, capture_output=True)
    with Registry(tmp_path / "reg", htpasswd=htpasswd) as reg:
        assert requests.get(f"{reg.url}/v2/", timeout=5).status_code == 401
        with pytest.raises(RuntimeError, match="401"):
            push(reg.url, "test/app", "latest", two_layer_image())
        push(reg.url, "test/app", "latest", two_layer_image(), auth=("alice", "s3cret"))
        get_manifest(reg, "test/app", "latest", auth=("alice", "s3cret"))


def test_token_auth_registry_challenges(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minict test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    token = {"realm": "http://127.0.0.1:1/token", "service": "test-registry",
             "issuer": "test-issuer", "rootcertbundle": bundle}
    with Registry(tmp_path / "reg", token=token) as reg:
        response = requests.get(f"{reg.url}/v2/", timeout=5)
        assert response.status_code == 401
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'realm="http://127.0.0.1:1/token"' in challenge
        assert 'service="test-registry"' in challenge


def test_busybox_image_is_pushed_by_skopeo(busybox_image):
    reg = busybox_image.registry
    assert busybox_image == f"{reg.host}/test/busybox:latest"
    manifest = get_manifest(reg, "test/busybox", "latest").json()
    config = json.loads(get_blob(reg, "test/busybox", manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"][0].startswith("PATH=")
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER["gzip"]
    with tarfile.open(fileobj=io.BytesIO(get_blob(reg, "test/busybox", layer["digest"]))) as tar:
        members = {m.name.lstrip("/"): m for m in tar.getmembers()}
        passwd = tar.extractfile(members["etc/passwd"]).read().decode()
    assert members["bin/busybox"].isreg() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["tmp"].mode == 0o1777
    assert "app:x:1000:1000:" in passwd


def test_skip_policy_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        ci.require_tool("surely-not-an-installed-tool")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        ci.require_tool("surely-not-an-installed-tool")
    assert ci.require_tool("sh").endswith("/sh")


@pytest.mark.root
def test_mount_guard_reads_escaped_mount_points(tmp_path):
    target = tmp_path / "with space\tand tab"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "guard-test", str(target)], check=True)
    try:
        assert mounts_under(str(tmp_path)) == {str(target)}
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert mounts_under(str(tmp_path)) == set()
