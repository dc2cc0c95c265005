"""Processes as /proc shows them, read by the tests themselves (not through minict.linux)."""


def state_and_start(pid: int) -> tuple[str, int] | None:
    """Return process `pid`'s state letter and start time (proc(5) stat fields 3 and 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def is_gone(pid: int, start_time: int) -> bool:
    """Return whether the process `pid` that started at `start_time` runs no more.

    A zombie counts as gone: it runs nothing and holds nothing; only its
    parent's wait(2) is missing.
    """
    found = state_and_start(pid)
    return found is None or found[1] != start_time or found[0] == "Z"
