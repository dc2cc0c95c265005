"""run's options, --rm, --pull, exec, prune of containers, the container table and inspect.

Real containers, as root, from the umoci-built busybox image.  The image is
copied into MINICT_DIR as the layout a pull would leave (only the --pull test
talks to a registry), so each test pays for an unpack, not a pull.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from minict import linux
from minict.runtime import state as states

pytestmark = pytest.mark.root

EXITED = "Container process exited. It can be started again using the 'start' option."


@pytest.fixture
def busybox(busybox_layout, minict_dir):
    """The busybox image stored as `busybox:latest`, as if pulled."""
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    return "busybox"


def spawn(minict_dir, *args):
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    env.pop("MINICT_LOG_LEVEL", None)
    return subprocess.Popen([sys.executable, "-m", "minict", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_running(minict_dir, name, timeout=20):
    path = minict_dir / "containers" / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if states.read_state(path).get("status") == "running":
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start")


@pytest.fixture
def running(minict_dir, busybox):
    """running(name, *run_options, script) -> the Popen of a `run` that stays up."""
    procs = []

    def start(name, *options, script="sleep 60"):
        proc = spawn(minict_dir, "run", "--image", busybox, "--name", name, *options,
                     "--", "sh", "-c", script)
        procs.append(proc)
        wait_running(minict_dir, name)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # its container dies with it (PDEATHSIG)
        proc.communicate(timeout=30)


# -- run options ------------------------------------------------------------------

SHOW = "echo A=$A B=$B; pwd; id -u; id -g; id -G; hostname"


def test_options_change_what_the_container_sees_and_start_repeats_them(minict, busybox):
    done = minict("run", "--image", busybox, "--name", "opts", "-e", "A=1", "--env", "B",
                  "-w", "/new/dir", "-u", "app", "--hostname", "web", "--", "sh", "-c", SHOW,
                  env={"B": "from minict"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "A=1 B=from minict\n/new/dir\n1000\n1000\n1000\nweb\n"
    again = minict("start", "--name", "opts")
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout


def test_without_options_the_image_decides(minict, busybox):
    done = minict("run", "--image", busybox, "--name", "plain", input=SHOW + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "A= B=\n/\n0\n0\n0\nplain\n"


@pytest.mark.parametrize("user, ids", [
    ("1234", "1234\n0\n"), ("1234:77", "1234\n77\n"), ("app:root", "1000\n0\n"),
    ("0", "0\n0\n"),
])
def test_user_forms(minict, busybox, user, ids):
    done = minict("run", "--image", busybox, "--name", "u", "--rm", "-u", user,
                  "--", "sh", "-c", "id -u; id -g")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ids


@pytest.mark.parametrize("options, output", [
    (["--entrypoint", "/bin/echo"], "\n"),                     # the image's Cmd is dropped
    (["--entrypoint", "/bin/echo", "--", "hi", "there"], "hi there\n"),
    (["--", "echo", "replaced"], "replaced\n"),                # Cmd replaced
    (["--entrypoint", "", "--", "echo", "x"], "x\n"),
])
def test_entrypoint_and_command(minict, busybox, options, output):
    done = minict("run", "--image", busybox, "--name", "e", "--rm", *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == output


@pytest.mark.parametrize("options, message", [
    (["-w", "relative"], "it needs to be an absolute path"),
    (["-u", "nobody"], "cannot find user 'nobody'"),
    (["-e", "=x"], "invalid environment variable"),
])
def test_bad_options_are_one_line_and_leave_nothing(minict, minict_dir, busybox, options,
                                                     message):
    done = minict("run", "--image", busybox, "--name", "bad", *options, "--", "true")
    assert done.returncode == 1
    assert message in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    containers = minict_dir / "containers"
    assert not containers.exists() or os.listdir(containers) == []


def test_rm_leaves_nothing_behind(minict, minict_dir, busybox):
    done = minict("run", "--image", busybox, "--name", "gone", "--rm",
                  "--", "sh", "-c", "echo bye; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "bye\n"
    assert EXITED not in done.stderr  # it cannot be started again
    assert os.listdir(minict_dir / "containers") == []
    assert json.loads(minict("list-containers").stdout) == []
    assert not linux.mounts_below(str(minict_dir))
    # and the name is free again
    assert minict("run", "--image", busybox, "--name", "gone", "--rm", "--", "true").returncode == 0


def test_rm_also_after_a_command_that_cannot_run(minict, minict_dir, busybox):
    done = minict("run", "--image", busybox, "--name", "gone", "--rm", "--", "/no/such")
    assert done.returncode == 127
    assert os.listdir(minict_dir / "containers") == []


def test_rm_state_is_recorded_while_it_runs(minict_dir, running):
    running("temp", "--rm")
    state = states.read_state(minict_dir / "containers" / "temp")
    assert state["status"] == "running" and state["autoRemove"] is True


# -- --pull ---------------------------------------------------------------------

@pytest.mark.own_registry  # it stops the registry
def test_pull_policies(minict, minict_dir, busybox_image):
    image = str(busybox_image)
    never = minict("run", "--image", image, "--name", "p", "--", "true")
    assert never.returncode == 1
    assert "not found" in never.stderr and "pull it first" in never.stderr
    missing = minict("run", "--image", image, "--name", "p", "--rm", "--pull", "missing",
                     "--", "echo", "pulled")
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout == "pulled\n" and "Copying blob" in missing.stderr
    present = minict("run", "--image", image, "--name", "p", "--rm", "--pull", "missing",
                     "--", "true")
    assert present.returncode == 0 and "Copying" not in present.stderr
    busybox_image.registry.stop()
    always = minict("run", "--image", image, "--name", "p", "--rm", "--pull", "always",
                    "--", "true")
    assert always.returncode == 1 and "Failed to pull image" in always.stderr
    assert os.listdir(minict_dir / "containers") == []


# -- exec -----------------------------------------------------------------------

def test_exec_sees_the_containers_processes_hostname_files_env_and_status(minict, minict_dir,
                                                                           running):
    running("srv", "--hostname", "web", "-e", "X=42", "-w", "/data", "-u", "app",
            script="echo made-by-init > /tmp/f; exec sleep 60")
    done = minict("exec", "--name", "srv", "--", "sh", "-c",
                  "ps -o pid,comm; hostname; cat /tmp/f; echo X=$X; pwd; id -u; exit 7")
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["1", "sleep"]  # the container's init, as its PID 1
    assert lines[-5:] == ["web", "made-by-init", "X=42", "/data", "1000"]


def test_exec_gets_the_configs_capabilities_and_no_new_privs(minict, running):
    running("caps", "--security-opt", "no-new-privileges")  # docker's default is without
    show = "grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp)' /proc/{}/status"
    init = minict("exec", "--name", "caps", "--", "sh", "-c", show.format(1))
    own = minict("exec", "--name", "caps", "--", "sh", "-c", show.format("self"))
    assert own.returncode == 0, own.stderr
    assert own.stdout == init.stdout
    assert "NoNewPrivs:\t1" in own.stdout
    assert "Seccomp:\t2" in own.stdout
    assert "CapEff:\t00000000a80425fb" in own.stdout  # docker's default 14


def test_exec_streams_stdin_and_stdout(minict, running):
    running("cat")
    done = minict("exec", "--name", "cat", "--", "sh", "-c", "tr a-z A-Z", input="hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO\n"


def test_exec_cannot_see_the_host(minict, running, tmp_path):
    marker = tmp_path / "host-only"
    marker.write_text("x")
    running("iso")
    done = minict("exec", "--name", "iso", "--", "sh", "-c",
                  f"test -e {marker} && echo LEAK; ls /proc | grep -c '^[0-9]'; cat /etc/hostname"
                  " 2>/dev/null; hostname")
    assert "LEAK" not in done.stdout
    # Only the container's processes: sleep, sh and the pipeline's two.
    assert int(done.stdout.splitlines()[0]) <= 4


def test_exec_refusals(minict, minict_dir, busybox, running):
    assert minict("run", "--image", busybox, "--name", "stopped", "--", "true").returncode == 0
    cases = [
        (["--name", "ghost", "--", "true"], "Container with name ghost does not exist."),
        (["--name", "stopped", "--", "true"], "Container with name stopped is not running"),
    ]
    for args, message in cases:
        done = minict("exec", *args)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    running("up")
    missing = minict("exec", "--name", "up", "--", "/no/such")
    assert missing.returncode == 127
    assert "executable file not found" in missing.stderr or "/no/such" in missing.stderr


def test_exec_ends_with_its_container(minict_dir, running):
    proc = running("short", script="sleep 2")
    exec_proc = spawn(minict_dir, "exec", "--name", "short", "--", "sleep", "60")
    proc.communicate(timeout=30)
    # The pid namespace's init is gone: the kernel kills everything left in it.
    exec_proc.communicate(timeout=10)
    assert exec_proc.returncode == 137


# -- listings, inspect, prune ------------------------------------------------------

def test_container_table_json_default_and_inspect(minict, minict_dir, busybox, running):
    assert minict("run", "--image", busybox, "--name", "done",
                  "--", "sh", "-c", "exit 4").returncode == 4
    running("live")
    assert minict("list-containers").stdout == '[\n\t"done",\n\t"live"\n]\n'
    table = minict("list-containers", "--format", "table")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert rows[0] == ["NAME", "IMAGE", "STATUS", "CREATED", "COMMAND"]
    assert rows[2][:4] == ["done", "busybox:latest", "exited", "(4)"]
    assert rows[2][-4:] == ["sh", "-c", "'exit", "4'"]
    assert rows[3][:3] == ["live", "busybox:latest", "running"]

    info = json.loads(minict("inspect", "--name", "live").stdout)
    assert info["Name"] == "live" and info["Image"] == "busybox:latest"
    assert info["State"]["status"] == "running" and info["State"]["running"] is True
    assert info["Config"]["process"]["args"] == ["sh", "-c", "sleep 60"]
    stopped = json.loads(minict("inspect", "--name", "done").stdout)
    assert stopped["State"] == {"status": "exited", "exitStatus": 4, "running": False}
    ghost = minict("inspect", "--name", "ghost")
    assert ghost.returncode == 1 and "does not exist" in ghost.stderr


def test_prune_removes_stopped_containers_only(minict, minict_dir, busybox, running):
    for name in ("old1", "old2"):
        assert minict("run", "--image", busybox, "--name", name, "--", "true").returncode == 0
    running("live")
    asked = minict("prune", input="n\n")
    assert asked.returncode == 0 and "Continue?" in asked.stderr  # declining is no failure
    assert json.loads(minict("list-containers").stdout) == ["live", "old1", "old2"]
    done = minict("prune", "--force")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["Deleted container: old1", "Deleted container: old2"]
    # umoci left the manifests and configs its edits replaced: unreferenced, so they go.
    assert all(line.startswith("Deleted: sha256:") for line in lines[2:])
    assert json.loads(minict("list-containers").stdout) == ["live"]
    assert minict("run", "--image", busybox, "--name", "after", "--rm", "--", "true").returncode == 0


def test_exec_on_a_terminal_gets_a_pty_of_the_container(minict_dir, running):
    import fcntl
    import select
    import struct
    import termios

    running("tty")
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    pid = os.fork()
    if pid == 0:  # a session leader with the pty as its controlling terminal
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.execve(sys.executable, [sys.executable, "-m", "minict", "exec", "--name", "tty", "--",
                                   "sh", "-c", "tty; busybox stty size; exit 9"], env)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"33 101" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 4096)
        _, raw = os.waitpid(pid, 0)
    finally:
        os.close(master)
        os.close(slave)
    assert os.waitstatus_to_exitcode(raw) == 9
    assert b"/dev/pts/" in seen and b"33 101" in seen, seen


@pytest.mark.parametrize("network", ["host", "none"])
def test_exec_is_in_every_namespace_of_the_container(minict, running, network):
    running("ns", "--network", network)
    kinds = ["mnt", "pid", "ipc", "uts", "net", "user", "cgroup"]
    script = "; ".join(f"readlink /proc/1/ns/{k}; readlink /proc/self/ns/{k}" for k in kinds)
    done = minict("exec", "--name", "ns", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    links = done.stdout.split()
    assert len(links) == 2 * len(kinds)
    assert links[0::2] == links[1::2]
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    assert links[0] != host["mnt"] and links[2] != host["pid"]
    assert (links[8] == host["net"]) == (network == "host")


def test_exec_options_change_env_cwd_and_user(minict, running):
    running("opts", "-e", "KEEP=1", "-e", "OVER=run")
    done = minict("exec", "--name", "opts", "-e", "OVER=exec", "-e", "NEW", "-w", "/made/here",
                  "-u", "app", "--", "sh", "-c",
                  "echo $KEEP $OVER $NEW $HOME; pwd; id -u; id -g; id -G",
                  env={"NEW": "from minict"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 exec from minict /home/app\n/made/here\n1000\n1000\n1000\n"
    plain = minict("exec", "--name", "opts", "--", "sh", "-c", "echo $OVER $HOME; pwd; id -u")
    assert plain.stdout == "run /root\n/\n0\n"  # the options were this exec's only
    numeric = minict("exec", "--name", "opts", "-u", "4321:99", "--", "sh", "-c",
                     "id -u; id -g; echo $HOME")
    assert numeric.stdout == "4321\n99\n/\n"
    for options, message in [(["-u", "ghost"], "cannot find user 'ghost'"),
                             (["-w", "rel"], "needs to be an absolute path")]:
        bad = minict("exec", "--name", "opts", *options, "--", "true")
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
