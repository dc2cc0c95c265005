"""Containers: their state, their lock, and the run/start/rm/list verbs.

    containers/<name>/              the bundle (bundle.py): rootfs/, config.json
    containers/<name>/state.json    {"status": "created"|"running"|"exited", "pid", "exitStatus",
                                     "autoRemove" (run --rm), "owner" (minict's pid),
                                     "startTime" (the init's, /proc/<pid>/stat field 22)}
    containers/.<name>.lock         held (flock) by the minict that creates, runs or
                                    removes it; deleted whenever the container is not there

Each container also has a cgroup while it runs (cgroups.py; devices.py
fills in its device rules); a cgroup left by a killed minict is replaced
by the next start and removed by rm.

The lock is the truth about "running": the minict that holds it is the
parent of the container's init, and that init dies with it (PDEATHSIG), so a
free lock means nothing runs, whatever state.json says after a crash.
state.json tells the rest: the pid while running, the status after.

A minict can hold the lock and not answer (stopped by SIGSTOP, hung): `rm
--force` then kills the container itself, through a pidfd of the init that
state.json names, checked by its start time, and removes the bundle without
the lock (_remove_unowned).  That minict, when it goes on, finds its bundle
gone and only reports it (_record).
"""

import fcntl
import os
import signal
import time

from minict import boundedjson, fsutil, linux, log, store
from minict.errors import ContainerError, LaunchError, MinictError, NetworkError
from minict.runtime import launch, userns

# bundle.py's names, repeated so that `start` need not import the unpacker
# (tests check they agree): the completion mark and the config's name.
EXITED_MESSAGE = "Container process exited. It can be started again using the 'start' option."
# How long `rm --force` waits for the minict that runs a container to let go
# of it after the kill: a working one does within milliseconds; one that is
# stopped or hung never does.
OWNER_GRACE = 5.0


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
    from dataclasses import replace

    from minict.bundle import create as bundles
    from minict.image import gc as images
    from minict.runtime import network as networking

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
        if overrides is not None and overrides.userns == "auto":
            # Reserved for the container's life; freed below if it never
            # came to exist (or --rm removed it), else by rm.
            overrides = replace(overrides, userns_range=userns.reserve(store.root(), name))
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
        if overrides is not None and overrides.userns_range and not os.path.lexists(path):
            userns.release(store.root(), name)
        _unlock(name, lock)


def _pull(ref, policy: str) -> None:
    """Pull `ref` if `policy` ("never", "missing", "always") asks for it; raise PullError."""
    if policy == "never":
        return
    if policy not in ("missing", "always"):
        raise ContainerError(f"unknown pull policy {policy!r}: use missing, always or never")
    from minict.image import layout

    if policy == "missing":
        try:
            layout.Layout.for_reference(ref).resolve(ref)
            return
        except MinictError:
            pass
    from minict.image import pull as pulling  # requests with it: only when a registry is asked

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
    and waits up to OWNER_GRACE seconds for its minict to record the exit;
    a minict that does not (stopped, hung) is done without.  Raise
    ContainerError.
    """
    from minict.bundle import create as bundles

    path = store.container_dir(name)
    if not os.path.lexists(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    lock = _lock(name, wait=False)
    if lock is None:
        if not force:
            raise ContainerError(f"Container with name {name} is running; "
                                 "stop it first or use 'rm --force'")
        lock = _kill_and_wait(name, path)
        if lock is None:
            _remove_unowned(name, path)
            return
    try:
        if not os.path.lexists(path):  # a concurrent rm was first
            raise ContainerError(f"Container with name {name} does not exist.")
        from minict.runtime import cgroups

        cgroups.remove_leftovers(name)  # a killed minict's
        unmount_below(path)
        bundles.remove_tree(path)
        userns.release(store.root(), name)  # its host ids, with --userns auto
        # A container whose minict crashed may have left its address lease
        # and port rules; drop them (and any other container's stale ones).
        from minict.runtime import network

        network.cleanup(name)
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
        from minict.runtime import cgroups

        config = _read_config(path)
        config["process"] = _exec_process(path, config, args, env, workdir, user)
        # The command joins the container's cgroup too: its device rules hold for it.
        return launch.launch(str(path), config, join=proc_fd,
                             cgroup=cgroups.existing_cgroup(name))
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
        from minict.bundle import create as bundle
        from minict.bundle import spec

        rootfs = os.path.join(path, (config.get("root") or {}).get("path", store.ROOTFS_NAME))
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
    from minict.bundle import create as bundles

    removed = []
    try:
        entries = sorted(os.listdir(store.containers_dir()))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = store.partial_bundle_name(entry)
        path = store.containers_dir() / entry
        if name is None:
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
    return os.path.isfile(store.bundle_file(path, store.COMPLETE_MARK))


def read_state(path) -> dict:
    """Return the bundle's state.json, or {} if it has none or it is unreadable."""
    return fsutil.read_json(store.bundle_file(path, store.STATE_NAME), {})


