"""Containers: the run, start, exec, rm and prune verbs.

    containers/<name>/              the bundle (bundle/create.py): rootfs/, config.json
    containers/<name>/state.json    state.py: status, pid, exit status; the lock beside it

Each container also has a cgroup while it runs (cgroups.py; device_cgroup.py
fills in its device rules); a cgroup left by a killed minict is replaced
by the next start and removed by rm.  `rm --force` of a container whose
minict does not answer is kill.py's.
"""

import os

from minict import boundedjson, errors, fsutil, linux, log, store
from minict.bundle import usermap
from minict.errors import ContainerError, ImageNotFound, LaunchError, MinictError
from minict.runtime import kill, launch, netsettings, userns
from minict.runtime import state as states

EXITED_MESSAGE = "Container process exited. It can be started again using the 'start' option."


def run(ref, name: str, overrides=None, *, auto_remove: bool = False,
        pull: str = "never", network: str = "host", publish=()) -> int:
    """Create container `name` from image `ref`, run it, and return its exit status.

    `overrides` (spec.Overrides) are run's options, written into config.json
    so that `start` repeats them.  `auto_remove` deletes the container when
    it exits (`--rm`).  `pull` is "never" (the image must be stored),
    "missing" or "always".  `network` ("host", "none", "bridge") and
    `publish` (netsettings.parse_publish's ports) are kept in the bundle for
    `start` too.  Raise ContainerError if the name is taken (also by a
    concurrent run), PullError, UnpackError, NetworkError or LaunchError.
    """
    from dataclasses import replace

    from minict.bundle import create as bundles
    from minict.image import gc as images

    settings = netsettings.check(network, list(publish))

    store.ensure_dirs()
    lock = states.take_lock(name, wait=False)
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
            netsettings.save(path, settings)
        states.write_state(path, {"status": "created", **({"autoRemove": True} if auto_remove else {})})
        try:
            return _launch(path)
        finally:
            if auto_remove:
                kill.unmount_below(path)
                bundles.remove_tree(path)
    finally:
        if overrides is not None and overrides.userns_range and not os.path.lexists(path):
            userns.release(store.root(), name)
        states.release_lock(name, lock)


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
        except ImageNotFound:
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
    if not states.is_complete(path):
        raise missing
    lock = states.take_lock(name, wait=False)
    if lock is None:
        raise ContainerError(f"Container with name {name} is already running.")
    try:
        if not states.is_complete(path):  # removed while we waited for the lock
            raise missing
        return _launch(path)
    finally:
        states.release_lock(name, lock)


def remove(name: str, force: bool) -> None:
    """Delete container `name`: unmount what is left, then its bundle.

    A running container is refused unless `force`, which kills it (SIGKILL)
    and waits up to kill.OWNER_GRACE seconds for its minict to record the exit;
    a minict that does not (stopped, hung) is done without.  Raise
    ContainerError.
    """
    from minict.bundle import create as bundles

    path = store.container_dir(name)
    if not os.path.lexists(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    lock = states.take_lock(name, wait=False)
    if lock is None:
        if not force:
            raise ContainerError(f"Container with name {name} is running; "
                                 "stop it first or use 'rm --force'")
        lock = kill.kill_and_wait(name, path)
        if lock is None:
            kill.remove_unowned(name, path)
            return
    try:
        if not os.path.lexists(path):  # a concurrent rm was first
            raise ContainerError(f"Container with name {name} does not exist.")
        from minict.runtime import cgroups

        cgroups.remove_leftovers(name)  # a killed minict's
        kill.unmount_below(path)
        bundles.remove_tree(path)
        userns.release(store.root(), name)  # its host ids, with --userns auto
        # A container whose minict crashed may have left its address lease
        # and port rules; drop them (and any other container's stale ones).
        from minict.runtime import network

        network.cleanup(name)
    finally:
        states.release_lock(name, lock)


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
    if not states.is_complete(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    if not args:
        raise ContainerError("exec needs a command: minict exec --name NAME -- COMMAND [ARG]...")
    pid = states.running_pid(path)
    # Holding /proc/<pid> open pins that process: if it exits and the pid is
    # reused, lookups through the descriptor fail instead of finding the stranger.
    proc_fd = _open_proc(pid) if pid is not None else None
    if proc_fd is not None and states.parent_pid(pid, proc_fd) != states.read_state(path).get("owner"):
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
        with errors.stage(LaunchError):
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
        lock = states.take_lock(name, wait=False)
        if lock is None:
            continue  # running, or being created or removed
        states.release_lock(name, lock)
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
        lock = states.take_lock(name, wait=False)
        if lock is None:
            continue  # a run is building it
        try:
            bundles.remove_tree(path)
            removed.append(name)
        except MinictError as err:
            log.warn(err.message)
        finally:
            states.release_lock(name, lock)
    return removed


def list_names() -> list[str]:
    """Return the names of all containers, sorted (the `list-containers` array)."""
    return store.list_container_names()


# -- running ------------------------------------------------------------------------

def _launch(path) -> int:
    """Launch the bundle at `path` (its lock held); record and return the exit status."""
    from minict.runtime import device_cgroup, network

    config = _read_config(path)
    if usermap.idmapped(config):  # --userns auto: its host ids are still its own
        userns.confirm(store.root(), path.name, config)
    identity = states.bundle_identity(path)
    # Its network (network.json): a namespace, an address, published ports.
    attachment = network.prepare(path.name, path, config)

    def started(pid: int) -> None:
        # The start time tells this init from a later process given its pid (rm --force).
        stat = linux.process_stat(pid)
        states.write_state(path, {"status": "running", "pid": pid, "owner": os.getpid(),
                            "startTime": stat.start_time if stat else None})

    cgroup = None
    try:
        with errors.stage(LaunchError):
            cgroup = device_cgroup.create_cgroup(path.name, config)  # its device rules
            status = launch.launch(str(path), config, on_start=started,
                                   on_netns=attachment.attach, cgroup=cgroup)
    except MinictError as err:
        if err.stage == "run":  # not a network's failure: those say nothing of the container
            states.record(path, identity, {"status": "exited", "exitStatus": None,
                                           "error": err.message})
        raise
    finally:
        attachment.release()
        if cgroup is not None:
            try:
                cgroup.remove()
            except MinictError as err:
                log.warn(err.message)
    if not states.record(path, identity, {"status": "exited", "exitStatus": status}):
        log.warn(f"Container with name {path.name} was removed while it ran (rm --force).")
        return status
    if not states.read_state(path).get("autoRemove"):  # run --rm: it cannot be started again
        log.info(EXITED_MESSAGE)
    return status


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


# -- locks --------------------------------------------------------------------------


# -- leftover mounts ----------------------------------------------------------------


