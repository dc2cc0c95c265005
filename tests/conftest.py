"""Fixtures every test module shares.

    registry       the test's own repositories in the session's docker-registry on
                   127.0.0.1:<port>: registry.repo("test/app") is the test's name for
                   test/app, registry.ref("test/app:v1") its reference (a Namespace,
                   tests.support.registry).  Mark a test `own_registry` to get a
                   registry of its own, for one it stops, corrupts or needs empty.
    minict_dir     an empty temporary MINICT_DIR (it exists)
    minict         run `python -m minict ARGS...` with MINICT_DIR set; returns CompletedProcess
    busybox_image  a busybox image built by umoci, pushed once by skopeo to the session's
                   registry (or, for an `own_registry` test, to the test's registry)
    debian_layout  the bench's debootstrap bookworm image (bench/image.py), built once
                   and cached on disk under bench/.cache/
    require_tool   require_tool("skopeo") -> path; skips locally, fails under CI=true
    canary         a host directory (dir/, resolv.conf) that symlinks in a rootfs aim at;
                   compare tests.support.layers.tree(canary) before and after

Mark tests that need root with `@pytest.mark.root`: they skip locally when not
root and fail under CI=true.  In a module marked root, `@pytest.mark.unprivileged`
says a test needs no root after all.  `make test-unprivileged` runs every test
that needs no root as nobody.  Every test is checked for mounts it left behind under pytest's
temporary directories.
"""

import getpass
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import ci
from tests.support.mounts import mounts_under
from tests.support.registry import Namespace, Registry
from tests.support.waiting import rmdir_when_empty

MINICT_TIMEOUT = 120


def pytest_configure(config):
    config.addinivalue_line("markers", "root: the test needs root (skips locally, fails in CI)")
    config.addinivalue_line("markers", "unprivileged: the test needs no root, though its "
                            "module is marked root")
    config.addinivalue_line("markers", "own_registry: `registry` is a registry of the test's "
                            "own (it stops it, corrupts its storage or needs it empty)")
    # pytest deletes old temp dirs with a recursive delete that would go
    # through a mount left there (a bind of /dev, say): refuse to start.
    roots = [Path(tempfile.gettempdir(), f"pytest-of-{getpass.getuser()}")]
    if config.option.basetemp:
        roots.append(Path(config.option.basetemp).resolve())
    leaked = sorted(set().union(*(mounts_under(str(root)) for root in roots)))
    if leaked:
        pytest.exit(f"mounts left under pytest's temp dirs, unmount them first: {leaked}",
                    returncode=3)


def needs_root(item) -> bool:
    """Marked root (the test or its module), and not marked unprivileged (the test)."""
    return (item.get_closest_marker("root") is not None
            and item.get_closest_marker("unprivileged") is None)


def pytest_runtest_setup(item):
    if needs_root(item):
        ci.require_root()


# -- mount leak guard -----------------------------------------------------


