"""HTTP for the registry client: one `requests.Session` per registry, one retry policy.

Imported only by the commands that talk to a registry (pull, run --pull):
`requests` costs ~40 ms of CPU to import, which `start` and the listings never pay.

- Connections: a pool per origin in the session's adapter, sized to --jobs,
  shared by the download threads; bodies are always streamed.
- TLS: each host's context from tls.py (system CAs or REQUESTS_CA_BUNDLE,
  plus docker's certs.d), or none with --insecure.
- Proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, with the
  user and password a proxy URL carries; never for loopback hosts (Go's
  ProxyFromEnvironment rule).  Nothing else comes from the environment
  (no .netrc, no cookies).
- No redirects, no content decoding: the caller decides both.
- Every read of a response (status line, headers, body, chunked or not)
  waits at most what its exchange's timeouts.Clock allows: the connection
  class gives http.client a socket whose reads set their own timeout.
- One retry policy (http_errors.RETRY) for every request: connection errors, 429
  and 5xx, with Retry-After honoured; the final errors are listed there.

Failures surface as the error under requests' and urllib3's wrappers, one
of http_errors.NETWORK_ERRORS: OSError (socket, ssl), http.client.HTTPException,
ProxyFailed, ConnectTimedOut, or the Clock's DeadlineExceeded and TooSlow.
"""

import contextlib
import http.client
import io
import os
import ssl
import threading
import time
import urllib.parse

import requests
import requests.adapters
import urllib3
import urllib3.exceptions

from minict import boundedjson, log
from minict.image.http_errors import NETWORK_ERRORS, RETRY, ConnectTimedOut, ProxyFailed, describe
from minict.image.timeouts import Clock, DeadlineExceeded, Limits, TooSlow
from minict.image.tls import tls_context

CONNECT_TIMEOUT = 10  # seconds to connect and finish the TLS handshake


# -- responses -------------------------------------------------------------------

