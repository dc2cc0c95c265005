"""A small Docker token server (the distribution token-auth spec) on 127.0.0.1.

    issuer = TokenIssuer(tmp_path, users={"alice": "s3cret"}, public={"pub/app"})
    with issuer, Registry(tmp_path / "reg", token=issuer.registry_config()) as reg:
        ...

GET /token?service=S&scope=repository:NAME:pull answers {"token": JWT,
"expires_in": N}.  The JWT is RS256, signed by a fresh self-signed key whose
certificate travels in the header's `x5c` and is the registry's
`rootcertbundle`.  Pull access is granted to the users (Basic auth on the
token request) and to anyone for `public` repositories.  Every request is
recorded in `.requests` so tests can check what was asked, and with what.
"""

import base64
import datetime
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "minict-test-registry"
ISSUER = "minict-test-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A threaded token server; start() / stop(), or use it as a context manager.

    `lifetime`: seconds until a token's `exp`; `expires_in`: what the answer
    claims (a lie larger than `lifetime` makes the registry answer 401 mid-pull).
    `field`: "token" or "access_token".
    """

    def __init__(self, workdir, *, users=None, public=(), lifetime=300, expires_in=None,
                 field="token", refresh_tokens=None):
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        # OAuth2 refresh tokens (config.json's "identitytoken") and the user each stands for.
        self.refresh_tokens = dict(refresh_tokens or {})
        self.public = set(public)
        self.lifetime = lifetime
        self.expires_in = lifetime if expires_in is None else expires_in
        self.field = field
        self.requests: list[dict] = []
        self.issued: list[str] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minict test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(days=1))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .sign(self._key, hashes.SHA256()))
        self.cert_path = self.workdir / "token-cert.pem"
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def registry_config(self) -> dict:
        """Return the `auth: token` section for tests.support.registry.Registry."""
        return {"realm": f"{self.url}/token", "service": SERVICE, "issuer": ISSUER,
                "rootcertbundle": str(self.cert_path)}

    def start(self) -> "TokenIssuer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                issuer._answer(self)

            def do_POST(self):
                issuer._answer(self)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- answering -----------------------------------------------------------

    def _user(self, handler) -> tuple[str | None, bool]:
        """Return (user, credentials_ok) from the request's Basic auth."""
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None, True
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, self.users.get(user) == password

    def _answer(self, handler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        if handler.command == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            query = parse_qs(handler.rfile.read(length).decode())
        user, ok = self._user(handler)
        if handler.command == "POST":
            user = self.refresh_tokens.get(query.get("refresh_token", [""])[0])
            ok = query.get("grant_type") == ["refresh_token"] and user is not None
        self.requests.append({"method": handler.command, "path": handler.path,
                              "headers": dict(handler.headers), "user": user})
        if not ok:
            self._reply(handler, 401, {"errors": [{"code": "UNAUTHORIZED",
                                                   "message": "incorrect username or password"}]})
            return
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and (user is not None or name in self.public):
                access.append({"type": "repository", "name": name,
                               "actions": [a for a in actions.split(",") if a == "pull"]})
        token = self._sign(user or "", access)
        self.issued.append(token)
        self._reply(handler, 200, {self.field: token, "expires_in": self.expires_in,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def mint(self, subject: str, name: str, actions=("pull", "push")) -> str:
        """Return a token for `subject` with `actions` on repository `name` (for pushing)."""
        return self._sign(subject, [{"type": "repository", "name": name, "actions": list(actions)}])

    def _sign(self, subject: str, access: list) -> str:
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + self.lifetime,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    @staticmethod
    def _reply(handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
