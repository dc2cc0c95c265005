"""Real containers, as root: what the process inside sees, and what the host keeps.

Each test makes a bundle directly (a busybox rootfs plus the config.json
minict.spec writes, see tests.support.bundles) and runs `minict start` on it
as a subprocess, so the whole path from the CLI to execve is exercised.
"""

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from minict import linux
from minict.bundle import spec
from minict.runtime import execute, mounts

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root



def sh(script):
    return ["sh", "-c", script]


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f)


def popen_start(minict_dir, name="box", **kw):
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    return subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", name],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def wait_running(bundle, timeout=10):
    """Return the pid of the container once state.json says it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads((bundle / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("status") == "running":
            return state["pid"]
        time.sleep(0.02)
    raise AssertionError("the container did not start")


# -- exit statuses and streams ---------------------------------------------------------

@pytest.mark.parametrize("cmd, status", [
    (["true"], 0),
    (sh("exit 3"), 3),
    (["/etc/passwd"], execute.NOT_EXECUTABLE),
    (["no-such-program"], execute.NOT_FOUND),
    (["/bin/no-such-program"], execute.NOT_FOUND),
])
def test_exit_status_is_the_containers(minict, box, cmd, status):
    box(cmd)
    done = minict("start", "--name", "box")
    assert done.returncode == status, done.stderr
    if status in (execute.NOT_EXECUTABLE, execute.NOT_FOUND):
        assert "Failed to run image. Error received: exec" in done.stderr
        assert "Traceback" not in done.stderr


def test_killed_container_gives_128_plus_signal(minict_dir, box):
    bundle = box(["sleep", "30"])
    proc = popen_start(minict_dir)
    os.kill(wait_running(bundle), signal.SIGKILL)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 137, err
    assert "Container process exited. It can be started again using the 'start' option." in err
    state = json.loads((bundle / "state.json").read_text())
    assert state["status"] == "exited" and state["exitStatus"] == 137


def test_stdin_piped_in_and_stdout_captured(minict, box):
    box(sh("tr a-z A-Z; echo to-stderr >&2"))
    done = minict("start", "--name", "box", input="hello from the pipe\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO FROM THE PIPE\n"
    assert "to-stderr" in done.stderr


@pytest.mark.parametrize("signo, trap", [(signal.SIGTERM, "TERM"), (signal.SIGINT, "INT"),
                                         (signal.SIGHUP, "HUP"), (signal.SIGQUIT, "QUIT")])
def test_signals_sent_to_minict_reach_the_container(minict_dir, box, signo, trap):
    bundle = box(sh(f"trap 'echo got {trap}; exit 9' {trap}; echo ready; "
                    "while :; do sleep 0.05; done"))
    proc = popen_start(minict_dir)
    try:
        wait_running(bundle)
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signo)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()  # a failure must not leave minict and its container running
        proc.wait()
    assert out == f"got {trap}\n"
    assert proc.returncode == 9, err


def _ignoring(*signals, raw_ignored=()):
    def preexec():
        for signo in signals:
            signal.signal(signo, signal.SIG_IGN)
        for signo in raw_ignored:  # glibc's own two: rt_sigaction itself, SIG_IGN = 1
            _rt_sigaction(signo, (1).to_bytes(8, "little") + bytes(24))
    return preexec


def _rt_sigaction(signo: int, action: bytes) -> None:
    import ctypes
    import platform

    number = {"x86_64": 13, "aarch64": 134}[platform.machine()]
    assert ctypes.CDLL(None).syscall(number, signo, action, None, 8) == 0


def test_signals_minict_was_started_ignoring_are_not_ignored_in_the_container(minict_dir, box):
    # nohup ignores SIGHUP, a shell's background job SIGINT and SIGQUIT; an
    # ignored signal survives execve, so the container would inherit them.
    box(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    proc = popen_start(minict_dir, preexec_fn=_ignoring(
        signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
        signal.SIGRTMIN + 3, raw_ignored=(32, 33)))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert done.stdout == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


# -- isolation ---------------------------------------------------------------------------

def test_hostname_is_the_name_and_the_host_keeps_its_own(minict, box):
    box(["hostname"], name="web-1")
    done = minict("start", "--name", "web-1")
    assert done.stdout == "web-1\n"
    assert socket.gethostname() != "web-1"


def test_command_is_pid_1_and_sees_only_its_own_processes(minict, box):
    box(sh("echo $$; ps -o pid,comm; true"))  # `; true`: sh must not exec ps
    done = minict("start", "--name", "box")
    lines = done.stdout.split("\n")
    assert lines[0] == "1"
    pids = sorted(int(line.split()[0]) for line in lines[2:] if line.strip())
    assert pids[0] == 1 and len(pids) == 2, done.stdout  # sh and ps, nothing of the host


def test_masked_and_readonly_paths(minict, box):
    config = spec.generate({"config": {}}, "x")
    masked = [p for p in config["linux"]["maskedPaths"] if os.path.exists(p)]
    assert masked, "this kernel has none of the masked paths: the test would prove nothing"
    box(sh("for p in " + " ".join(masked) + "; do echo \"$p:$(if [ -d $p ]; then ls -A $p;"
           " else cat $p; fi)\"; done; grep -E ' /proc/sys | /sys ' /proc/self/mounts;"
           " echo 1 > /proc/sys/kernel/domainname && echo WROTE"))
    done = minict("start", "--name", "box")
    out = done.stdout
    for path in masked:
        assert f"{path}:\n" in out, out  # empty: /dev/null or an empty tmpfs
    for line in out.splitlines():
        if " /proc/sys " in line or " /sys " in line:
            assert line.split()[3].startswith("ro"), line
    assert "WROTE" not in out


def test_mount_is_refused_inside(minict, box):
    box(sh("mkdir -p /mnt; mount -t tmpfs none /mnt && echo MOUNTED; umount /proc && echo UNMOUNTED;"
           " true"))
    done = minict("start", "--name", "box")
    assert "MOUNTED" not in done.stdout
    assert done.returncode == 0


def _status_fields(text):
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@pytest.mark.parametrize("edit", [
    None,
    lambda c: c["process"]["capabilities"].update(
        bounding=["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SYS_CHROOT"],
        effective=["CAP_CHOWN", "CAP_KILL"], permitted=["CAP_CHOWN", "CAP_KILL"],
        inheritable=["CAP_CHOWN"], ambient=["CAP_CHOWN"]) or c["process"].update(
        noNewPrivileges=True),
])
def test_capabilities_and_no_new_privs_match_the_config(minict_dir, minict, box, edit):
    bundle = box(["cat", "/proc/self/status"], edit=edit)
    caps = json.loads((bundle / "config.json").read_text())["process"]["capabilities"]
    done = minict("start", "--name", "box")
    fields = _status_fields(done.stdout)

    def mask(names):
        return sum(1 << linux.CAPABILITIES[n] for n in names)

    # Root's execve would raise effective to the bounding set; no_new_privs
    # keeps it within the permitted set the config gave (here = effective).
    # Without it (the default, as docker's) the generated sets are all equal.
    assert int(fields["CapBnd"], 16) == mask(caps["bounding"])
    assert int(fields["CapEff"], 16) == mask(caps["effective"])
    assert int(fields["CapPrm"], 16) == mask(caps["permitted"])
    assert int(fields["CapInh"], 16) == mask(caps["inheritable"])
    assert int(fields["CapAmb"], 16) == mask(caps["ambient"])
    nnp = json.loads((bundle / "config.json").read_text())["process"]["noNewPrivileges"]
    assert fields["NoNewPrivs"] == str(int(nnp))


def test_non_root_user_keeps_only_ambient_capabilities(minict, box):
    def edit(config):
        config["process"]["capabilities"].update(inheritable=["CAP_KILL"], ambient=["CAP_KILL"])

    box(["cat", "/proc/self/status"], user="app", edit=edit)
    fields = _status_fields(minict("start", "--name", "box").stdout)
    assert fields["Uid"].split()[0] == "1000" and fields["Gid"].split()[0] == "1000"
    assert int(fields["CapEff"], 16) == 1 << linux.CAPABILITIES["CAP_KILL"]
    assert int(fields["CapAmb"], 16) == 1 << linux.CAPABILITIES["CAP_KILL"]


def test_user_env_cwd_and_rlimit_come_from_the_config(minict, box):
    box(sh("id -u; id -g; pwd; echo $GREETING; echo $HOME; ulimit -n"), user="app",
        env=["PATH=/bin", "GREETING=hi there"], workdir="/home/app/work")
    done = minict("start", "--name", "box")
    assert done.stdout.split("\n")[:6] == ["1000", "1000", "/home/app/work", "hi there",
                                          "/home/app", "1024"], done.stderr


def test_only_descriptors_0_to_2_are_open(minict_dir, box):
    bundle = box(["sleep", "30"])
    leak = os.open("/", os.O_RDONLY)  # not close-on-exec: a careless runtime would pass it on
    os.set_inheritable(leak, True)
    try:
        proc = popen_start(minict_dir, pass_fds=(leak,))
        pid = wait_running(bundle)
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2]
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=20)
    finally:
        os.close(leak)


def test_escape_attempts_do_not_reach_host_files(minict, box, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("host secret")
    relative = str(marker).lstrip("/")

    def grant_chroot(config):
        config["process"]["capabilities"]["bounding"].append("CAP_SYS_CHROOT")
        config["process"]["capabilities"]["effective"].append("CAP_SYS_CHROOT")
        config["process"]["capabilities"]["permitted"].append("CAP_SYS_CHROOT")

    box(sh(f"cat /{relative} /../../{relative} /proc/1/root/../../{relative}"
           f" /proc/self/cwd/../../{relative} 2>/dev/null;"
           f" mkdir -p /jail/bin; cp /bin/busybox /jail/bin/;"
           f" busybox chroot /jail /bin/busybox sh -c 'cd ../../../..; cat {relative}' 2>/dev/null;"
           " echo done"), edit=grant_chroot)
    done = minict("start", "--name", "box")
    assert done.stdout.strip().endswith("done"), done.stderr
    assert "host secret" not in done.stdout


def host_view():
    with open("/etc/resolv.conf") as f:
        return host_mounts(), socket.gethostname(), f.read()


def test_the_host_is_untouched(minict, minict_dir, box):
    before = host_view()
    box(sh("hostname other; echo x > /etc/resolv.conf; touch /dev/null-was-here; echo done"))
    done = minict("start", "--name", "box")
    assert done.stdout == "done\n"
    assert host_view() == before
    assert not any(str(minict_dir) in m for m in host_mounts())


def test_resolv_conf_is_the_hosts_read_only_and_dev_is_complete(minict, box):
    box(sh("cat /etc/resolv.conf; echo x >> /etc/resolv.conf || echo REFUSED;"
           " ls /dev; readlink /dev/ptmx; readlink /dev/fd; echo hi > /dev/null && echo NULL-OK"))
    done = minict("start", "--name", "box")
    with open("/etc/resolv.conf") as f:
        assert done.stdout.startswith(f.read())
    assert "REFUSED" in done.stdout and "NULL-OK" in done.stdout
    for name in mounts.DEFAULT_DEVICES + ("pts", "shm", "mqueue", "stdin", "stdout", "stderr"):
        assert f"\n{name}\n" in done.stdout
    assert "pts/ptmx\n/proc/self/fd\n" in done.stdout


# -- refusals: the child reports one line and runs nothing ----------------------------------

def test_working_directory_through_proc_fd_is_refused(minict, box):
    box(["pwd"], workdir="/proc/self/fd/3")
    done = minict("start", "--name", "box")
    assert done.returncode == 1
    assert "refusing working directory '/proc/self/fd/3'" in done.stderr
    assert done.stdout == ""


def test_a_failing_mount_is_one_clear_error(minict, box):
    def edit(config):
        config["mounts"].append({"destination": "/data", "type": "nosuchfs", "source": "x"})

    box(["echo", "SHOULD NOT RUN"], edit=edit)
    done = minict("start", "--name", "box")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "mount nosuchfs on /data" in lines[0], done.stderr


def test_a_container_without_proc_still_gets_its_capabilities_cut(minict, box):
    def edit(config):
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/proc"]
        config["linux"]["maskedPaths"] = config["linux"]["readonlyPaths"] = []

    bundle = box(sh("mount -t proc proc /proc 2>/dev/null && echo MOUNTED; cat /proc/self/status"
                    " 2>/dev/null | grep CapBnd; echo ok"), edit=edit)
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert "MOUNTED" not in done.stdout and done.stdout.endswith("ok\n")
    assert bundle.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["linux"]["namespaces"].remove({"type": "mount"}), "no mount namespace"),
    (lambda c: c["linux"]["namespaces"].remove({"type": "uts"}), "no uts namespace"),
    (lambda c: c["process"]["capabilities"]["ambient"].append("CAP_BOGUS"),
     "unknown capability 'CAP_BOGUS'"),
    (lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}),
     "unknown rlimit 'RLIMIT_BOGUS'"),
])
def test_bad_or_host_changing_configs_are_refused(minict, box, edit, message):
    before = host_view()
    box(["echo", "SHOULD NOT RUN"], edit=edit)
    done = minict("start", "--name", "box")
    assert done.returncode == 1 and done.stdout == ""
    assert message in done.stderr
    assert host_view() == before


def test_a_rootfs_that_is_a_symlink_is_refused(minict, box, tmp_path):
    bundle = box(["true"])
    (bundle / "rootfs").rename(tmp_path / "elsewhere")
    (bundle / "rootfs").symlink_to(tmp_path / "elsewhere")
    done = minict("start", "--name", "box")
    assert done.returncode == 1 and "is not a directory" in done.stderr


# -- terminal ----------------------------------------------------------------------------

class Terminal:
    """minict started on a fresh pty: we hold the master and keep the slave to inspect it."""

    def __init__(self, minict_dir, name="box", rows=24, cols=80):
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.original = termios.tcgetattr(self.slave)
        env = dict(os.environ, MINICT_DIR=str(minict_dir))
        self.pid = os.fork()
        if self.pid == 0:  # a session leader with the pty as its controlling terminal
            os.setsid()
            fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(self.slave, fd)
            os.execve(sys.executable, [sys.executable, "-m", "minict", "start", "--name", name],
                      env)
        self.seen = b""

    def resize(self, rows, cols):
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes):
        os.write(self.master, data)

    def expect(self, needle: bytes, timeout=10.0) -> bytes:
        """Read until `needle` shows up; return what came before and with it."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                self.seen += os.read(self.master, 4096)
        assert needle in self.seen, self.seen
        before, _, self.seen = self.seen.partition(needle)
        return before + needle

    def wait(self) -> int:
        _, raw = os.waitpid(self.pid, 0)
        self.pid = None
        return os.waitstatus_to_exitcode(raw)

    def close(self):
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)
        os.close(self.slave)


