"""Parse and normalise image references the way Docker does.

    ubuntu                  -> docker.io/library/ubuntu:latest
    user/app:1              -> docker.io/user/app:1
    localhost:5000/ns/app   -> localhost:5000/ns/app:latest
    app@sha256:<64 hex>     -> docker.io/library/app@sha256:...

The grammar is distribution's `reference` package (reference.go):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]
    path-comp. := [a-z0-9]+ ([_.]|__|[-]*) [a-z0-9]+ ...
    tag        := [\\w][\\w.-]{0,127}

The first component is a domain only when it contains "." or ":", is
"localhost", or has upper-case letters (splitDockerDomain).  The name is at
most 255 characters (NameTotalLengthMax), the tag 128; a port is 1-65535,
since nothing else can be connected to.  Text longer than any valid
reference is refused before it is parsed, and messages quote it cut short.
Pure: no I/O.
"""

import re
from dataclasses import dataclass

from minict.errors import InvalidReference, shorten

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
NAME_TOTAL_MAX = 255
TAG_MAX = 128
# name, ":" tag, "@sha512:" and 128 hex digits: no valid reference is longer.
REFERENCE_MAX = NAME_TOTAL_MAX + 1 + TAG_MAX + 1 + len("sha512:") + 128

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z"
)
_TAG = re.compile(rf"[\w][\w.-]{{0,{TAG_MAX - 1}}}\Z", re.ASCII)
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; tag is "latest" when neither was given."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The fully qualified repository: `docker.io/library/ubuntu`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker shows it: `ubuntu`, `user/app`, `host:5000/a`."""
        if self.domain != DOCKER_HUB:
            return self.name
        if self.path.startswith("library/") and self.path.count("/") == 1:
            return self.path[len("library/"):]
        first = self.path.split("/", 1)[0]
        if "." in first or first == "localhost":
            # Shortened, `docker.io/a.b/c` would read as repository c on host a.b.
            return self.name
        return self.path

    @property
    def endpoint(self) -> str:
        """The host (and port) to talk HTTP to."""
        return DOCKER_HUB_ENDPOINT if self.domain == DOCKER_HUB else self.domain

    @property
    def ref_name(self) -> str:
        """What names the image inside its layout: the tag, else the digest."""
        return self.tag if self.tag is not None else self.digest  # type: ignore[return-value]

    def familiar(self) -> str:
        """The short form users type and `list-images` prints: `ubuntu:20.04`."""
        return self._qualify(self.familiar_name)

    def __str__(self) -> str:
        return self._qualify(self.name)

    def _qualify(self, repository: str) -> str:
        """Return `repository` followed by this reference's `:tag` and `@digest`."""
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return repository + tag + digest


def parse(text: str) -> Reference:
    """Return the normalised Reference for `text`; raise InvalidReference."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("the reference is empty")
    if len(text) > REFERENCE_MAX:
        raise InvalidReference(f"{shorten(text, 60)!r} is longer than any reference can be "
                               f"({len(text)} characters, at most {REFERENCE_MAX})")
    if text != text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise InvalidReference(f"{shorten(text)!r} contains white space or control characters")
    if _HEX64.match(text):
        raise InvalidReference(f"{text} is a 64-character hexadecimal id, not a repository name")

    remainder, digest = text, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        if not _DIGEST.match(digest):
            raise InvalidReference(
                f"digest {shorten(digest)!r} is not sha256:<64 lower-case hex> (or sha512:<128>)"
            )

    tag = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"tag {shorten(tag)!r} must be 1-{TAG_MAX} of letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )

    domain, path = _split_domain(remainder)
    components = path.split("/")
    for component in components:
        if not component:
            raise InvalidReference(f"{shorten(remainder)!r} has an empty path component")
        if not _PATH_COMPONENT.match(component):
            if component.lower() != component and _PATH_COMPONENT.match(component.lower()):
                raise InvalidReference(f"repository name {shorten(remainder)!r} must be lowercase")
            raise InvalidReference(
                f"path component {shorten(component)!r} must be lower-case letters and digits "
                "separated by '.', '_', '__' or '-'"
            )
    if len(f"{domain}/{path}") > NAME_TOTAL_MAX:
        raise InvalidReference(f"repository name must not be longer than {NAME_TOTAL_MAX} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    """Split `name` into (domain, path) as distribution's splitDockerDomain does."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, rest
        if not _DOMAIN.match(domain):
            raise InvalidReference(f"{shorten(domain)!r} is not a valid registry host[:port]")
        _check_port(domain)
        if domain == "index.docker.io":
            domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def _check_port(domain: str) -> None:
    """Raise InvalidReference if `domain` (grammar-checked) has a port outside 1-65535."""
    host_end = domain.rfind("]") + 1  # an IPv6 address in brackets has colons of its own
    _, colon, port = domain[host_end:].rpartition(":")
    if colon and not 1 <= int(port) <= 65535:
        raise InvalidReference(f"port {shorten(port, 20)} of {shorten(domain)!r} is not "
                               "between 1 and 65535")
