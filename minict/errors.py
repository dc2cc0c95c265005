"""The one error type minict raises, caught once in the CLI.

Code anywhere raises MinictError (or a subclass naming its stage); cli.py
prints it as a single `fatal` line and exits 1.  The message is what the
user reads: short, lower-case context first (`pull layer sha256:ab12: ...`)
so the one printed line says where and why.  Messages quote what others
wrote (names, registry answers); shorten() cuts such a quote, and every
message is cut to MESSAGE_MAX, so no input makes the fatal line huge.
"""

MESSAGE_MAX = 1000  # characters of a message (and of a hint)
QUOTE_MAX = 200     # characters of one quoted name or answer inside a message


def shorten(text, limit: int = QUOTE_MAX) -> str:
    """Return `text` (as str) cut to `limit` characters, the cut marked by an ellipsis."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class MinictError(Exception):
    """An error with a message for the user and an optional hint."""

    # What the CLI prints before the message; the stages set the original's
    # "Failed to <stage> image. Error received: " here.
    prefix = ""

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


class InvalidReference(MinictError):
    """An image reference that does not follow Docker's grammar."""

    def __init__(self, reason: str):
        super().__init__(f"Invalid image name: {reason}")


class InvalidName(MinictError):
    """A container name that could not be a directory name of ours."""


class PullError(MinictError):
    """Talking to a registry or storing what it sent failed."""

    prefix = "Failed to pull image. Error received: "


class UnpackError(MinictError):
    """Turning a stored image into a bundle failed."""

    prefix = "Failed to unpack image. Error received: "


class LaunchError(MinictError):
    """Starting the container's process failed."""

    prefix = "Failed to run image. Error received: "


class ContainerError(MinictError):
    """A container is not in a state the command can act on (exists, missing, running)."""


class NetworkError(MinictError):
    """Setting up or tearing down a container's network failed."""
