"""HTTP/1.1 connections for the registry client, on the standard library alone.

`requests` costs ~100 ms to import (urllib3, charset_normalizer, idna,
cookies), more than a warm re-pull spends on everything else, so the client
uses http.client directly:

- a small pool of keep-alive connections per origin, shared by the download
  threads (a connection serves one response at a time);
- TLS with the system CAs, or the bundle REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
  names (as requests honours them), or no verification (--insecure);
- HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, never for
  loopback hosts (Go's ProxyFromEnvironment rule);
- no redirects, no content decoding: the caller decides both;
- every read of a response (status line, headers, body) waits at most what
  its exchange's timeouts.Clock allows: the idle timeout, cut to the
  deadline of a small answer or to the speed window of a streamed blob.

Network failures surface as OSError (socket, ssl; timeouts.DeadlineExceeded
and timeouts.TooSlow are TimeoutErrors) or http.client.HTTPException.
"""

import http.client
import io
import os
import ssl
import threading
import urllib.parse

from minict import boundedjson
from minict.timeouts import IDLE_DEFAULT, Clock, Limits

CONNECT_TIMEOUT = 10  # seconds to connect and finish the TLS handshake

SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/cert.pem")
# Everything a broken connection, a refused one or a failed handshake raises.
NETWORK_ERRORS = (OSError, http.client.HTTPException)


