"""`rm --force` of a running container: kill its init, wait for its minict, or go without it.

A minict can hold the lock and not answer (stopped by SIGSTOP, hung): `rm
--force` then kills the container itself, through a pidfd of the init that
state.json names, checked by its start time, and removes the bundle without
the lock (remove_unowned).  That minict, when it goes on, finds its bundle
gone and only reports it (state.record).
"""

import os
import signal
import time

from minict import linux, log, store
from minict.errors import ContainerError, NetworkError
from minict.runtime import state as states
from minict.runtime import userns

# How long `rm --force` waits for the minict that runs a container to let go
# of it after the kill: a working one does within milliseconds; one that is
# stopped or hung never does.
OWNER_GRACE = 5.0


def kill_and_wait(name: str, path) -> int | None:
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
        state = states.read_state(path)
        # SIGKILL until it is dead: a `start` may have made it only now.
        alive = _kill_init(state)
        lock = states.take_lock(name, wait=False, probe=True)
        if lock is not None:
            return lock
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    holder = linux.flock_holder(states.lock_path(name))
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


def remove_unowned(name: str, path) -> None:
    """Remove container `name`, killed, whose minict holds its lock and does not answer.

    The bundle is first renamed aside, in one step, so that the minict, if
    it goes on while the tree is deleted, cannot write into it (states.record).
    The lock file stays: that minict unlinks it when it exits, and until
    then no `run` or `start` of the name can begin under its feet.
    """
    from minict.bundle import create as bundles
    from minict.runtime import network

    holder = linux.flock_holder(states.lock_path(name))
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
