"""How a registry asks for credentials: its WWW-Authenticate challenge, and the token rules.

A registry answers 401 with a Bearer (token server) or Basic challenge
(distribution's token spec, RFC 7235); registry.py follows it.  The token
that comes back goes into a header, so it must be safe there, and it lives
only as long as a clamped `expires_in` says.
"""

import math
import re

from minict.errors import PullError

TOKEN_DEFAULT_TTL = 60  # seconds, when the token server gives no expires_in
TOKEN_MAX_TTL = 24 * 3600  # a longer expires_in is cut to this: the token is asked again
TOKEN_MAX = 64 * 1024      # characters: tokens are a few KB; this is a header, not a body


# What may follow "Bearer " in a header: visible ASCII, no space, no CR/LF
# (RFC 9110 field-vchar; a token is RFC 6750's b64token, narrower still).
_HEADER_SAFE = re.compile(r"[!-~]+\Z")


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


def token_lifetime(expires_in) -> int:
    """Return the seconds a token lives: expires_in clamped, or 60 when it is not a number.

    The token spec's default is 60 s; an endless (`Infinity`, `1e400`) or
    huge lifetime is cut to a day, after which the token is asked again.
    """
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) \
            or (isinstance(expires_in, float) and math.isnan(expires_in)) or expires_in <= 0:
        return TOKEN_DEFAULT_TTL
    return int(min(expires_in, TOKEN_MAX_TTL))


def check_header_safe(token: str, source: str) -> str:
    """Return `token` if it can follow "Bearer " in a header; raise PullError naming `source`."""
    if len(token) > TOKEN_MAX:
        raise PullError(f"the token {source} is {len(token)} characters long, over {TOKEN_MAX}")
    if not _HEADER_SAFE.match(token):
        raise PullError(f"the token {source} has characters a header cannot carry "
                        "(white space, control characters or non-ASCII)")
    return token