class Response:
    """One response; read its body with read1()/read() and close it (or use `with`)."""

    def __init__(self, raw: http.client.HTTPResponse, connection, pool, origin):
        self.raw = raw
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = raw.headers  # case-insensitive .get()
        self._connection, self._pool, self._origin = connection, pool, origin

    def read1(self, size: int) -> bytes:
        """Return the next bytes of the body (at most `size`; b"" at its end)."""
        return self.raw.read1(size)

    def read(self, limit: int) -> bytes:
        """Return the body, at most `limit` + 1 bytes of it (so callers can spot too long)."""
        chunks, total = [], 0
        while total <= limit and (chunk := self.raw.read1(min(65536, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def json(self, limit: int = 1 << 20):
        """Return the body parsed as JSON (at most `limit` bytes); raise ValueError."""
        return boundedjson.loads(self.read(limit), limit)

    def close(self) -> None:
        """Give the connection back if the body was read to its end, else drop it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # Reusable only after the whole body was read (a body cut short leaves length > 0).
        if self.raw.isclosed() and not self.raw.will_close and not self.raw.length:
            self._pool.put(self._origin, connection)
        else:
            self.raw.close()
            connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _ClockedReader(io.RawIOBase):
    """A socket's byte stream whose every read waits only as long as `clock` allows."""

    def __init__(self, sock, clock: Clock):
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open, as makefile() does
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(self._clock.timeout())
        try:
            count = self._raw.readinto(buffer)
        except TimeoutError:
            self._clock.timed_out()  # the deadline or the speed window, if that is why
            raise
        self._clock.got(count or 0)
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _ClockedSocket:
    """What http.client.HTTPResponse is given instead of the socket: only makefile() is used."""

    def __init__(self, sock, clock: Clock | None):
        self._sock, self._clock = sock, clock

    def makefile(self, mode: str):
        if self._clock is None:  # a proxy's CONNECT answer, read before any request
            return self._sock.makefile(mode)
        return io.BufferedReader(_ClockedReader(self._sock, self._clock))


class _Clocked:
    """The part both connection classes share: timeouts and the clocked response reader."""

    clock: Clock | None = None  # the current exchange's, set by Pool.request
    idle: float = IDLE_DEFAULT  # Pool._new sets the configured one

    def connect(self):
        super().connect()
        self.sock.settimeout(self.idle)

    # http.client calls self.response_class(sock, method=...) to read each response.
    def response_class(self, sock, *args, **kwargs):
        return http.client.HTTPResponse(_ClockedSocket(sock, self.clock), *args, **kwargs)


class _HTTPConnection(_Clocked, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Clocked, http.client.HTTPSConnection):
    pass


def tls_context(insecure: bool) -> ssl.SSLContext:
    """Return the TLS context: system CAs, or REQUESTS_CA_BUNDLE's, or none (--insecure)."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    context = ssl.create_default_context(cafile=bundle)
    if bundle is None and not context.cert_store_stats()["x509_ca"]:
        # A Python whose OpenSSL looks elsewhere (some pyenv builds): the distribution's bundle.
        for candidate in SYSTEM_BUNDLES:
            if os.path.isfile(candidate):
                context.load_verify_locations(candidate)
                break
    return context


def is_loopback(host: str) -> bool:
    """Return whether `host` (no port) is localhost, in 127.0.0.0/8 or ::1."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """Return the (host, port) of the proxy the environment names for `scheme`, if any."""
    if not any(key.lower() in ("http_proxy", "https_proxy") for key in os.environ):
        return None  # the common case, without importing urllib.request
    import urllib.request

    if is_loopback(host) or urllib.request.proxy_bypass_environment(host):
        return None
    proxy = urllib.request.getproxies_environment().get(scheme)
    if not proxy:
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or 80


class Pool:
    """Keep-alive connections by origin (scheme, host, port), shared between threads."""

    def __init__(self, insecure: bool, limits: Limits | None = None):
        self.insecure = insecure
        self.limits = limits or Limits.from_environment()
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._tls = None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self.insecure)  # only when HTTPS is used: it loads CAs
        return self._tls

    def put(self, origin, connection) -> None:
        with self._lock:
            self._idle.setdefault(origin, []).append(connection)

    def _take(self, origin):
        with self._lock:
            idle = self._idle.get(origin)
            return idle.pop() if idle else None

    def _new(self, origin):
        scheme, host, port = origin
        proxy = _proxy_for(scheme, host)
        if scheme == "https":
            if proxy:
                connection = _HTTPSConnection(*proxy, timeout=CONNECT_TIMEOUT,
                                              context=self._context())
                connection.set_tunnel(host, port)
            else:
                connection = _HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT,
                                              context=self._context())
        else:
            connection = _HTTPConnection(*(proxy or (host, port)), timeout=CONNECT_TIMEOUT)
        connection.via_proxy = bool(proxy) and scheme == "http"
        connection.idle = self.limits.idle
        return connection

    def request(self, method: str, url: str, headers: dict, body: bytes | None = None, *,
                stream: bool = False) -> Response:
        """Send one request and return its response (headers read, body not).

        The status line and headers must arrive within the deadline; so must
        the body, unless `stream` (a blob): then it must keep up the speed limit.
        """
        clock = Clock(self.limits)
        origin, target = _split_url(url)
        # http.client adds Host and `Accept-Encoding: identity` (no decoding of blobs).
        headers = {"User-Agent": "minict", **headers}
        while True:
            connection = self._take(origin)
            reused = connection is not None
            if connection is None:
                connection = self._new(origin)
                connection.timeout = min(CONNECT_TIMEOUT, clock.timeout())
            elif connection.sock is not None:
                connection.sock.settimeout(clock.timeout())  # for sending; reads set their own
            connection.clock = clock
            try:
                connection.request(method, url if connection.via_proxy else target, body=body,
                                   headers=headers)
                raw = connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                if reused:
                    continue  # the server closed an idle connection: open a new one
                raise
            except BaseException:
                connection.close()
                raise
            if stream:
                clock.body()
            return Response(raw, connection, self, origin)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _split_url(url: str) -> tuple[tuple[str, str, int], str]:
    """Return ((scheme, host, port), request target) of `url`; raise http.client.InvalidURL.

    URLs come from registries too (Location, a challenge's realm): a port
    out of range or a host that is no host name is one clear error.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        if parts.hostname:
            parts.hostname.encode("idna")
    except (ValueError, UnicodeError):
        raise http.client.InvalidURL("a URL with an invalid host or port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise http.client.InvalidURL(f"unsupported URL scheme {parts.scheme[:20]!r}")
    origin = (parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
    return origin, urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