class Response:
    """One response with its body unread; read it with read1()/read() and close it."""

    def __init__(self, response: requests.Response, clock: Clock):
        self._response = response
        self._raw = response.raw  # urllib3's response: no decoding, reads through the Clock
        self.status_code = response.status_code
        self.reason = response.reason
        self.headers = response.headers  # case-insensitive .get()
        self.clock = clock

    def read1(self, size: int) -> bytes:
        """Return the next bytes of the body (at most `size`; b"" at its end)."""
        try:
            return self._raw.read1(size)
        except _WRAPPERS as err:
            cause = _cause(err)
            if isinstance(cause, http.client.IncompleteRead) and not self._raw.chunked:
                # Fewer bytes than Content-Length: the end, as http.client reports it; the
                # caller sees the body is short (and says so in its own words).
                return b""
            raise cause from None

    def read(self, limit: int) -> bytes:
        """Return the body, at most `limit` + 1 bytes of it (so callers can spot too long)."""
        chunks, total = [], 0
        while total <= limit and (chunk := self.read1(min(65536, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def json(self, limit: int = 1 << 20):
        """Return the body parsed as JSON (at most `limit` bytes); raise ValueError."""
        return boundedjson.loads(self.read(limit), limit)

    def close(self) -> None:
        """Give the connection back if the body was read to its end, else drop it."""
        raw = self._raw
        if raw.length_remaining == 0 and not raw.isclosed():
            # Nothing left (HEAD, an empty body): reading the end lets urllib3 reuse the connection.
            with contextlib.suppress(*_WRAPPERS, *NETWORK_ERRORS):
                raw.read()  # b"": no byte is left to wait for
        self._response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the Clock on every read -----------------------------------------------------

# The Clock of the exchange a thread is sending: connections read it when
# http.client asks them for a response reader (one connection serves one
# exchange at a time, in the thread that sent it).
_exchange = threading.local()


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

    def __init__(self, sock, clock: Clock):
        self._sock, self._clock = sock, clock

    def makefile(self, mode: str):
        return io.BufferedReader(_ClockedReader(self._sock, self._clock))


class _Clocked:
    """Both connection classes: http.client reads each response (and a proxy's CONNECT
    answer) through a _ClockedSocket, so urllib3's reads of status line, headers and
    body, chunked or not, all go through the exchange's Clock."""

    def response_class(self, sock, *args, **kwargs):
        return http.client.HTTPResponse(_ClockedSocket(sock, _exchange.clock), *args, **kwargs)


class _HTTPConnection(_Clocked, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Clocked, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with clocked connections and the TLS context of each host."""

    def __init__(self, tls, jobs: int):
        self._tls = tls  # host[:port] -> ssl.SSLContext
        super().__init__(pool_maxsize=max(1, jobs), max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager

    def cert_verify(self, conn, url, verify, cert):
        # The CAs are in our own context (tls_context); requests would add certifi's.
        conn.cert_reqs = "CERT_REQUIRED" if verify else "CERT_NONE"
        conn.ca_certs = None

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if host_params["scheme"] == "https":
            pool_kwargs["ssl_context"] = self._tls(urllib.parse.urlsplit(request.url).netloc)
        return host_params, pool_kwargs


# -- proxies and URLs ---------------------------------------------------------------

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


def proxy_for(url: str) -> str | None:
    """Return the proxy URL (credentials included) the environment names for `url`, or None."""
    if not any(key.lower() in ("http_proxy", "https_proxy") for key in os.environ):
        return None  # the common case, without importing urllib.request
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host) or urllib.request.proxy_bypass_environment(parts.netloc):
        return None
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def check_url(url: str) -> None:
    """Raise http.client.InvalidURL unless `url` is http(s) with a usable host and port.

    URLs come from registries too (Location, a challenge's realm): a port
    out of range or a host that is no host name is one clear error.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
        if parts.hostname:
            parts.hostname.encode("idna")
    except (ValueError, UnicodeError):
        raise http.client.InvalidURL("a URL with an invalid host or port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise http.client.InvalidURL(f"unsupported URL scheme {parts.scheme[:20]!r}")


# -- errors under the wrappers ---------------------------------------------------

_WRAPPERS = (requests.RequestException, urllib3.exceptions.HTTPError)


def _cause(err: BaseException, proxy: str | None = None) -> BaseException:
    """Return the error of the socket, TLS or http.client under requests' and urllib3's.

    A proxy that would not open a tunnel (CONNECT answered 407) or cannot be
    reached becomes ProxyFailed, naming the proxy without its credentials.
    """
    via_proxy = isinstance(err, requests.exceptions.ProxyError)
    connecting = False
    for _ in range(10):  # wrappers nest a few levels deep
        if isinstance(err, urllib3.exceptions.ProxyError):
            via_proxy = True
        # Exactly this type: urllib3's NewConnectionError (refused, DNS) derives from it.
        connecting |= type(err) is urllib3.exceptions.ConnectTimeoutError
        if not isinstance(err, _WRAPPERS) or isinstance(err, http.client.HTTPException):
            break
        inner = getattr(err, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in err.args if isinstance(a, BaseException)), None)
        inner = inner or err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    refused = type(err) is OSError and str(err).startswith("Tunnel connection failed: ")
    if proxy and (via_proxy or refused):
        if refused:  # the CONNECT answer: "407 Proxy Authentication Required"
            words = str(err).removeprefix("Tunnel connection failed: ")
        elif isinstance(err, OSError) and err.strerror:
            words = err.strerror
        else:
            words = type(err).__name__
        return ProxyFailed(proxy, words)
    if proxy and isinstance(err, (requests.exceptions.InvalidSchema,
                                  requests.exceptions.InvalidProxyURL)):
        return ProxyFailed(proxy, "a proxy URL scheme requests cannot use (http:// or https://)")
    if connecting and isinstance(err, TimeoutError) \
            and not isinstance(err, (DeadlineExceeded, TooSlow)):
        return ConnectTimedOut(*err.args)
    if isinstance(err, _WRAPPERS):  # no socket error under it: a protocol error of urllib3's
        return http.client.HTTPException(type(err).__name__)
    return err


# -- the session -------------------------------------------------------------------

class Session:
    """The HTTP side of one registry: pooled connections, TLS, proxies, the retry policy."""

    def __init__(self, insecure: bool, jobs: int = 1, limits: Limits | None = None):
        self.insecure = insecure
        self.limits = limits or Limits.from_environment()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self.session = requests.Session()
        self.session.trust_env = False  # no .netrc; proxies and CAs are read here
        self.session.headers = requests.structures.CaseInsensitiveDict(
            {"User-Agent": "minict", "Accept-Encoding": "identity"})  # never decode blobs
        import http.cookiejar

        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = _Adapter(self._tls, jobs)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _tls(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if host not in self._contexts:  # loaded on first HTTPS use: it reads CAs
                self._contexts[host] = tls_context(host, self.insecure)
            return self._contexts[host]

    def send(self, method: str, url: str, headers: dict, body: bytes | None = None, *,
             stream: bool = False) -> Response:
        """Send one request once; return its response (headers read, body not).

        The status line and headers must arrive within the deadline; so must
        the body, unless `stream` (a blob): then it must keep up the speed
        limit.  Raise one of NETWORK_ERRORS.
        """
        check_url(url)
        clock = Clock(self.limits)
        proxy = proxy_for(url)
        scheme = url.split(":", 1)[0]
        prepared = self.session.prepare_request(
            requests.Request(method, url, headers=headers, data=body))
        # The adapter, not Session.send: that one reads a whole redirect's body,
        # however long, even when told not to follow it.
        adapter = self.session.get_adapter(url)
        _exchange.clock = clock
        try:
            response = adapter.send(prepared, stream=True, verify=not self.insecure,
                                    timeout=(min(CONNECT_TIMEOUT, clock.timeout()),
                                             self.limits.idle),
                                    proxies={scheme: proxy} if proxy else {})
        except (*_WRAPPERS, *NETWORK_ERRORS) as err:
            raise _cause(err, proxy) from None
        finally:
            _exchange.clock = None
        if response.status_code == 407 and proxy:
            response.close()
            raise ProxyFailed(proxy, f"407 {response.reason or 'Proxy Authentication Required'}")
        if stream:
            clock.body()
        return Response(response, clock)

    def request(self, method: str, url: str, headers: dict, body: bytes | None = None, *,
                stream: bool = False, what: str = "") -> Response:
        """Send with RETRY: connection errors, 429 and 5xx are tried again, with backoff.

        Return the last response (its status may still be 429 or 5xx when
        the tries ran out); raise the last of NETWORK_ERRORS.
        """
        attempt = 0
        while True:
            try:
                response = self.send(method, url, headers, body, stream=stream)
            except NETWORK_ERRORS as err:
                attempt += 1
                parts = urllib.parse.urlsplit(url)
                host = parts.netloc.rsplit("@", 1)[-1]
                if attempt >= RETRY.attempts or isinstance(err, RETRY.final):
                    # A request that got no answer (a failed DNS lookup, a
                    # refused connection) gets its debug line like every other;
                    # no query string, no user: a signed URL's secrets stay out.
                    log.debug(f"{method} {parts.scheme}://{host}{parts.path}: "
                              f"{describe(err, host)}; giving up")
                    raise
                wait = RETRY.backoff(attempt)
                log.debug(f"{what}: {describe(err, host)}; retrying in {wait:.1f}s")
                time.sleep(wait)
                continue
            if not RETRY.retry_status(response.status_code) or attempt + 1 >= RETRY.attempts:
                return response
            attempt += 1
            wait = RETRY.retry_after(response.headers, attempt)
            log.debug(f"{what}: HTTP {response.status_code}; retrying in {wait:.1f}s")
            response.close()
            time.sleep(wait)

    def close(self) -> None:
        self.session.close()
