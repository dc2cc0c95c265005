"""The system-call filter: what a root process in a container can and cannot call.

A static C probe calls raw system calls by number (syscall(2), and the
32-bit `int 0x80` entry on x86_64), each in a forked child, and prints
`name=ok` or `name=<errno name>`.  Where a call is allowed its arguments
make it fail harmlessly (a missing mount point, bad flags), yet the probe
is only ever run inside a container.  Docker's default profile decides most
answers; for a few the capabilities decide as well, and the matrix says so.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from minict import store
from minict.bundle import seccomp, seccomp_profile, spec
from minict.runtime import seccomp_filter
from tests.support import ci
from tests.support.probes import compile_probe, install_probe
from tests.test_launch import wait_running

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root

X86_64 = platform.machine() == "x86_64"

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define CLONE_NEWUSER 0x10000000
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_PROCESS_KEYRING -2

/* clone(2) without a new stack: the child returns here like fork's and leaves. */
static long raw_clone(unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    return pid < 0 ? -1 : 0;
}

#ifdef __x86_64__
/* The 32-bit entry: eax = the i386 number; -errno comes back in eax. */
static long int80(long nr, long a, long b) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b) : "memory");
    if (r < 0 && r > -4096) {
        errno = -r;
        return -1;
    }
    return r;
}
#endif

static long check(const char *name) {
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    if (!strcmp(name, "uname")) { char buf[512]; return syscall(SYS_uname, buf); }
    if (!strcmp(name, "clone")) return raw_clone(0);
    if (!strcmp(name, "clone_newuser")) return raw_clone(CLONE_NEWUSER);
    if (!strcmp(name, "clone3")) return syscall(SYS_clone3, NULL, 0);
    if (!strcmp(name, "unshare_newuser")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "socket_inet")) return syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_unix")) return syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    if (!strcmp(name, "socket_alg")) return syscall(SYS_socket, 38, SOCK_SEQPACKET, 0);
    if (!strcmp(name, "socket_vsock")) return syscall(SYS_socket, 40, SOCK_STREAM, 0);
    if (!strcmp(name, "personality_query")) return syscall(SYS_personality, 0xffffffffUL);
    if (!strcmp(name, "personality_linux")) return syscall(SYS_personality, 0);
    if (!strcmp(name, "personality_weird")) return syscall(SYS_personality, 0x0400000);
    if (!strcmp(name, "ptrace_traceme")) return syscall(SYS_ptrace, 0, 0, 0, 0);
    if (!strcmp(name, "io_uring_setup")) return syscall(SYS_io_uring_setup, 1, NULL);
    if (!strcmp(name, "keyctl"))
        return syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, KEY_SPEC_SESSION_KEYRING, 0);
    if (!strcmp(name, "add_key"))
        return syscall(SYS_add_key, "user", "minict-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (!strcmp(name, "request_key"))
        return syscall(SYS_request_key, "user", "minict-no-such-key", NULL, 0);
    /* Harmless where allowed: targets that do not exist, flags the kernel refuses. */
    if (!strcmp(name, "mount"))
        return syscall(SYS_mount, "none", "/no-such-mount-point", "tmpfs", 0, NULL);
    if (!strcmp(name, "umount2")) return syscall(SYS_umount2, "/no-such-mount-point", 0);
    if (!strcmp(name, "swapon")) return syscall(SYS_swapon, "/no-such-swap", 0);
    if (!strcmp(name, "reboot")) return syscall(SYS_reboot, 0, 0, 0, NULL);
    if (!strcmp(name, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, NULL, 0xffff0000UL);
    if (!strcmp(name, "init_module")) return syscall(SYS_init_module, NULL, 0, "");
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, 0, NULL, 0);
    if (!strcmp(name, "perf_event_open"))
        return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(name, "userfaultfd")) return syscall(SYS_userfaultfd, 0);
    if (!strcmp(name, "setns")) return syscall(SYS_setns, -1, 0);
    if (!strcmp(name, "chroot")) return syscall(SYS_chroot, "/");
    if (!strcmp(name, "unknown_1000")) return syscall(1000);
#ifdef __x86_64__
    if (!strcmp(name, "int80_getpid")) return int80(20, 0, 0);
    if (!strcmp(name, "int80_keyctl")) return int80(288, 0, KEY_SPEC_SESSION_KEYRING);
    if (!strcmp(name, "int80_io_uring_setup")) return int80(425, 1, 0);
    if (!strcmp(name, "int80_unshare_newuser")) return int80(310, CLONE_NEWUSER, 0);
    if (!strcmp(name, "int80_unknown_1000")) return int80(1000, 0, 0);
#endif
    errno = 0;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            errno = 0;
            long r = check(argv[i]);
            if (r == -2 && errno == 0) _exit(254);
            _exit(r < 0 ? errno : 0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status))
            printf("%s=signal%d\n", argv[i], WTERMSIG(status));
        else if (WEXITSTATUS(status) == 254)
            printf("%s=unknown-check\n", argv[i]);
        else if (WEXITSTATUS(status) == 0)
            printf("%s=ok\n", argv[i]);
        else
            printf("%s=%s\n", argv[i], strerrorname_np(WEXITSTATUS(status)));
    }
    return 0;
}
"""

