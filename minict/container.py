"""Containers: their state, their lock, and the run/start/rm/list verbs.

    containers/<name>/              the bundle (bundle.py): rootfs/, config.json
    containers/<name>/state.json    {"status": "created"|"running"|"exited", "pid", "exitStatus",
                                     "autoRemove" (run --rm)}
    containers/.<name>.lock         held (flock) by the minict that creates, runs or
                                    removes it; deleted whenever the container is not there

The lock is the truth about "running": the minict that holds it is the
parent of the container's init, and that init dies with it (PDEATHSIG), so a
free lock means nothing runs, whatever state.json says after a crash.
state.json tells the rest: the pid while running, the status after.
"""

import fcntl
import json
import os
import signal
import time

from minict import launch, linux, log, store
from minict.errors import ContainerError, LaunchError, MinictError

# bundle.py's names, repeated so that `start` need not import the unpacker
# (tests check they agree): the completion mark and the config's name.
COMPLETE_MARK = ".minict-complete"
CONFIG_NAME = "config.json"
STATE_NAME = "state.json"
EXITED_MESSAGE = "Container process exited. It can be started again using the 'start' option."


def run(ref, name: str, overrides=None, *, auto_remove: bool = False,
        pull: str = "never", network: str = "host", publish=()) -> int:
    """Create container `name` from image `ref`, run it, and return its exit status.

    `overrides` (spec.Overrides) are run's options, written into config.json
    so that `start` repeats them.  `auto_remove` deletes the container when
    it exits (`--rm`).  `pull` is "never" (the image must be stored),
    "missing" or "always".  `network` ("host", "none", "bridge") and
    `publish` (network.parse_publish's ports) are kept in the bundle for
    `start` too.  Raise ContainerError if the name is taken (also by a
    concurrent run), PullError, UnpackError, NetworkError or LaunchError.
    """
    from minict import bundle as bundles
    from minict import images
    from minict import network as networking

    settings = networking.check(network, list(publish))

    store.ensure_dirs()
    lock = _lock(name, wait=False)
    if lock is None:
        raise ContainerError(f"Container with name {name} already exists.")
    path = store.container_dir(name)
    try:
        # bundle.create renames a bundle into place only once it is whole, so
        # anything at this name is a container (or not ours): never replace
        # it.  What an interrupted run left is elsewhere, and create cleans it.
        if os.path.lexists(path):
            raise ContainerError(f"Container with name {name} already exists.")
        _pull(ref, pull)
        with images.using():  # no sweep deletes the layers being unpacked
            path = bundles.create(ref, name, overrides)
        if settings["mode"] != "host":
            networking.save(path, settings)
        _write_state(path, {"status": "created", **({"autoRemove": True} if auto_remove else {})})
        try:
            return _launch(path)
        finally:
            if auto_remove:
                unmount_below(path)
                bundles.remove_tree(path)
    finally:
        _unlock(name, lock)


def _pull(ref, policy: str) -> None:
    """Pull `ref` if `policy` ("never", "missing", "always") asks for it; raise PullError."""
    if policy == "never":
        return
    if policy not in ("missing", "always"):
        raise ContainerError(f"unknown pull policy {policy!r}: use missing, always or never")
    from minict import layout
    from minict import pull as pulling

    if policy == "missing":
        try:
            layout.Layout.for_reference(ref).resolve(ref)
            return
        except MinictError:
            pass
    pulling.pull(ref, platform=None, insecure=False, jobs=4)


def start(name: str) -> int:
    """Run the existing container `name` again and return its exit status.

    Its rootfs keeps what earlier runs changed.  Raise ContainerError if it
    does not exist or is running, or LaunchError.
    """
    path = store.container_dir(name)
    missing = ContainerError(f"Container with name {name} does not exist. "
                             "Use the 'run' option to start a new container")
    if not is_complete(path):
        raise missing
    lock = _lock(name, wait=False)
    if lock is None:
        raise ContainerError(f"Container with name {name} is already running.")
    try:
        if not is_complete(path):  # removed while we waited for the lock
            raise missing
        return _launch(path)
    finally:
        _unlock(name, lock)


