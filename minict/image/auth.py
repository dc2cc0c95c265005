"""Registry credentials from Docker's config.json, never logged.

    $DOCKER_CONFIG/config.json, else ~/.docker/config.json
      "credHelpers": {"<host>": "<name>"}   -> docker-credential-<name> get
      "credsStore": "<name>"                -> the same, for every other host
      "auths": {"<host>": {"auth": base64("user:password")}, ...}

Docker Hub's key is "https://index.docker.io/v1/".  Keys may also be URLs
(`https://host:5000/v2/`); Docker matches them by host name
(cli/config/credentials.ConvertToHostname), and so do we.  A helper's
Username "<token>" means its Secret is an identity (OAuth2 refresh) token.
"""

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

from minict import boundedjson, log
from minict.errors import MinictError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    """What config.json holds for one registry; repr never shows a secret."""

    username: str = ""
    password: str = field(default="", repr=False)
    # An OAuth2 refresh token for the token server (docker login --identity-token).
    identity_token: str = field(default="", repr=False)
    # A bearer token to send to the registry as it is.
    registry_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)


def config_path() -> Path:
    """Return the config.json Docker would read."""
    base = os.environ.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    return Path.home() / ".docker" / "config.json"


def lookup(domain: str) -> Credentials | None:
    """Return the credentials config.json gives for registry `domain`, or None.

    `domain` is the reference's domain (`docker.io`, `host:5000`).  Raise
    MinictError when config.json exists but cannot be read or parsed.
    """
    path = config_path()
    try:
        with open(path, "rb") as f:
            config = boundedjson.loads(f.read(boundedjson.SIZE_MAX + 1))
    except FileNotFoundError:
        log.debug(f"no Docker config at {path}: pulling anonymously")
        return None
    except OSError as err:
        raise MinictError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise MinictError(f"{path} is {boundedjson.explain(err)}") from None
    if not isinstance(config, dict):
        raise MinictError(f"{path} is not a JSON object")

    hub = domain in _HUB_NAMES
    server = DOCKER_HUB_KEY if hub else domain
    names = set(_HUB_NAMES) if hub else {domain}

    helpers = config.get("credHelpers") or {}
    helper = _matching(helpers, server, names) if isinstance(helpers, dict) else None
    if helper is None and isinstance(config.get("credsStore"), str):
        helper = config["credsStore"]
    if isinstance(helper, str) and helper:
        found = _from_helper(helper, server)
        if found:
            return found

    auths = config.get("auths") or {}
    entry = _matching(auths, server, names) if isinstance(auths, dict) else None
    if isinstance(entry, dict):
        found = _from_entry(entry, path, server)
        if found:
            log.debug(f"using credentials for {server} from {path}")
            return found
    log.debug(f"no credentials for {server} in {path}: pulling anonymously")
    return None


def _hostname(key: str) -> str:
    """Reduce a config key (`https://host:5000/v1/`) to `host:5000`."""
    for scheme in ("http://", "https://"):
        key = key.removeprefix(scheme)
    return key.split("/", 1)[0]


def _matching(table: dict, server: str, names: set[str]):
    if server in table:
        return table[server]
    for key, value in table.items():
        if isinstance(key, str) and _hostname(key) in names:
            return value
    return None


def _from_entry(entry: dict, path: Path, server: str) -> Credentials | None:
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        username, sep, password = decoded.partition(":")
        if not sep:
            # Say where, never what: the value itself is a secret.
            raise MinictError(f"the 'auth' entry for {server} in {path} is not base64 of user:password")
    found = Credentials(
        username=str(username), password=str(password),
        identity_token=str(entry.get("identitytoken") or ""),
        registry_token=str(entry.get("registrytoken") or ""),
    )
    return found or None


def _from_helper(name: str, server: str) -> Credentials | None:
    """Ask `docker-credential-<name> get` (the credential-helper protocol)."""
    import subprocess  # only credential helpers need it

    program = f"docker-credential-{name}"
    log.debug(f"asking {program} for the credentials of {server}")
    try:
        done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        log.warn(f"credential helper {program} is not installed: pulling anonymously")
        return None
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MinictError(f"credential helper {program} failed: {type(err).__name__}") from None
    if done.returncode != 0:
        # "credentials not found in native keychain" is the protocol's "no entry".
        if b"credentials not found" in done.stdout + done.stderr:
            log.debug(f"{program} has no credentials for {server}")
            return None
        raise MinictError(f"credential helper {program} failed with exit status {done.returncode}")
    try:
        answer = boundedjson.loads(done.stdout)
        username, secret = str(answer.get("Username") or ""), str(answer.get("Secret") or "")
    except (ValueError, AttributeError):
        raise MinictError(f"credential helper {program} printed something that is not JSON") from None
    if username == "<token>":
        return Credentials(identity_token=secret) or None
    return Credentials(username=username, password=secret) or None
