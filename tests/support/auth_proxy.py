"""A forward HTTP proxy on 127.0.0.1 that wants a user and password (Proxy-Authorization).

    with AuthProxy("user", "secret", hosts={"registry.minict.test": "127.0.0.1"}) as proxy:
        env = {"HTTPS_PROXY": proxy.url_with("user", "secret"), ...}

It tunnels CONNECT (HTTPS) and forwards absolute-form requests (plain HTTP),
each only with `Proxy-Authorization: Basic <user:password>`; anything else
gets 407.  `hosts` maps names to addresses, as the proxy's own resolver
would: the client never resolves a name it sends to a proxy, so a test can
use a name that is not loopback (loopback hosts bypass proxies) and still
reach a registry on 127.0.0.1.  Every request is recorded in `.requests`
as (method, target, authorized).
"""

import base64
import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "proxy-connection"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class AuthProxy:
    """The proxy; a context manager."""

    def __init__(self, user: str, password: str, hosts: dict[str, str] | None = None):
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.hosts = hosts or {}
        self.requests: list[tuple[str, str, bool]] = []
        self._server = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@{self.host}"

    def _address(self, host: str, port: int) -> tuple[str, int]:
        return self.hosts.get(host, host), port

    def __enter__(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _authorized(self) -> bool:
                ok = self.headers.get("Proxy-Authorization") == proxy.expected
                proxy.requests.append((self.command, self.path, ok))
                if not ok:
                    self.send_response(407)
                    self.send_header("Proxy-Authenticate", 'Basic realm="test proxy"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return ok

            def do_CONNECT(self):
                if not self._authorized():
                    return
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection(proxy._address(host, int(port)), timeout=30)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                _pipe(self.connection, upstream)
                self.close_connection = True

            def do_GET(self):
                if not self._authorized():
                    return
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection(
                    *proxy._address(parts.hostname, parts.port or 80), timeout=30)
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream.request(self.command, target, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_HEAD = do_POST = do_GET

            def log_message(self, *args):
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until one side closes."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 30)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()
