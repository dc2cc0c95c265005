"""--userns auto: container root is an unprivileged host user; the rootfs keeps its owners.

Real containers, as root.  Every test gets its own /etc/subuid and
/etc/subgid (MINICT_SUBUID, MINICT_SUBGID) and its own allocation record
(MINICT_USERNS_DIR), so the host's real ones are never read or written.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from minict.bundle import usermap
from minict.runtime import subids, userns

pytest_plugins = ["tests.support.bundles"]  # the box fixture

pytestmark = pytest.mark.root

FIRST = 3 << 30  # the test range: 3221225472 .. +2**20 (16 containers)
COUNT = 16 * userns.SIZE


@pytest.fixture(autouse=True)
def subid_files(tmp_path, monkeypatch):
    """Point minict (and the minict subprocesses, which inherit os.environ) at test files."""
    files = {"MINICT_SUBUID": tmp_path / "subuid", "MINICT_SUBGID": tmp_path / "subgid"}
    for variable, path in files.items():
        path.write_text(f"someone:100000:65536\n{subids.USER}:{FIRST}:{COUNT}\n")
        monkeypatch.setenv(variable, str(path))
    monkeypatch.setenv("MINICT_USERNS_DIR", str(tmp_path / "userns-record"))
    return files


@pytest.fixture
def busybox(busybox_layout, minict_dir):
    """The umoci-built busybox image, stored in MINICT_DIR as a pull would leave it."""
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    return "busybox"


def minict_popen(minict_dir, *args):
    return subprocess.Popen([sys.executable, "-m", "minict", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MINICT_DIR=str(minict_dir)))


def config_of(minict_dir, name) -> dict:
    return json.loads((minict_dir / "containers" / name / "config.json").read_text())


def host_range(minict_dir, name) -> tuple[int, int]:
    linux_config = config_of(minict_dir, name)["linux"]
    (uids,), (gids,) = linux_config["uidMappings"], linux_config["gidMappings"]
    assert uids["containerID"] == gids["containerID"] == 0
    assert uids["size"] == gids["size"] == userns.SIZE
    return uids["hostID"], gids["hostID"]


def status_ids(pid) -> tuple[list[int], list[int]]:
    """Return the Uid and Gid lines (real, effective, saved, fs) of host pid `pid`."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = [int(v) for v in value.split()] if key in ("Uid", "Gid") else None
    return fields["Uid"], fields["Gid"]


