"""The only place that turns names into paths under $MINICT_DIR and $MINICT_RUN_DIR.

    $MINICT_DIR/                      (default /var/lib/minict; created 0700)
      images/<repository>/            an OCI image layout per repository (layout.py):
        oci-layout, index.json,         the image-layout spec's entries
        blobs/sha256/<hex>
        .index.lock                     held while index.json is rewritten
        .partial/<hex>                  resumable downloads
      containers/<name>/              an OCI runtime bundle per container (bundle_file):
        config.json, rootfs/          the runtime config and root (bundle/create.py)
        .minict-complete              the completion mark, written last (bundle/create.py)
        state.json                    status, pid, exit status (container.py)
        network.json, hosts,          the network settings and the files bound
        resolv.conf                     over /etc's (network.py)
        seccomp-bpf.json              the compiled filter, reused by start (runtime/seccomp_filter.py)
      containers/.partial-<name>/     a bundle being built (partial_bundle_dir)
      containers/.<name>.lock         held while a minict creates, runs or removes it

and, shared by every $MINICT_DIR on the host (leases.py):

    $MINICT_RUN_DIR/                  (default /run/minict)
      network/leases.json, lock       bridge address and host port leases

Container names are checked before any path is built from them, and image
repositories come only from a parsed Reference, so nothing here can point
outside the root.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from minict import log
from minict.errors import InvalidName, MinictError

# typing.TYPE_CHECKING without importing typing (~2 ms of `start`): False when run.
TYPE_CHECKING = False
if TYPE_CHECKING:  # `start` and `rm` never parse a reference: keep its import off their path
    from minict.image.reference import Reference

DEFAULT_ROOT = "/var/lib/minict"
DEFAULT_RUN_DIR = "/run/minict"
LEFTOVER_AGE = 60 * 60  # seconds after which `prune` takes an interrupted run's or pull's leftovers
CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
# The entries of an image layout (image-layout spec), and minict's two
# additions: the lock of index.json and the resumable downloads (layout.py).
LAYOUT_INDEX_NAME = "index.json"
LAYOUT_MARKER_NAME = "oci-layout"
LAYOUT_BLOBS_NAME = "blobs"
LAYOUT_LOCK_NAME = ".index.lock"
LAYOUT_PARTIAL_NAME = ".partial"
# A repository path component with one of these names would land inside
# another repository's layout.
_LAYOUT_ENTRIES = frozenset({LAYOUT_BLOBS_NAME, LAYOUT_INDEX_NAME, LAYOUT_MARKER_NAME})

# The files of a bundle (bundle_file names them).
CONFIG_NAME = "config.json"
ROOTFS_NAME = "rootfs"
COMPLETE_MARK = ".minict-complete"
STATE_NAME = "state.json"
NETWORK_SETTINGS_NAME = "network.json"
HOSTS_NAME = "hosts"
RESOLV_NAME = "resolv.conf"
SECCOMP_CACHE_NAME = "seccomp-bpf.json"
BUNDLE_FILES = frozenset({CONFIG_NAME, ROOTFS_NAME, COMPLETE_MARK, STATE_NAME,
                          NETWORK_SETTINGS_NAME, HOSTS_NAME, RESOLV_NAME, SECCOMP_CACHE_NAME})
PARTIAL_PREFIX = ".partial-"
# The host-wide network leases under $MINICT_RUN_DIR (leases.py).
LEASES_NAME = "leases.json"
LEASES_LOCK_NAME = "lock"


def root() -> Path:
    """Return $MINICT_DIR (default /var/lib/minict) as an absolute path."""
    return Path(os.path.abspath(os.environ.get("MINICT_DIR") or DEFAULT_ROOT))


def run_dir() -> Path:
    """Return $MINICT_RUN_DIR (default /run/minict): host state every MINICT_DIR shares."""
    return Path(os.path.abspath(os.environ.get("MINICT_RUN_DIR") or DEFAULT_RUN_DIR))


def images_dir() -> Path:
    return root() / "images"


def containers_dir(base=None) -> Path:
    """Return containers/ of $MINICT_DIR, or of the MINICT_DIR `base` (another one on the host)."""
    return Path(base if base is not None else root()) / "containers"


def leases_dir() -> Path:
    """Return the directory of the host-wide network leases ($MINICT_RUN_DIR/network)."""
    return run_dir() / "network"


def ensure_dirs() -> None:
    """Create the root, images/ and containers/ if missing, private (0700); raise MinictError.

    Image blobs and container files are nobody else's business (docker keeps
    its root 0710, containerd 0711 with 0700 inside).  A root that exists
    already is left as its owner made it, but one that other users can read
    or search gets a warning (once per command).
    """
    base = root()
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MinictError(f"cannot create {base.parent}: {err.strerror}") from None
    if not _make_private_dir(base):
        _warn_if_open(base)
    for path in (images_dir(), containers_dir()):
        _make_private_dir(path)


def _make_private_dir(path: Path) -> bool:
    """Create directory `path` with mode 0700; return False if it was there already."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    except OSError as err:
        raise MinictError(f"cannot create {path}: {err.strerror}") from None
    os.chmod(path, 0o700)  # the mode, whatever the umask took away
    return True


