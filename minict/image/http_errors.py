"""What goes wrong in an HTTP exchange with a registry: the errors, their words, their retries.

    NETWORK_ERRORS  everything http.py raises for a failed exchange
    describe()      one line for each, without URLs or secrets
    RETRY           the one retry policy: connection errors (but not the
                    final ones), 429 and 5xx; 5 tries per request, 5
                    interruptions in a row of one blob body; 0.5 s doubling
                    (1, 2, 4, 8 s), at most 10 s, or a Retry-After (seconds or
                    an HTTP date) instead, cut to 10 s

http.Session.request applies RETRY to every request; pull.py's resume loop
counts and waits by it for bodies cut off mid-way (a retried request cannot
resume; a Range request can).  Plain data and words: no requests here.
"""

import http.client
import socket
import ssl
import time
import urllib.parse

from minict.errors import shorten
from minict.image.timeouts import DeadlineExceeded, TooSlow


class ProxyFailed(OSError):
    """The proxy refused to carry a request (a 407: wrong or missing credentials) or is down."""

    def __init__(self, proxy: str, words: str):
        name = urllib.parse.urlsplit(proxy).netloc.rsplit("@", 1)[-1]  # never its password
        super().__init__(f"the proxy {name} failed: {words}")
        self.refused_credentials = words.startswith("407")


class ConnectTimedOut(TimeoutError):
    """Nothing accepted the connection within CONNECT_TIMEOUT (or the deadline)."""


# Everything a broken connection, a refused one, a failed handshake or a limit raises.
NETWORK_ERRORS = (OSError, http.client.HTTPException, DeadlineExceeded, TooSlow)


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
