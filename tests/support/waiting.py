"""Waiting in tests for something another process does: one poll loop for all of them.

    value = wait_for(lambda: path.exists(), "the layer file", timeout=20)
    removed = rmdir_when_empty(cgroup_dir, timeout=5)
"""

import time


def wait_for(predicate, what: str = "condition", *, timeout: float = 10.0,
             pause: float = 0.02):
    """Return `predicate()`'s first truthy value; raise AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)


def rmdir_when_empty(path, timeout: float = 2.0, pause: float = 0.02) -> bool:
    """rmdir `path` (a cgroup whose processes may still be exiting); return False if it stays.

    A missing directory counts as removed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
