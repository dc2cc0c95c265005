"""The pull's pure parts: challenges, schemes, platforms, conversion, credentials, blob writer."""

import base64
import hashlib
import json
import os
import stat

import pytest

from minict.errors import InvalidImage, MinictError
from minict.image import auth, challenge, pull, registry
from minict.image.layout import SOURCE_DIGEST, DigestMismatch, Layout
from minict.image.reference import parse


def test_parse_challenge():
    hub = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
           'scope="repository:library/ubuntu:pull"')
    assert challenge.parse_challenge(hub) == ("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull"})
    assert challenge.parse_challenge('Basic realm="Registry Realm"') == \
        ("basic", {"realm": "Registry Realm"})
    both = 'Basic realm="x", Bearer realm="https://t/token", error="invalid_token"'
    assert challenge.parse_challenge(both) == \
        ("bearer", {"realm": "https://t/token", "error": "invalid_token"})
    assert challenge.parse_challenge('Bearer realm="a\\"b"')[1]["realm"] == 'a"b'
    assert challenge.parse_challenge("Negotiate") is None
    assert challenge.parse_challenge("") is None


@pytest.mark.parametrize("endpoint,insecure,expected", [
    ("localhost:5000", False, ["http", "https"]),
    ("127.0.0.1:5000", False, ["http", "https"]),
    ("127.3.2.1", False, ["http", "https"]),
    ("[::1]:5000", False, ["http", "https"]),
    ("registry-1.docker.io", False, ["https"]),
    ("quay.io", True, ["https", "http"]),
    ("10.0.0.1:5000", False, ["https"]),
    ("localhost.example.com", False, ["https"]),
])
def test_plain_http_only_on_loopback_or_insecure(endpoint, insecure, expected):
    assert registry.schemes(endpoint, insecure) == expected


def test_redact_keeps_secrets_out_of_logs():
    assert registry.redact("https://u:p@s3.example.com/b?X-Amz-Signature=abc", "reg:5000") == \
        "https://s3.example.com/b?…"
    assert registry.redact("http://reg:5000/v2/x/tags/list?n=10", "reg:5000") == \
        "http://reg:5000/v2/x/tags/list?n=10"


def test_proxies_from_the_environment_but_never_for_loopback(monkeypatch):
    from minict.image import http

    for key in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    assert http.proxy_for("https://registry.example.com/v2/") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example.com")
    assert http.proxy_for("https://registry.example.com/v2/") == "http://proxy.example.com:3128"
    assert http.proxy_for("https://internal.example.com/v2/") is None
    assert http.proxy_for("https://127.0.0.1/v2/") is None
    assert http.proxy_for("https://localhost/v2/") is None
    assert http.proxy_for("http://registry.example.com/v2/") is None  # only HTTPS_PROXY set


def test_retry_after():
    from minict.image.http_errors import RETRY

    assert RETRY.retry_after({"Retry-After": "2"}, 1) == 2.0
    assert RETRY.retry_after({"Retry-After": "100000"}, 1) == RETRY.backoff_max
    assert RETRY.retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 1) == 0.0
    assert RETRY.retry_after({}, 2) == 2.0


@pytest.mark.parametrize("text,expected", [
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/x86_64", "linux/amd64"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
])
def test_platforms_normalise(text, expected):
    assert pull.parse_platform(text) == expected


@pytest.mark.parametrize("bad", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_bad_platforms_are_refused(bad):
    with pytest.raises(InvalidImage, match="invalid platform"):
        pull.parse_platform(bad)


def test_host_platform_is_linux_and_go_names():
    machine = os.uname().machine
    expected = {"x86_64": "linux/amd64", "aarch64": "linux/arm64/v8"}.get(machine)
    if expected:
        assert pull.host_platform() == expected
    assert pull.host_platform().startswith("linux/")


def entry(digest_char, os_name, arch, variant=None, **extra):
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + digest_char * 64, "size": 1, "platform": platform, **extra}


def test_choose_platform():
    index = {"manifests": [
        entry("a", "unknown", "unknown"),
        entry("b", "linux", "arm", "v6"),
        entry("c", "linux", "arm64"),
        entry("d", "linux", "amd64"),
        entry("e", "linux", "amd64", annotations={"vnd.docker.reference.type":
                                                   "attestation-manifest"}),
    ]}
    assert pull.choose_platform(index, "linux/amd64", "x")["digest"][7] == "d"
    assert pull.choose_platform(index, "linux/arm64/v8", "x")["digest"][7] == "c"
    assert pull.choose_platform(index, "linux/arm/v7", "x")["digest"][7] == "b"  # v7 runs v6
    with pytest.raises(InvalidImage) as caught:
        pull.choose_platform(index, "linux/arm/v5", "x")
    assert "offers linux/amd64, linux/arm/v6, linux/arm64/v8" in str(caught.value)
    assert "unknown" not in str(caught.value)


def test_docker_manifest_converts_like_skopeo():
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": 7, "digest": "sha256:" + "c" * 64},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 5,
             "digest": "sha256:" + "1" * 64},
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
             "size": 6, "digest": "sha256:" + "2" * 64, "urls": ["https://x/y?a=1&b=<2>"]},
        ],
    }
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        '"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        f'"digest":"sha256:{"c" * 64}","size":7}},"layers":['
        '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",'
        f'"digest":"sha256:{"1" * 64}","size":5}},'
        '{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",'
        f'"digest":"sha256:{"2" * 64}","size":6,'
        '"urls":["https://x/y?a=1\\u0026b=\\u003c2\\u003e"]}]}'
    )
    assert pull.docker_to_oci(doc).decode() == expected