_warned_open = False


def _warn_if_open(base: Path) -> None:
    global _warned_open
    try:
        mode = os.stat(base).st_mode
    except OSError:
        return
    if mode & 0o007 and not _warned_open:
        _warned_open = True
        log.warn(f"{base} is readable or searchable by every user (mode {mode & 0o7777:04o}): "
                 f"they can read image blobs and container files; 'chmod 700 {base}' keeps them private")


def is_leftover_old(path) -> bool:
    """Return whether `path` (a killed run's or pull's leftover) was last changed an hour ago or more.

    `prune` removes younger leftovers only with --force: a pull tried again
    soon resumes its partial download.
    """
    try:
        return time.time() - os.lstat(path).st_mtime >= LEFTOVER_AGE
    except FileNotFoundError:
        return False


def check_container_name(name: str) -> str:
    """Return `name` if it can name a container; raise InvalidName otherwise."""
    if not isinstance(name, str) or not CONTAINER_NAME.match(name):
        raise InvalidName(
            f"Invalid container name {name!r}: use 1-128 of letters, digits, '_', '.' "
            "and '-', starting with a letter or digit"
        )
    return name


def container_dir(name: str, base=None) -> Path:
    """Return the bundle directory of container `name` (validated), under $MINICT_DIR or `base`."""
    return containers_dir(base) / check_container_name(name)


def partial_bundle_dir(name: str, base=None) -> Path:
    """Return where container `name`'s bundle is built (or put aside to be removed)."""
    return containers_dir(base) / (PARTIAL_PREFIX + check_container_name(name))


def partial_bundle_name(entry: str) -> str | None:
    """Return the container name of the containers/ entry `entry` if it is a partial bundle."""
    name = entry.removeprefix(PARTIAL_PREFIX)
    return name if name != entry and CONTAINER_NAME.match(name) else None


def container_lock(name: str, base=None) -> Path:
    """Return container `name`'s lock file (a name no container can have: it starts with a dot)."""
    return containers_dir(base) / f".{check_container_name(name)}.lock"


def bundle_file(bundle, file_name: str) -> Path:
    """Return the file `file_name` (one of BUNDLE_FILES) of the bundle directory `bundle`."""
    if file_name not in BUNDLE_FILES:
        raise ValueError(f"{file_name!r} is not a file of a bundle")
    return Path(bundle) / file_name


def image_dir(ref: Reference) -> Path:
    """Return the OCI layout directory of the repository `ref` names.

    Docker Hub's `docker.io/` and `library/` are dropped: `images/ubuntu`,
    `images/someuser/app`, `images/localhost:5000/team/app`.
    """
    parts = ref.familiar_name.split("/")
    for part in parts[1:]:
        if part in _LAYOUT_ENTRIES:
            raise MinictError(
                f"repository {ref.familiar_name!r} cannot be stored: its path component "
                f"{part!r} is a name the OCI image layout uses"
            )
    return images_dir().joinpath(*parts)


def list_container_names() -> list[str]:
    """Return the names of the bundles under containers/, sorted."""
    try:
        entries = os.listdir(containers_dir())
    except FileNotFoundError:
        return []
    except OSError as err:
        raise MinictError(f"cannot read {containers_dir()}: {err.strerror}") from None
    return sorted(e for e in entries if CONTAINER_NAME.match(e)
                  and (containers_dir() / e).is_dir())


def list_image_dirs() -> list[tuple[str, Path]]:
    """Return (repository, layout dir) for every image layout under images/, sorted.

    Repositories nest (`someuser/app`, `localhost:5000/team/app`), so the
    tree is walked; a directory is a layout when it holds `oci-layout`.
    """
    found = []
    base = images_dir()
    try:
        for current, dirs, files in os.walk(base, onerror=_raise_walk_error):
            dirs[:] = sorted(d for d in dirs if d != LAYOUT_BLOBS_NAME and not d.startswith("."))
            if LAYOUT_MARKER_NAME in files:
                found.append((os.path.relpath(current, base), Path(current)))
    except OSError as err:
        raise MinictError(f"cannot read {base}: {err.strerror}") from None
    return sorted(found)


def _raise_walk_error(err: OSError) -> None:
    if not isinstance(err, FileNotFoundError):
        raise err