# -- running ------------------------------------------------------------------------

def _launch(path) -> int:
    """Launch the bundle at `path` (its lock held); record and return the exit status."""
    from minict.runtime import network

    config = _read_config(path)
    if userns.idmapped(config):  # --userns auto: its host ids are still its own
        userns.confirm(store.root(), path.name, config)
    identity = _identity(path)
    # Its network (network.json): a namespace, an address, published ports.
    attachment = network.prepare(path.name, path, config)

    def started(pid: int) -> None:
        # The start time tells this init from a later process given its pid (rm --force).
        stat = linux.process_stat(pid)
        _write_state(path, {"status": "running", "pid": pid, "owner": os.getpid(),
                            "startTime": stat.start_time if stat else None})

    cgroup = None
    try:
        cgroup = _create_cgroup(path.name, config)
        status = launch.launch(str(path), config, on_start=started, on_netns=attachment.attach,
                               cgroup=cgroup)
    except LaunchError as err:
        _record(path, identity, {"status": "exited", "exitStatus": None, "error": err.message})
        raise
    finally:
        attachment.release()
        if cgroup is not None:
            try:
                cgroup.remove()
            except MinictError as err:
                log.warn(err.message)
    if not _record(path, identity, {"status": "exited", "exitStatus": status}):
        log.warn(f"Container with name {path.name} was removed while it ran (rm --force).")
        return status
    if not read_state(path).get("autoRemove"):  # run --rm: it cannot be started again
        log.info(EXITED_MESSAGE)
    return status


def _create_cgroup(name: str, config: dict):
    """Create the container's cgroup with its device rules (devices.py); raise LaunchError."""
    from minict.bundle import devices

    try:
        return devices.create_cgroup(name, config)
    except MinictError as err:
        raise LaunchError(err.message, err.hint) from None


