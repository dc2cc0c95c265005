"""A container must not reach the caller's terminal, session or kernel keyring.

Real containers, as root, started from a host shell the way a user starts
them.  The host shells that need a real terminal run in tmux, so what
arrives at their input (an injected command) and what they print can be
seen; tests that need exact bytes drive minict on a pty of their own.
Small static C probes (tests.support.probes) try what busybox cannot:
ioctl(TIOCSTI) and keyctl(2).
"""

import contextlib
import fcntl
import functools
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import tty

import pytest

from minict.bundle import spec
from minict.runtime import execute
from tests.support import waiting
from tests.support.probes import compile_probe, install_probe

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

wait_for = functools.partial(waiting.wait_for, timeout=20.0, pause=0.05)  # the 20 s these waits always had

pytestmark = pytest.mark.root

MINICT = f"{shlex.quote(sys.executable)} -m minict"

# Push argv[2] into the input of every terminal the probe can reach: fds
# 0-2, /dev/tty (the controlling terminal) and fresh opens of /proc/self/fd/N.
# One line per attempt goes to the report file argv[1]: "<what> INJECTED" or
# "<what> errno=<n>".
TIOCSTI_SOURCE = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static FILE *report;

static void push(const char *what, int fd, const char *text) {
    for (const char *p = text; *p; p++) {
        if (ioctl(fd, TIOCSTI, p) != 0) {
            fprintf(report, "%s errno=%d\n", what, errno);
            return;
        }
    }
    fprintf(report, "%s INJECTED\n", what);
}

static void push_path(const char *path, const char *text) {
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        fprintf(report, "%s errno=%d\n", path, errno);
        return;
    }
    push(path, fd, text);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    report = fopen(argv[1], "w");
    if (!report) return 3;
    push("fd0", 0, argv[2]);
    push("fd1", 1, argv[2]);
    push("fd2", 2, argv[2]);
    push_path("/dev/tty", argv[2]);
    push_path("/proc/self/fd/0", argv[2]);
    push_path("/proc/self/fd/1", argv[2]);
    push_path("/proc/self/fd/2", argv[2]);
    fclose(report);
    return 0;
}
"""

# What a process can do with keys, three ways:
#   keyprobe look SERIAL DESC   name its session keyring, read the key SERIAL,
#                               search its session and user keyrings for DESC
#   keyprobe add DESC           add a user key DESC to its session keyring
#   keyprobe steal RING DESC    link keyring RING into its own, list RING, and
#                               search for DESC and read it through the link
# One "<what> <result>" line per attempt on stdout.
KEYCTL_SOURCE = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_DESCRIBE 6
#define KEYCTL_LINK 8
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_USER_KEYRING -4

static long k(long op, long a, long b, long c, long d) {
    return syscall(SYS_keyctl, op, a, b, c, d);
}

static void result(const char *what, long n) {
    if (n < 0) printf("%s errno=%d\n", what, errno);
    else printf("%s %ld\n", what, n);
}

static long search(const char *what, long ring, const char *desc) {
    long found = k(KEYCTL_SEARCH, ring, (long)"user", (long)desc, 0);
    if (found < 0) printf("%s errno=%d\n", what, errno);
    else printf("%s found=%ld\n", what, found);
    return found;
}

static void read_key(const char *what, long serial) {
    char buf[512];
    long n = k(KEYCTL_READ, serial, (long)buf, sizeof buf - 1, 0);
    if (n < 0) { printf("%s errno=%d\n", what, errno); return; }
    buf[n < (long)sizeof buf ? n : 0] = 0;
    printf("%s %s\n", what, buf);
}

int main(int argc, char **argv) {
    char buf[512];
    long n;
    if (argc == 4 && !strcmp(argv[1], "look")) {
        n = k(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0);
        result("session-id", n);
        n = k(KEYCTL_DESCRIBE, KEY_SPEC_SESSION_KEYRING, (long)buf, sizeof buf, 0);
        if (n < 0) printf("session-describe errno=%d\n", errno);
        else printf("session-describe %s\n", buf);
        read_key("read", atol(argv[2]));
        search("search-session", KEY_SPEC_SESSION_KEYRING, argv[3]);
        search("search-user", KEY_SPEC_USER_KEYRING, argv[3]);
    } else if (argc == 3 && !strcmp(argv[1], "add")) {
        result("session-id", k(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0));
        result("added", syscall(SYS_add_key, "user", argv[2], "s3cret", 6,
                                KEY_SPEC_SESSION_KEYRING));
    } else if (argc == 4 && !strcmp(argv[1], "steal")) {
        long ring = atol(argv[2]);
        result("link", k(KEYCTL_LINK, ring, KEY_SPEC_SESSION_KEYRING, 0, 0));
        result("list", k(KEYCTL_READ, ring, (long)buf, sizeof buf, 0));
        n = search("search", KEY_SPEC_SESSION_KEYRING, argv[3]);
        if (n >= 0) read_key("read", n);
    } else {
        return 2;
    }
    return 0;
}
"""

