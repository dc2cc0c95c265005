"""Hostile layers and images, deep trees, leftovers and the state directory's modes.

Each test is a finding of the [hardening] issue, run end to end with real
containers where one is needed:

- bomb layers: a few hundred KB of gzip declaring a 400 MB pax header or a
  100 MB GNU long name is refused in one short line, quickly, in little memory;
- a tree 5,000 directories deep (made by a container) or as deep as a
  layer's PATH_MAX names allow is removed by `rm` under `ulimit -n 256`;
  a bind mount of a host directory inside is never descended into;
- image text with rich markup and terminal escapes is listed escaped;
- a killed run's half-made bundle and a killed pull's partial download are
  pruned (at an hour's age, or at once with --force, never while locked);
- a 128-character container name runs, its host name cut to 63 bytes;
- $MINICT_DIR is made 0700, and an open one gets a warning.
"""

import errno
import fcntl
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
import zlib

import pytest

from minict import rmtree
from tests.support.images import Dir, File, Image, Layer, write_layout
from tests.support.mounts import mounts_under

pytestmark = pytest.mark.root

RSS_LIMIT_KB = 200 * 1024
ESC = "\x1b"


def minict_env(minict_dir) -> dict:
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    env.pop("MINICT_LOG_LEVEL", None)
    return env


