"""A registry that lies, trickles and nests, on 127.0.0.1: for the hardening tests.

    with HostileRegistry() as reg:
        reg.add_image("test/app", "latest", image)          # served honestly ...
        reg.on("manifest", lambda r: r.trickle(*r.honest()))  # ... unless told otherwise
        minict("pull", "--image", f"{reg.host}/test/app")

Requests are sorted into kinds: "ping" (GET /v2/), "token" (/token, named
as the realm of a Bearer challenge once `token_answer` is set), "manifest"
and "blob".  An answer is a function of a Reply, which offers the honest
answer (`honest()`) and the misbehaviours: send() anything, trickle() the
status line and headers or the body one byte at a time (optionally as
chunked encoding), endless() bodies.  Trickles stop when the client goes
away or the server stops.  Every request is recorded in `.requests`.

The real registry cannot be made to do any of this, so it is a small
threaded http.server; its honest answers follow the distribution API as
far as minict needs it (no Range support: a resumed download starts over).
"""

import json
import threading
from urllib.parse import urlsplit

from tests.support import loopback_http
from tests.support.images import sha256

CHUNK = 64 * 1024


class Reply:
    """One request being answered; the methods write the whole answer."""

    def __init__(self, registry: "HostileRegistry", handler, kind: str, name: str, ref: str):
        self.registry, self.handler = registry, handler
        self.kind, self.name, self.ref = kind, name, ref

    @property
    def path(self) -> str:
        return self.handler.path

    def honest(self) -> tuple[int, bytes, dict]:
        """Return (status, body, headers) a well-behaved registry would answer."""
        reg = self.registry
        if self.kind == "ping":
            if reg.token_answer is None:
                return 200, b"{}", {"Content-Type": "application/json"}
            challenge = f'Bearer realm="{reg.url}/token",service="hostile"'
            return 401, b"{}", {"WWW-Authenticate": challenge}
        if self.kind == "token":
            return 200, json.dumps(reg.token_answer).encode(), {"Content-Type": "application/json"}
        if self.kind == "manifest":
            found = reg.manifests.get((self.name, self.ref))
            if found is None:
                return 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}', {}
            data, media = found
            return 200, data, {"Content-Type": media, "Docker-Content-Digest": sha256(data)}
        data = reg.blobs.get(self.ref)
        if data is None:
            return 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}', {}
        return 200, data, {"Content-Type": "application/octet-stream"}

    # -- answers --------------------------------------------------------------

    def send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        """Answer at once, with a Content-Length unless `headers` set one (a lie, say)."""
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        self._head(status, headers)
        if self.handler.command != "HEAD":
            self.handler.wfile.write(body)

    def trickle(self, status: int, body: bytes, headers: dict | None = None, *,
                headers_too: bool = False, chunked: bool = False, piece: int = 1,
                every: float | None = None) -> None:
        """Answer `piece` bytes every `every` seconds (default: 1 byte per
        `registry.interval`): the body, or from the status line on."""
        headers = dict(headers or {})
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers.setdefault("Content-Length", str(len(body)))
        head = self._head_bytes(status, headers)
        every = self.registry.interval if every is None else every
        if headers_too:
            self._drip(head, piece, every)
        else:
            self._write(head)
        if chunked:
            for start in range(0, len(body), piece):
                data = body[start:start + piece]
                if not self._drip_piece(b"%x\r\n" % len(data) + data + b"\r\n", every):
                    return
            self._write(b"0\r\n\r\n")
        else:
            self._drip(body, piece, every)

    def endless(self, status: int = 200, headers: dict | None = None, fill: bytes = b"\0") -> None:
        """Send a chunked body that never ends (until the client goes away)."""
        headers = {**(headers or {}), "Transfer-Encoding": "chunked"}
        self._write(self._head_bytes(status, headers))
        piece = b"%x\r\n" % CHUNK + fill * CHUNK + b"\r\n"
        while not self.registry.stopping.is_set() and self._write(piece):
            pass

    # -- writing --------------------------------------------------------------

    def _head_bytes(self, status: int, headers: dict) -> bytes:
        lines = [f"HTTP/1.1 {status} Hostile"] + [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _head(self, status: int, headers: dict) -> None:
        self._write(self._head_bytes(status, headers))

    def _write(self, data: bytes) -> bool:
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
            return True
        except OSError:  # the client gave up: that is what the tests want
            self.handler.close_connection = True
            return False

    def _drip_piece(self, data: bytes, every: float) -> bool:
        if self.registry.stopping.wait(every):
            return False
        return self._write(data)

    def _drip(self, data: bytes, piece: int, every: float) -> None:
        for start in range(0, len(data), piece):
            if not self._drip_piece(data[start:start + piece], every):
                return


class HostileRegistry:
    """The server; start() / stop(), or a context manager."""

    def __init__(self, interval: float = 0.3):
        self.interval = interval  # seconds between trickled bytes
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.answers: dict[str, object] = {}
        self.token_answer: dict | None = None  # set: GET /v2/ asks for a Bearer token
        self.requests: list[dict] = []
        self.stopping = threading.Event()
        self._server = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add_image(self, repo: str, tag: str, image) -> None:
        """Serve `image` (tests.support.images.Image or Index) as `repo:tag` and by digest."""
        for ref in (tag, image.digest):
            self.manifests[(repo, ref)] = (image.manifest_bytes, image.media_type)
        for child in getattr(image, "images", []):
            self.manifests[(repo, child.digest)] = (child.manifest_bytes, child.media_type)
        self.blobs.update(image.blobs)

    def on(self, kind: str, answer) -> None:
        """Answer requests of `kind` with `answer(reply)` from now on."""
        self.answers[kind] = answer

    def count(self, kind: str) -> int:
        return sum(r["kind"] == kind for r in self.requests)

    def start(self) -> "HostileRegistry":
        self._server = loopback_http.serve(self._handle)
        return self

    def stop(self) -> None:
        self.stopping.set()
        loopback_http.stop(self._server)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _handle(self, handler) -> None:
        path = urlsplit(handler.path).path
        kind, name, ref = "other", "", ""
        if path == "/v2/":
            kind = "ping"
        elif path == "/token":
            kind = "token"
        elif path.startswith("/v2/") and "/manifests/" in path:
            kind = "manifest"
            name, _, ref = path[4:].rpartition("/manifests/")
        elif path.startswith("/v2/") and "/blobs/" in path:
            kind = "blob"
            name, _, ref = path[4:].rpartition("/blobs/")
        self.requests.append({"kind": kind, "method": handler.command, "path": handler.path,
                              "headers": dict(handler.headers)})
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        reply = Reply(self, handler, kind, name, ref)
        if kind == "other":
            reply.send(404, b"")
            return
        answer = self.answers.get(kind)
        if answer is not None:
            answer(reply)
        else:
            reply.send(*reply.honest())
