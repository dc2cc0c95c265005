"""`minict pull` from registries that want credentials: token auth and basic auth.

Credentials come from a Docker config.json (DOCKER_CONFIG) or a credential
helper, and must never show up in what minict prints, even with --debug.
"""

import base64
import json
import os
import stat

import pytest
import requests

from tests.support import ci
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import Dir, File, Image, push
from tests.support.registry import Registry, write_htpasswd
from tests.support.token_issuer import TokenIssuer
from tests.test_pull import fails, list_images, ok

USER, PASSWORD = "alice", "s3cret-Pa55word"
REFRESH_TOKEN = "refresh-7f3a9c"


class Bearer(requests.auth.AuthBase):
    """Send a fixed token (tests push with a token minted for them)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def image(text="secret image") -> Image:
    return Image([[Dir("etc"), File("etc/motd", text.encode())]], config={"Cmd": ["sh"]})


def docker_config(tmp_path, document) -> dict:
    """Write config.json into a fresh DOCKER_CONFIG directory; return the env for minict."""
    directory = tmp_path / "docker-config"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))
    return {"DOCKER_CONFIG": str(directory)}


def basic(user=USER, password=PASSWORD) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_no_secrets(text: str, *secrets):
    for secret in (PASSWORD, basic(), *secrets):
        assert secret not in text, f"a secret leaked into the output: {text}"


@pytest.fixture
def token_registry(tmp_path, require_tool):
    """A registry with `auth: token` and its issuer; `pub/app` is public, `priv/app` is not."""
    require_tool("docker-registry")

    def start(**issuer_options):
        issuer = TokenIssuer(tmp_path / "issuer", users={USER: PASSWORD}, public={"pub/app"},
                             refresh_tokens={REFRESH_TOKEN: USER}, **issuer_options).start()
        reg = Registry(tmp_path / "registry", token=issuer.registry_config()).start()
        started.append((issuer, reg))
        for repo in ("pub/app", "priv/app"):
            push(reg.url, repo, "latest", image(repo), auth=Bearer(issuer.mint(USER, repo)))
        issuer.requests.clear()
        return issuer, reg

    started = []
    yield start
    for issuer, reg in started:
        reg.stop()
        issuer.stop()


def test_token_auth_anonymous_public_repository(token_registry, minict):
    issuer, reg = token_registry()
    done = ok(minict("--debug", "pull", "--image", f"{reg.host}/pub/app"))
    assert issuer.requests and all(r["user"] is None for r in issuer.requests)
    assert "scope=repository%3Apub%2Fapp%3Apull" in issuer.requests[0]["path"]
    assert_no_secrets(done.stderr, *issuer.issued)


def test_token_auth_private_repository_needs_credentials(token_registry, minict, tmp_path):
    _, reg = token_registry()
    line = fails(minict("pull", "--image", f"{reg.host}/priv/app"), "denied")
    assert list_images(minict) == []
    assert "config.json" in line


@pytest.mark.parametrize("field", ["token", "access_token"])
def test_token_auth_with_config_json_credentials(token_registry, minict, tmp_path, field):
    issuer, reg = token_registry(field=field)
    env = docker_config(tmp_path, {"auths": {reg.host: {"auth": basic()}}})
    done = ok(minict("--debug", "pull", "--image", f"{reg.host}/priv/app", env=env))
    assert {r["user"] for r in issuer.requests} == {USER}
    assert_no_secrets(done.stderr, *issuer.issued)
    assert list_images(minict) == [f"{reg.host}/priv/app:latest"]


def test_identity_token_is_exchanged_with_a_post(token_registry, minict, tmp_path):
    issuer, reg = token_registry()
    env = docker_config(tmp_path, {"auths": {reg.host: {"identitytoken": REFRESH_TOKEN}}})
    done = ok(minict("--debug", "pull", "--image", f"{reg.host}/priv/app", env=env))
    assert [(r["method"], r["user"]) for r in issuer.requests] == [("POST", USER)]
    assert_no_secrets(done.stderr, REFRESH_TOKEN, *issuer.issued)


def test_token_auth_wrong_password(token_registry, minict, tmp_path):
    _, reg = token_registry()
    wrong = base64.b64encode(f"{USER}:not-the-password".encode()).decode()
    env = docker_config(tmp_path, {"auths": {f"https://{reg.host}/v1/": {"auth": wrong}}})
    done = minict("--debug", "pull", "--image", f"{reg.host}/priv/app", env=env)
    assert done.returncode == 1
    assert "refused the credentials from config.json" in done.stderr
    assert "not-the-password" not in done.stderr and wrong not in done.stderr


def test_token_rejected_mid_pull_is_renewed(token_registry, minict, tmp_path):
    # The proxy answers the first blob GET as a registry does for an expired
    # token: 401 with a Bearer challenge.  minict must get a new token and go on.
    issuer, reg = token_registry()
    realm = issuer.registry_config()["realm"]
    with FaultProxy(reg.url) as proxy:
        proxy.add(Fault("/blobs/", status=401, headers={"WWW-Authenticate": (
            f'Bearer realm="{realm}",service="minict-test-registry",'
            'scope="repository:priv/app:pull",error="invalid_token"')}))
        env = docker_config(tmp_path, {"auths": {proxy.host: {"auth": basic()}}})
        done = ok(minict("--debug", "pull", "--image", f"{proxy.host}/priv/app", env=env))
    assert len(issuer.issued) == 2
    assert "401, authenticating again" in done.stderr
    sent = [r["headers"].get("Authorization") for r in proxy.requests if "/blobs/" in r["path"]]
    assert f"Bearer {issuer.issued[1]}" in sent
    assert_no_secrets(done.stderr, *issuer.issued)


def test_credential_helper(token_registry, minict, tmp_path):
    issuer, reg = token_registry()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-minicttest"
    helper.write_text(
        "#!/bin/sh\n"
        f'read server; [ "$1" = get ] && [ "$server" = "{reg.host}" ] || exit 1\n'
        f"echo '{{\"ServerURL\":\"{reg.host}\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    env = docker_config(tmp_path, {"auths": {reg.host: {}}, "credHelpers": {reg.host: "minicttest"}})
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    done = ok(minict("--debug", "pull", "--image", f"{reg.host}/priv/app", env=env))
    assert {r["user"] for r in issuer.requests} == {USER}
    assert_no_secrets(done.stderr, *issuer.issued)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    """A registry with basic auth serving team/app; its tests only pull, so they share it."""
    ci.require_tool("docker-registry")
    workdir = tmp_path_factory.mktemp("basic-registry")
    htpasswd = write_htpasswd(workdir / "htpasswd", USER, PASSWORD, ci.require_tool("htpasswd"))
    with Registry(workdir / "registry", htpasswd=htpasswd) as reg:
        push(reg.url, "team/app", "latest", image("basic"), auth=(USER, PASSWORD))
        yield reg


def test_basic_auth_with_config_json(basic_registry, minict, tmp_path):
    reg = basic_registry
    env = docker_config(tmp_path, {"auths": {reg.host: {"username": USER, "password": PASSWORD}}})
    done = ok(minict("--debug", "pull", "--image", f"{reg.host}/team/app", env=env))
    assert_no_secrets(done.stderr)
    assert list_images(minict) == [f"{reg.host}/team/app:latest"]


def test_basic_auth_without_credentials(basic_registry, minict, tmp_path):
    env = docker_config(tmp_path, {"auths": {}})
    fails(minict("pull", "--image", f"{basic_registry.host}/team/app", env=env),
          "requires a user name and password")


def test_basic_auth_wrong_password(basic_registry, minict, tmp_path):
    wrong = basic(password="nope")
    env = docker_config(tmp_path, {"auths": {basic_registry.host: {"auth": wrong}}})
    ref = f"{basic_registry.host}/team/app"
    fails(minict("pull", "--image", ref, env=env), "denied")
    done = minict("--debug", "pull", "--image", ref, env=env)
    assert done.returncode == 1 and wrong not in done.stderr and "nope" not in done.stderr


def test_a_token_without_expires_in_lives_60_seconds(tmp_path):
    from minict.image import registry

    with TokenIssuer(tmp_path, public={"pub/app"}, expires_in=0, field="access_token") as issuer:
        client = registry.Registry("127.0.0.1:1", "pub/app", insecure=False)
        token, ttl = client._fetch_token({"realm": f"{issuer.url}/token", "service": "s"}, None)
        client.close()
    assert (token, ttl) == (issuer.issued[0], 60)
