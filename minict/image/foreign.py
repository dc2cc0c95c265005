"""Non-distributable ("foreign") layers: fetched from their descriptor's `urls` when the registry has none.

    response, url = open_layer(registry, descriptor, offset)   # url None: the registry served it

Some images are pushed without some layer blobs: Windows base layers, vendor
layers whose licence forbids redistribution.  Their descriptors carry a
foreign or non-distributable media type and `urls` to fetch them from
(image-spec descriptor.md; Docker's foreign layers).  minict asks the
registry first, as for every blob, and tries the URLs only when it answers
404 (blob unknown), in order, until one answers 200 (or 206 to a Range).

Trust: a URL is only a place to fetch bytes from; the bytes are verified
against the descriptor's digest like every blob's (layout.BlobWriter).
Only http and https URLs, at most URLS_MAX of them, and only for the
foreign media types (the `urls` of other descriptors are not followed, as
Docker does).  The registry's Authorization is never sent: the requests go
through the registry's http.Session (proxies, TLS, the retry policy) with no
credentials, and redirects are followed by hand, to http(s) only.  Errors
name the layer and each URL tried, cut of its query and user (signed URLs).
"""

import urllib.parse

from minict import log
from minict.errors import PullError, shorten
from minict.image.http_errors import NETWORK_ERRORS, describe
from minict.image.registry import MAX_REDIRECTS, redact

FOREIGN_LAYERS = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})
URLS_MAX = 8  # URLs tried per layer; a manifest may list thousands


def urls(descriptor: dict) -> list:
    """Return the URLs a layer may be fetched from: its `urls` if it is a foreign layer, else []."""
    found = descriptor.get("urls")
    if descriptor.get("mediaType") not in FOREIGN_LAYERS or not isinstance(found, list):
        return []
    return found[:URLS_MAX]


def open_layer(registry, descriptor: dict, offset: int):
    """Return (a streaming response for the layer from `offset`, the URL or None); raise PullError.

    The registry is asked first; a foreign layer it does not have (404) is
    fetched from its URLs.  The response's status is 200, 206 or (with an
    offset) 416, as Registry.blob's.
    """
    digest = descriptor["digest"]
    candidates = urls(descriptor)
    if not candidates:
        return registry.blob(digest, offset), None
    response = registry.blob(digest, offset, missing_ok=True)
    if response.status_code != 404:
        return response, None
    response.close()
    log.debug(f"layer {digest}: not on the registry; trying its {len(candidates)} URL(s)")
    failures = []
    for url in candidates:
        shown = redact(url, "") if isinstance(url, str) else repr(url)
        try:
            response = _get(registry.http, url, offset, digest)
        except _Failed as err:
            failures.append(f"{shorten(shown, 200)}: {err}")
            continue
        log.debug(f"layer {digest}: fetching it from {shown}")
        return response, url
    raise PullError(f"layer {digest} is not on the registry, and its URLs failed: "
                    + "; ".join(failures))


class _Failed(Exception):
    """One URL that did not serve the layer (why, in a few words)."""


def _get(session, url, offset: int, digest: str):
    """GET `url` (from `offset`) with no credentials, following redirects by hand; raise _Failed."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    statuses = {200, 206, 416} if offset else {200}
    for _ in range(MAX_REDIRECTS + 1):
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise _Failed("not an http or https URL")
        host = urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1]
        try:
            response = session.request("GET", url, headers, stream=True,
                                       what=f"fetching layer {digest}")
        except (*NETWORK_ERRORS, ValueError) as err:
            raise _Failed(describe(err, host) if not isinstance(err, ValueError)
                          else "a malformed URL") from None
        location = response.headers.get("Location")
        if response.status_code in (301, 302, 303, 307, 308) and location:
            response.close()
            try:
                url = urllib.parse.urljoin(url, location)
            except ValueError:
                raise _Failed("a redirect to a malformed URL") from None
            continue
        if response.status_code in statuses:
            return response
        response.close()
        raise _Failed(f"HTTP {response.status_code}")
    raise _Failed("too many redirects")


def mismatch(message: str, url) -> str:
    """Return a digest mismatch's message, naming the URL a foreign layer came from."""
    return message if url is None else f"{message} (fetched from {redact(url, '')})"