@pytest.mark.parametrize("body,media", [
    (b'{"schemaVersion":1,"name":"x","fsLayers":[]}', "application/json"),
    (b"{}", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
])
def test_schema1_is_refused(body, media):
    with pytest.raises(InvalidImage, match="schema 1"):
        pull.classify(body, media, "x")


def test_classify_by_media_type_header_and_shape():
    assert pull.classify(b'{"manifests":[]}', "", "x")[0] == "index"
    assert pull.classify(b'{"schemaVersion":2,"config":{}}', "", "x")[0] == "oci"
    assert pull.classify(b"{}", registry.DOCKER_MANIFEST, "x")[0] == "docker"
    with pytest.raises(InvalidImage, match="unsupported manifest media type"):
        pull.classify(b"{}", "text/html", "x")
    with pytest.raises(InvalidImage, match="not valid JSON"):
        pull.classify(b"<html>", "text/html", "x")


def test_manifest_with_huge_config_is_refused():
    doc = {"schemaVersion": 2, "config": {"digest": "sha256:" + "a" * 64, "size": 5 << 20},
           "layers": []}
    with pytest.raises(InvalidImage, match="over the"):
        pull.check_manifest(doc, "x")


# -- credentials --------------------------------------------------------------


def write_config(tmp_path, monkeypatch, document):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(document))


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_credentials_from_auths(tmp_path, monkeypatch):
    write_config(tmp_path, monkeypatch, {"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
        "https://127.0.0.1:5000/v2/": {"auth": b64("me:pa:ss")},
        "other:1": {"identitytoken": "refresh"},
    }})
    hub = auth.lookup("docker.io")
    assert (hub.username, hub.password) == ("hubuser", "hubpass")
    assert auth.lookup("127.0.0.1:5000").password == "pa:ss"
    assert auth.lookup("other:1").identity_token == "refresh"
    assert auth.lookup("nowhere:1") is None
    assert "hubpass" not in repr(hub)


def test_missing_or_broken_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    assert auth.lookup("docker.io") is None
    write_config(tmp_path, monkeypatch, {"auths": {"h:1": {"auth": b64("no-colon-secret")}}})
    with pytest.raises(MinictError) as caught:
        auth.lookup("h:1")
    assert "no-colon-secret" not in str(caught.value) and b64("no-colon-secret") not in str(caught.value)


def test_credential_store_and_helpers(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-store"
    script.write_text('#!/bin/sh\nread s\ncase "$s" in\n'
                      '  h:1) echo \'{"Username":"<token>","Secret":"idtoken"}\' ;;\n'
                      '  *) echo "credentials not found in native keychain"; exit 1 ;;\nesac\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    write_config(tmp_path, monkeypatch, {"credsStore": "store",
                                         "auths": {"h:2": {"auth": b64("file:pw")}}})
    assert auth.lookup("h:1").identity_token == "idtoken"
    assert auth.lookup("h:2").username == "file"  # not in the store: the file's entry
    write_config(tmp_path, monkeypatch, {"credHelpers": {"h:3": "absent-helper"}})
    assert auth.lookup("h:3") is None  # a missing helper means anonymous, with a warning


# -- the blob writer ------------------------------------------------------------


def test_blob_writer_resumes_verifies_and_renames(tmp_path):
    layout = Layout(tmp_path / "layout")
    layout.init()
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with layout.blob_writer(digest, len(data)) as writer:
        writer.write(data[:100_000])  # then the process "dies"
    assert not layout.has_blob(digest)
    with layout.blob_writer(digest, len(data)) as writer:
        assert writer.offset == 100_000
        writer.write(data[100_000:])
        writer.commit()
    assert layout.blob_path(digest).read_bytes() == data
    assert not (layout.path / ".partial" / digest[7:]).exists()
    with layout.blob_writer(digest, len(data)) as writer:
        assert writer.present


def test_blob_writer_refuses_wrong_or_long_data(tmp_path):
    layout = Layout(tmp_path / "layout")
    data = b"the real bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with layout.blob_writer(digest, len(data)) as writer:
        writer.write(b"the fake bytes")
        with pytest.raises(DigestMismatch):
            writer.commit()
        assert writer.offset == 0  # the bad bytes are gone
        with pytest.raises(MinictError, match="longer than"):
            writer.write(data + b"!")
    assert not layout.has_blob(digest)


def test_resolve_by_the_digest_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICT_DIR", str(tmp_path))
    ref = parse("127.0.0.1:5000/app@sha256:" + "d" * 64)
    layout = Layout.for_reference(ref)
    layout.init()
    stored = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "digest": "sha256:" + "e" * 64, "size": 3}
    layout.tag({**stored, "annotations": {SOURCE_DIGEST: ref.digest}}, ref.ref_name)
    assert layout.resolve(ref)["digest"] == stored["digest"]
    tagged = parse("127.0.0.1:5000/app:v1@sha256:" + "d" * 64)
    assert layout.resolve(tagged)["digest"] == stored["digest"]
