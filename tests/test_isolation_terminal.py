"""A container must not reach the caller's kernel keyring.

Real containers, as root.  A small static C probe (tests.support.probes)
tries what busybox cannot: keyctl(2).
"""

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from minict import init, spec
from tests.support.probes import compile_probe, install_probe

pytest_plugins = ["tests.support.bundles"]  # the box and busybox_rootfs fixtures

pytestmark = pytest.mark.root

MINICT = f"{shlex.quote(sys.executable)} -m minict"

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


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
        "kill $!"))
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
    runner = subprocess.Popen([sys.executable, "-m", "minict", "start", "--name", "holder"],
                              env=minict_env(minict_dir), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
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
    finally:
        runner.kill()
        runner.communicate(timeout=30)


def test_no_new_keyring_is_an_annotation_start_repeats():
    image = {"config": {"Cmd": ["sh"]}}
    assert spec.NO_NEW_KEYRING not in spec.generate(image, "box")["annotations"]
    plain = spec.generate(image, "box", overrides=spec.Overrides())
    assert spec.NO_NEW_KEYRING not in plain["annotations"]
    kept = spec.generate(image, "box", overrides=spec.Overrides(no_new_keyring=True))
    assert kept["annotations"][spec.NO_NEW_KEYRING] == "true"
    assert init.NO_NEW_KEYRING == spec.NO_NEW_KEYRING
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
