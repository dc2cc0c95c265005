"""What every step of the container's children shares: the error, and the channel to minict.

init.py, mounts.py and execute.py run in processes forked from minict (the
children of launch.py, which documents the messages).  A step that fails
raises SetupError; init._never_return reports it on the channel as one
line and exits with its status.
"""

import os

SOL_SOCKET, SCM_RIGHTS = 1, 1  # socket(7), unix(7)


class SetupError(Exception):
    """A step failed; `status` is what the child exits with."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def fail(step: str, err: OSError) -> SetupError:
    """Return the SetupError for the failed `step`: its name and the system's reason."""
    return SetupError(f"{step}: {err.strerror or err}")


def expect_fd(channel, message: bytes) -> int:
    """Wait for `message` with one descriptor (SCM_RIGHTS); return it, or exit quietly."""
    got, ancillary, _, _ = channel.recvmsg(64, 64)
    if got != message or not ancillary or ancillary[0][:2] != (SOL_SOCKET, SCM_RIGHTS):
        os._exit(1)
    return int.from_bytes(ancillary[0][2][:4], "little")


def expect(channel, message: bytes) -> None:
    """Wait for `message` from the parent; exit quietly if the parent is gone."""
    got = channel.recv(64)
    if got != message:
        os._exit(1)


def report(channel, status: int, message: str) -> None:
    """Tell the parent that a step failed (`error <status> <text>`); it may be gone already."""
    try:
        channel.send(b"error %d %s" % (status, message.encode(errors="replace")[:4000]))
    except OSError:
        pass