# Measures its child with wait4: that child's own peak RSS.  It runs as a
# small process of its own because ru_maxrss counts a forked child's pages
# from before its exec, which would be the (large) test process's.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(minict_dir, *args, timeout=60):
    """Run minict; return (exit status, stdout, stderr, peak RSS in KB, seconds).

    A run past `timeout` is killed (with its measuring parent) and reported
    with the timeout as its time, so the caller's time check fails.
    """
    rss_file = minict_dir.parent / "rss"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEASURE, str(rss_file), sys.executable, "-m", "minict", *args],
        env=minict_env(minict_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return proc.returncode, out, err, 0, float(timeout)
    return proc.returncode, out, err, int(rss_file.read_text()), time.monotonic() - started


# -- bomb layers ---------------------------------------------------------------------


def bomb_layer(kind: bytes, size: int) -> bytes:
    """Return a gzip tar whose first header is a `kind` special header declaring `size` bytes.

    The body is there too (compressed ~1000:1, so the blob stays small): a
    pax record of that length, or a long name of 'a's.  A file follows.
    """
    special = tarfile.TarInfo("././@PaxHeader" if kind == b"x" else "././@LongLink")
    special.type, special.size = kind, size
    fmt = tarfile.USTAR_FORMAT if kind == b"x" else tarfile.GNU_FORMAT
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(special.tobuf(format=fmt))]
    head = f"{size} path=".encode() if kind == b"x" else b""
    parts.append(z.compress(head))
    chunk, left = b"a" * (1 << 20), size - len(head) - 1
    while left:
        parts.append(z.compress(chunk[:min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(z.compress(b"\n" if kind == b"x" else b"\0"))
    parts.append(z.compress(bytes(-size % 512)))
    parts.append(z.compress(tarfile.TarInfo("f").tobuf(format=tarfile.USTAR_FORMAT)))
    parts.append(z.compress(bytes(1024)))
    parts.append(z.flush())
    return b"".join(parts)


@pytest.mark.unprivileged
@pytest.mark.parametrize("kind, size, what", [
    (b"x", 400_000_000, "pax extended header of 400000000 bytes"),
    (b"L", 100_000_000, "GNU long name of 100000000 bytes"),
])
def test_a_special_header_bomb_is_refused_quickly_in_little_memory(minict_dir, kind, size, what):
    blob = bomb_layer(kind, size)
    assert len(blob) < 500_000  # a small download (its diff_id is never reached)
    write_layout(minict_dir / "images" / "bomb", "latest",
                 Image([Layer(b"", blob=blob)], config={"Cmd": ["/f"]}))

    status, _, err, rss_kb, seconds = run_measured(
        minict_dir, "run", "--image", "bomb", "--name", "bomb")

    assert status == 1, err
    lines = [line for line in err.splitlines() if " fatal " in line]
    assert len(lines) == 1 and len(err) < 600, err
    assert f"entry '././@{'PaxHeader' if kind == b'x' else 'LongLink'}'" in lines[0]
    assert f"{what} is larger than 1048576 bytes" in lines[0]
    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} KB"
    assert seconds < 15, f"took {seconds:.1f}s"
    assert not os.listdir(minict_dir / "containers")  # nothing half-made stays


@pytest.mark.unprivileged
def test_a_long_name_under_one_mib_is_refused_past_path_max_with_a_cut_name(minict_dir):
    name = "n" * 300_000
    image = Image([[File(name, b"x")]], config={"Cmd": ["/f"]})
    write_layout(minict_dir / "images" / "longname", "latest", image)
    status, _, err, _, _ = run_measured(minict_dir, "run", "--image", "longname", "--name", "ln")
    assert status == 1
    assert len(err) < 600, err
    assert "(300000 bytes): refused: its name is 300000 bytes long, more than PATH_MAX" in err
    assert "…" in err


def long_names_layer(count: int, kind: bytes) -> bytes:
    """Return a gzip tar of `count` entries of type `kind` whose names are ~4,000 bytes each.

    About 27 bytes of gzip per entry, and each name is kilobytes in memory
    if the unpacker keeps it (a pax header carries it, as Go and tarfile write).
    """
    parents = "/".join(["p" * 250] * 15)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, buf = [], io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"{parents}/{i:0250d}")
            info.type = kind
            tar.addfile(info)
            if buf.tell() > 1 << 20:
                parts.append(z.compress(buf.getvalue()))
                buf.seek(0)
                buf.truncate()
    parts.append(z.compress(buf.getvalue()))
    parts.append(z.flush())
    return b"".join(parts)


@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE])
def test_many_entries_with_names_near_path_max_fit_in_little_memory(minict_dir, kind):
    blob = long_names_layer(50_000, kind)
    assert len(blob) < 2_000_000
    write_layout(minict_dir / "images" / "names", "latest",
                 Image([Layer(b"", blob=blob)], config={"Cmd": ["/nonexistent"]}))

    _, _, err, rss_kb, _ = run_measured(minict_dir, "run", "--image", "names", "--name", "n",
                                        timeout=120)

    assert rss_kb < RSS_LIMIT_KB, f"peak RSS {rss_kb} KB"
    if kind == tarfile.DIRTYPE:  # 200 MB of directory names to keep until the layer's end
        assert "refused: the layer's directories need more than 67108864 bytes" in err
        assert len([line for line in err.splitlines() if " fatal " in line]) == 1
    else:  # applied (the diff_id does not match the stand-in, which is checked after)
        assert "its content is sha256:" in err


@pytest.mark.unprivileged
@pytest.mark.parametrize("pax, message", [
    ({"mtime": "9" * 30}, "pax record mtime is out of range"),
    ({"uid": "-1"}, "pax record uid is not a number from 0 to 4294967294"),
    ({"size": "-1"}, "pax record size is not a number"),
    ({"gid": "1" * 5000}, "pax record gid is not a number"),
])
def test_pax_numbers_the_system_calls_cannot_take_are_one_line_errors(tmp_path, pax, message):
    from minict.errors import UnpackError
    from tests.support.layers import unpack_layers

    with pytest.raises(UnpackError) as refused:
        unpack_layers(tmp_path / "rootfs", [[File("f", b"x", pax=pax)]])
    assert message in refused.value.message


# -- deep trees ------------------------------------------------------------------------


@pytest.fixture
def busybox(busybox_layout, minict_dir):
    """The busybox image stored as `busybox:latest`, as if pulled."""
    shutil.copytree(busybox_layout, minict_dir / "images" / "busybox", symlinks=True)
    return "busybox"