def remove(name: str, force: bool) -> None:
    """Delete container `name`: unmount what is left, then its bundle.

    A running container is refused unless `force`, which kills it (SIGKILL)
    and waits for its minict to record the exit.  Raise ContainerError.
    """
    from minict import bundle as bundles

    path = store.container_dir(name)
    if not os.path.lexists(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    lock = _lock(name, wait=False)
    if lock is None:
        if not force:
            raise ContainerError(f"Container with name {name} is running; "
                                 "stop it first or use 'rm --force'")
        _kill(name, path)
        lock = _lock(name, wait=True)
    try:
        if not os.path.lexists(path):  # a concurrent rm was first
            raise ContainerError(f"Container with name {name} does not exist.")
        unmount_below(path)
        bundles.remove_tree(path)
        # A container whose minict crashed may have left its address lease
        # and port rules; drop them (and any other container's stale ones).
        from minict import network

        network.cleanup(name, is_running)
    finally:
        _unlock(name, lock)


def exec_in(name: str, args: list[str], *, env=(), workdir: str | None = None,
            user: str | None = None) -> int:
    """Run `args` inside the running container `name`; return the command's exit status.

    The command joins the container's namespaces and root and gets its
    config's env, cwd, user, capabilities and terminal setting; `env`
    (NAME=value items), `workdir` and `user` (as `run -u`) change them, as
    docker exec's options do.  Raise ContainerError if the container does
    not exist or is not running, or LaunchError.
    """
    path = store.container_dir(name)
    if not is_complete(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    if not args:
        raise ContainerError("exec needs a command: minict exec --name NAME -- COMMAND [ARG]...")
    pid = running_pid(path)
    # Holding /proc/<pid> open pins that process: if it exits and the pid is
    # reused, lookups through the descriptor fail instead of finding the stranger.
    proc_fd = _open_proc(pid) if pid is not None else None
    if proc_fd is not None and _parent(pid, proc_fd) != read_state(path).get("owner"):
        os.close(proc_fd)
        proc_fd = None
    if proc_fd is None:
        raise ContainerError(f"Container with name {name} is not running; "
                             "start it with 'minict start'")
    try:
        config = _read_config(path)
        config["process"] = _exec_process(path, config, args, env, workdir, user)
        return launch.launch(str(path), config, join=proc_fd)
    finally:
        os.close(proc_fd)


def _exec_process(path, config: dict, args, env, workdir, user) -> dict:
    """Return config.json's process with exec's command and options in place."""
    process = {**(config.get("process") or {}), "args": list(args)}
    if workdir is not None:
        if not workdir.startswith("/"):
            raise ContainerError(f"the working directory {workdir!r} is invalid: "
                                 "it needs to be an absolute path")
        process["cwd"] = workdir
    variables = list(process.get("env") or [])
    if user is not None:
        from minict import bundle, spec

        rootfs = os.path.join(path, (config.get("root") or {}).get("path", "rootfs"))
        try:
            resolved = spec.resolve_user(user, *bundle.read_user_databases(rootfs))
        except spec.SpecError as err:
            raise ContainerError(str(err)) from None
        except OSError as err:
            raise ContainerError(f"cannot read the container's user database: "
                                 f"{err.strerror}") from None
        # runc's rule: the user's home, unless the command's env names one.
        home = resolved.pop("home", None) or "/"
        process["user"] = resolved
        if not any(item.startswith("HOME=") for item in env):
            env = [f"HOME={home}", *env]
    for item in env:
        key = item.partition("=")[0] + "="
        variables = [v for v in variables if not v.startswith(key)] + [item]
    process["env"] = variables
    return process


def _open_proc(pid: int) -> int | None:
    try:
        return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def prune() -> list[str]:
    """Remove every container that is not running; return their names."""
    removed = []
    for name in list_names():
        lock = _lock(name, wait=False)
        if lock is None:
            continue  # running, or being created or removed
        _unlock(name, lock)
        try:
            remove(name, force=False)
        except ContainerError as err:  # started or removed since: say so, go on
            log.warn(err.message)
            continue
        removed.append(name)
    return removed


def prune_partial_bundles(force: bool) -> list[str]:
    """Remove the half-made bundles of runs that were killed; return their container names.

    A `.partial-<name>` bundle is taken only when no minict holds `name`'s
    lock (a `run` building it does) and, unless `force`, when it is an hour
    old (store.LEFTOVER_AGE).  One that cannot be removed is warned about.
    """
    from minict import bundle as bundles

    removed = []
    try:
        entries = sorted(os.listdir(store.containers_dir()))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.removeprefix(bundles.PARTIAL_PREFIX)
        path = store.containers_dir() / entry
        if name == entry or not store.CONTAINER_NAME.match(name):
            continue
        if not force and not store.is_leftover_old(path):
            continue
        lock = _lock(name, wait=False)
        if lock is None:
            continue  # a run is building it
        try:
            bundles.remove_tree(path)
            removed.append(name)
        except MinictError as err:
            log.warn(err.message)
        finally:
            _unlock(name, lock)
    return removed


def list_names() -> list[str]:
    """Return the names of all containers, sorted (the `list-containers` array)."""
    return store.list_container_names()


def is_running(name: str) -> bool:
    """Return whether a minict holds container `name`'s lock (creating, running or removing it)."""
    lock = _lock(name, wait=False, probe=True)
    if lock is None:
        return True
    _unlock(name, lock)
    return False


def running_pid(path) -> int | None:
    """Return the host pid of the bundle's init if state.json says it runs and it does.

    Unlike a look at the lock, this never gets in the way of a concurrent
    `start`; the pid counts only while its parent is the minict that wrote it.
    """
    state = read_state(path)
    pid = state.get("pid")
    if state.get("status") != "running" or not isinstance(pid, int):
        return None
    return pid if _parent(pid) == state.get("owner") else None


def is_complete(path) -> bool:
    """Return whether the bundle at `path` was fully built (bundle.is_complete)."""
    return os.path.isfile(os.path.join(path, COMPLETE_MARK))


def read_state(path) -> dict:
    """Return the bundle's state.json, or {} if it has none or it is unreadable."""
    try:
        with open(os.path.join(path, STATE_NAME), "rb") as f:
            state = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


# -- running ------------------------------------------------------------------------

def _launch(path) -> int:
    """Launch the bundle at `path` (its lock held); record and return the exit status."""
    from minict import network

    config = _read_config(path)
    # Its network (network.json): a namespace, an address, published ports.
    attachment = network.prepare(path.name, path, config, is_running)

    def started(pid: int) -> None:
        _write_state(path, {"status": "running", "pid": pid, "owner": os.getpid()})

    try:
        status = launch.launch(str(path), config, on_start=started, on_netns=attachment.attach)
    except LaunchError as err:
        _write_state(path, {"status": "exited", "exitStatus": None, "error": err.message})
        raise
    finally:
        attachment.release()
    _write_state(path, {"status": "exited", "exitStatus": status})
    if not read_state(path).get("autoRemove"):  # run --rm: it cannot be started again
        log.info(EXITED_MESSAGE)
    return status


def _read_config(path) -> dict:
    try:
        with open(os.path.join(path, CONFIG_NAME), "rb") as f:
            config = json.loads(f.read())
    except OSError as err:
        raise LaunchError(f"cannot read {path}/{CONFIG_NAME}: {err.strerror}") from None
    except ValueError as err:
        raise LaunchError(f"{path}/{CONFIG_NAME} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise LaunchError(f"{path}/{CONFIG_NAME} is not a JSON object")
    return config


def _write_state(path, state: dict) -> None:
    # Replaced by rename, so a reader never sees half a document; no fsync:
    # after a crash the lock, not this file, says whether anything runs.
    if "autoRemove" not in state and read_state(path).get("autoRemove"):
        state = {**state, "autoRemove": True}  # run --rm's choice lasts the container's life
    tmp = os.path.join(path, f".{STATE_NAME}.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(path, STATE_NAME))


def _kill(name: str, path) -> None:
    """SIGKILL the running container `name` (its minict then records the exit)."""
    state = read_state(path)
    pid, owner = state.get("pid"), state.get("owner")
    if state.get("status") != "running" or not isinstance(pid, int) or _parent(pid) != owner:
        raise ContainerError(f"Container with name {name} is being created or stopped; "
                             "try again in a moment")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _parent(pid: int, proc_fd: int | None = None) -> int | None:
    """Return the parent pid of `pid` (or of the /proc/<pid> `proc_fd`), or None if it is gone."""
    try:
        fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd) if proc_fd is not None \
            else os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat[stat.rindex(b")") + 2:].split()[1])


# -- locks --------------------------------------------------------------------------

def _lock_path(name: str):
    # Container names start with a letter or digit: no container is called this.
    return store.containers_dir() / f".{store.check_container_name(name)}.lock"


# is_running() probes other containers' locks (network.py reclaims leases
# with it) and holds them for microseconds; a command that finds a lock taken
# looks again for this long before it believes a minict really holds it.
_PROBE_GRACE = (0.005, 0.02, 0.05)


def _lock(name: str, *, wait: bool, probe: bool = False) -> int | None:
    """Take container `name`'s lock; return its descriptor, or None if taken and not `wait`.

    Without `wait`, a lock found taken is tried again over a few tens of
    milliseconds (unless this is itself a `probe`), so that another
    command's momentary probe is not mistaken for a running container.
    """
    path = _lock_path(name)
    retries = () if probe else _PROBE_GRACE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
            for pause in retries:
                try:
                    fcntl.flock(fd, flags)
                    break
                except BlockingIOError:
                    time.sleep(pause)
            else:
                fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        # `rm` unlinks the file of a removed container while holding it; a
        # lock on an unlinked file guards nothing, so lock the new one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def _unlock(name: str, fd: int) -> None:
    """Release container `name`'s lock; delete its file if the container is gone."""
    try:
        if not os.path.lexists(store.container_dir(name)):
            # Unlinked while held: whoever waits on this file sees the unlink
            # and locks a new file instead (see _lock).
            os.unlink(_lock_path(name))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


# -- leftover mounts ----------------------------------------------------------------

def unmount_below(path) -> None:
    """Detach every mount at or below `path`, deepest first, never following a symlink.

    Only the parent directory is resolved (MINICT_DIR may sit behind a
    symlink); `path` itself is taken as it is, so a bundle replaced by a
    symlink to / cannot make us detach the host's mounts.
    """
    path = os.path.abspath(path)
    base = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    for _ in range(100):  # mounts may be stacked; each pass removes the top ones
        points = linux.mounts_below(base)
        if not points:
            return
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            try:
                linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
            except OSError as err:
                raise ContainerError(f"cannot unmount {point}: {err.strerror}") from None
    raise ContainerError(f"cannot unmount everything below {base}")


