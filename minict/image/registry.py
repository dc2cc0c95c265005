"""HTTP to one repository of a registry (the OCI distribution spec).

    ping        GET /v2/                      learns the scheme and the auth challenge
    manifests   HEAD/GET /v2/<name>/manifests/<tag or digest>
    blobs       GET /v2/<name>/blobs/<digest>  streamed, with Range to resume

Every request states the statuses it accepts; anything else becomes one
clear PullError.  Authentication follows the `WWW-Authenticate` challenge
(Bearer token or Basic) and is renewed on a 401.  Redirects are followed by
hand so the Authorization header never reaches another host (blob storage).
Each request goes through http.Session.request, which retries connection
errors, 5xx and 429 by the one policy (http.RETRY); an answer that takes
longer than its deadline (timeouts.py) is not retried.

What a registry or token server sends is parsed within bounds: JSON by
boundedjson, tokens only if they fit in a header, expires_in clamped, and
quoted answers cut short in messages.

Nothing secret is ever logged: Authorization headers are never printed,
and query strings of URLs on other hosts (signed storage URLs) are cut.
"""

import base64
import http.client
import socket
import ssl
import threading
import time
import urllib.parse

from minict import boundedjson, log
from minict.errors import PullError, RegistryError, shorten
from minict.image.auth import Credentials
from minict.image.challenge import check_header_safe, parse_challenge, token_lifetime
from minict.image.http import Response, Session, is_loopback
from minict.image.http_errors import NETWORK_ERRORS, ProxyFailed, describe, split_host
from minict.image.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from minict.image.timeouts import DeadlineExceeded

ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}, {DOCKER_MANIFEST}"

MANIFEST_MAX = 4 * 1024 * 1024
MAX_REDIRECTS = 5


class Unauthorized(RegistryError):
    """The registry refused us even after authenticating (401 or 403)."""


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.rsplit("@", 1)[-1]


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


def redact(url: str, trusted_host: str) -> str:
    """Return `url` fit for a log line: no user info; no query off `trusted_host`."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query and netloc != trusted_host:
        query = "…"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def registry_error(response: Response) -> str:
    """Return the registry's own words for a failed request (errors[0].message), cut short."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        code, message = shorten(first.get("code", ""), 60), shorten(first.get("message", ""))
        if code and message:
            return f"{message} ({code})"
        return message or code or f"HTTP {response.status_code}"
    except (ValueError, AttributeError, IndexError, TypeError, *NETWORK_ERRORS):
        return f"HTTP {response.status_code} {shorten(response.reason or '', 60)}".strip()


