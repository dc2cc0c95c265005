"""How long the registry client waits for a peer: the one place that decides.

    MINICT_REGISTRY_TIMEOUT   seconds without a byte before a read fails (default 60)
    MINICT_REGISTRY_DEADLINE  seconds one small exchange may take in all: ping, token,
                              manifest, index, an error body, a blob's headers (default 60)
    MINICT_SPEED_LIMIT        bytes per second a blob body must average ... (default 1024;
                              0 turns the check off)
    MINICT_SPEED_TIME         ... over each window of this many seconds (default 60)

An idle timeout alone never ends a trickle: one byte every 5 seconds resets
it for ever.  So each exchange gets a Clock, asked before every read of its
socket for the timeout to use: the idle timeout, cut to what is left of the
exchange's deadline (small answers) or of its speed window (blob bodies,
curl's --speed-limit/--speed-time, containerd's fetch).  A trickle of the
status line, the headers or a chunked body is bounded the same way, since
http.client reads all of them through the same socket reads.

Pure: no sockets here (http.py's connections call the Clock before each
read of a socket, under requests and urllib3).
"""

import math
import os
import time

from minict.errors import MinictError

IDLE_DEFAULT = 60.0
DEADLINE_DEFAULT = 60.0
SPEED_LIMIT_DEFAULT = 1024
SPEED_TIME_DEFAULT = 60.0
SECONDS_MAX = 7 * 24 * 3600.0  # a week: anything above is a typo, not a timeout


class DeadlineExceeded(TimeoutError):
    """A small answer took longer in all than the deadline allows."""

    def __init__(self, seconds: float):
        super().__init__(f"no complete answer within {seconds:g} s")
        self.seconds = seconds


class TooSlow(TimeoutError):
    """A blob body arrived slower than the speed limit for a whole window."""

    def __init__(self, limit: int, window: float):
        super().__init__(f"less than {limit} bytes/s for {window:g} s")
        self.limit, self.window = limit, window


def _number(environ, name: str, default: float, *, lowest: float, integer=False) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    if not (lowest <= value <= SECONDS_MAX):  # NaN fails every comparison
        kind = "a whole number of bytes per second" if integer else "a number of seconds"
        raise MinictError(f"{name} must be {kind} from {lowest:g} to {SECONDS_MAX:g}, "
                          f"not {text[:40]!r}")
    return value


class Limits:
    """How long to wait for a registry; from_environment() reads the MINICT_* variables.

    A plain class: defining a dataclass costs a millisecond, on every pull.
    """

    __slots__ = ("deadline", "idle", "speed_limit", "speed_time")

    def __init__(self, idle: float = IDLE_DEFAULT, deadline: float = DEADLINE_DEFAULT,
                 speed_limit: int = SPEED_LIMIT_DEFAULT, speed_time: float = SPEED_TIME_DEFAULT):
        self.idle = idle
        self.deadline = deadline
        self.speed_limit = speed_limit  # bytes/s; 0: no low-speed check
        self.speed_time = speed_time

    def _values(self) -> tuple:
        return self.idle, self.deadline, self.speed_limit, self.speed_time

    def __eq__(self, other) -> bool:
        return isinstance(other, Limits) and self._values() == other._values()

    def __repr__(self) -> str:
        return "Limits(idle={}, deadline={}, speed_limit={}, speed_time={})".format(*self._values())

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Limits":
        """Return the limits the environment sets; raise MinictError for a bad value."""
        return cls(
            idle=_number(environ, "MINICT_REGISTRY_TIMEOUT", IDLE_DEFAULT, lowest=0.1),
            deadline=_number(environ, "MINICT_REGISTRY_DEADLINE", DEADLINE_DEFAULT, lowest=0.1),
            speed_limit=int(_number(environ, "MINICT_SPEED_LIMIT", SPEED_LIMIT_DEFAULT,
                                    lowest=0, integer=True)),
            speed_time=_number(environ, "MINICT_SPEED_TIME", SPEED_TIME_DEFAULT, lowest=0.1),
        )


class Clock:
    """The time budget of one HTTP exchange, consulted around every read of its socket.

    It starts in deadline mode (the whole exchange must end by `deadline`);
    a streamed blob calls body() once its headers are in, which swaps the
    deadline for the low-speed check.
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self._end: float | None = time.monotonic() + limits.deadline
        self._window_start = 0.0
        self._window_bytes = 0
        self._speed = False

    def body(self) -> None:
        """From now on: no deadline, but the body must keep up the speed limit."""
        self._end = None
        self._speed = self.limits.speed_limit > 0
        self._window_start, self._window_bytes = time.monotonic(), 0

    def _due(self) -> float | None:
        """Return when the exchange fails if no more bytes come, or None (only idle)."""
        if self._end is not None:
            return self._end
        if self._speed:
            # The moment the window's average falls to the limit, and the window is long enough.
            need = max(self.limits.speed_time, self._window_bytes / self.limits.speed_limit)
            return self._window_start + need
        return None

    def _expired(self) -> TimeoutError:
        if self._end is not None:
            return DeadlineExceeded(self.limits.deadline)
        return TooSlow(self.limits.speed_limit, self.limits.speed_time)

    def timeout(self) -> float:
        """Return the timeout for the next read; raise DeadlineExceeded or TooSlow if due."""
        due = self._due()
        if due is None:
            return self.limits.idle
        left = due - time.monotonic()
        if left <= 0:
            raise self._expired()
        return min(self.limits.idle, left)

    def timed_out(self) -> None:
        """After a read timed out: raise DeadlineExceeded or TooSlow if that is why."""
        due = self._due()
        if due is not None and time.monotonic() >= due - 0.01:
            raise self._expired() from None

    def got(self, count: int) -> None:
        """Account `count` bytes read; raise TooSlow when a whole window fell short."""
        if not self._speed:
            return
        self._window_bytes += count
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= self.limits.speed_time:
            if self._window_bytes < self.limits.speed_limit * elapsed:
                raise self._expired()
            self._window_start, self._window_bytes = now, 0