@pytest.fixture(scope="session")
def _pytest_tmp_base(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left_in_session(_pytest_tmp_base):
    """After the session, nothing may stay mounted under pytest's temp dirs."""
    yield
    leaked = mounts_under(_pytest_tmp_base)
    assert not leaked, f"mounts left behind under {_pytest_tmp_base}: {sorted(leaked)}"


def _container_cgroups() -> set[Path]:
    """Return every container cgroup minict has on this host (cgroups.py's minict/ parents)."""
    found = set()
    for parent in (*Path("/sys/fs/cgroup").glob("*/minict"), Path("/sys/fs/cgroup/minict")):
        try:
            found.update(child for child in parent.iterdir() if child.is_dir())
        except OSError:
            continue
    return found


def _state_dir_keys(base: str, depth: int = 4) -> set[str]:
    """The cgroup keys (<dev>-<ino> in hex, as cgroups.leaf_name makes them) of every
    directory up to `depth` levels below `base`: the session's MINICT_DIRs are among them."""
    keys = set()
    level = [base]
    for _ in range(depth):
        below = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    keys.add(f"{st.st_dev:x}-{st.st_ino:x}")
                    below.append(entry.path)
        level = below
    return keys


@pytest.fixture(scope="session", autouse=True)
def _no_container_cgroups_left_in_session(_pytest_tmp_base):
    """After the session, no cgroup of a test's container may hold a process.

    Tests that SIGKILL a minict leave its container's empty cgroup for the
    next start or rm of a container to sweep; with the tests' MINICT_DIRs
    gone, nothing would, so the empty ones are removed here.  Only this
    session's: another session running at the same time (make test next to
    a developer's pytest) has containers of its own, running or being made
    (empty between the cgroup's mkdir and its first process).
    """
    before = _container_cgroups() if os.geteuid() == 0 else set()
    yield
    if os.geteuid() != 0:
        return
    ours = _state_dir_keys(_pytest_tmp_base)
    made = [path for path in sorted(_container_cgroups() - before)
            if "-".join(path.name.split("-", 2)[:2]) in ours]
    # A killed container's last processes may still be exiting.
    busy = [str(path) for path in made if not rmdir_when_empty(path, timeout=5.0)]
    assert not busy, f"container cgroups with processes left behind: {busy}"


@pytest.fixture(autouse=True)
def _no_mounts_left_by_test(_pytest_tmp_base):
    """Blame the test that leaked a mount (this fixture is torn down last)."""
    before = mounts_under(_pytest_tmp_base)
    yield
    leaked = mounts_under(_pytest_tmp_base) - before
    assert not leaked, f"the test left mounts behind: {sorted(leaked)}"


# -- tools, registry, minict ----------------------------------------------


@pytest.fixture
def require_tool():
    """Return require_tool(name) -> path; it skips locally and fails in CI when missing."""
    return ci.require_tool


@pytest.fixture(scope="session")
def session_registry(tmp_path_factory):
    """The one plain registry of the session; tests get a Namespace of it (`registry`)."""
    ci.require_tool("docker-registry")
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


# A test's prefix is its number in the session: short, and a valid repository component.
_namespace_numbers = itertools.count(1)


def _own_registry(request) -> bool:
    return request.node.get_closest_marker("own_registry") is not None


@pytest.fixture
def registry(request, tmp_path):
    """The test's repositories: a Namespace of the session's registry, or a Registry of
    its own (stopped by pid after the test) when the test is marked own_registry."""
    if not _own_registry(request):
        reg = request.getfixturevalue("session_registry")
        yield Namespace(reg, f"t{next(_namespace_numbers)}")
        return
    ci.require_tool("docker-registry")
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def minict_dir(tmp_path):
    """An empty MINICT_DIR for one test (0700, as minict makes one: no warning about it)."""
    path = tmp_path / "minict"
    path.mkdir(mode=0o700)
    return path


def run_minict(*args, minict_dir, input=None, env=None, timeout=MINICT_TIMEOUT, cwd=None):
    """Run `python -m minict ARGS` and return the CompletedProcess (text, captured)."""
    full_env = dict(os.environ)
    full_env["MINICT_DIR"] = str(minict_dir)
    full_env.pop("MINICT_LOG_LEVEL", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "minict", *map(str, args)],
        input=input, check=False,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


@pytest.fixture
def minict(minict_dir):
    """minict("pull", "--image", ref, input=None, env=None, timeout=120) -> CompletedProcess.

    `env` is merged over the test's environment (MINICT_DIR set to `minict_dir`;
    pass env={"MINICT_DIR": ...} to point elsewhere).
    """

    def call(*args, input=None, env=None, timeout=MINICT_TIMEOUT, cwd=None):
        return run_minict(*args, minict_dir=minict_dir, input=input, env=env,
                          timeout=timeout, cwd=cwd)

    return call


@pytest.fixture
def canary(tmp_path):
    """A host directory that hostile symlinks aim at: it must never change."""
    path = tmp_path / "canary"
    (path / "dir").mkdir(parents=True)
    (path / "resolv.conf").write_text("host file, untouched\n")
    return path


# -- images built with real tools -----------------------------------------


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory):
    """The busybox OCI layout built once per session by umoci (see tests.support.tools)."""
    from tests.support import tools

    for tool in tools.BUSYBOX_TOOLS:
        ci.require_tool(tool)
    return tools.build_busybox_layout(tmp_path_factory.mktemp("busybox"))


@pytest.fixture(scope="session")
def session_busybox_image(busybox_layout, session_registry):
    """busybox pushed once to the session's registry, outside every test's namespace."""
    from tests.support import tools

    # A Namespace with no prefix: `.registry.stop()` must not stop everyone's registry.
    return tools.skopeo_push(busybox_layout, Namespace(session_registry, ""), "test/busybox",
                             "latest")


@pytest.fixture
def busybox_image(request, busybox_layout):
    """The busybox image pushed by skopeo as test/busybox:latest.

    It is a str (the reference `127.0.0.1:PORT/test/busybox:latest`) with
    `.registry`, `.layout`, `.repo` and `.tag` attributes.  Tests only read it,
    so one push serves the session; an own_registry test gets it in its own
    registry (`registry`), which it may stop.
    """
    from tests.support import tools

    if not _own_registry(request):
        return request.getfixturevalue("session_busybox_image")
    registry = request.getfixturevalue("registry")
    return tools.skopeo_push(busybox_layout, registry, "test/busybox", "latest")


@pytest.fixture(scope="session")
def debian_layout():
    """The bench's debootstrap minbase bookworm image (bench/image.py; cached on disk)."""
    for tool in ("debootstrap", "umoci", "tar"):
        ci.require_tool(tool)
    from bench import image

    try:
        image.debian_mirror()
    except image.BenchError as err:
        ci.skip_or_fail(str(err))
    return image.layout()