# Under docker's default profile, for a container with docker's capabilities or
# fewer (neither CAP_SYS_ADMIN, CAP_SYS_BOOT nor CAP_SYS_MODULE).
REFUSED = ["io_uring_setup", "personality_weird", "keyctl", "add_key", "request_key",
           "unshare_newuser", "clone_newuser", "mount", "umount2", "swapon", "reboot",
           "kexec_load", "init_module", "bpf", "perf_event_open", "userfaultfd", "setns",
           "socket_alg", "socket_vsock"]
# ptrace is allowed from kernel 4.8 on (seccomp then runs after the tracer).
ALLOWED = ["getpid", "uname", "clone", "socket_inet", "socket_unix", "personality_query",
           "personality_linux", "ptrace_traceme"]
# The C library falls back from clone3 to clone, whose flags the filter sees;
# a number no kernel knows is ENOSYS, filtered or not.
NO_SUCH_CALL = ["clone3", "unknown_1000"]
INT80 = {"int80_getpid": "ok", "int80_keyctl": "EPERM", "int80_io_uring_setup": "EPERM",
         "int80_unshare_newuser": "EPERM", "int80_unknown_1000": "ENOSYS"}


def expected_matrix(bounding) -> dict:
    """The answers for a container whose bounding (and effective) set is `bounding`."""
    expected = {name: "EPERM" for name in REFUSED}
    # Allowed with CAP_SYS_CHROOT (one of docker's 14), refused without.
    expected["chroot"] = "ok" if "CAP_SYS_CHROOT" in bounding else "EPERM"
    expected.update({name: "ok" for name in ALLOWED})
    expected.update({name: "ENOSYS" for name in NO_SUCH_CALL})
    if X86_64:
        expected.update(INT80)
    return expected


@pytest.fixture(scope="module")
def probe():
    ci.require_tool("gcc")
    return compile_probe("sysprobe", PROBE_SOURCE)


def parse(stdout: str) -> dict:
    return dict(line.split("=", 1) for line in stdout.split() if "=" in line)


def status_fields(text: str) -> dict:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def bounding_set(bundle) -> list[str]:
    return json.loads((bundle / "config.json").read_text())["process"]["capabilities"][
        "bounding"]


def probe_box(box, probe, names, **kw):
    bundle = box(["/usr/local/bin/sysprobe", *names], **kw)
    install_probe(bundle / "rootfs", probe)
    return bundle


# -- the default filter ------------------------------------------------------------

@pytest.mark.parametrize("no_new_privs", [False, True])
def test_status_shows_the_filter_and_no_new_privs(minict, box, no_new_privs):
    def edit(config):
        config["process"]["noNewPrivileges"] = no_new_privs

    box(["cat", "/proc/self/status"], edit=edit if no_new_privs else None)
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    fields = status_fields(done.stdout)
    assert fields["Seccomp"] == "2"
    # docker's profile, then the filter that answers ENOSYS to unknown calls.
    assert fields["Seccomp_filters"] == "2"
    assert fields["NoNewPrivs"] == str(int(no_new_privs))