def test_terminal_session_has_a_tty_job_control_and_window_size(minict_dir, box):
    box(["sh"])
    term = Terminal(minict_dir, rows=33, cols=101)
    try:
        term.expect(b"# ")
        # The host side is raw while the container runs: no echo, no line editing here.
        assert not termios.tcgetattr(term.slave)[3] & termios.ECHO
        term.write(b"tty; busybox stty size\n")
        term.expect(b"/dev/pts/0\r\n33 101\r\n")
        term.resize(40, 120)
        os.kill(term.pid, signal.SIGWINCH)  # what the terminal emulator's kernel does
        time.sleep(0.3)
        term.write(b"busybox stty size; sleep 30\n")
        term.expect(b"40 120\r\n")
        time.sleep(0.3)
        term.write(b"\x03")  # Ctrl-C: the container's pty turns it into SIGINT for sleep
        term.expect(b"# ")
        term.write(b"sleep 20 &\n")
        term.expect(b"# ")
        term.write(b"jobs\n")
        term.expect(b"Running")
        term.write(b"kill %1; exit 4\n")
        term.expect(b"Container process exited")
        assert term.wait() == 4
        assert termios.tcgetattr(term.slave) == term.original  # the host terminal restored
    finally:
        term.close()


# -- pure parts --------------------------------------------------------------------------

@pytest.mark.unprivileged
@pytest.mark.parametrize("options, flags, propagation, data", [
    ([], 0, 0, ""),
    (["nosuid", "strictatime", "mode=755", "size=65536k"],
     linux.MS_NOSUID | linux.MS_STRICTATIME, 0, "mode=755,size=65536k"),
    (["rbind", "ro", "rprivate"], linux.MS_BIND | linux.MS_REC | linux.MS_RDONLY,
     linux.MS_PRIVATE | linux.MS_REC, ""),
    (["ro", "rw", "noexec", "exec", "nodev"], linux.MS_NODEV, 0, ""),
    (["newinstance", "ptmxmode=0666"], 0, 0, "newinstance,ptmxmode=0666"),
])
def test_mount_options_become_flags_and_data(options, flags, propagation, data):
    assert mounts.parse_options(options) == (flags, propagation, data)
