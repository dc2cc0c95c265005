"""How a minict process ends: one `fatal` line for a failure, a container's status as is.

Both the console script's fast path (main.py) and the click commands
(commands.py) end through here, so a failure looks the same on either path.
"""

import os
import sys

from minict import log
from minict.errors import MinictError, describe_os_error

PULL_JOBS = 4  # blobs `pull` downloads at once, unless --jobs says otherwise


def start(name: str) -> None:
    """Start container `name` and exit with its status (the `start` command, both paths)."""
    from minict import store
    from minict.runtime import container

    store.ensure_dirs()  # as every command that uses the state (commands.StateCommand)
    store.check_container_name(name)
    exit_now(container.start(name))


def pull(image: str, *, platform: str | None = None, insecure: bool = False,
         jobs: int = PULL_JOBS, quiet: bool = False) -> None:
    """Pull `image` and exit 0 (the `pull` command, both paths)."""
    from minict import store
    from minict.image import reference

    store.ensure_dirs()  # as every command that uses the state (commands.StateCommand)
    ref = reference.parse(image)
    if quiet:
        log.set_quiet(True)
    from minict.image import pull as pulling  # requests with it: only when a registry is asked

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
        log.fatal(describe_os_error(err))
        sys.exit(1)
