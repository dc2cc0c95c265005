"""A real CNCF distribution registry (`docker-registry serve`) on loopback.

    with Registry(tmp_path) as reg:
        push(reg.url, "test/app", "latest", image)
        ...  # reg.host == "127.0.0.1:PORT"

The registry stores blobs on the file system under `workdir/storage`, so a
test can read or corrupt what it serves (`blob_data_path`).  Usable from
bench/ as well: nothing here imports pytest.

One registry serves a whole test session; each test gets a `Namespace` of it,
its own repository prefix, so no test sees another's images:

    ns = Namespace(reg, "t12")
    push(ns.url, ns.repo("test/app"), "latest", image)   # t12/test/app
    minict("pull", "--image", ns.ref("test/app:latest"))  # 127.0.0.1:PORT/t12/test/app:latest
"""

import json
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

BINARY = "docker-registry"
START_TIMEOUT = 15.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_htpasswd(path, user: str, password: str, binary: str = "htpasswd") -> Path:
    """Write an htpasswd file of one bcrypt entry (what distribution reads); return its path."""
    subprocess.run([binary, "-Bbc", str(path), user, password], check=True, capture_output=True)
    return Path(path)


class RegistryError(RuntimeError):
    """The registry would not start (its log is in the message)."""


class Registry:
    """One `docker-registry serve` process with its config and storage under `workdir`.

    `htpasswd`: path of an htpasswd file (bcrypt entries) to turn on basic auth.
    `token`: a dict for distribution's `auth: token` section
    (realm, service, issuer, rootcertbundle).
    `url_allow`: regular expressions of the URLs a manifest's foreign layers
    may name (distribution's validation.manifests.urls.allow; without it,
    distribution refuses every manifest with URLs).
    """

    def __init__(self, workdir, *, htpasswd=None, token=None, binary=BINARY, url_allow=None):
        if htpasswd is not None and token is not None:
            raise ValueError("choose one of htpasswd and token auth")
        self.workdir = Path(workdir)
        self.storage = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.htpasswd = htpasswd
        self.token = token
        self.url_allow = url_allow
        self.binary = binary
        self.port = None
        self.process = None

    # -- addresses --------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth_enabled(self) -> bool:
        return self.htpasswd is not None or self.token is not None

    def repo(self, name: str) -> str:
        """Return repository `name` as it is called here (a whole registry has no prefix)."""
        return name

    def ref(self, name: str) -> str:
        """Return the reference of `name` ("repo", "repo:tag" or "repo@digest") here."""
        return f"{self.host}/{self.repo(name)}"

    def blob_data_path(self, digest: str) -> Path:
        """Return the file the registry keeps blob `digest`'s bytes in."""
        algorithm, _, hexdigest = digest.partition(":")
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / algorithm
                / hexdigest[:2] / hexdigest / "data")

    # -- configuration ----------------------------------------------------

    def config(self) -> dict:
        """Return the distribution configuration for the current port."""
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "minict-test", "path": str(self.htpasswd)}}
        elif self.token is not None:
            config["auth"] = {"token": {k: str(v) for k, v in self.token.items()}}
        if self.url_allow is not None:
            config["validation"] = {"manifests": {"urls": {"allow": list(self.url_allow)}}}
        return config

    # -- life cycle -------------------------------------------------------

    def start(self, attempts: int = 3) -> Self:
        """Start the registry and wait until `GET /v2/` answers; raise RegistryError."""
        if self.process is not None:
            raise RegistryError("registry already started")
        if shutil.which(self.binary) is None:
            raise RegistryError(f"{self.binary} is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        for attempt in range(attempts):
            self.port = free_port()
            # JSON is YAML, and it spares us a YAML dependency.
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )
            if self._wait_ready():
                return self
            self.stop()
            # Another process may have taken the port between our probe and its bind.
        raise RegistryError(f"{self.binary} did not start; its log:\n{self.log()}")

    def _wait_ready(self) -> bool:
        accepted = {401} if self.auth_enabled else {200}
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if _status(f"{self.url}/v2/") in accepted:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop our process by its pid: terminate, wait, then kill."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self) -> str:
        """Return what the registry printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<Registry {self.url if self.port else '-'} {state}>"


class Namespace:
    """A test's repositories in a registry others share: every name under `prefix/`.

    It answers as a Registry does (host, url, port, blob_data_path, log, repo,
    ref), but it cannot be stopped: a test that stops or corrupts its registry
    needs one of its own.  Blobs are stored once per registry whatever the
    repository, so their files are shared too.
    """

    def __init__(self, registry: Registry, prefix: str):
        self.registry = registry
        self.prefix = prefix

    host = property(lambda self: self.registry.host)
    url = property(lambda self: self.registry.url)
    port = property(lambda self: self.registry.port)
    auth_enabled = property(lambda self: self.registry.auth_enabled)

    def repo(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def ref(self, name: str) -> str:
        return f"{self.host}/{self.repo(name)}"

    def blob_data_path(self, digest: str) -> Path:
        return self.registry.blob_data_path(digest)

    def log(self) -> str:
        return self.registry.log()

    def stop(self) -> None:
        raise RegistryError("this registry is shared by the session: a test that stops it "
                            "needs its own (mark it own_registry)")

    def __repr__(self) -> str:
        return f"<Namespace {self.prefix or '-'} of {self.registry!r}>"


def _status(url: str) -> int | None:
    """Return the HTTP status of GET `url`, or None if nothing answered.

    urllib, not requests: `make demo` runs this from the installed venv,
    and minict itself does not depend on requests.
    """
    # Readiness only: a registry serving a test's self-signed certificate counts too.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=unverified) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


__all__ = ["Namespace", "Registry", "RegistryError", "free_port", "write_htpasswd"]

if __name__ == "__main__":  # a quick manual check: python -m tests.support.registry
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Registry(tmp) as reg:
        print(reg, _status(f"{reg.url}/v2/"))
