"""Subordinate ids: the /etc/subuid and /etc/subgid entries of the user `minict`.

Both files hold lines `NAME:FIRST:COUNT` (shadow's subuid(5)): NAME may use
the ids FIRST .. FIRST+COUNT-1 as the host side of a user namespace.  The
file is a list of grants, not a list of accounts: `newuidmap` reads it for
unprivileged users, and root (who writes uid_map itself) reads it to keep
away from everyone else's ranges.  So the user `minict` needs no login
account, only its lines, as podman's `--userns=auto` needs only the lines
of `containers` (podman-run(1) suggests `containers:2147483647:2147483648`).

`make install` runs this module (`python -m minict.runtime.subids`) to add minict's
lines once: a run of ids free in both files, placed above the window shadow's
useradd hands out to new users (SUB_UID_MIN .. SUB_UID_MAX in login.defs), so
neither a later useradd nor an existing grant (podman's, say) overlaps it.

MINICT_SUBUID and MINICT_SUBGID point at other files (the tests use them).
"""

import os
import sys

from minict import fsutil

USER = "minict"
DEFAULT_SUBUID = "/etc/subuid"
DEFAULT_SUBGID = "/etc/subgid"
LOGIN_DEFS = "/etc/login.defs"
# 2**30 ids: 16,384 containers of 65,536 ids each.
INSTALL_COUNT = 1 << 30
# Prefer the top half of the id space, as podman's example entry does; the
# last id, 2**32-1, is (uid_t)-1 and never valid (user_namespaces(7)).
PREFERRED_FIRST = 1 << 31
ID_END = (1 << 32) - 1
# shadow's defaults when login.defs says nothing (useradd(8)).
SHADOW_WINDOW_END = 600100000


def subuid_path() -> str:
    return os.environ.get("MINICT_SUBUID") or DEFAULT_SUBUID


def subgid_path() -> str:
    return os.environ.get("MINICT_SUBGID") or DEFAULT_SUBGID


def read_entries(path: str) -> list[tuple[str, int, int]]:
    """Return (name, first, count) of each well-formed line of `path`; [] if it is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or line.startswith("#"):
            continue
        name, first, count = fields
        if first.isdigit() and count.isdigit() and int(count) > 0:
            entries.append((name, int(first), int(count)))
    return entries


def ranges_of(path: str, user: str = USER) -> list[tuple[int, int]]:
    """Return the (first, count) ranges `path` grants to `user`, in file order."""
    return [(first, count) for name, first, count in read_entries(path) if name == user]


# -- make install ---------------------------------------------------------------------

def free_start(used: list[tuple[int, int]], count: int, floor: int) -> int | None:
    """Return the first id >= `floor` (PREFERRED_FIRST if free) starting `count` unused ids."""
    def fits(first):
        return first + count <= ID_END and all(
            first + count <= start or start + size <= first for start, size in used)

    if PREFERRED_FIRST >= floor and fits(PREFERRED_FIRST):
        return PREFERRED_FIRST
    # Otherwise right after some range (or at the floor), 65536-aligned.
    candidates = sorted({floor} | {start + size for start, size in used if start + size >= floor})
    for candidate in candidates:
        first = -(-candidate // 65536) * 65536
        if fits(first):
            return first
    return None


def shadow_window_end(login_defs: str = LOGIN_DEFS) -> int:
    """Return the highest id useradd may grant (max of SUB_UID_MAX, SUB_GID_MAX)."""
    found = {}
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) == 2 and words[0] in ("SUB_UID_MAX", "SUB_GID_MAX") \
                        and words[1].isdigit():
                    found[words[0]] = int(words[1])
    except FileNotFoundError:
        pass
    return max(found.values(), default=SHADOW_WINDOW_END)


def add_entries(count: int = INSTALL_COUNT) -> str:
    """Give `minict` one range in both files unless it has one; return what was done."""
    uid_file, gid_file = subuid_path(), subgid_path()
    if ranges_of(uid_file) and ranges_of(gid_file):
        return f"{USER} already has subordinate ids in {uid_file} and {gid_file}"
    used = [(first, size) for path in (uid_file, gid_file)
            for _, first, size in read_entries(path)]
    first = free_start(used, count, shadow_window_end() + 1)
    if first is None:
        raise SystemExit(f"no run of {count} ids is free in {uid_file} and {gid_file}")
    for path in (uid_file, gid_file):
        if not ranges_of(path):
            _append_line(path, f"{USER}:{first}:{count}\n")
    return f"added {USER}:{first}:{count} to {uid_file} and {gid_file}"


def _append_line(path: str, line: str) -> None:
    """Append `line` to `path` through a temporary file and rename (readers never see half)."""
    try:
        with open(path, "rb") as f:
            old = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        old, mode = b"", 0o644
    if old and not old.endswith(b"\n"):
        old += b"\n"
    fsutil.write_atomic(path, old + line.encode(), fsync=False, mode=mode)


if __name__ == "__main__":
    print(add_entries(), file=sys.stderr)
