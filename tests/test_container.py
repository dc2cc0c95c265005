"""The container lifecycle, as root: run, start, rm, list-containers, and their locks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minict import linux, store
from minict.runtime import state as states

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root

EXITED = "Container process exited. It can be started again using the 'start' option."



def spawn(minict_dir, *args):
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    return subprocess.Popen([sys.executable, "-m", "minict", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_running(path, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = states.read_state(path)
        if state.get("status") == "running":
            return state["pid"]
        time.sleep(0.02)
    raise AssertionError("the container did not start")


def test_start_keeps_what_the_first_run_wrote(minict, box):
    path = box(["sh", "-c", "cat /root/count 2>/dev/null; echo run >> /root/count"])
    first = minict("start", "--name", "box")
    assert first.returncode == 0 and first.stdout == ""
    assert EXITED in first.stderr
    second = minict("start", "--name", "box")
    assert second.stdout == "run\n"
    assert states.read_state(path) == {"status": "exited", "exitStatus": 0}


@pytest.mark.unprivileged
def test_start_of_a_missing_container_is_refused(minict):
    done = minict("start", "--name", "ghost")
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith(
        "fatal Container with name ghost does not exist. Use the 'run' option to start a new "
        "container")


@pytest.mark.unprivileged
def test_rm_of_a_missing_container_is_refused(minict):
    done = minict("rm", "--name", "ghost")
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("fatal Container with name ghost does not exist.")


def test_rm_removes_the_bundle_and_its_lock(minict, minict_dir, box):
    box(["true"])
    assert minict("start", "--name", "box").returncode == 0
    assert json.loads(minict("list-containers").stdout) == ["box"]
    done = minict("rm", "--name", "box")
    assert done.returncode == 0 and "Container removed successfully." in done.stderr
    assert os.listdir(minict_dir / "containers") == []
    assert json.loads(minict("list-containers").stdout) == []


def test_running_container_refuses_start_and_rm_until_forced(minict, minict_dir, box):
    path = box(["sleep", "60"])
    proc = spawn(minict_dir, "start", "--name", "box")
    try:
        pid = wait_running(path)
        again = minict("start", "--name", "box")
        assert again.returncode == 1
        assert "fatal Container with name box is already running." in again.stderr
        refused = minict("rm", "--name", "box")
        assert refused.returncode == 1 and "is running" in refused.stderr
        assert os.path.exists(f"/proc/{pid}")
        forced = minict("rm", "--name", "box", "--force")
        assert forced.returncode == 0, forced.stderr
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 137, err
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_concurrent_starts_of_one_container_exactly_one_wins(minict_dir, box):
    box(["sleep", "1"])
    procs = [spawn(minict_dir, "start", "--name", "box") for _ in range(4)]
    results = [(p.wait(timeout=30), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1, 1, 1], results
    assert all("already running" in err for code, err in results if code == 1)


def test_dead_minict_takes_its_container_along(minict_dir, box):
    """The lock is the truth about running only if the container dies with its minict."""
    path = box(["sleep", "60"])
    proc = spawn(minict_dir, "start", "--name", "box")
    pid = wait_running(path)
    proc.kill()
    proc.communicate(timeout=20)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")
    # The state still says running, but the free lock says otherwise.
    assert states.read_state(path)["status"] == "running"
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    rm = subprocess.run([sys.executable, "-m", "minict", "rm", "--name", "box"], env=env,
                        capture_output=True, text=True, timeout=60, check=False)
    assert rm.returncode == 0, rm.stderr


def test_rm_detaches_leftover_mounts_and_never_follows_symlinks(minict, box, tmp_path):
    path = box(["true"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep me")
    (path / "rootfs" / "escape").symlink_to(outside)
    target = path / "rootfs" / "mnt" / "data"
    target.mkdir(parents=True)
    linux.mount("tmpfs", target, "tmpfs", 0, "size=1m")
    linux.mount("tmpfs", target, "tmpfs", 0, "size=1m")  # stacked: both must go
    (target / "file").write_text("x")
    done = minict("rm", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert not path.exists()
    assert not linux.mounts_below(str(tmp_path))
    assert (outside / "keep").read_text() == "keep me"


@pytest.mark.unprivileged
def test_list_containers_prints_the_originals_json_array(minict, box):
    assert minict("list-containers").stdout == "[]\n"
    box(["true"], name="b2")
    box(["true"], name="a1")
    assert minict("list-containers").stdout == '[\n\t"a1",\n\t"b2"\n]\n'


# -- run, from a pulled image ------------------------------------------------------------

@pytest.fixture
def pulled(minict, busybox_image):
    done = minict("pull", "--image", busybox_image, "--insecure")
    assert done.returncode == 0, done.stderr
    return str(busybox_image)


def test_run_creates_runs_and_refuses_the_name_again(minict, minict_dir, pulled):
    done = minict("run", "--image", pulled, "--name", "one", input="echo $(hostname) $$; exit 3\n")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "one 1\n"
    assert EXITED in done.stderr
    path = minict_dir / "containers" / "one"
    assert states.read_state(path) == {"status": "exited", "exitStatus": 3}
    again = minict("run", "--image", pulled, "--name", "one")
    assert again.returncode == 1
    assert again.stderr.rstrip().endswith("fatal Container with name one already exists.")
    assert not linux.mounts_below(str(minict_dir))


def test_run_replaces_what_an_interrupted_run_left(minict, minict_dir, pulled):
    leftover = minict_dir / "containers" / (store.PARTIAL_PREFIX + "one")
    (leftover / "rootfs").mkdir(parents=True)  # a run was cut short while unpacking
    done = minict("run", "--image", pulled, "--name", "one", input="echo fresh\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "fresh\n"
    assert not leftover.exists()


@pytest.mark.unprivileged
def test_run_never_replaces_a_directory_that_is_not_ours(minict, minict_dir):
    foreign = minict_dir / "containers" / "one"
    foreign.mkdir(parents=True)
    (foreign / "precious").write_text("x")
    done = minict("run", "--image", "busybox", "--name", "one")
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("fatal Container with name one already exists.")
    assert (foreign / "precious").read_text() == "x"


@pytest.mark.unprivileged
def test_failed_commands_leave_no_lock_files(minict, minict_dir):
    minict("start", "--name", "ghost")
    minict("run", "--image", "never-pulled", "--name", "ghost")
    assert os.listdir(minict_dir / "containers") == []


def test_concurrent_runs_of_one_name_exactly_one_wins(minict_dir, pulled):
    procs = [spawn(minict_dir, "run", "--image", pulled, "--name", "same") for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1, 1], results
    assert all("Container with name same already exists." in err
               for code, err in results if code == 1)


def test_signal_to_run_reaches_the_container(minict_dir, pulled):
    proc = subprocess.Popen(
        [sys.executable, "-m", "minict", "run", "--image", pulled, "--name", "sig"],
        env=dict(os.environ, MINICT_DIR=str(minict_dir)), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("trap 'echo bye; exit 5' TERM; echo up; while :; do sleep 0.05; done\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert (out, proc.returncode) == ("bye\n", 5)


def test_rm_of_a_bundle_replaced_by_a_symlink_touches_nothing_behind_it(minict, minict_dir,
                                                                       tmp_path):
    victim = tmp_path / "victim"
    (victim / "mnt").mkdir(parents=True)
    (victim / "keep").write_text("keep me")
    linux.mount("tmpfs", victim / "mnt", "tmpfs", 0, "size=1m")
    try:
        (minict_dir / "containers").mkdir()
        (minict_dir / "containers" / "box").symlink_to(victim)
        done = minict("rm", "--name", "box")
        assert "Traceback" not in done.stderr
        # Whether the link is removed or refused, what it points at stays as it was.
        assert (victim / "keep").read_text() == "keep me"
        assert linux.mounts_below(str(victim)) == [str(victim / "mnt")]
    finally:
        linux.umount2(victim / "mnt", linux.MNT_DETACH)
