"""The console script's entry point: every command goes through commands.py, but one.

`minict start --name N` is the command people time: it runs a container
that already exists, and click's import alone (~20 ms here, 55 ms on a slow
disk) is a large share of it, about as much as runc's whole run.  So that exact
form, and only it, is parsed here without click; any other argument list
(help, other flags, `--debug`, a name starting with `-`) goes to commands.py,
which parses it with click and calls the same function.

outcome.py ends both paths the same way.
"""

import os
import sys

from minict import log
from minict.cli import outcome


def main() -> None:
    """Run minict with sys.argv; never return."""
    if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug":
        log.set_debug(True)
    name = _plain_start(sys.argv[1:])
    if name is None:
        from minict.cli import commands

        commands.main()
    outcome.guard(lambda: outcome.start(name))
    sys.exit(0)


def _plain_start(argv: list[str]) -> str | None:
    """Return NAME if `argv` is exactly `start --name NAME` (or `--name=NAME`), else None."""
    if len(argv) == 3 and argv[:2] == ["start", "--name"]:
        name = argv[2]
    elif len(argv) == 2 and argv[0] == "start" and argv[1].startswith("--name="):
        name = argv[1][len("--name="):]
    else:
        return None
    return name if name and not name.startswith("-") else None
