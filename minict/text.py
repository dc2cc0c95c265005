"""Text from images and registries, made safe to show on a terminal.

An image's Cmd, Labels or `created`, a registry's error message or a tar
entry's name are written by whoever made the image.  Printed raw, an escape
sequence among them can retitle the user's terminal (`ESC ] 0 ; ... BEL`),
clear it (`ESC [ 2 J`), move the cursor to overwrite earlier lines, or, with
a bidi override, show text in another order than it is (CVE-2021-42574's
"Trojan Source").  So every such text goes through `printable` before it
reaches a terminal: control characters become visible `\\x1b`-style escapes.
rich (the `--format table` listings) also reads `[...]` as markup; cells
are handed to it as `rich.text.Text`, which it never parses (`cell`).

This module imports nothing heavy: log.py uses it on `start`'s fast path.
"""

# C0 controls, DEL and C1 controls (Unicode category Cc); the characters that
# change the display order of what follows (Unicode bidi controls, UAX #9:
# LRM, RLM, ALM, the embeddings, overrides and isolates); and the line and
# paragraph separators, which some terminals and viewers break lines at.
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}

# Longest line a log line may be; a hostile name cannot make one of megabytes.
LINE_MAX = 4096
ELLIPSIS = "…"


def printable(text: str) -> str:
    """Return `text` with control and bidi characters shown as `\\x1b`/`\\u202e` escapes."""
    return text.translate(_ESCAPES)


def cut(text: str, limit: int) -> str:
    """Return `text`, or its first `limit` - 1 characters and an ellipsis if it is longer."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def line(text: str, limit: int = LINE_MAX) -> str:
    """Return `text` as one printable line of at most `limit` characters."""
    return cut(printable(text), limit)


def cell(value) -> "object":
    """Return a rich Text of `value` (printable, never read as markup) for a table cell."""
    from rich.text import Text

    return Text(printable("" if value is None else str(value)))
