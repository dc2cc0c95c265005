"""The console script's entry point: every command goes through cli.py, but one.

`minict start --name N` is the command people time: it runs a container
that already exists, and click's import alone (~20 ms here, 55 ms on a slow
disk) is a large share of it, about as much as runc's whole run.  So that exact
form, and only it, is parsed here without click; any other argument list
(help, other flags, `--debug`, a name starting with `-`) goes to cli.py,
which parses it with click and calls the same function.

guard() is the one place that turns a failure into the `fatal` line and exit
status that users and scripts see, for both paths.
"""

import os
import sys

from minict import log
from minict.errors import MinictError


def main() -> None:
    """Run minict with sys.argv; never return."""
    if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug":
        log.set_debug(True)
    name = _plain_start(sys.argv[1:])
    if name is None:
        from minict import cli

        cli.main()
    guard(lambda: start(name))
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


def start(name: str) -> None:
    """Start container `name` and exit with its status (the `start` command, both paths)."""
    from minict import container, store

    store.ensure_dirs()  # as every command that uses the state (cli.StateCommand)
    store.check_container_name(name)
    exit_now(container.start(name))


def exit_now(status: int) -> None:
    """Exit with a container's `status`, skipping the interpreter's teardown.

    Tearing down click and the rest costs ~10 ms, a third of `start`'s own
    budget; the work is done and only the standard streams need flushing.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def guard(work) -> None:
    """Call `work()`; turn every failure into one `fatal` line and its exit status."""
    try:
        work()
    except MinictError as err:
        log.fatal(str(err))
        sys.exit(1)
    except KeyboardInterrupt:
        log.fatal("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        # A reader closed our stdout (`minict list-images | head -0`): nothing to report.
        sys.stderr.close()
        sys.exit(1)
    except OSError as err:
        # An unforeseen OS failure still reaches the user as one line, not a traceback.
        log.fatal(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
        sys.exit(1)
