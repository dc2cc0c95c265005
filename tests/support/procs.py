"""Processes for the tests: /proc read directly (not through minict.linux), a lock holder."""

import fcntl
import subprocess
import sys

import pytest


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


_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def hold_lock(path):
    """Start a process that holds the flock of `path` (as a minict holds its container's)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    with open(path) as f, pytest.raises(BlockingIOError):  # it is really held
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return proc


def run_importing(args: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGS` (text, output captured); return it and what it imported.

    The returned process's stderr is what the program wrote, without the
    interpreter's `import time:` lines, which the set holds by module name.
    """
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                          text=True, check=False, **kwargs)
    lines = done.stderr.splitlines(keepends=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines
                if line.startswith("import time:")}
    done.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return done, imported


def read_terminal(master: int, timeout: float = 60) -> bytes:
    """Return what is written to the pty `master` until its other side is closed."""
    import os
    import select

    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        assert ready, "timed out reading the terminal"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every descriptor of the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
