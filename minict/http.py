"""HTTP for the registry client: one `requests.Session` per registry, one retry policy.

Imported only by the commands that talk to a registry (pull, run --pull):
`requests` costs ~40 ms of CPU to import, which `start` and the listings never pay.

- Connections: a pool per origin in the session's adapter, sized to --jobs,
  shared by the download threads; bodies are always streamed.
- TLS: the system CAs, or the bundle REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
  names; plus, as docker reads them, the files in /etc/docker/certs.d/<host[:port]>/
  (MINICT_CERTS_D moves that directory): every *.crt is a CA, every
  *.cert with its *.key a client certificate.  --insecure verifies nothing.
- Proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, with the
  user and password a proxy URL carries; never for loopback hosts (Go's
  ProxyFromEnvironment rule).  Nothing else comes from the environment
  (no .netrc, no cookies).
- No redirects, no content decoding: the caller decides both.
- Every read of a response (status line, headers, body, chunked or not)
  waits at most what its exchange's timeouts.Clock allows: the connection
  class gives http.client a socket whose reads set their own timeout.
- One retry policy (RETRY) for every request: connection errors, 429 and
  5xx, with Retry-After honoured up to RETRY.backoff_max; the blob resume
  loop in pull.py counts and waits by it too.

Failures surface as the error under requests' and urllib3's wrappers:
OSError (socket, ssl), http.client.HTTPException, ProxyFailed, or the
Clock's DeadlineExceeded and TooSlow.
"""

import contextlib
import http.client
import io
import os
import socket
import ssl
import threading
import time
import urllib.parse

import requests
import requests.adapters
import urllib3
import urllib3.exceptions

from minict import boundedjson, log
from minict.errors import MinictError, shorten
from minict.timeouts import Clock, DeadlineExceeded, Limits, TooSlow

CONNECT_TIMEOUT = 10  # seconds to connect and finish the TLS handshake
CERTS_D = "/etc/docker/certs.d"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/cert.pem")


class ProxyFailed(OSError):
    """The proxy refused to carry a request (a 407: wrong or missing credentials) or is down."""

    def __init__(self, proxy: str, words: str):
        super().__init__(f"the proxy {_proxy_name(proxy)} failed: {words}")
        self.refused_credentials = words.startswith("407")


class ConnectTimedOut(TimeoutError):
    """Nothing accepted the connection within CONNECT_TIMEOUT (or the deadline)."""


# Everything a broken connection, a refused one, a failed handshake or a limit raises.
NETWORK_ERRORS = (OSError, http.client.HTTPException, DeadlineExceeded, TooSlow)


# -- the one retry policy ------------------------------------------------------

class RetryPolicy:
    """How often and how long to retry: the one rule for requests and resumed blobs."""

    attempts = 5        # tries per request; interruptions in a row of one blob body
    backoff_max = 10.0  # seconds; a Retry-After above this is cut to it
    # Errors that the same request would meet again: no retry.  A peer too
    # slow for a whole deadline would be as slow again; nobody listens behind
    # a refused connection, and a host that let a connection time out (10 s,
    # after the kernel's own SYN retries) is filtered or gone.
    final = (socket.gaierror, ssl.SSLError, DeadlineExceeded, http.client.InvalidURL,
             ConnectionRefusedError, ConnectTimedOut, ProxyFailed)

    def backoff(self, attempt: int) -> float:
        """Return the seconds to wait before try `attempt` + 1 (0.5 s doubling, capped)."""
        return min(0.5 * 2 ** attempt, self.backoff_max)

    def retry_after(self, headers, attempt: int) -> float:
        """Return seconds to wait before retrying: Retry-After if given, else backoff."""
        value = headers.get("Retry-After", "") if headers is not None else ""
        wait = None
        if value.strip().isdigit():
            wait = float(value.strip())
        elif value:
            import email.utils  # only a 429/503 with an HTTP date needs it

            try:
                wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                wait = None
        if wait is None:
            wait = 0.5 * 2 ** attempt
        return max(0.0, min(wait, self.backoff_max))

    @staticmethod
    def retry_status(status: int) -> bool:
        return status == 429 or status >= 500


RETRY = RetryPolicy()


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


# -- TLS -------------------------------------------------------------------------

def certs_dir(host: str) -> str:
    """Return docker's per-registry directory for `host[:port]` (MINICT_CERTS_D moves the root)."""
    return os.path.join(os.environ.get("MINICT_CERTS_D") or CERTS_D, host.replace("/", "_"))


