"""A fault-injecting HTTP proxy in front of a real registry, on 127.0.0.1.

    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("/blobs/", drop_after=100_000))      # cut a body off once
        proxy.add(Fault("/manifests/", status=429, headers={"Retry-After": "1"}))
        proxy.add(Fault("/blobs/", status=503))
        proxy.add(Fault("/blobs/", redirect=True))            # to the "storage" host
        minict("pull", "--image", f"{proxy.host}/test/app:latest")

What the real registry will not do on demand happens here: a connection
dropped mid-body, 429 with Retry-After, 503, a stalled body (for kill -9
tests), and a 307 redirect of a blob GET to a second loopback host,
127.0.0.2, that records the headers it received (an Authorization header
must never arrive there).  Every request is recorded in `.requests`.
Faults apply in the order added, each `times` times, to paths containing
`match` (and, if given, with that method).
"""

import http.client
import socket
import threading
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support import loopback_http

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host"}
CHUNK = 64 * 1024


@dataclass
class Fault:
    """One misbehaviour for requests whose path contains `match`."""

    match: str
    method: str | None = "GET"
    times: int = 1
    status: int | None = None          # answer this status instead of forwarding
    headers: dict = field(default_factory=dict)
    drop_after: int | None = None      # forward, but close the connection after N body bytes
    stall_after: int | None = None     # forward N body bytes, then hang until release()
    redirect: bool = False             # 307 to the storage host
    used: int = 0


class FaultProxy:
    """The proxy and its storage host; start() / stop(), or a context manager."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.faults: list[Fault] = []
        self.requests: list[dict] = []        # what reached the proxy
        self.storage_requests: list[dict] = []  # what reached the storage host
        self.stalled = threading.Event()      # a stall_after fault is holding a body
        self._release = threading.Event()
        self._stash: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server = self._storage = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage_host(self) -> str:
        return f"127.0.0.2:{self._storage.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def release(self) -> None:
        """Let stalled bodies end (their connections are closed)."""
        self._release.set()

    def paths(self, method="GET", contains="") -> list[str]:
        """Return the paths of recorded requests with `method` containing `contains`."""
        return [r["path"] for r in self.requests if r["method"] == method and contains in r["path"]]

    # -- life cycle ------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._server = loopback_http.serve(self._handle, "127.0.0.1")
        self._storage = loopback_http.serve(self._serve_stashed, "127.0.0.2")
        return self

    def stop(self) -> None:
        self._release.set()
        for server in (self._server, self._storage):
            loopback_http.stop(server)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the proxy -------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.used < fault.times and fault.match in path and \
                        fault.method in (None, method):
                    fault.used += 1
                    return fault
        return None

    def _handle(self, handler) -> None:
        method, path = handler.command, handler.path
        self.requests.append({"method": method, "path": path, "headers": dict(handler.headers)})
        fault = self._take_fault(method, path)
        if fault is not None and fault.status is not None:
            body = b'{"errors":[{"code":"FAULT","message":"injected by the fault proxy"}]}'
            self._send(handler, fault.status, {"Content-Type": "application/json",
                                               **fault.headers}, body)
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(method, path, headers=headers)
            response = upstream.getresponse()
            if fault is not None and fault.redirect and response.status == 200:
                key = uuid.uuid4().hex
                self._stash[key] = response.read()
                location = f"http://{self.storage_host}/stash/{key}?X-Signature=not-a-secret"
                self._send(handler, 307, {"Location": location}, b"")
                return
            self._forward(handler, response, fault)
        finally:
            upstream.close()

    def _forward(self, handler, response, fault: Fault | None) -> None:
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        if response.getheader("Content-Length") is None and handler.command != "HEAD":
            body = response.read()
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        handler.end_headers()
        if handler.command == "HEAD":
            return
        limit = None
        if fault is not None:
            limit = fault.drop_after if fault.drop_after is not None else fault.stall_after
        sent = 0
        while chunk := response.read(CHUNK):
            if limit is not None and sent + len(chunk) >= limit:
                handler.wfile.write(chunk[:limit - sent])
                handler.wfile.flush()
                if fault.stall_after is not None:
                    self.stalled.set()
                    self._release.wait(120)
                self._cut(handler)
                return
            handler.wfile.write(chunk)
            sent += len(chunk)

    @staticmethod
    def _cut(handler) -> None:
        """Close the client's connection in the middle of a body."""
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    _send = staticmethod(loopback_http.send)

    # -- the storage host ------------------------------------------------------

    def _serve_stashed(self, handler) -> None:
        self.storage_requests.append({"method": handler.command, "path": handler.path,
                                      "headers": dict(handler.headers)})
        key = urlsplit(handler.path).path.rsplit("/", 1)[-1]
        data = self._stash.get(key)
        if data is None:
            self._send(handler, 404, {}, b"")
            return
        self._send(handler, 200, {"Content-Type": "application/octet-stream"}, data)
