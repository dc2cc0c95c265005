"""Log lines on standard error, in the shape the Go original printed.

    2021/01/05 20:05:27  info Image pulled successfully.

Date and time as Go's standard logger writes them, the level right-aligned
in five columns (apex/log's CLI shape), then the message.  Results (the
`list-*` JSON) go to standard output and never through here.
"""

import os
import sys
import time

from minict import text

DEBUG, INFO, WARN, ERROR, FATAL = 10, 20, 30, 40, 50
_NAMES = {DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error", FATAL: "fatal"}

_level = DEBUG if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug" else INFO
_quiet = False


def set_debug(on: bool = True) -> None:
    """Print debug lines too (`--debug` or MINICT_LOG_LEVEL=debug)."""
    global _level
    _level = DEBUG if on else INFO


def set_quiet(on: bool = True) -> None:
    """Print only errors (`pull --quiet`)."""
    global _quiet
    _quiet = on


def debug_enabled() -> bool:
    return _level <= DEBUG


def quiet() -> bool:
    return _quiet


def format_line(level: int, message: str, when: float | None = None) -> str:
    """Return one log line, without its newline.

    The message may quote an image or a registry: control characters are
    escaped and a giant message is cut (minict.text.line).
    """
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(when))
    return f"{stamp} {_NAMES[level]:>5} {text.line(message)}"


def _emit(level: int, message: str) -> None:
    if level < _level or (_quiet and level < ERROR):
        return
    try:
        sys.stderr.write(format_line(level, message) + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass  # stderr closed under us: logging must never become the failure


def debug(message: str) -> None:
    _emit(DEBUG, message)


def info(message: str) -> None:
    _emit(INFO, message)


def warn(message: str) -> None:
    _emit(WARN, message)


def error(message: str) -> None:
    _emit(ERROR, message)


def fatal(message: str) -> None:
    """Print the one `fatal` line of a failed command (the caller exits 1)."""
    _emit(FATAL, message)