def tls_context(host: str, insecure: bool) -> ssl.SSLContext:
    """Return the TLS context for `host[:port]`; raise MinictError for a broken certs.d.

    System CAs (or REQUESTS_CA_BUNDLE's), the CAs and client certificate of
    docker's certs.d directory for the host, or no verification (--insecure).
    """
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
        context = ssl.create_default_context(cafile=bundle)
        if bundle is None and not context.cert_store_stats()["x509_ca"]:
            # A Python whose OpenSSL looks elsewhere (some pyenv builds): the distribution's bundle.
            for candidate in SYSTEM_BUNDLES:
                if os.path.isfile(candidate):
                    context.load_verify_locations(candidate)
                    break
    _load_certs_dir(context, certs_dir(host), insecure)
    return context


def _load_certs_dir(context: ssl.SSLContext, directory: str, insecure: bool) -> None:
    """Add what docker's certs.d/<host> holds: *.crt CAs, *.cert + *.key client certificates."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except OSError as err:
        raise MinictError(f"cannot read {directory}: {err.strerror}") from None
    pairs = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if name.endswith(".crt") and not insecure:
                context.load_verify_locations(path)
            elif name.endswith(".cert"):
                key = name[:-len(".cert")] + ".key"
                if key not in names:
                    raise MinictError(f"missing key {key} for client certificate {path}; "
                                      "CA certificates must use the extension .crt")
                pairs.append((path, os.path.join(directory, key)))
            elif name.endswith(".key") and name[:-len(".key")] + ".cert" not in names:
                raise MinictError(f"missing client certificate "
                                  f"{name[:-len('.key')]}.cert for key {path}")
        except (ssl.SSLError, OSError) as err:
            raise MinictError(f"cannot use {path}: {_ssl_words(err)}") from None
    # OpenSSL offers one client certificate per context: the first pair, by name.
    for cert, key in pairs[:1]:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as err:
            raise MinictError(f"cannot use client certificate {cert}: {_ssl_words(err)}") from None


def _ssl_words(err: BaseException) -> str:
    return getattr(err, "reason", None) or getattr(err, "strerror", None) or type(err).__name__


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


def _proxy_name(proxy: str) -> str:
    """Return host:port of a proxy URL: never its user or password."""
    return urllib.parse.urlsplit(proxy).netloc.rsplit("@", 1)[-1]


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


def split_host(endpoint: str) -> str:
    """Return the host of `host[:port]` (IPv6 in brackets)."""
    if endpoint.startswith("["):
        return endpoint[1:endpoint.index("]")]
    return endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint


def describe(err: BaseException, host: str) -> str:
    """Turn a network failure (one of NETWORK_ERRORS) into one line without URLs or secrets."""
    if isinstance(err, ProxyFailed):
        if err.refused_credentials:
            return f"{err}; check the user and password in HTTPS_PROXY/HTTP_PROXY"
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate of {host} not trusted: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake with {host} failed: {err.reason or type(err).__name__}"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve registry host {split_host(host)!r} (DNS lookup failed)"
    if isinstance(err, ConnectionRefusedError):
        return f"cannot connect to {host}: connection refused"
    if isinstance(err, DeadlineExceeded):
        return (f"{host} did not finish answering within {err.seconds:g} s "
                "(MINICT_REGISTRY_DEADLINE)")
    if isinstance(err, TooSlow):
        return (f"{host} sent less than {err.limit} bytes/s for {err.window:g} s "
                "(MINICT_SPEED_LIMIT, MINICT_SPEED_TIME)")
    if isinstance(err, TimeoutError):
        return f"{host} did not answer in time"
    if isinstance(err, http.client.IncompleteRead):
        return f"connection to {host} broke off in the middle of a body"
    if isinstance(err, http.client.InvalidURL):
        return f"{host} named a URL that cannot be used ({shorten(err, 80)})"
    if isinstance(err, http.client.RemoteDisconnected):
        return f"{host} closed the connection without answering"
    if isinstance(err, http.client.HTTPException):
        return f"{host} sent something that is not HTTP ({type(err).__name__})"
    if isinstance(err, OSError) and err.strerror:
        return f"connection to {host} failed: {err.strerror}"
    return f"connection to {host} failed: {type(err).__name__}"


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
                if attempt >= RETRY.attempts or isinstance(err, RETRY.final):
                    raise
                wait = RETRY.backoff(attempt)
                host = urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1]
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