@pytest.mark.parametrize("no_new_privs", [False, True])
def test_the_matrix_of_refused_and_allowed_calls(minict, box, probe, no_new_privs):
    def edit(config):
        config["process"]["noNewPrivileges"] = no_new_privs

    bundle = probe_box(box, probe, sorted(expected_matrix([])), edit=edit)
    expected = expected_matrix(bounding_set(bundle))
    done = minict("start", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert parse(done.stdout) == expected


def test_calls_newer_than_libseccomp_get_enosys_not_eperm(minict, box, probe):
    """mseal (x86_64 462, Linux 6.10) is allowed by docker's profile, by name."""
    if not X86_64:
        pytest.skip("the probe's numbers are x86_64's")
    lib = seccomp_filter.binding()
    try:
        lib.resolve_syscall(lib.Arch.NATIVE, 462)
        known = True
    except ValueError:
        known = False
    source = PROBE_SOURCE.replace('if (!strcmp(name, "getpid"))',
                                  'if (!strcmp(name, "mseal")) return syscall(462, 0, 0, 0);\n'
                                  '    if (!strcmp(name, "getpid"))')
    bundle = box(["/usr/local/bin/sysprobe", "mseal"])
    install_probe(bundle / "rootfs", compile_probe("sysprobe", source), "sysprobe")
    done = minict("start", "--name", "box")
    assert parse(done.stdout) == {"mseal": "ok" if known else "ENOSYS"}, done.stderr


PODMAN_CGROUP = "minict-seccomp-podman"


def podman_run(options, rootfs, command) -> subprocess.CompletedProcess:
    """`podman run OPTIONS --rootfs ROOTFS COMMAND` as podman works on these machines (hybrid
    cgroups, root's rlimits), its state in a directory of its own (it wants a short path)
    and its cgroups under one parent, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="minict-podman-") as workdir:
        # vfs storage: overlay's would leave a private mount behind.
        state = ["--root", f"{workdir}/storage", "--runroot", f"{workdir}/run",
                 "--tmpdir", f"{workdir}/tmp", "--storage-driver", "vfs",
                 "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
        try:
            return subprocess.run(
                ["podman", *state, "run", "--rm", "--cgroup-parent", f"/{PODMAN_CGROUP}",
                 "--net", "host", "--ulimit", "nofile=20000:20000",
                 "--ulimit", "nproc=4096:4096", *options, "--rootfs", str(rootfs), *command],
                check=False, capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL)
        finally:
            for parent in Path("/sys/fs/cgroup").glob(f"*/{PODMAN_CGROUP}"):
                for child in sorted(parent.rglob("*/"), key=lambda p: -len(p.parts)):
                    child.rmdir()
                parent.rmdir()


def test_podman_loading_the_same_profile_gives_the_same_answers(minict, box, probe, tmp_path):
    """runc (through podman) is the reference: the same docker-format profile and the same
    capabilities must give every call of the matrix the same answer.  (podman's own
    default profile is not docker's: it answers ENOSYS by default and allows keyctl,
    unshare and mount, so it is no yardstick for docker's.)"""
    ci.require_tool("podman")
    ci.require_tool("runc")
    names = sorted(expected_matrix([]))
    profile = tmp_path / "docker-default.json"
    profile.write_text(json.dumps(seccomp_profile.DEFAULT_PROFILE))
    rootfs = tmp_path / "podman-rootfs"
    install_probe(rootfs, probe)
    caps = bounding_set(probe_box(box, probe, names))
    theirs = podman_run(["--cap-drop", "all", "--cap-add", ",".join(caps),
                         "--security-opt", f"seccomp={profile}"],
                        rootfs, ["/usr/local/bin/sysprobe", *names])
    assert theirs.returncode == 0, theirs.stderr
    ours = minict("start", "--name", "box")
    assert parse(ours.stdout) == parse(theirs.stdout) == expected_matrix(caps)


def test_capabilities_decide_the_conditional_rules(minict, box, probe):
    """With CAP_SYS_CHROOT and CAP_SYS_ADMIN, docker's profile allows chroot, unshare, clone3."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
            "CAP_SYS_ADMIN"]

    def edit(config):
        config["process"]["capabilities"].update(bounding=caps, effective=caps, permitted=caps)
        config["linux"]["seccomp"] = seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE, caps)

    probe_box(box, probe, ["chroot", "unshare_newuser", "clone3", "io_uring_setup"], edit=edit)
    done = minict("start", "--name", "box")
    # clone3(NULL, 0) reaches the kernel, which finds the size too small.
    assert parse(done.stdout) == {"chroot": "ok", "unshare_newuser": "ok", "clone3": "EINVAL",
                                  "io_uring_setup": "EPERM"}, done.stderr


def test_exec_gets_the_filter_too(minict_dir, minict, box, probe):
    bundle = box(["sleep", "30"])
    install_probe(bundle / "rootfs", probe)
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    proc = subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", "box"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_running(bundle)
        done = minict("exec", "--name", "box", "--", "/usr/local/bin/sysprobe",
                      "io_uring_setup", "keyctl", "getpid", "clone3")
        assert parse(done.stdout) == {"io_uring_setup": "EPERM", "keyctl": "EPERM",
                                      "getpid": "ok", "clone3": "ENOSYS"}, done.stderr
        status = minict("exec", "--name", "box", "--", "cat", "/proc/self/status")
        assert status_fields(status.stdout)["Seccomp_filters"] == "2"
    finally:
        proc.kill()
        proc.wait()


# -- run's --security-opt, and start repeating it ----------------------------------------

@pytest.fixture
def busybox(busybox_layout, minict_dir):
    """The busybox image stored as `busybox:latest`, as if pulled."""
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    return "busybox"


# The first run shows the filter; `start`, with the probe installed, tries a call.
SHOW = ("grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status; "
        "if [ -x /usr/local/bin/sysprobe ]; then sysprobe io_uring_setup uname getpid; fi")


def status_and_probe(stdout: str) -> tuple[dict, dict]:
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in stdout.splitlines()
                                          if ":" in line)}
    return fields, parse(stdout)


@pytest.mark.parametrize("options, seccomp_mode, filters, io_uring, no_new_privs", [
    ([], "2", "2", "EPERM", "0"),
    (["--security-opt", "seccomp=unconfined"], "0", "0", "EFAULT", "0"),
    (["--security-opt", "seccomp:unconfined"], "0", "0", "EFAULT", "0"),
    (["--security-opt", "no-new-privileges"], "2", "2", "EPERM", "1"),
    (["--security-opt", "no-new-privileges=true"], "2", "2", "EPERM", "1"),
    (["--security-opt", "no-new-privileges=false"], "2", "2", "EPERM", "0"),
    (["--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges"],
     "0", "0", "EFAULT", "1"),
])
def test_security_opt_applies_and_start_repeats_it(minict_dir, minict, busybox, probe, options,
                                                   seccomp_mode, filters, io_uring,
                                                   no_new_privs):
    done = minict("run", "--image", busybox, "--name", "c", *options, "--", "sh", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    fields, _ = status_and_probe(done.stdout)
    assert (fields["Seccomp"], fields["Seccomp_filters"]) == (seccomp_mode, filters)
    assert fields["NoNewPrivs"] == no_new_privs
    bundle = minict_dir / "containers" / "c"
    config = json.loads((bundle / "config.json").read_text())
    assert ("seccomp" in config["linux"]) == (seccomp_mode == "2")
    assert config["process"]["noNewPrivileges"] == (no_new_privs == "1")

    install_probe(bundle / "rootfs", probe)
    again = minict("start", "--name", "c")
    assert again.returncode == 0, again.stderr
    fields, calls = status_and_probe(again.stdout)
    assert (fields["Seccomp"], fields["NoNewPrivs"]) == (seccomp_mode, no_new_privs)
    # Unfiltered, io_uring_setup reaches the kernel, which cannot read params at NULL.
    assert calls == {"io_uring_setup": io_uring, "uname": "ok", "getpid": "ok"}


EACCES_UNAME_DOCKER = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"name": "uname", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        # Dropped for a container without CAP_SYS_ADMIN, as docker decides it.
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    ],
}
EACCES_UNAME_OCI = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
}


@pytest.mark.parametrize("profile", [EACCES_UNAME_DOCKER, EACCES_UNAME_OCI],
                         ids=["docker-format", "oci-format"])
def test_a_profile_file_applies(minict_dir, minict, busybox, probe, tmp_path, profile):
    if not X86_64:
        pytest.skip("the profiles name x86_64's architectures")
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    done = minict("run", "--image", busybox, "--name", "c", "--security-opt",
                  f"seccomp={path}", "--", "sh", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    fields, _ = status_and_probe(done.stdout)
    # An allowing default needs no ENOSYS filter for unknown calls.
    assert (fields["Seccomp"], fields["Seccomp_filters"]) == ("2", "1")
    bundle = minict_dir / "containers" / "c"
    config = json.loads((bundle / "config.json").read_text())
    assert config["linux"]["seccomp"] == EACCES_UNAME_OCI

    install_probe(bundle / "rootfs", probe)
    again = minict("start", "--name", "c")
    assert status_and_probe(again.stdout)[1] == {"io_uring_setup": "EFAULT", "uname": "EACCES",
                                                 "getpid": "ok"}, again.stderr


BAD_PROFILES = [
    ("not json {", "is not JSON"),
    ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown seccomp action 'SCMP_ACT_NOPE'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}',
     "unknown seccomp architecture 'SCMP_ARCH_Z80'"),
    (('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": '
     '"SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}'),
     "unknown seccomp operator 'SCMP_CMP_ALMOST'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}',
     "seccomp errnoRet 70000"),
    (('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ERRNO", "errnoRet": -1}]}'), "seccomp errnoRet -1"),
    (('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], '
     '"archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}'),
     "both 'architectures' and 'archMap'"),
    (('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "six"}}]}'), "invalid kernel version"),
    (('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], '
     '"action": "SCMP_ACT_NOTIFY"}]}'), "unknown seccomp action 'SCMP_ACT_NOTIFY'"),
    ('[]', "must be a JSON object"),
]


def one_fatal_line(done, phrase: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and " fatal " in lines[0], done.stderr
    assert phrase in lines[0]


@pytest.mark.unprivileged
@pytest.mark.parametrize("text, phrase", BAD_PROFILES)
def test_a_bad_profile_is_one_fatal_line(minict_dir, minict, busybox, tmp_path, text, phrase):
    path = tmp_path / "bad.json"
    path.write_text(text)
    done = minict("run", "--image", busybox, "--name", "c", "--security-opt",
                  f"seccomp={path}", "--", "true")
    one_fatal_line(done, phrase)
    assert str(path) in done.stderr
    assert not (minict_dir / "containers" / "c").exists()


@pytest.mark.unprivileged
@pytest.mark.parametrize("option, phrase", [
    ("seccomp=/no/such/profile.json", "cannot read seccomp profile /no/such/profile.json"),
    ("seccomp=", "invalid --security-opt 'seccomp='"),
    ("no-new-privileges=maybe", "invalid --security-opt 'no-new-privileges=maybe'"),
    ("apparmor=unconfined", "invalid --security-opt 'apparmor=unconfined'"),
])
def test_a_bad_security_opt_is_one_fatal_line(minict_dir, minict, busybox, option, phrase):
    done = minict("run", "--image", busybox, "--name", "c", "--security-opt", option, "--",
                  "true")
    one_fatal_line(done, phrase)
    assert not (minict_dir / "containers" / "c").exists()


@pytest.mark.parametrize("section, phrase", [
    ({"defaultAction": "SCMP_ACT_KILL_ALL"}, "unknown seccomp action 'SCMP_ACT_KILL_ALL'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_VAX"]},
     "unknown seccomp architecture"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}, "index 6"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_SORT_OF"}]}]}, "unknown seccomp operator"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "EPERM"}, "errnoRet 'EPERM'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]},
     "seccomp flag 'SECCOMP_FILTER_FLAG_NEW_LISTENER' is not supported"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"},
     "listenerPath"),
])
def test_a_config_seccomp_minict_cannot_honour_fails_start(minict, box, section, phrase):
    """Nothing is run, and nothing runs unfiltered."""
    def edit(config):
        config["linux"]["seccomp"] = section

    bundle = box(["touch", "/ran"], edit=edit)
    one_fatal_line(minict("start", "--name", "box"), phrase)
    assert not (bundle / "rootfs" / "ran").exists()


def test_without_the_binding_start_fails_with_how_to_fix_it(minict, box, tmp_path):
    """A `seccomp` module that cannot be imported stands for a missing python3-seccomp."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "seccomp.py").write_text("raise ImportError('python3-seccomp is not installed')\n")
    bundle = box(["touch", "/ran"])
    done = minict("start", "--name", "box", env={"PYTHONPATH": str(shadow)})
    one_fatal_line(done, "install Debian's python3-seccomp")
    assert "Traceback" not in done.stderr
    assert not (bundle / "rootfs" / "ran").exists()


def test_the_generated_bpf_is_cached_in_the_bundle_and_follows_the_config(minict, box):
    bundle = box(["cat", "/proc/self/status"])
    first = minict("start", "--name", "box")
    assert status_fields(first.stdout)["Seccomp_filters"] == "2", first.stderr
    cache = bundle / store.SECCOMP_CACHE_NAME
    stored = json.loads(cache.read_text())
    assert stored["key"]["section"] == json.loads(
        (bundle / "config.json").read_text())["linux"]["seccomp"]
    # A changed section is a changed filter: the cache is made again (an
    # allowing default needs one filter, not two).
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["seccomp"] = EACCES_UNAME_OCI
    (bundle / "config.json").write_text(json.dumps(config))
    again = minict("start", "--name", "box")
    assert status_fields(again.stdout)["Seccomp_filters"] == "1", again.stderr
    assert json.loads(cache.read_text())["key"]["section"] == EACCES_UNAME_OCI


# -- the conversion, without containers -----------------------------------------------------

MINICT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def names_of(section) -> set:
    return {name for rule in section["syscalls"] if not rule.get("args")
            and rule["action"] == "SCMP_ACT_ALLOW" for name in rule["names"]}


@pytest.mark.unprivileged
@pytest.mark.parametrize("machine, architectures, present, absent", [
    ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
     {"arch_prctl", "modify_ldt"}, {"cacheflush", "riscv_flush_icache"}),
    ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], {"cacheflush", "set_tls"},
     {"arch_prctl", "modify_ldt"}),
    ("armv7l", ["SCMP_ARCH_ARM"], {"cacheflush", "arm_fadvise64_64"}, {"arch_prctl"}),
    ("ppc64le", ["SCMP_ARCH_PPC64LE"], {"swapcontext", "sync_file_range2"}, {"cacheflush"}),
    ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"], {"s390_runtime_instr"}, {"cacheflush"}),
    ("riscv64", ["SCMP_ARCH_RISCV64"], {"riscv_flush_icache"}, {"s390_runtime_instr"}),
])
def test_architectures_and_their_rules_follow_the_machine(machine, architectures, present,
                                                           absent):
    section = seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE, MINICT_CAPS, machine, "6.1.0")
    assert section["architectures"] == architectures
    assert present <= names_of(section)
    assert not absent & names_of(section)