def children(pid) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def container_pid(minict_dir, name, timeout=10) -> int:
    """Return the container's host pid once state.json has it.

    The command may print before its minict records the pid: state.json is
    written after execve, when the handshake ends.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = json.loads((minict_dir / "containers" / name / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        if "pid" in state or time.monotonic() > deadline:
            return state["pid"]
        time.sleep(0.02)


# -- ids seen from the host ------------------------------------------------------------

def test_processes_and_exec_run_as_the_reserved_host_ids(minict_dir, busybox):
    web = minict_popen(minict_dir, "run", "--image", busybox, "--name", "web", "--userns", "auto",
                       "--", "sh", "-c", "echo up; exec sleep 60")
    try:
        assert web.stdout.readline() == "up\n", web.stderr.read()
        _ids_of_run_and_exec(minict_dir)
    finally:
        web.kill()  # the container dies with it (PDEATHSIG)
        web.communicate(timeout=30)


def _ids_of_run_and_exec(minict_dir):
    uid, gid = host_range(minict_dir, "web")
    assert FIRST <= uid < FIRST + COUNT and FIRST <= gid < FIRST + COUNT
    assert status_ids(container_pid(minict_dir, "web")) == ([uid] * 4, [gid] * 4)

    # exec joins the same user namespace and gets the same host ids, for
    # root and for app (1000:1000) alike; seen from the host while it runs.
    for user, offset in (("root", 0), ("app", 1000)):
        proc = minict_popen(minict_dir, "exec", "--name", "web", "-u", user, "--",
                            "sh", "-c", "id -u; exec sleep 30")
        try:
            assert proc.stdout.readline() == f"{offset}\n"
            (sleeper,) = children(proc.pid)
            assert status_ids(sleeper) == ([uid + offset] * 4, [gid + offset] * 4)
        finally:
            proc.kill()
            proc.communicate(timeout=30)


def test_files_keep_the_images_owners_on_disk(minict, minict_dir, busybox):
    script = "touch /tmp/by-root; mkdir /made-dir; ls -ldn /bin /home/app; echo uid=$(id -u)"
    done = minict("run", "--image", busybox, "--name", "files", "--userns", "auto",
                  "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    # Inside, the image's root-owned files are root's, app's home is app's.
    lines = done.stdout.splitlines()
    assert lines[0].split()[2:4] == ["0", "0"]
    assert lines[1].split()[2:4] == ["1000", "1000"]
    assert lines[2] == "uid=0"
    # Again as app (1000:1000): `start` of the same container as that user.
    rootfs = minict_dir / "containers" / "files" / "rootfs"
    config_path = minict_dir / "containers" / "files" / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["user"] = {"uid": 1000, "gid": 1000}
    config["process"]["args"] = ["sh", "-c", "touch /tmp/by-app"]
    config_path.write_text(json.dumps(config))
    done = minict("start", "--name", "files")
    assert done.returncode == 0, done.stderr

    on_disk = {name: (st.st_uid, st.st_gid) for name, st in (
        (name, os.lstat(rootfs / name)) for name in
        ("tmp/by-root", "made-dir", "tmp/by-app", "bin/busybox", "home/app"))}
    assert on_disk == {"tmp/by-root": (0, 0), "made-dir": (0, 0), "tmp/by-app": (1000, 1000),
                       "bin/busybox": (0, 0), "home/app": (1000, 1000)}


# -- ranges ---------------------------------------------------------------------------------

def test_two_containers_get_disjoint_ranges_and_start_keeps_them(minict, minict_dir, busybox):
    show = ["--", "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map"]
    outputs = {}
    for name in ("one", "two"):
        done = minict("run", "--image", busybox, "--name", name, "--userns", "auto", *show)
        assert done.returncode == 0, done.stderr
        outputs[name] = done.stdout
    (uid1, gid1), (uid2, gid2) = host_range(minict_dir, "one"), host_range(minict_dir, "two")
    assert abs(uid1 - uid2) >= userns.SIZE and abs(gid1 - gid2) >= userns.SIZE
    assert outputs["one"].split() == ["0", str(uid1), "65536", "0", str(gid1), "65536"]
    assert config_of(minict_dir, "one")["annotations"][usermap.ANNOTATION] == "auto"

    again = minict("start", "--name", "one")
    assert again.returncode == 0, again.stderr
    assert again.stdout == outputs["one"]
    assert host_range(minict_dir, "one") == (uid1, gid1)


def test_rm_run_rm_and_prune_free_the_range(minict, minict_dir, busybox):
    def run(name, *extra):
        done = minict("run", "--image", busybox, "--name", name, "--userns", "auto", *extra,
                      "--", "true")
        assert done.returncode == 0, done.stderr

    run("first")
    taken = host_range(minict_dir, "first")
    assert [e["name"] for e in userns.holders()] == ["first"]
    assert minict("rm", "--name", "first").returncode == 0
    assert userns.holders() == []
    run("second")
    assert host_range(minict_dir, "second") == taken  # the freed range is handed out again

    run("gone", "--rm")
    assert [e["name"] for e in userns.holders()] == ["second"]
    assert minict("prune", "--force").returncode == 0
    assert userns.holders() == []


def test_another_minict_dir_never_gets_the_same_range(minict, minict_dir, busybox, tmp_path,
                                                      busybox_layout):
    other = tmp_path / "other-minict"
    shutil.copytree(busybox_layout, other / "images" / "busybox", symlinks=True)
    for directory in (minict_dir, other):
        done = minict("run", "--image", "busybox", "--name", "same", "--userns", "auto",
                      "--", "true", env={"MINICT_DIR": str(directory)})
        assert done.returncode == 0, done.stderr
    assert host_range(minict_dir, "same")[0] != host_range(other, "same")[0]
    # Removing the other directory's container frees only its own range.
    assert minict("rm", "--name", "same", env={"MINICT_DIR": str(other)}).returncode == 0
    assert [(e["minictDir"], e["name"]) for e in userns.holders()] == \
        [(os.path.realpath(minict_dir), "same")]


def test_a_range_whose_container_vanished_is_reclaimed(minict, minict_dir, busybox):
    gone = os.path.realpath(minict_dir / "deleted-by-hand")
    userns.reserve(gone, "ghost")
    done = minict("run", "--image", busybox, "--name", "new", "--userns", "auto", "--", "true")
    assert done.returncode == 0, done.stderr
    assert host_range(minict_dir, "new")[0] == FIRST
    assert [e["name"] for e in userns.holders()] == ["new"]


def test_an_exhausted_range_is_refused(minict, minict_dir, busybox, subid_files):
    for path in subid_files.values():
        path.write_text(f"{subids.USER}:{FIRST}:{userns.SIZE}\n")
    ok = minict("run", "--image", busybox, "--name", "a", "--userns", "auto", "--", "true")
    assert ok.returncode == 0, ok.stderr
    done = minict("run", "--image", busybox, "--name", "b", "--userns", "auto", "--", "true")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and " fatal " in done.stderr
    assert f"every range of 65536 ids that {subid_files['MINICT_SUBUID']} grants minict is " \
           "taken" in done.stderr
    assert not (minict_dir / "containers" / "b").exists()


@pytest.mark.unprivileged
@pytest.mark.parametrize("content", ["", "someone:100000:65536\n", "minict:0:65536\n"])
def test_missing_or_dangerous_entries_are_one_clear_error(minict, minict_dir, busybox,
                                                          subid_files, content):
    subid_files["MINICT_SUBUID"].write_text(content)
    done = minict("run", "--image", busybox, "--name", "c", "--userns", "auto", "--", "true")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    expected = "id 0 (host root)" if content.startswith("minict") else "run 'make install'"
    assert expected in done.stderr
    assert minict("list-containers").stdout.strip() == "[]"
    assert userns.holders() == []


@pytest.mark.unprivileged
def test_the_subuid_file_missing_altogether(minict, busybox, subid_files):
    subid_files["MINICT_SUBGID"].unlink()
    done = minict("run", "--image", busybox, "--name", "c", "--userns", "auto", "--", "true")
    assert done.returncode == 1
    assert f"{subid_files['MINICT_SUBGID']} grants no ids to the user 'minict'" in done.stderr


@pytest.mark.unprivileged
def test_old_kernels_are_refused_by_name():
    with pytest.raises(Exception, match="Linux 5.11.0-1-amd64 lacks"):
        userns.check_kernel("5.11.0-1-amd64")
    userns.check_kernel("5.12.0")
    userns.check_kernel("6.18.0-rc1")


# -- what container root can do ----------------------------------------------------------

SECRET = "host root's secret\n"


@pytest.mark.parametrize("mode", ["identity", "auto"])
def test_container_root_cannot_use_host_root_files_bound_in(minict, minict_dir, box, tmp_path,
                                                            mode):
    """A root-only host file and a root-owned host directory, bound in (as a volume would be).

    With the identity map, container root is host uid 0 and reads and writes
    them; with auto it is an unprivileged host user and can do neither.
    """
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)

    def edit(config):
        config["mounts"] += [
            {"destination": "/secret", "type": "bind", "source": str(secret), "options": ["bind"]},
            {"destination": "/shared", "type": "bind", "source": str(shared), "options": ["bind"]}]
        if mode == "auto":
            usermap.configure(config, "auto", userns.reserve(minict_dir, "probe"))

    box(["sh", "-c", "cat /secret; touch /shared/planted && echo planted; true"], name="probe",
        edit=edit)
    done = minict("start", "--name", "probe")
    assert done.returncode == 0, done.stderr
    if mode == "identity":
        assert done.stdout == SECRET + "planted\n"
        assert (shared / "planted").exists()
    else:
        assert done.stdout == ""
        assert "Permission denied" in done.stderr
        assert not (shared / "planted").exists()


def test_host_devices_and_bundle_files_still_work(minict, minict_dir, busybox):
    """Binds of host device nodes, /sys, and (with --network none) the bundle's hosts file."""
    script = ("echo x > /dev/null && head -c 4 /dev/zero | wc -c; cat /sys/class/net/lo/mtu; "
              "grep -c localhost /etc/hosts; test -w /dev/pts/ptmx && echo pts; "
              "mkdir -p /work && cd /work && pwd")
    done = minict("run", "--image", busybox, "--name", "dev", "--userns", "auto",
                  "--network", "none", "-w", "/new", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4\n65536\n2\npts\n/work\n"
    assert (minict_dir / "containers" / "dev" / "rootfs" / "new").stat().st_uid == 0


def test_identity_stays_the_default_and_host_shares_the_hosts_user_namespace(minict, busybox):
    show = ["--", "sh", "-c", "cat /proc/self/uid_map; readlink /proc/self/ns/user"]
    default = minict("run", "--image", busybox, "--name", "d", *show)
    host = minict("run", "--image", busybox, "--name", "h", "--userns", "host", *show)
    assert default.returncode == 0 and host.returncode == 0, default.stderr + host.stderr
    ours = os.readlink("/proc/self/ns/user")
    assert default.stdout.split() == ["0", "0", "4294967295", default.stdout.split()[-1]]
    assert default.stdout.split()[-1] != ours
    assert host.stdout.split()[-1] == ours
    assert userns.holders() == []


# -- make install ---------------------------------------------------------------------------

@pytest.mark.unprivileged
def test_install_adds_one_free_range_once(subid_files, tmp_path, monkeypatch):
    uid_file, gid_file = subid_files["MINICT_SUBUID"], subid_files["MINICT_SUBGID"]
    # podman's suggested grant for `containers` takes the top half already.
    uid_file.write_text("alice:100000:65536\ncontainers:2147483647:2147483648\n")
    gid_file.write_text("alice:100000:65536\n")
    monkeypatch.setattr(subids, "LOGIN_DEFS", str(tmp_path / "no-login.defs"))
    subids.add_entries()
    (first, count), = subids.ranges_of(str(uid_file))
    assert subids.ranges_of(str(gid_file)) == [(first, count)]
    assert count == subids.INSTALL_COUNT
    assert first > subids.SHADOW_WINDOW_END and first % 65536 == 0
    assert first + count <= 2147483647  # below podman's grant
    before = uid_file.read_text(), gid_file.read_text()
    assert "already has" in subids.add_entries()
    assert (uid_file.read_text(), gid_file.read_text()) == before
    assert uid_file.read_text().startswith("alice:100000:65536\ncontainers:")


@pytest.mark.unprivileged
def test_install_prefers_the_top_half_when_it_is_free(subid_files):
    for path in subid_files.values():
        path.write_text("")
    subids.add_entries()
    assert subids.ranges_of(str(subid_files["MINICT_SUBUID"])) == [(1 << 31, 1 << 30)]


@pytest.mark.unprivileged
def test_record_survives_in_its_own_directory_with_a_lock(minict_dir):
    uid, gid, size = userns.reserve(minict_dir, "x")
    with open(os.path.join(userns.record_dir(), "allocations.json")) as f:
        record = json.load(f)
    assert record == {"allocations": [{"minictDir": os.path.realpath(minict_dir), "name": "x",
                                       "uid": uid, "gid": gid, "size": size}]}
    started = time.monotonic()
    userns.release(minict_dir, "x")
    assert time.monotonic() - started < 1
    assert userns.holders() == []


def test_start_re_records_a_lost_range_and_refuses_a_taken_one(minict, minict_dir, busybox):
    done = minict("run", "--image", busybox, "--name", "kept", "--userns", "auto", "--", "true")
    assert done.returncode == 0, done.stderr
    uid, gid = host_range(minict_dir, "kept")
    record = os.path.join(userns.record_dir(), "allocations.json")
    os.unlink(record)  # the record is lost
    assert minict("start", "--name", "kept").returncode == 0
    assert [(e["name"], e["uid"], e["gid"]) for e in userns.holders()] == [("kept", uid, gid)]

    # Lost again, and meanwhile another container was given the same ids.
    os.unlink(record)
    other = minict("run", "--image", busybox, "--name", "other", "--userns", "auto", "--", "true")
    assert other.returncode == 0, other.stderr
    assert host_range(minict_dir, "other") == (uid, gid)
    done = minict("start", "--name", "kept")
    assert done.returncode == 1
    assert f"the host ids of kept ({uid}...) are held by container other" in done.stderr
