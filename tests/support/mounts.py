"""What is mounted where, read from /proc/self/mountinfo (proc(5))."""

import re

_OCTAL = re.compile(r"\\([0-7]{3})")


def mounts_under(base: str) -> set[str]:
    """Return the mount points at or below `base` in this mount namespace."""
    base = base.rstrip("/")
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, with space, tab, newline and
            # backslash written as octal escapes.
            point = _OCTAL.sub(lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == (base or "/") or point.startswith(base + "/"):
                found.add(point)
    return found