@pytest.mark.unprivileged
def test_s390_checks_clone_flags_in_the_second_argument():
    def clone_args(machine):
        section = seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE, MINICT_CAPS, machine, "6.1.0")
        return [rule["args"][0]["index"] for rule in section["syscalls"]
                if rule["names"] == ["clone"]]

    assert clone_args("x86_64") == [0]
    assert clone_args("s390x") == [1]


@pytest.mark.unprivileged
@pytest.mark.parametrize("caps, allowed, refused", [
    (MINICT_CAPS, set(), {"chroot", "mount", "unshare", "reboot", "init_module", "ptrace"}),
    (MINICT_CAPS + ["CAP_SYS_CHROOT"], {"chroot"}, {"mount", "unshare"}),
    (MINICT_CAPS + ["CAP_SYS_ADMIN"], {"mount", "unshare", "setns", "clone", "clone3"},
     {"chroot", "reboot"}),
    (MINICT_CAPS + ["CAP_SYS_BOOT", "CAP_SYS_MODULE", "CAP_SYS_PTRACE"],
     {"reboot", "init_module", "ptrace", "kcmp"}, {"mount", "chroot"}),
])
def test_capabilities_select_rules_as_docker_does(caps, allowed, refused):
    section = seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE, caps, "x86_64", "4.4.0")
    names = names_of(section)
    assert allowed <= names
    assert not refused & names
    # Without CAP_SYS_ADMIN: clone with namespace flags refused, clone3 ENOSYS.
    clone3 = [r for r in section["syscalls"] if r["names"] == ["clone3"]]
    assert bool(clone3) == ("CAP_SYS_ADMIN" not in caps)
    assert all(r["errnoRet"] == 38 for r in clone3)


