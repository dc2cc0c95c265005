"""The console script's entry point: every command goes through commands.py, but two forms.

`minict start --name N` and `minict pull --image IMAGE` are the commands
people time: the first runs a container that already exists, the second
compares with skopeo, and click's import alone (~20 ms here, 55 ms on a slow
disk) is a large share of either, about as much as runc's whole run.  So those
exact forms, and only they, are parsed here without click; any other argument
list (help, other flags, `--debug`, a value starting with `-`) goes to
commands.py, which parses it with click and calls the same function.

outcome.py ends both paths the same way.
"""

import os
import sys

from minict import log
from minict.cli import outcome

# The commands parsed here, each with its one option.
_PLAIN = {"start": "--name", "pull": "--image"}


def main() -> None:
    """Run minict with sys.argv; never return."""
    if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug":
        log.set_debug(True)
    plain = _plain_command(sys.argv[1:])
    if plain is None:
        from minict.cli import commands

        commands.main()
    command, value = plain
    outcome.guard(lambda: outcome.start(value) if command == "start" else outcome.pull(value))
    sys.exit(0)


def _plain_command(argv: list[str]) -> tuple[str, str] | None:
    """Return (command, value) for a form parsed here, else None.

    The forms: exactly `start --name NAME` or `pull --image IMAGE` (or
    `--name=NAME`, `--image=IMAGE`), the value not starting with `-`.
    """
    option = _PLAIN.get(argv[0]) if argv else None
    if option is None:
        return None
    if len(argv) == 3 and argv[1] == option:
        value = argv[2]
    elif len(argv) == 2 and argv[1].startswith(option + "="):
        value = argv[1][len(option) + 1:]
    else:
        return None
    return (argv[0], value) if value and not value.startswith("-") else None
