"""JSON from anyone else, parsed within a size cap and a depth cap checked first.

Manifests, indexes, configs, token answers and error bodies come from a
registry; index.json, state and config.json files sit in $MINICT_DIR,
where a container's root or a careless hand can write.  json.loads
recurses once per nesting level, so 100,000 nested arrays end in a
RecursionError; the depth is measured here before parsing, with regular
expressions and C-speed loops, in time linear in the size.  No real
document of ours nests deeper than a dozen levels.
"""

import json
import re
from itertools import accumulate

SIZE_MAX = 4 * 1024 * 1024  # as the manifest cap (containerd's 4 MiB)
DEPTH_MAX = 100

# A JSON string, or what is left of an unterminated one up to the end: it
# always matches, and possessively, so no input makes the search quadratic.
_STRING = rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)'
# Brackets to +1 / -1 (as signed bytes), everything else deleted.
_DEPTH_TABLE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class UnsafeJSON(ValueError):
    """A document over the size or depth cap (a ValueError, as invalid JSON is)."""


def depth(data: bytes) -> int:
    """Return how deep arrays and objects nest in `data` (brackets inside strings do not count)."""
    brackets = re.sub(_STRING, b"", data, flags=re.DOTALL).translate(_DEPTH_TABLE, _NOT_BRACKETS)
    return max(accumulate(memoryview(brackets).cast("b")), default=0)


def loads(data: bytes | str, limit: int = SIZE_MAX, max_depth: int = DEPTH_MAX):
    """Return `data` parsed as JSON; raise UnsafeJSON or ValueError (invalid JSON)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > limit:
        raise UnsafeJSON(f"larger than {limit} bytes")
    # Fewer openers than the cap cannot nest deeper: most documents stop at this
    # count, and a warm re-pull never compiles the pattern.
    if data.count(b"[") + data.count(b"{") > max_depth and depth(data) > max_depth:
        raise UnsafeJSON(f"nested deeper than {max_depth} levels")
    return json.loads(data)


def explain(err: ValueError) -> str:
    """Return why `err` refused a document, for messages: the cap, or 'not valid JSON'."""
    return str(err) if isinstance(err, UnsafeJSON) else "not valid JSON"
