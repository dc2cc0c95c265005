"""HTTP to one repository of a registry (the OCI distribution spec).

    ping        GET /v2/                      learns the scheme and the auth challenge
    manifests   HEAD/GET /v2/<name>/manifests/<tag or digest>
    blobs       GET /v2/<name>/blobs/<digest>  streamed, with Range to resume

Every request states the statuses it accepts; anything else becomes one
clear PullError.  Authentication follows the `WWW-Authenticate` challenge
(Bearer token or Basic) and is renewed on a 401.  Redirects are followed by
hand so the Authorization header never reaches another host (blob storage).
Connection errors, 5xx and 429 are retried with bounded backoff.

Nothing secret is ever logged: Authorization headers are never printed,
and query strings of URLs on other hosts (signed storage URLs) are cut.
"""

import base64
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse

import requests
import urllib3

from minict import log
from minict.auth import Credentials
from minict.errors import PullError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}"

MANIFEST_MAX = 4 * 1024 * 1024
TIMEOUT = (10, 60)  # seconds to connect, seconds without a byte while reading
ATTEMPTS = 5        # tries per request for connection errors, 5xx and 429
BACKOFF_MAX = 10.0  # seconds; a Retry-After above this is cut to it
MAX_REDIRECTS = 5
TOKEN_DEFAULT_TTL = 60  # seconds, when the token server gives no expires_in

# Errors in a body or in the middle of a stream (urllib3's own, wrapped by requests or not).
STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class Unauthorized(PullError):
    """The registry refused us even after authenticating."""


