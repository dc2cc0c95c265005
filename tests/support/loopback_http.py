"""A threaded HTTP/1.1 server on a loopback address that hands every request to one function.

    server = serve(lambda handler: ..., "127.0.0.1")   # port chosen by the kernel
    port = server.server_address[1]
    stop(server)

The function gets http.server's BaseHTTPRequestHandler (GET, HEAD and POST)
and writes the whole answer itself (`send` writes a plain one); no request
is logged.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(answer, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start a server on `host`, port 0, calling `answer(handler)` per request; return it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            answer(self)

        do_HEAD = do_POST = do_GET

        def log_message(self, *args):
            pass

    server = _Server((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def send(handler, status: int, headers: dict, body: bytes) -> None:
    """Write a whole answer: status, `headers`, Content-Length, and `body` unless HEAD."""
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def stop(server: ThreadingHTTPServer | None) -> None:
    """Stop `server` (if started) and close its socket."""
    if server is not None:
        server.shutdown()
        server.server_close()