def _read_config(path) -> dict:
    try:
        config = fsutil.load_json(store.bundle_file(path, store.CONFIG_NAME))
    except OSError as err:
        raise LaunchError(f"cannot read {path}/{store.CONFIG_NAME}: {err.strerror}") from None
    except boundedjson.UnsafeJSON as err:
        raise LaunchError(f"{path}/{store.CONFIG_NAME} is {err}") from None
    except ValueError as err:
        raise LaunchError(f"{path}/{store.CONFIG_NAME} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise LaunchError(f"{path}/{store.CONFIG_NAME} is not a JSON object")
    return config


def _identity(path) -> tuple:
    """Return what tells this bundle directory from one made later at the same path."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino


def _record(path, identity: tuple, state: dict) -> bool:
    """Write `state` if the bundle `_identity` named is still there; return whether it was.

    `rm --force` may have removed it while this minict was stopped; then
    nothing may be written, least of all a state.json into a new directory.
    """
    try:
        if _identity(path) != identity:
            return False
        _write_state(path, state)
    except FileNotFoundError:  # renamed away by rm (_remove_unowned) meanwhile
        return False
    return True


def _write_state(path, state: dict) -> None:
    # Replaced by rename, so a reader never sees half a document; no fsync:
    # after a crash the lock, not this file, says whether anything runs.
    if "autoRemove" not in state and read_state(path).get("autoRemove"):
        state = {**state, "autoRemove": True}  # run --rm's choice lasts the container's life
    fsutil.write_json_atomic(store.bundle_file(path, store.STATE_NAME), state, fsync=False)


def _kill_and_wait(name: str, path) -> int | None:
    """Kill the running container `name`; return its lock once its minict lets go.

    Return None if after OWNER_GRACE seconds that minict still holds the
    lock though its container is dead (the minict is stopped or hung).
    Raise ContainerError if no running container could be found to kill in
    that time (the minict is creating, starting or stopping it) or its init
    does not die.
    """
    deadline = time.monotonic() + OWNER_GRACE
    pause = 0.005  # a working minict lets go within milliseconds: look often at first
    while True:
        state = read_state(path)
        # SIGKILL until it is dead: a `start` may have made it only now.
        alive = _kill_init(state)
        lock = _lock(name, wait=False, probe=True)
        if lock is not None:
            return lock
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    holder = linux.flock_holder(_lock_path(name))
    who = "another minict" if holder is None else f"minict (pid {holder}{_stopped(holder)})"
    if state.get("status") != "running":
        raise ContainerError(
            f"Container with name {name} is held by {who}, which has not let go of it in "
            f"{OWNER_GRACE:g} s, and has no process to kill: it is being created, started or "
            f"stopped. Nothing was removed; if that minict hangs, continue or kill it first")
    if alive:
        raise ContainerError(f"Container with name {name}: its init (pid {state.get('pid')}) "
                             f"did not die of SIGKILL in {OWNER_GRACE:g} s; nothing was removed")
    return None


def _kill_init(state: dict) -> bool:
    """SIGKILL the container init `state` names if it still lives; return whether it did.

    The pid alone could name another process by now: the init is reached
    through a pidfd, and signalled only if that process has the recorded
    start time and parent (a zombie counts as dead).  Killing PID 1 of the
    container's pid namespace kills every process in it
    (pid_namespaces(7)).
    """
    pid = state.get("pid")
    if state.get("status") != "running" or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        pidfd = linux.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        # Read after pidfd_open: while the pidfd's process lives, the pid is
        # its, so the stat read here is that process's if the signal below
        # finds it alive.
        stat = linux.process_stat(pid)
        if stat is None or stat.state in ("Z", "X") or not _is_recorded(stat, state):
            return False
        linux.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _is_recorded(stat, state: dict) -> bool:
    """Return whether `stat` (linux.process_stat) fits the init state.json records.

    While that init lives its pid is its own, so a misfit means it is gone.
    """
    if isinstance(state.get("startTime"), int) and stat.start_time != state["startTime"]:
        return False
    return "owner" not in state or stat.ppid == state["owner"]


def _stopped(pid: int) -> str:
    stat = linux.process_stat(pid)
    return ", stopped" if stat is not None and stat.state in ("T", "t") else ""


def _remove_unowned(name: str, path) -> None:
    """Remove container `name`, killed, whose minict holds its lock and does not answer.

    The bundle is first renamed aside, in one step, so that the minict, if
    it goes on while the tree is deleted, cannot write into it (_record).
    The lock file stays: that minict unlinks it when it exits, and until
    then no `run` or `start` of the name can begin under its feet.
    """
    from minict.bundle import create as bundles
    from minict.runtime import network

    holder = linux.flock_holder(_lock_path(name))
    log.warn(f"the minict that runs container {name}"
             + (f" (pid {holder}{_stopped(holder)})" if holder is not None else "")
             + " does not answer; removing the killed container without it")
    unmount_below(path)
    aside = store.partial_bundle_dir(name)
    bundles.remove_tree(aside)  # no run of this name can be building it: the lock is held
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # a concurrent rm --force was first
        raise ContainerError(f"Container with name {name} does not exist.") from None
    except OSError as err:
        raise ContainerError(f"cannot move {path} aside to remove it: {err.strerror}") from None
    bundles.remove_tree(aside)
    from minict.runtime import cgroups

    cgroups.remove_leftovers(name)  # its init is dead: nothing of it runs in there
    userns.release(store.root(), name)  # its host ids, with --userns auto
    try:
        # Bounded too: the stopped minict may be the one holding the leases' lock.
        network.cleanup(name, wait=OWNER_GRACE)
    except NetworkError as err:
        log.warn(f"the network of container {name} is left to its minict: {err.message}")


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
    return store.container_lock(name)


# A probe of a lock (is_running(), rm --force waiting for a minict to let go)
# holds it for microseconds; a command that finds a lock taken looks again
# for this long before it believes a minict really holds it.
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