EIO, ENXIO, ENOTTY = 5, 6, 25


def tiocsti_allowed() -> bool:
    """Return whether TIOCSTI works without CAP_SYS_ADMIN here (dev.tty.legacy_tiocsti, 6.2+)."""
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return True  # an older kernel: always allowed


@pytest.fixture(scope="module")
def tiocsti():
    return compile_probe("tiocsti", TIOCSTI_SOURCE)


@pytest.fixture(scope="module")
def keyprobe():
    return compile_probe("keyprobe", KEYCTL_SOURCE)


def sh(script):
    return ["sh", "-c", script]


def no_terminal(config):
    config["process"]["terminal"] = False


def without_seccomp(config):
    # Another part of the hardening filters keyctl with seccomp; these tests
    # are about the keyring itself.
    (config.get("linux") or {}).pop("seccomp", None)


def minict_env(minict_dir, **extra):
    env = dict(os.environ, MINICT_DIR=str(minict_dir), **extra)
    env.pop("MINICT_LOG_LEVEL", None)
    return env


def wait_running(bundle, timeout=20.0):
    def running():
        try:
            state = json.loads((bundle / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return state.get("pid") if state.get("status") == "running" else None

    return wait_for(running, "the container to run", timeout=timeout)


@contextlib.contextmanager
def started(minict_dir, bundle):
    """Keep the container of `bundle` running (`minict start` in the background) for the block."""
    runner = subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", bundle.name],
                              env=minict_env(minict_dir), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_running(bundle)
        yield runner
    finally:
        runner.kill()  # its container dies with it (PDEATHSIG)
        runner.communicate(timeout=30)


# -- a host shell on a real terminal: tmux ---------------------------------------------------

class HostShell:
    """An interactive `sh` in a tmux pane: type into it and read its screen."""

    def __init__(self, tmux: str, workdir, env):
        self.tmux = tmux
        self.socket = str(workdir / "tmux.sock")
        # Its own directory: `python -m minict` would import a ./minict (MINICT_DIR) instead.
        self.cwd = workdir / "pane"
        self.cwd.mkdir(exist_ok=True)
        # A wide pane, so that long command lines do not wrap.
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", "host", "-x", "250", "-y", "50",
                   "-c", str(self.cwd), "sh", env=env)
        wait_for(lambda: self.screen().rstrip().endswith("#"), what="the host shell's prompt")

    def _tmux(self, *args, env=None):
        return subprocess.run([self.tmux, "-S", self.socket, *args], check=True,
                              capture_output=True, text=True, env=env, timeout=30,
                              stdin=subprocess.DEVNULL)

    def type(self, text: str, enter=True):
        self._tmux("send-keys", "-t", "host", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "host", "Enter")

    def key(self, name: str):
        self._tmux("send-keys", "-t", "host", name)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "host").stdout

    def run(self, command: str, timeout=30.0) -> int:
        """Type `command`, wait for it to finish; return its exit status."""
        marker = secrets.token_hex(4)
        # The marker is built by the shell, so the typed line does not contain it.
        self.type(f'{command}; echo "$?-{marker[:4]}""{marker[4:]}"')
        found = wait_for(lambda: re.search(rf"(\d+)-{marker}", self.screen()),
                         f"{command!r} to finish", timeout=timeout)
        return int(found.group(1))

    def settle(self):
        """Let the shell read whatever is in its input now: one more command runs after it."""
        assert self.run("true") == 0

    def close(self):
        subprocess.run([self.tmux, "-S", self.socket, "kill-server"], check=False,
                       capture_output=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def host_shell(require_tool, tmp_path, minict_dir):
    tmux = require_tool("tmux")
    shells = []

    def make():
        shell = HostShell(tmux, tmp_path, minict_env(minict_dir, PS1="# ", ENV="", HISTFILE=""))
        shells.append(shell)
        return shell

    yield make
    for shell in shells:
        shell.close()


def injection(tmp_path):
    """Return (the line a container tries to push into the host shell, the file it would make)."""
    target = tmp_path / f"INJECTED-{secrets.token_hex(6)}"
    return f"touch {target}\n", target


def start_injecting(box, tiocsti, host_shell, tmp_path, redirect=""):
    """From a host shell on a terminal, start a container that pushes a line at every terminal.

    Return (the probe's report, the host shell, the file the line would make).
    """
    line, target = injection(tmp_path)
    bundle = box(["/usr/local/bin/tiocsti", "/tmp/report", line])
    install_probe(bundle / "rootfs", tiocsti)
    shell = host_shell()
    assert shell.run(f"{MINICT} start --name box {redirect}") == 0
    shell.settle()  # a pushed line would run now
    assert not target.exists(), "the container's line ran in the host shell"
    return read_report(bundle), shell, target


def read_report(bundle, name="report"):
    lines = (bundle / "rootfs" / "tmp" / name).read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


# -- terminal injection ------------------------------------------------------------------------

@pytest.mark.parametrize("redirect", ["> out.txt", "< /dev/null", "2> err.txt < /dev/null"])
def test_a_container_cannot_push_input_into_the_host_terminal(minict_dir, box, tiocsti,
                                                               host_shell, tmp_path, redirect):
    report, shell, _ = start_injecting(box, tiocsti, host_shell, tmp_path, redirect)
    assert "INJECTED-" not in shell.screen()
    assert "INJECTED" not in report.values(), report
    # Every stream is a pipe, a file or /dev/null; there is no controlling terminal.
    assert {report[f"fd{n}"] for n in range(3)} == {f"errno={ENOTTY}"}, report
    assert report["/dev/tty"] == f"errno={ENXIO}", report


def test_on_the_pty_path_a_push_lands_in_the_containers_own_terminal(minict_dir, box, tiocsti,
                                                                      host_shell, tmp_path):
    report, _, _ = start_injecting(box, tiocsti, host_shell, tmp_path)
    # Its own pty takes the push (and the container's echo shows it); the host's input never.
    # Where the kernel refuses TIOCSTI to all but CAP_SYS_ADMIN, it fails on its own pty too.
    pushed = "INJECTED" if tiocsti_allowed() else f"errno={EIO}"
    assert report["fd0"] == pushed and report["/dev/tty"] == pushed, report


def test_exec_cannot_push_input_into_the_host_terminal(minict_dir, box, tiocsti, host_shell,
                                                       tmp_path):
    line, target = injection(tmp_path)
    bundle = box(["sleep", "60"])
    install_probe(bundle / "rootfs", tiocsti)
    with started(minict_dir, bundle):
        shell = host_shell()
        # A script holds the line: typed into the shell, its newline would end the command.
        (bundle / "rootfs/tmp/inject.sh").write_text(
            shlex.join(["/usr/local/bin/tiocsti", "/tmp/report", line]) + "\n")
        status = shell.run(f"{MINICT} exec --name box -- sh /tmp/inject.sh "
                           "> out.txt")
        assert status == 0, shell.screen()
        shell.settle()
        assert not target.exists(), "the exec'd process's line ran in the host shell"
        report = read_report(bundle)
        assert "INJECTED" not in report.values(), report
        assert report["/dev/tty"] == f"errno={ENXIO}", report


# -- sessions and process groups ---------------------------------------------------------------

KILL_GROUP = ("kill -TERM 0; pgid=$(cat /tmp/pgid); kill -TERM -$pgid 2>/dev/null; "
              "kill -HUP 0; sleep 0.3; exit 3")


def test_kill_0_inside_leaves_the_calling_script_alive(minict_dir, box):
    bundle = box(sh(KILL_GROUP))
    script = (f"echo $$ > {bundle}/rootfs/tmp/pgid; {MINICT} start --name box; "
              "echo \"script alive after status $?\"")
    # Its own process group, so that the test runner is never in the line of fire.
    done = subprocess.run(["sh", "-c", script], check=False, env=minict_env(minict_dir),
                          stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, start_new_session=True)
    assert done.returncode == 0, done
    assert done.stdout.endswith("script alive after status 3\n"), done


def test_exec_kill_0_leaves_the_calling_script_alive(minict_dir, box):
    bundle = box(["sleep", "60"])
    with started(minict_dir, bundle) as runner:
        # Not PID 1, the exec'd shell gets its own `kill 0`: it traps it.
        script = (f"{MINICT} exec --name box -- sh -c 'trap \"exit 4\" TERM; kill -TERM 0; "
                  "sleep 1; exit 5'; "
                  "echo \"script alive after status $?\"")
        done = subprocess.run(["sh", "-c", script], check=False, env=minict_env(minict_dir),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60, start_new_session=True)
        assert done.returncode == 0, done
        assert done.stdout.endswith("script alive after status 4\n"), done
        assert runner.poll() is None  # the container's minict, too


def test_the_container_is_a_session_of_its_own_without_a_terminal(minict, box):
    # Fields 5-7 of /proc/<pid>/stat: process group, session, controlling terminal.
    box(sh("set -- $(cut -d' ' -f5-7 /proc/$$/stat); echo pid=$$ pgrp=$1 session=$2 tty=$3"),
        edit=no_terminal)
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pid=1 pgrp=1 session=1 tty=0\n"


# -- the relay: the container's streams are pipes minict copies ------------------------------

RELAY = sh('read -r first; echo "got:$first"; cat; echo "end of input"; exit 7')


def test_typed_input_reaches_the_container_and_output_comes_back(minict_dir, box, host_shell,
                                                                 tmp_path):
    box(RELAY, edit=no_terminal)
    shell = host_shell()
    out = shell.cwd / "out.txt"
    shell.type(f"{MINICT} start --name box > out.txt; echo \"status-$((40+2)):$?\"")
    wait_for(out.exists, what="minict to start")
    time.sleep(0.5)
    shell.type("hello there")
    wait_for(lambda: "got:hello there" in out.read_text(),
             what="the first line to come back")
    shell.type("second line")
    shell.key("C-d")  # end of input: cat ends, the container exits
    wait_for(lambda: re.search(r"status-42:(\d+)", shell.screen()), what="minict to exit")
    assert "status-42:7" in shell.screen()
    assert out.read_text() == "got:hello there\nsecond line\nend of input\n"
    # Output on the terminal (and no pty asked for): it comes back there.
    shell.type(f"{MINICT} start --name box 2> err.txt; echo \"again-$((40+2)):$?\"")
    time.sleep(1)
    shell.type("from the pane")
    wait_for(lambda: "got:from the pane" in shell.screen(), what="output on the terminal")
    shell.key("C-d")
    wait_for(lambda: re.search(r"again-42:(\d+)", shell.screen()), what="minict to exit again")
    assert "again-42:7" in shell.screen() and "end of input" in shell.screen()


def test_minict_in_the_background_does_not_stop_for_terminal_input(minict_dir, box, host_shell,
                                                                   tmp_path):
    box(sh("sleep 2; echo finished"), edit=no_terminal)
    shell = host_shell()
    shell.type(f"{MINICT} start --name box > out.txt 2>&1 &")
    time.sleep(0.5)
    # Input typed meanwhile is the shell's: minict must neither take it nor be stopped by it.
    assert shell.run("echo typed-while-in-background") == 0
    assert shell.run("wait", timeout=20) == 0
    assert "finished" in (shell.cwd / "out.txt").read_text()
    assert "Stopped" not in shell.screen()


class Pty:
    """A pty whose slave is the controlling terminal of a minict we start on it."""

    def __init__(self, raw=False):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        if raw:
            tty.setraw(self.slave)
        self.pid = None

    def start(self, minict_dir, *args, stdin=None, stdout=None, stderr=None):
        """Fork `minict ARGS`; each stream is the slave unless a descriptor is given."""
        env = minict_env(minict_dir)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setsid()
                fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
                for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                    os.dup2(self.slave if fd is None else fd, target)
                os.execve(sys.executable, [sys.executable, "-m", "minict", *args], env)
            finally:
                os._exit(127)

    def read_until(self, size: int, timeout=20.0) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < size and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                data += os.read(self.master, 65536)
        return data

    def wait(self, timeout=30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                return os.waitstatus_to_exitcode(raw)
            time.sleep(0.05)
        raise AssertionError("minict did not exit")

    def close(self):
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
        for fd in (self.master, self.slave):
            os.close(fd)


@pytest.fixture
def pty_term():
    terms = []

    def make(**kw):
        terms.append(Pty(**kw))
        return terms[-1]

    yield make
    for term in terms:
        term.close()


ALL_BYTES = bytes(range(256)) * 64


def test_binary_data_passes_the_relay_unchanged_both_ways(minict_dir, box, pty_term, tmp_path):
    bundle = box(sh(f"head -c {len(ALL_BYTES)} > /tmp/got; echo done"), edit=no_terminal)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    term = pty_term(raw=True)
    term.start(minict_dir, "start", "--name", "box", stdout=out)
    os.close(out)
    for start in range(0, len(ALL_BYTES), 4096):
        os.write(term.master, ALL_BYTES[start:start + 4096])
    assert term.wait() == 0
    assert (bundle / "rootfs/tmp/got").read_bytes() == ALL_BYTES
    assert (tmp_path / "out").read_text() == "done\n"

    (bundle / "rootfs/tmp/send").write_bytes(ALL_BYTES)
    (bundle / "config.json").write_text(json.dumps(
        {**json.loads((bundle / "config.json").read_text()),
         "process": {**json.loads((bundle / "config.json").read_text())["process"],
                     "args": ["cat", "/tmp/send"]}}))
    null = os.open(os.devnull, os.O_RDONLY)
    err = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT, 0o644)
    term = pty_term(raw=True)
    term.start(minict_dir, "start", "--name", "box", stdin=null, stderr=err)
    os.close(null)
    os.close(err)
    assert term.read_until(len(ALL_BYTES)) == ALL_BYTES
    assert term.wait() == 0


def test_a_flood_of_output_is_held_back_not_buffered(minict_dir, box, pty_term):
    # Nobody reads the terminal: the container must block, not minict grow.
    box(sh('trap "exit 3" TERM; yes 0123456789abcdef & wait'), edit=no_terminal)
    null = os.open(os.devnull, os.O_RDONLY)
    term = pty_term(raw=True)
    term.start(minict_dir, "start", "--name", "box", stdin=null)
    os.close(null)
    assert term.read_until(1000)  # it runs and writes
    time.sleep(2)

    def rss_kib():
        with open(f"/proc/{term.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    first = rss_kib()
    time.sleep(1)
    assert rss_kib() - first < 1024 and first < 100 * 1024
    # Held back, minict still hears signals and passes them on.
    os.kill(term.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while term.pid is not None and time.monotonic() < deadline:
        term.read_until(1 << 20, timeout=0.2)  # let the container's last writes through
        pid, raw = os.waitpid(term.pid, os.WNOHANG)
        if pid:
            term.pid = None
            assert os.waitstatus_to_exitcode(raw) == 3


def test_ctrl_c_on_the_host_terminal_reaches_the_container(minict_dir, box, pty_term, tmp_path):
    box(sh('trap "echo interrupted; exit 5" INT; echo ready; while :; do sleep 0.1; done'),
        edit=no_terminal)
    term = pty_term()
    term.start(minict_dir, "start", "--name", "box")
    assert b"ready" in term.read_until(100, timeout=10)
    os.write(term.master, termios.tcgetattr(term.slave)[6][termios.VINTR])
    assert b"interrupted" in term.read_until(1000, timeout=10)
    assert term.wait() == 5


def test_a_container_that_never_reads_its_input_still_exits(minict_dir, box, pty_term, tmp_path):
    box(sh("sleep 0.5; exit 6"), edit=no_terminal)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    term = pty_term(raw=True)
    term.start(minict_dir, "start", "--name", "box", stdout=out)
    os.close(out)
    os.write(term.master, b"x" * 4096)
    assert term.wait() == 6


def test_exec_relays_the_terminal_too(minict_dir, box, pty_term):
    bundle = box(["sleep", "60"])
    with started(minict_dir, bundle):
        term = pty_term()
        null = os.open(os.devnull, os.O_WRONLY)
        # No pty for exec either (stderr is not the terminal): pipes, and a session of its own.
        term.start(minict_dir, "exec", "--name", "box", "--", "sh", "-c",
                   'read -r line; echo "got:$line"; ls -l /proc/self/fd/0 /proc/self/fd/1; '
                   "echo \"session:$(cut -d' ' -f6 /proc/$$/stat) of:$$\"; exit 3", stderr=null)
        os.close(null)
        os.write(term.master, b"typed\n")
        seen = b""
        deadline = time.monotonic() + 20
        while b"of:" not in seen and time.monotonic() < deadline:
            seen += term.read_until(1, timeout=0.5)
        assert term.wait() == 3
        text = seen.decode()
        assert "got:typed" in text and text.count("pipe:[") == 2, text
        session, pid = re.search(r"session:(\d+) of:(\d+)", text).groups()
        assert session == pid, text


# -- the kernel keyring ------------------------------------------------------------------------

def in_key_session(require_tool, minict_dir, bundle, inner: str):
    """Add a key to a new session keyring, then run the script `inner` in it; return the result.

    The key's serial is in $id and in the container's /tmp/keyid; its
    description is the bundle's /tmp/keydesc.
    """
    keyctl = require_tool("keyctl")
    description = f"minict-test-{secrets.token_hex(4)}"
    (bundle / "rootfs/tmp/keydesc").write_text(description)
    script = (f"id=$(keyctl add user {description} s3cret @s) || exit 9; "
              f"keyctl read $id >/dev/null || exit 9; echo $id > {bundle}/rootfs/tmp/keyid; "
              f"{inner}")
    # `keyctl session -`: the script runs in a new anonymous session keyring,
    # so the key lives and dies with it, whatever this test runner's keyring is.
    done = subprocess.run([keyctl, "session", "-", "sh", "-c", script], check=False,
                          env=minict_env(minict_dir), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, start_new_session=True)
    assert done.returncode == 0, done
    return probe_lines(done.stdout)


def probe_lines(text: str) -> dict:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


KEYPROBE = "/usr/local/bin/keyprobe look $(cat /tmp/keyid) $(cat /tmp/keydesc)"


@pytest.mark.parametrize("no_new_keyring", [False, True])
def test_the_hosts_session_keyring_is_out_of_reach(minict_dir, box, keyprobe, require_tool,
                                                   no_new_keyring):
    def edit(config):
        without_seccomp(config)
        no_terminal(config)
        if no_new_keyring:
            config["annotations"][spec.NO_NEW_KEYRING] = "true"

    bundle = box(sh(KEYPROBE), edit=edit)
    install_probe(bundle / "rootfs", keyprobe)
    seen = in_key_session(require_tool, minict_dir, bundle, f"{MINICT} start --name box")
    if no_new_keyring:
        # As before: the container is in the caller's session keyring and holds the key.
        assert seen["read"] == "s3cret", seen
        assert seen["search-session"].startswith("found="), seen
    else:
        assert seen["read"].startswith("errno="), seen
        assert seen["search-session"].startswith("errno="), seen
        assert seen["search-user"].startswith("errno="), seen
        assert seen["session-describe"].endswith(";_ses.box"), seen


def test_exec_joins_the_containers_keyring_not_the_callers(minict_dir, box, keyprobe,
                                                           require_tool):
    def edit(config):
        without_seccomp(config)
        no_terminal(config)

    bundle = box(sh(f"{KEYPROBE} > /tmp/init-keys; sleep 60"), edit=edit)
    install_probe(bundle / "rootfs", keyprobe)
    seen = in_key_session(require_tool, minict_dir, bundle, (
        f"{MINICT} start --name box >/dev/null 2>&1 & "
        f"while [ ! -s {bundle}/rootfs/tmp/init-keys ]; do sleep 0.05; done; "
        f"{MINICT} exec --name box -- sh -c '{KEYPROBE}'; "
        f"{MINICT} exec --name box -u app -- sh -c '{KEYPROBE}' | sed 's/^/app-/'; "
        "kill -KILL $!; wait $!; exit 0"))
    init_keys = probe_lines((bundle / "rootfs/tmp/init-keys").read_text())
    assert init_keys["read"].startswith("errno="), init_keys
    assert seen["read"].startswith("errno="), seen
    assert seen["search-session"].startswith("errno="), seen
    assert seen["app-read"].startswith("errno="), seen
    assert seen["app-search-session"].startswith("errno="), seen
    # exec found the container's keyring by its name, as runc's exec does.
    assert seen["session-id"] == init_keys["session-id"], (seen, init_keys)
    assert seen["app-session-id"] == init_keys["session-id"], (seen, init_keys)


def test_another_container_cannot_take_a_containers_keyring(minict_dir, box, keyprobe):
    # Both containers' root is host uid 0, the owner of both keyrings.
    def edit(config):
        without_seccomp(config)
        no_terminal(config)

    holder = box(sh("/usr/local/bin/keyprobe add its-secret > /tmp/added; sleep 60"),
                 name="holder", edit=edit)
    install_probe(holder / "rootfs", keyprobe)
    thief = box(sh("/usr/local/bin/keyprobe steal $(cat /tmp/ring) its-secret"), name="thief",
                edit=edit)
    install_probe(thief / "rootfs", keyprobe)
    with started(minict_dir, holder):
        added = wait_for(lambda: probe_lines((holder / "rootfs/tmp/added").read_text())
                         if (holder / "rootfs/tmp/added").exists() else None)
        assert not added["added"].startswith("errno="), added
        (thief / "rootfs/tmp/ring").write_text(added["session-id"])
        done = subprocess.run([sys.executable, "-m", "minict", "start", "--name", "thief"],
                              check=False, env=minict_env(minict_dir), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        seen = probe_lines(done.stdout)
        assert seen["link"].startswith("errno="), seen
        assert seen["list"].startswith("errno="), seen
        assert seen["search"].startswith("errno=") and "read" not in seen, seen


def test_no_new_keyring_is_an_annotation_start_repeats():
    image = {"config": {"Cmd": ["sh"]}}
    assert spec.NO_NEW_KEYRING not in spec.generate(image, "box")["annotations"]
    plain = spec.generate(image, "box", overrides=spec.Overrides())
    assert spec.NO_NEW_KEYRING not in plain["annotations"]
    kept = spec.generate(image, "box", overrides=spec.Overrides(no_new_keyring=True))
    assert kept["annotations"][spec.NO_NEW_KEYRING] == "true"
    assert execute.NO_NEW_KEYRING == spec.NO_NEW_KEYRING
    # An image cannot opt its containers out through a label.
    labelled = {"config": {"Cmd": ["sh"], "Labels": {spec.NO_NEW_KEYRING: "true", "a": "b"}}}
    annotations = spec.generate(labelled, "box")["annotations"]
    assert spec.NO_NEW_KEYRING not in annotations and annotations["a"] == "b"


def test_run_no_new_keyring_is_kept_in_the_bundle(minict, minict_dir, busybox_layout):
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    for name, options in (("plain", []), ("shared", ["--no-new-keyring"])):
        done = minict("run", "--image", "busybox", "--name", name, *options, "--", "true")
        assert done.returncode == 0, done.stderr
    configs = {name: json.loads((minict_dir / "containers" / name / "config.json").read_text())
               for name in ("plain", "shared")}
    assert spec.NO_NEW_KEYRING not in configs["plain"]["annotations"]
    assert configs["shared"]["annotations"][spec.NO_NEW_KEYRING] == "true"