@pytest.mark.unprivileged
@pytest.mark.parametrize("release, ptrace", [("4.7.10", False), ("4.8.0-1-amd64", True),
                                             ("6.18.0", True), ("3.12-rc5", False)])
def test_min_kernel_decides_ptrace(release, ptrace):
    section = seccomp.to_oci(seccomp_profile.DEFAULT_PROFILE, MINICT_CAPS, "x86_64", release)
    assert ("ptrace" in names_of(section)) == ptrace


@pytest.mark.unprivileged
def test_privileged_and_unconfined_have_no_section_and_the_default_has_docker_s():
    image = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}}
    assert "seccomp" not in spec.generate(image, "n", overrides=spec.Overrides(
        privileged=True))["linux"]
    assert "seccomp" not in spec.generate(image, "n", overrides=spec.Overrides(
        seccomp_unconfined=True))["linux"]
    default = spec.generate(image, "n")
    assert default["linux"]["seccomp"] == seccomp.to_oci(
        seccomp_profile.DEFAULT_PROFILE, default["process"]["capabilities"]["bounding"])
    assert default["process"]["noNewPrivileges"] is False
    # docker: a profile with neither a default action nor rules is no filter.
    assert "seccomp" not in spec.generate(image, "n", overrides=spec.Overrides(
        seccomp_profile={}))["linux"]
