"""A minict that holds a container and does not answer, as root, with real containers.

`rm --force` must finish in bounded time whatever the minict that runs the
container does (here: it is stopped with SIGSTOP), kill only the container
it recorded, and leave nothing that minict could trip over when it goes on.
The bridge half of the same story (leases, port rules) is in test_network.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minict.runtime import state as states
from tests.support.procs import hold_lock, is_gone, state_and_start
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root

BOUND = 15  # seconds rm --force may take, whatever holds the container


@pytest.fixture
def env(minict_dir, tmp_path):
    # Host-wide state of the test's own: nothing here may touch /run/minict.
    return dict(os.environ, MINICT_DIR=str(minict_dir), MINICT_RUN_DIR=str(tmp_path / "run"))


def spawn(env, *args):
    return subprocess.Popen([sys.executable, "-m", "minict", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def rm_force(env, name):
    """Run `rm --force`; return (CompletedProcess, seconds it took)."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "minict", "rm", "--force", "--name", name],
                          env=env, capture_output=True, text=True, timeout=3 * BOUND,
                          check=False)
    return done, time.monotonic() - began


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(word) for word in f.read().split()]


@pytest.fixture
def stopped():
    """stopped(proc): SIGSTOP `proc`; it is continued and killed at the end if still there."""
    procs = []

    def stop(proc):
        procs.append(proc)
        os.kill(proc.pid, signal.SIGSTOP)

    yield stop
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=30)


def test_rm_force_of_a_container_whose_minict_is_stopped(env, minict_dir, box, stopped):
    path = box(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    owner = spawn(env, "start", "--name", "box")
    init = wait_for(lambda: states.running_pid(path), "the container")
    workers = wait_for(lambda: len(children(init)) == 2 and children(init), "its two sleeps")
    started = {pid: state_and_start(pid)[1] for pid in [init, *workers]}
    stopped(owner)

    done, took = rm_force(env, "box")
    assert done.returncode == 0, done.stderr
    assert took < BOUND
    assert "Container removed successfully." in done.stderr
    assert f"(pid {owner.pid}, stopped) does not answer" in done.stderr
    # Every process of the container is dead (the init a zombie only its stopped parent
    # may reap), and the bundle is gone.
    assert all(is_gone(pid, start) for pid, start in started.items())
    assert not path.exists()
    assert not (minict_dir / "containers" / ".partial-box").exists()

    os.kill(owner.pid, signal.SIGCONT)
    _, err = owner.communicate(timeout=30)
    assert owner.returncode == 137, err  # the container's status: SIGKILL
    assert "Container with name box was removed while it ran (rm --force)." in err
    assert "Traceback" not in err
    # It went on without writing anything back: no state.json, no bundle, no lock file.
    assert os.listdir(minict_dir / "containers") == []


def test_rm_force_never_signals_a_process_that_took_the_recorded_pid(env, minict_dir, box,
                                                                      stopped):
    """state.json's pid is trusted only with its start time: pids are reused."""
    path = box(["true"])
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        # The recorded init is gone and its pid now names `stranger`, a child of
        # ours, as it would be of the minict that recorded it (the old check).
        start = state_and_start(stranger.pid)[1]
        (path / "state.json").write_text(json.dumps({
            "status": "running", "pid": stranger.pid, "owner": os.getpid(),
            "startTime": start - 1}))
        holder = hold_lock(minict_dir / "containers" / ".box.lock")
        stopped(holder)
        done, took = rm_force(env, "box")
        assert done.returncode == 0, done.stderr
        assert took < BOUND
        assert stranger.poll() is None  # never signalled
        assert not path.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_rm_force_of_a_container_held_before_it_runs_is_bounded_and_says_why(
        env, minict_dir, box, stopped):
    """A stopped minict holds the lock, state.json says "created": nothing to kill."""
    path = box(["true"])
    (path / "state.json").write_text(json.dumps({"status": "created"}))
    holder = hold_lock(minict_dir / "containers" / ".box.lock")
    stopped(holder)
    done, took = rm_force(env, "box")
    assert took < BOUND
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(
        f"fatal Container with name box is held by minict (pid {holder.pid}, stopped), which "
        "has not let go of it in 5 s, and has no process to kill: it is being created, "
        "started or stopped. Nothing was removed; if that minict hangs, continue or kill it "
        "first")
    assert states.is_complete(path)