@pytest.fixture(autouse=True)
def _no_deep_tree_left(tmp_path):
    """Remove what a failed test left: pytest's own cleanup recurses, and dies on deep trees."""
    yield
    if not mounts_under(str(tmp_path)):
        rmtree.remove_tree(tmp_path)


def rm_with_few_descriptors(minict_dir, name):
    """`minict rm --name NAME` with at most 256 open descriptors."""
    return subprocess.run(
        ["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh", sys.executable, "-m", "minict",
         "rm", "--name", name],
        env=minict_env(minict_dir), capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False)


def test_a_tree_5000_deep_made_by_the_container_is_removed_with_256_descriptors(
        minict, minict_dir, busybox):
    # 1,000 levels at a time (2,000 bytes, within PATH_MAX), each relative to
    # the last: `cd -P` changes directory by that relative path.
    script = ('cd /tmp; p=$(printf "d/%.0s" $(seq 1000)); '
              "for i in 1 2 3 4 5; do mkdir -p $p && cd -P $p || exit 1; done; touch bottom")
    done = minict("run", "--image", busybox, "--name", "deep", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert (minict_dir / "containers/deep/rootfs/tmp" / "/".join(["d"] * 1000)).is_dir()

    removed = rm_with_few_descriptors(minict_dir, "deep")

    assert removed.returncode == 0, removed.stderr
    assert os.listdir(minict_dir / "containers") == []


def test_a_tree_as_deep_as_a_layer_can_name_is_removed_with_256_descriptors(minict, minict_dir):
    depth = 2040  # "d/" * 2040 is 4080 bytes: the deepest a name within PATH_MAX reaches
    entries = [Dir("/".join(["d"] * i)) for i in range(1, depth + 1)]
    entries.append(File("/".join(["d"] * depth + ["f"]), b"bottom"))
    write_layout(minict_dir / "images" / "deep", "latest", Image([entries], config={"Cmd": ["/f"]}))
    done = minict("run", "--image", "deep", "--name", "layered")
    assert (minict_dir / "containers" / "layered" / "rootfs" / "d").is_dir(), done.stderr

    removed = rm_with_few_descriptors(minict_dir, "layered")

    assert removed.returncode == 0, removed.stderr
    assert os.listdir(minict_dir / "containers") == []


@pytest.fixture
def canary(tmp_path):
    """A host directory with a file that no removal may touch."""
    path = tmp_path / "canary"
    path.mkdir()
    (path / "keep").write_text("host data\n")
    yield path
    assert (path / "keep").read_text() == "host data\n"


def bind(source, target):
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


@pytest.mark.parametrize("depth", [1, 40])  # 40: past the depth where directories move up
def test_a_bind_mount_of_the_same_file_system_inside_a_tree_is_never_entered(
        tmp_path, canary, depth):
    # st_dev cannot tell this mount from the tree: the mount id does.
    top = tmp_path / "top"
    parent = top / "/".join(["a"] * depth)
    parent.mkdir(parents=True)
    for level in range(depth + 1):
        (top / "/".join(["a"] * level) / "link").symlink_to(canary)
        (top / "/".join(["a"] * level) / "file").write_text("x")
    (parent / "mnt").mkdir()
    bind(canary, parent / "mnt")
    parent_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as refused:
            rmtree.remove_at(parent_fd, "top")
        assert refused.value.errno == errno.EXDEV
    finally:
        os.close(parent_fd)
        for point in mounts_under(str(top)):  # moved up along with its directory, maybe
            subprocess.run(["umount", point], check=True)
    assert os.listdir(canary) == ["keep"]
    rmtree.remove_tree(top)  # once nothing is mounted, all of it goes
    assert not top.exists()


def test_rm_of_a_container_with_a_leaked_bind_mount_spares_the_host(
        minict, minict_dir, busybox, canary):
    done = minict("run", "--image", busybox, "--name", "leak", "--", "sh", "-c",
                  f"mkdir -p /a/b/c/{'d/' * 300}m")  # deeper than 256 descriptors reach
    assert done.returncode == 0, done.stderr
    rootfs = minict_dir / "containers" / "leak" / "rootfs"
    mountpoint = rootfs / "a" / "b" / "c" / "/".join(["d"] * 300) / "m"
    bind(canary, mountpoint)
    try:
        removed = rm_with_few_descriptors(minict_dir, "leak")
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", str(mountpoint)], check=True)
    assert removed.returncode == 0, removed.stderr
    assert os.listdir(minict_dir / "containers") == []


# -- image text in listings and log lines --------------------------------------------

HOSTILE = ["[/x]", "[bold]loud", "\x1b]0;pwned\x07", "\x1b[2J", "\u202eevil"]


def test_markup_and_escapes_from_an_image_are_listed_escaped(minict, minict_dir):
    image = Image([[File("etc/hostname", b"x\n")]],
                  config={"Cmd": ["/nonexistent", *HOSTILE],
                          "Labels": {"note": "".join(HOSTILE), "[/x]": "\x1b[2J"}},
                  extra={"created": "[/x]\x1b[2J\u202e", "architecture": "arm\x1b[2J[/x]"})
    write_layout(minict_dir / "images" / "hostile", "latest", image)
    run = minict("run", "--image", "hostile", "--name", "h")
    assert (minict_dir / "containers" / "h").is_dir(), run.stderr
    assert "\\x1b[2J" in run.stderr  # the architecture warning quotes it, escaped

    images = minict("list-images", "--format", "table")
    containers = minict("list-containers", "--format", "table")
    inspect = minict("inspect", "--name", "h")

    for done in (run, images, containers, inspect):
        assert "Traceback" not in done.stderr, done.stderr
        assert ESC not in done.stdout + done.stderr
        assert "\u202e" not in done.stdout + done.stderr
    assert images.returncode == 0 and containers.returncode == 0
    assert "[/x]\\x1b[2J\\u202e" in images.stdout
    assert "/nonexistent '[/x]' '[bold]loud' '\\x1b]…" in containers.stdout  # cut at 40


@pytest.mark.unprivileged
def test_printable_escapes_controls_bidi_and_separators_only():
    from minict import text

    shown = text.printable("ok é ü\t\n\x1b[2J\x07\x7f\x9b\u202e\u2066\u2028 [/x]")
    assert shown == "ok é ü\\x09\\x0a\\x1b[2J\\x07\\x7f\\x9b\\u202e\\u2066\\u2028 [/x]"
    assert text.line("a" * 10_000) == "a" * 4095 + "…"


# -- leftovers of killed runs and pulls ------------------------------------------------


def many_files_image():
    """An image whose unpack takes a while: 30,000 small files."""
    entries = [Dir("data")] + [File(f"data/{i}", b"%d\n" % i) for i in range(30_000)]
    return Image([entries], config={"Cmd": ["/nonexistent"]}, compression=None)


def set_age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def prune(minict, *options):
    return minict("prune", *options, input="y\n")


def test_a_killed_runs_partial_bundle_is_pruned_by_age_or_force(minict, minict_dir):
    write_layout(minict_dir / "images" / "big", "latest", many_files_image())
    proc = subprocess.Popen([sys.executable, "-m", "minict", "run", "--image", "big",
                             "--name", "killed"], env=minict_env(minict_dir),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = minict_dir / "containers" / ".partial-killed"
    deadline = time.monotonic() + 30
    while not (partial / "rootfs" / "data").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the unpack did not start"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_dir()

    young = prune(minict)
    assert young.returncode == 0, young.stderr
    assert partial.is_dir()  # younger than an hour: kept without --force

    set_age(partial, 2 * 3600)
    old = prune(minict)
    assert old.returncode == 0, old.stderr
    assert "Deleted partial bundle: killed" in old.stdout
    assert os.listdir(minict_dir / "containers") == []


@pytest.mark.unprivileged
def test_prune_force_takes_young_leftovers_but_never_locked_ones(minict, minict_dir, monkeypatch):
    from minict.runtime import state as states

    containers = minict_dir / "containers"
    partial_dl = minict_dir / "images" / "app" / ".partial"
    write_layout(minict_dir / "images" / "app", "v1", Image([[File("a", b"a")]]))
    partial_dl.mkdir()
    for name in ("young", "building"):
        (containers / f".partial-{name}" / "rootfs" / "etc").mkdir(parents=True)
    for hex_name in ("a" * 64, "b" * 64, "c" * 64):
        (partial_dl / hex_name).write_bytes(b"some of a blob")
    set_age(partial_dl / ("a" * 64), 2 * 3600)

    # A run still building `building` holds its lock; a pull writing blob c holds c's flock.
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    lock = states.take_lock("building", wait=False)
    writer = os.open(partial_dl / ("c" * 64), os.O_RDWR)
    fcntl.flock(writer, fcntl.LOCK_EX)
    try:
        plain = prune(minict)
        assert plain.returncode == 0, plain.stderr
        assert f"Deleted partial download: sha256:{'a' * 64}" in plain.stdout
        assert sorted(os.listdir(partial_dl)) == ["b" * 64, "c" * 64]
        assert sorted(os.listdir(containers)) == [".building.lock", ".partial-building",
                                                  ".partial-young"]

        forced = minict("prune", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "Deleted partial bundle: young" in forced.stdout
        assert f"Deleted partial download: sha256:{'b' * 64}" in forced.stdout
        assert os.listdir(partial_dl) == ["c" * 64]
        assert sorted(os.listdir(containers)) == [".building.lock", ".partial-building"]
    finally:
        os.close(writer)
        states.release_lock("building", lock)


# -- host names and the state directory's modes ----------------------------------------


def test_a_128_character_name_runs_with_its_first_63_bytes_as_host_name(minict, busybox):
    name = "c" + "0123456789abcdef" * 8
    name = name[:128]
    done = minict("run", "--image", busybox, "--name", name, "--rm", "--", "hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout == name[:63] + "\n"

    explicit = minict("run", "--image", busybox, "--name", "h65", "--hostname", "h" * 65,
                      "--", "hostname")
    assert explicit.returncode == 1
    assert f"host name '{'h' * 65}' is longer than 64 bytes" in explicit.stderr
    assert len([line for line in explicit.stderr.splitlines() if " fatal " in line]) == 1


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.unprivileged
def test_a_new_minict_dir_is_private_and_so_are_pulled_blobs(busybox_image, tmp_path, minict):
    state = tmp_path / "new" / "state"
    done = minict("pull", "--image", busybox_image, env={"MINICT_DIR": str(state)})
    assert done.returncode == 0, done.stderr
    assert "readable" not in done.stderr
    assert [mode(p) for p in (state, state / "images", state / "containers")] == [0o700] * 3
    layout = next(p for p, _, files in os.walk(state / "images") if "oci-layout" in files)
    blobs = os.path.join(layout, "blobs", "sha256")
    assert {mode(os.path.join(blobs, b)) for b in os.listdir(blobs)} == {0o600}
    assert mode(os.path.join(layout, "index.json")) == 0o600


@pytest.mark.unprivileged
def test_an_existing_open_minict_dir_is_kept_with_one_warning(minict, tmp_path):
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o755)
    done = minict("run", "--image", "missing:latest", "--name", "x",
                  env={"MINICT_DIR": str(state)})
    assert done.returncode == 1
    warnings = [line for line in done.stderr.splitlines() if " warn " in line]
    assert len(warnings) == 1 and "readable or searchable by every user (mode 0755)" in warnings[0]
    assert mode(state) == 0o755  # the owner's choice stays
    assert mode(state / "images") == 0o700 and mode(state / "containers") == 0o700