class Registry:
    """One repository on one registry, with its scheme and credentials settled lazily."""

    def __init__(self, endpoint: str, repository: str, *, insecure: bool,
                 credentials=lambda: None, jobs: int = 1):
        self.endpoint = endpoint            # host[:port] to talk to
        self.repository = repository        # library/ubuntu
        self.insecure = insecure
        self._credentials_source = credentials
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self.base: str | None = None        # scheme://endpoint after ping()
        self.http = Session(insecure, jobs)  # a connection for each download thread
        self._lock = threading.Lock()
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._authorization: str | None = None
        self._expires = float("inf")

    # -- low level ---------------------------------------------------------

    def _send(self, method: str, url: str, *, what: str, headers=None,
              authorization: str | None = None, body: bytes | None = None,
              stream: bool = False) -> Response:
        """Send one request (retried by http.RETRY), following redirects by hand.

        `authorization` goes only to the origin of `url` as first given:
        never to the blob storage a registry redirects to.  Raise NETWORK_ERRORS.
        """
        headers = dict(headers or {})
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization and _origin(url) == origin:
                sent["Authorization"] = authorization
            response = self.http.request(method, url, sent, body, stream=stream, what=what)
            log.debug(f"{method} {redact(url, self.endpoint)} {response.status_code}")
            location = response.headers.get("Location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                response.read(65536)  # drain the small body so the connection can be reused
                response.close()
                if response.status_code == 303:
                    method, body = "GET", None
                try:
                    url = urllib.parse.urljoin(url, location)
                    _origin(url)
                except ValueError:  # urllib's "Invalid IPv6 URL", a port out of range
                    raise http.client.InvalidURL("a URL with an invalid host or port") from None
                continue
            return response
        raise PullError(f"too many redirects from {self.endpoint}")

    def request(self, method: str, path: str, *, statuses: set[int], what: str,
                headers=None, stream: bool = False) -> Response:
        """Send `method` to `path` on this registry; return a response with a status in `statuses`.

        Authenticate, renew the token once on a 401 (the retries of
        connection errors, 5xx and 429 are http.RETRY's).  Raise PullError
        otherwise, its message starting with `what`.  A `stream`ed body (a
        blob) has no deadline, only the low-speed limit (timeouts.py).
        """
        if self.base is None:
            self.ping()
        url = self.base + path
        renewed = False
        while True:
            authorization = self._current_authorization()
            try:
                response = self._send(method, url, what=what, headers=headers,
                                      authorization=authorization, stream=stream)
            except NETWORK_ERRORS as err:
                raise PullError(f"{what}: {describe(err, self.endpoint)}") from None
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
            raise self._failure(response, what)

    def _failure(self, response: Response, what: str) -> RegistryError:
        status = response.status_code
        reason = registry_error(response)
        response.close()
        if status in (401, 403):
            return Unauthorized(
                f"{what}: {reason}: access to {self.endpoint}/{self.repository} denied", status,
                hint="the repository may not exist, or needs credentials in Docker's config.json",
            )
        if status == 429 or status >= 500:
            reason = f"HTTP {status}: {reason}"
        return RegistryError(f"{what}: {reason}", status)

    # -- ping and authentication ---------------------------------------------

    def ping(self) -> None:
        """Settle the scheme (HTTPS, or HTTP where allowed) and the auth challenge."""
        order = schemes(self.endpoint, self.insecure)
        for i, scheme in enumerate(order):
            base = f"{scheme}://{self.endpoint}"
            last = i == len(order) - 1
            try:
                response = self.http.request("GET", base + "/v2/", {}, what="ping")
                log.debug(f"GET {redact(base + '/v2/', self.endpoint)} {response.status_code}")
                response.read(65536)
                response.close()
            except NETWORK_ERRORS as err:
                text = describe(err, self.endpoint)
                final = (ConnectionRefusedError, socket.gaierror, DeadlineExceeded, ProxyFailed)
                if not last and not isinstance(err, final):
                    log.debug(f"ping {base}: {text}; trying {order[i + 1]}")
                    continue
                hint = None
                if isinstance(err, ssl.SSLError) and not self.insecure:
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
                raise Unauthorized(f"{self.endpoint} requires a user name and password", 401,
                                   hint="add them to Docker's config.json (docker login)")
            pair = f"{creds.username}:{creds.password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
            self._expires = float("inf")
            log.debug(f"using basic authentication for {self.endpoint}")
            return
        if creds and creds.registry_token:
            token = check_header_safe(creds.registry_token, "in config.json (registrytoken)")
            self._authorization = f"Bearer {token}"
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
        try:
            realm_host = urllib.parse.urlsplit(realm).netloc
        except ValueError:  # "Invalid IPv6 URL"
            raise PullError(f"{self.endpoint} sent a Bearer challenge without a usable realm") from None
        headers, body, method, url = {}, None, "GET", realm
        if creds and creds.identity_token:
            # OAuth2 refresh-token grant (the distribution token spec's POST form).
            method, body = "POST", urllib.parse.urlencode({
                "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                "client_id": "minict", "scope": " ".join(scopes),
                "service": params.get("service", "")}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            url += ("&" if "?" in realm else "?") + urllib.parse.urlencode(query, doseq=True)
        authorization = None
        if creds and creds.username and method == "GET":
            pair = f"{creds.username}:{creds.password}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        try:
            response = self._send(method, url, what="getting a token", headers=headers,
                                  authorization=authorization, body=body)
        except NETWORK_ERRORS as err:
            raise PullError(f"getting a token: {describe(err, realm_host)}") from None
        log.debug(f"(token for {' '.join(scopes)}, {'with credentials' if creds else 'anonymous'})")
        if response.status_code in (401, 403):
            reason = registry_error(response)
            response.close()
            raise Unauthorized(
                f"the token server of {self.endpoint} refused "
                f"{'the credentials from config.json' if creds else 'anonymous access'}: {reason}",
                response.status_code)
        if response.status_code != 200:
            response.close()
            raise RegistryError(f"getting a token from {realm_host}: HTTP {response.status_code}",
                                response.status_code)
        try:
            with response:
                answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            ttl = token_lifetime(answer.get("expires_in"))
        except NETWORK_ERRORS as err:
            raise PullError(f"getting a token: {describe(err, realm_host)}") from None
        except (ValueError, AttributeError, TypeError) as err:
            why = boundedjson.explain(err) if isinstance(err, ValueError) else "not an object"
            raise PullError(f"the token server {realm_host} sent no JSON token ({why})") from None
        if not isinstance(token, str) or not token:
            raise PullError(f"the token server {realm_host} sent no token")
        return check_header_safe(token, f"from {realm_host}"), ttl

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
                                statuses={200}, what=what, headers={"Accept": ACCEPT})
        with response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MANIFEST_MAX:
                raise PullError(f"{what}: {length} bytes is over the {MANIFEST_MAX}-byte limit")
            try:
                data = response.read(MANIFEST_MAX)
            except NETWORK_ERRORS as err:
                raise PullError(f"{what}: {describe(err, self.endpoint)}") from None
            if len(data) > MANIFEST_MAX:
                raise PullError(f"{what}: more than the {MANIFEST_MAX}-byte limit")
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        return data, media, response.headers.get("Docker-Content-Digest")

    def blob(self, digest: str, offset: int = 0, missing_ok: bool = False) -> Response:
        """Return a streaming response for blob `digest`, from byte `offset` if > 0.

        The status is 200 (whole blob), 206 (from `offset`) or 416 (the
        registry cannot serve that range), or with `missing_ok` 404 (a
        foreign layer's URLs may have it: minict.image.foreign); the caller
        reads the body with read1() and closes it.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else None
        statuses = {200, 206, 416} if offset else {200}
        if missing_ok:
            statuses.add(404)
        what = f"fetching blob {digest}"
        return self.request("GET", f"/v2/{self.repository}/blobs/{digest}", statuses=statuses,
                            what=what, headers=headers, stream=True)

    def close(self) -> None:
        self.http.close()