def is_loopback(host: str) -> bool:
    """Return whether `host` (without port) is localhost, 127.0.0.0/8 or ::1."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(endpoint: str) -> str:
    """Return the host of `host[:port]` (IPv6 in brackets)."""
    if endpoint.startswith("["):
        return endpoint[1:endpoint.index("]")]
    return endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint


def schemes(endpoint: str, insecure: bool) -> list[str]:
    """Return the schemes to try, in order (Docker's rule for plain HTTP).

    Loopback registries may speak plain HTTP without asking; HTTP goes first
    there because a TLS server answers plain HTTP at once with a 400, while
    some HTTP servers never answer a TLS hello.  Elsewhere plain HTTP is
    allowed only with --insecure, after HTTPS failed.
    """
    if is_loopback(split_host(endpoint)):
        return ["http", "https"]
    if insecure:
        return ["https", "http"]
    return ["https"]


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """Return (scheme, params) of the best challenge in WWW-Authenticate, or None.

    A header may carry several challenges (`Basic realm="x", Bearer ...`);
    Bearer is preferred.  Params are RFC 7235 auth-params.
    """
    found: dict[str, dict[str, str]] = {}
    current = None
    pos = 0
    while pos < len(header):
        match = _TOKEN.match(header, pos)
        if not match:
            break
        name, pos = match.group(1), match.end()
        if header.startswith("=", pos):
            value_match = _VALUE.match(header, pos + 1)
            value, pos = value_match.group(1), value_match.end()
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if current is not None:
                current[name.lower()] = value
        else:
            current = found.setdefault(name.lower(), {})
    for scheme in ("bearer", "basic"):
        if scheme in found:
            return scheme, found[scheme]
    return None


_TOKEN = re.compile(r"[\s,]*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*")
_VALUE = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def redact(url: str, trusted_host: str) -> str:
    """Return `url` fit for a log line: no user info; no query off `trusted_host`."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query and netloc != trusted_host:
        query = "…"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def describe(err: BaseException, host: str) -> str:
    """Turn a requests/urllib3/socket failure into one line without URLs or secrets."""
    seen = []
    cause: BaseException | None = err
    while cause is not None and cause not in seen:
        seen.append(cause)
        nxt = cause.__cause__ or cause.__context__
        if nxt is None and cause.args and isinstance(cause.args[0], BaseException):
            nxt = cause.args[0]
        if nxt is None and getattr(cause, "reason", None) is not None:
            reason = cause.reason
            nxt = reason if isinstance(reason, BaseException) else None
        cause = nxt
    def first(kind):
        return next((e for e in seen if isinstance(e, kind)), None)

    if (e := first(ssl.SSLCertVerificationError)) is not None:
        return f"TLS certificate of {host} not trusted: {e.verify_message}"
    if (e := first((ssl.SSLError, requests.exceptions.SSLError))) is not None:
        return f"TLS handshake with {host} failed: {getattr(e, 'reason', None) or type(e).__name__}"
    if first((socket.gaierror, urllib3.exceptions.NameResolutionError)) is not None:
        return f"cannot resolve registry host {split_host(host)!r} (DNS lookup failed)"
    if first(ConnectionRefusedError) is not None:
        return f"cannot connect to {host}: connection refused"
    # urllib3's NewConnectionError is a ConnectTimeoutError too; it is no timeout.
    if any(isinstance(e, (TimeoutError, requests.exceptions.Timeout,
                          urllib3.exceptions.TimeoutError))
           and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in seen):
        return f"{host} did not answer in time"
    if (e := first(urllib3.exceptions.ProtocolError)) is not None:
        return f"connection to {host} broke: {_short(e)}"
    for e in seen:
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            return f"connection to {host} failed: {e.strerror}"
    return f"connection to {host} failed: {type(err).__name__}"


def _short(err: BaseException) -> str:
    # urllib3 puts the pool and URL in its messages; keep the part after the last ': '.
    text = str(err.args[0]) if err.args else type(err).__name__
    return text.strip("()'\" ")


def _is_tls_error(err: BaseException) -> bool:
    return "TLS" in describe(err, "")


def retry_after(response: requests.Response, attempt: int) -> float:
    """Return seconds to wait before retrying: Retry-After if given, else backoff."""
    value = response.headers.get("Retry-After", "") if response is not None else ""
    wait = None
    if value.strip().isdigit():
        wait = float(value.strip())
    elif value:
        import email.utils  # only a 429/503 with an HTTP date needs it

        try:
            when = email.utils.parsedate_to_datetime(value)
            wait = when.timestamp() - time.time()
        except (TypeError, ValueError):
            wait = None
    if wait is None:
        wait = 0.5 * 2 ** attempt
    return max(0.0, min(wait, BACKOFF_MAX))


def registry_error(response: requests.Response) -> str:
    """Return the registry's own words for a failed request (errors[0].message)."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
        if code and message:
            return f"{message} ({code})"
        return message or code or f"HTTP {response.status_code}"
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()


class Registry:
    """One repository on one registry, with its scheme and credentials settled lazily."""

    def __init__(self, endpoint: str, repository: str, *, insecure: bool,
                 credentials=lambda: None, connections: int = 10):
        self.endpoint = endpoint            # host[:port] to talk to
        self.repository = repository        # library/ubuntu
        self.insecure = insecure
        self._credentials_source = credentials
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self.base: str | None = None        # scheme://endpoint after ping()
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=max(10, connections),
                                                max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "minict"
        # Per request, because requests lets REQUESTS_CA_BUNDLE override Session.verify.
        self._tls = {"verify": False} if insecure else {}
        if insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._lock = threading.Lock()
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._authorization: str | None = None
        self._expires = float("inf")

    # -- low level ---------------------------------------------------------

    def _send(self, method: str, url: str, *, headers=None, stream=False,
              authorization: str | None = None) -> requests.Response:
        """Send one request, following redirects by hand; raise requests errors.

        Authorization goes only to this registry's own scheme://host:port.
        """
        headers = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            own = self.base is not None and url.startswith(self.base + "/")
            if authorization and own:
                sent["Authorization"] = authorization
            response = self.session.request(method, url, headers=sent, stream=stream,
                                            allow_redirects=False, timeout=TIMEOUT, **self._tls)
            log.debug(f"{method} {redact(url, self.endpoint)} {response.status_code}")
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                target = urllib.parse.urljoin(url, response.headers["Location"])
                response.close()
                if response.status_code == 303:
                    method = "GET"
                url = target
                continue
            return response
        raise PullError(f"too many redirects from {self.endpoint}")

    def request(self, method: str, path: str, *, statuses: set[int], what: str,
                headers=None, stream=False) -> requests.Response:
        """Send `method` to `path` on this registry; return a response with a status in `statuses`.

        Authenticate, retry connection errors, 5xx and 429 with bounded
        backoff, renew the token once on a 401.  Raise PullError otherwise,
        its message starting with `what`.
        """
        if self.base is None:
            self.ping()
        url = self.base + path
        renewed = False
        attempt = 0
        while True:
            authorization = self._current_authorization()
            try:
                response = self._send(method, url, headers=headers, stream=stream,
                                      authorization=authorization)
            except requests.RequestException as err:
                attempt += 1
                if attempt >= ATTEMPTS or "DNS" in describe(err, "") or _is_tls_error(err):
                    raise PullError(f"{what}: {describe(err, self.endpoint)}") from None
                wait = min(0.5 * 2 ** attempt, BACKOFF_MAX)
                log.debug(f"{what}: {describe(err, self.endpoint)}; retrying in {wait:.1f}s")
                time.sleep(wait)
                continue
            status = response.status_code
            if status in statuses:
                return response
            if status == 401 and not renewed:
                renewed = True
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                response.close()
                if challenge is not None:
                    log.debug(f"{what}: 401, authenticating again ({challenge[0]})")
                    self._authenticate(challenge, stale=authorization)
                    continue
            if (status == 429 or status >= 500) and attempt + 1 < ATTEMPTS:
                attempt += 1
                wait = retry_after(response, attempt)
                log.debug(f"{what}: HTTP {status}; retrying in {wait:.1f}s")
                response.close()
                time.sleep(wait)
                continue
            raise self._failure(response, what)

    def _failure(self, response: requests.Response, what: str) -> PullError:
        status = response.status_code
        reason = registry_error(response)
        response.close()
        if status in (401, 403):
            return Unauthorized(
                f"{what}: {reason}: access to {self.endpoint}/{self.repository} denied",
                hint="the repository may not exist, or needs credentials in Docker's config.json",
            )
        if status == 429 or status >= 500:
            reason = f"HTTP {status}: {reason}"
        return PullError(f"{what}: {reason}")

    # -- ping and authentication ---------------------------------------------

    def ping(self) -> None:
        """Settle the scheme (HTTPS, or HTTP where allowed) and the auth challenge."""
        order = schemes(self.endpoint, self.insecure)
        for i, scheme in enumerate(order):
            base = f"{scheme}://{self.endpoint}"
            last = i == len(order) - 1
            try:
                response = self._ping_once(base)
            except requests.RequestException as err:
                text = describe(err, self.endpoint)
                if not last and ("refused" not in text and "DNS" not in text):
                    log.debug(f"ping {base}: {text}; trying {order[i + 1]}")
                    continue
                hint = None
                if "TLS" in text and not self.insecure:
                    hint = "use --insecure to skip TLS verification (or plain HTTP) for this registry"
                raise PullError(text, hint=hint) from None
            if response.status_code == 400 and not last:
                # A TLS server saying "Client sent an HTTP request to an HTTPS server".
                log.debug(f"ping {base}: 400; trying {order[i + 1]}")
                continue
            break
        self.base = base
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is None:
                raise PullError(f"{self.endpoint} asks for authentication it does not name "
                                "(no Bearer or Basic challenge)")
            self._authenticate(challenge, stale=None)
        elif response.status_code != 200:
            raise PullError(f"{self.endpoint} is not a registry speaking the v2 API "
                            f"(GET /v2/ answered HTTP {response.status_code})")

    def _ping_once(self, base: str) -> requests.Response:
        """GET /v2/ at `base`, retrying 429 and 5xx; raise requests errors."""
        url = base + "/v2/"
        for attempt in range(1, ATTEMPTS + 1):
            response = self.session.get(url, timeout=TIMEOUT, allow_redirects=False, **self._tls)
            log.debug(f"GET {redact(url, self.endpoint)} {response.status_code}")
            response.close()
            if (response.status_code == 429 or response.status_code >= 500) and attempt < ATTEMPTS:
                wait = retry_after(response, attempt)
                log.debug(f"ping: HTTP {response.status_code}; retrying in {wait:.1f}s")
                time.sleep(wait)
                continue
            break
        return response

    def credentials(self) -> Credentials | None:
        """Return the credentials for this registry, reading them once, on demand."""
        if not self._credentials_loaded:
            self._credentials = self._credentials_source()
            self._credentials_loaded = True
        return self._credentials

    def _current_authorization(self) -> str | None:
        with self._lock:
            if self._authorization and self._challenge and time.monotonic() >= self._expires:
                log.debug("token expired; fetching a new one")
                self._refresh_locked(self._challenge)
            return self._authorization

    def _authenticate(self, challenge, *, stale: str | None) -> None:
        """Answer `challenge`; a no-op if another thread renewed since `stale` was used."""
        with self._lock:
            if stale is not None and self._authorization not in (None, stale):
                return
            self._challenge = challenge
            self._refresh_locked(challenge)

    def _refresh_locked(self, challenge) -> None:
        scheme, params = challenge
        creds = self.credentials()
        if scheme == "basic":
            if not creds or not (creds.username or creds.password):
                raise Unauthorized(f"{self.endpoint} requires a user name and password",
                                   hint="add them to Docker's config.json (docker login)")
            pair = f"{creds.username}:{creds.password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
            self._expires = float("inf")
            log.debug(f"using basic authentication for {self.endpoint}")
            return
        if creds and creds.registry_token:
            self._authorization = f"Bearer {creds.registry_token}"
            self._expires = float("inf")
            return
        token, ttl = self._fetch_token(params, creds)
        self._authorization = f"Bearer {token}"
        self._expires = time.monotonic() + max(ttl - 5, 1)

    def _fetch_token(self, params: dict[str, str], creds: Credentials | None) -> tuple[str, int]:
        """Ask the token server named by a Bearer challenge; return (token, seconds valid)."""
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise PullError(f"{self.endpoint} sent a Bearer challenge without a usable realm")
        scopes = [f"repository:{self.repository}:pull"]
        if params.get("scope") and params["scope"] not in scopes:
            scopes.append(params["scope"])
        query = {"scope": scopes}
        if params.get("service"):
            query["service"] = params["service"]
        realm_host = urllib.parse.urlsplit(realm).netloc
        try:
            if creds and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": "minict", "scope": " ".join(scopes),
                        "service": params.get("service", "")}
                response = self.session.post(realm, data=form, timeout=TIMEOUT, **self._tls)
            else:
                auth = (creds.username, creds.password) if creds and creds.username else None
                response = self.session.get(realm, params=query, auth=auth, timeout=TIMEOUT,
                                            **self._tls)
        except requests.RequestException as err:
            raise PullError(f"getting a token: {describe(err, realm_host)}") from None
        log.debug(f"{response.request.method} {redact(response.url, realm_host)} "
                  f"{response.status_code} (token for {' '.join(scopes)}"
                  f"{', with credentials' if creds else ', anonymous'})")
        if response.status_code in (401, 403):
            raise Unauthorized(
                f"the token server of {self.endpoint} refused "
                f"{'the credentials from config.json' if creds else 'anonymous access'}: "
                f"{registry_error(response)}")
        if response.status_code != 200:
            raise PullError(f"getting a token from {realm_host}: HTTP {response.status_code}")
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            ttl = int(answer.get("expires_in") or TOKEN_DEFAULT_TTL)
        except (ValueError, AttributeError, TypeError):
            raise PullError(f"the token server {realm_host} sent no JSON token") from None
        if not isinstance(token, str) or not token:
            raise PullError(f"the token server {realm_host} sent no token")
        return token, ttl

    # -- the API -------------------------------------------------------------

    def manifest_digest(self, reference: str) -> str | None:
        """Return the digest the registry gives for `reference` with HEAD, or None."""
        response = self.request("HEAD", f"/v2/{self.repository}/manifests/{reference}",
                                statuses={200, 404}, what=f"checking manifest {reference}",
                                headers={"Accept": ACCEPT})
        response.close()
        if response.status_code != 200:
            return None
        return response.headers.get("Docker-Content-Digest")

    def manifest(self, reference: str) -> tuple[bytes, str, str | None]:
        """Return (bytes, media type, Docker-Content-Digest) of a manifest or index.

        Raise PullError for an unknown manifest or one over 4 MiB.
        """
        what = f"reading manifest {reference} of {self.endpoint}/{self.repository}"
        response = self.request("GET", f"/v2/{self.repository}/manifests/{reference}",
                                statuses={200}, what=what, headers={"Accept": ACCEPT},
                                stream=True)
        with response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MANIFEST_MAX:
                raise PullError(f"{what}: {length} bytes is over the {MANIFEST_MAX}-byte limit")
            chunks, total = [], 0
            try:
                for chunk in response.iter_content(65536):
                    total += len(chunk)
                    if total > MANIFEST_MAX:
                        raise PullError(f"{what}: more than the {MANIFEST_MAX}-byte limit")
                    chunks.append(chunk)
            except STREAM_ERRORS as err:
                raise PullError(f"{what}: {describe(err, self.endpoint)}") from None
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        return b"".join(chunks), media, response.headers.get("Docker-Content-Digest")

    def blob(self, digest: str, offset: int = 0) -> requests.Response:
        """Return a streaming response for blob `digest`, from byte `offset` if > 0.

        The status is 200 (whole blob), 206 (from `offset`) or 416 (the
        registry cannot serve that range); the caller reads `response.raw`
        and closes it.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        statuses = {200, 206, 416} if offset else {200}
        what = f"fetching blob {digest}"
        return self.request("GET", f"/v2/{self.repository}/blobs/{digest}", statuses=statuses,
                            what=what, headers=headers, stream=True)

    def close(self) -> None:
        self.session.close()
