"""The errors minict raises, and the stage each one failed in; caught once, in cli/outcome.py.

Code anywhere raises MinictError or a typed subclass; cli/outcome.py prints
it as a single `fatal` line and exits 1.  The message is what the user reads:
short, lower-case context first (`pull layer sha256:ab12: ...`) so the one
printed line says where and why.  Messages quote what others wrote (names,
registry answers); shorten() cuts such a quote, and every message is cut to
MESSAGE_MAX, so no input makes the fatal line huge.

The original prints "Failed to <stage> image. Error received: " before what
failed in pulling, unpacking or running an image.  Nobody re-wraps an error
to get that prefix: each step runs inside `stage(PullError)`,
`stage(UnpackError)` or `stage(LaunchError)`, which marks the errors that
leave it (and turns an OSError into one, described by describe_os_error).  Errors
about the request itself (a bad name, a container that exists or not, the
network) are `stageless`: they read the same whatever step met them.
"""

import contextlib
import os

MESSAGE_MAX = 1000  # characters of a message (and of a hint)
QUOTE_MAX = 200     # characters of one quoted name or answer inside a message


def shorten(text, limit: int = QUOTE_MAX) -> str:
    """Return `text` (as str) cut to `limit` characters, the cut marked by an ellipsis."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


STAGE_PREFIXES = {
    "pull": "Failed to pull image. Error received: ",
    "unpack": "Failed to unpack image. Error received: ",
    "run": "Failed to run image. Error received: ",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: its words and the file it names (`No such file: /x`)."""
    return f"{err.strerror or err}" + (f": {os.fsdecode(err.filename)}" if err.filename else "")


class MinictError(Exception):
    """An error with a message for the user and an optional hint."""

    stage: str | None = None   # set by stage(), or by the class of a step's own errors
    stageless = False          # True: never prefixed (errors about the request itself)

    @property
    def prefix(self) -> str:
        return "" if self.stageless else STAGE_PREFIXES.get(self.stage, "")

    def __init__(self, message: str, hint: str | None = None):
        message = shorten(message, MESSAGE_MAX)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else shorten(hint, MESSAGE_MAX)

    def __str__(self) -> str:
        text = self.prefix + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


@contextlib.contextmanager
def stage(kind: "type[MinictError]"):
    """Make the errors that leave this block failures of the step `kind` stands for.

    `kind` is the step's error class (PullError, UnpackError, LaunchError).
    A plain MinictError or an OSError becomes one; a typed error keeps its
    type and takes the step's stage unless it has one (a pull inside `run`
    stays a pull) or is stageless.
    """
    try:
        yield
    except MinictError as err:
        if type(err) is MinictError:
            raise kind(err.message, err.hint) from None
        if err.stage is None and not err.stageless:
            err.stage = kind.stage
        raise
    except OSError as err:
        raise kind(describe_os_error(err)) from None


class InvalidReference(MinictError):
    """An image reference that does not follow Docker's grammar."""

    stageless = True

    def __init__(self, reason: str):
        super().__init__(f"Invalid image name: {reason}")


class InvalidName(MinictError):
    """A container name that could not be a directory name of ours."""

    stageless = True


class ImageNotFound(MinictError):
    """No stored image (or no registry's) answers to the reference."""


class InvalidImage(MinictError):
    """An image document minict cannot use: manifest, index, config, platform."""


class PullError(MinictError):
    """Talking to a registry or storing what it sent failed."""

    stage = "pull"


class RegistryError(PullError):
    """A registry answered a request with an error `status` (an HTTP status code)."""

    def __init__(self, message: str, status: int, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


class UnpackError(MinictError):
    """Turning a stored image into a bundle failed."""

    stage = "unpack"


class LaunchError(MinictError):
    """Starting the container's process failed."""

    stage = "run"


class ContainerError(MinictError):
    """A container is not in a state the command can act on (exists, missing, running)."""

    stageless = True


class NetworkError(MinictError):
    """Setting up or tearing down a container's network failed."""

    stageless = True
