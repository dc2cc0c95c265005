"""The console script's entry point: every command goes through cli.py, but two forms.

`minict start --name N` and `minict pull --image IMAGE` are the commands
people time: the first runs a container that already exists, the second
compares with skopeo, and click's import alone (~20 ms here, 55 ms on a slow
disk) is a large share of either, about as much as runc's whole run.  So those
exact forms, and only they, are parsed here without click; any other argument
list (help, other flags, `--debug`, a value starting with `-`) goes to cli.py,
which parses it with click and calls the same function.

guard() is the one place that turns a failure into the `fatal` line and exit
status that users and scripts see, for both paths.
"""

import os
import sys

from minict import log
from minict.errors import MinictError

PULL_JOBS = 4  # blobs `pull` downloads at once, unless --jobs says otherwise
# The commands parsed here, each with its one option.
_PLAIN = {"start": "--name", "pull": "--image"}


def main() -> None:
    """Run minict with sys.argv; never return."""
    if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug":
        log.set_debug(True)
    plain = _plain_command(sys.argv[1:])
    if plain is None:
        from minict import cli

        cli.main()
    command, value = plain
    guard(lambda: start(value) if command == "start" else pull(value))
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


def start(name: str) -> None:
    """Start container `name` and exit with its status (the `start` command, both paths)."""
    from minict import container, store

    store.ensure_dirs()  # as every command that uses the state (cli.StateCommand)
    store.check_container_name(name)
    exit_now(container.start(name))


def pull(image: str, *, platform: str | None = None, insecure: bool = False,
         jobs: int = PULL_JOBS, quiet: bool = False) -> None:
    """Pull `image` and exit 0 (the `pull` command, both paths)."""
    from minict import reference, store

    store.ensure_dirs()  # as every command that uses the state (cli.StateCommand)
    ref = reference.parse(image)
    if quiet:
        log.set_quiet(True)
    from minict import pull as pulling  # requests with it: only when a registry is asked

    pulling.pull(ref, platform=platform, insecure=insecure, jobs=jobs)
    log.info("Image pulled successfully.")
    # requests, urllib3 and their threads' objects take ~20-40 ms to tear down.
    exit_now(0)


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
