"""One owner per concept: the platform choice, atomic writes, and the names under $MINICT_DIR.

Each of these had several copies with different rules: pull and run chose
an index's image by two tables (an i386 or armv6l host got an image from
pull and none from run), four helpers replaced files by rename, and three
modules built bundle paths.  These tests show that the one rule holds for
every caller, and that no copy comes back.
"""

import ast
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from minict import fsutil, store
from minict.bundle import create as bundle
from minict.cli import listing
from minict.image import mediatypes, pull, reference
from tests.support.images import File, Image, Index, write_layout
from tests.support.procs import run_importing

MINICT = Path(mediatypes.__file__).parent.parent  # the minict package

# `uname -m` -> the platform both pull and run must choose (containerd's table).
MACHINES = {
    "x86_64": "linux/amd64",
    "amd64": "linux/amd64",
    "i386": "linux/386",
    "i686": "linux/386",
    "aarch64": "linux/arm64/v8",
    "arm64": "linux/arm64/v8",
    "armv8l": "linux/arm/v8",
    "armv7l": "linux/arm/v7",
    "armv6l": "linux/arm/v6",
    "armv5tel": "linux/arm/v5",
    "ppc64le": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
    "mips64": "linux/mips64",
    "loongarch64": "linux/loong64",
}
EVERY_PLATFORM = sorted(set(MACHINES.values()))


def _on_machine(monkeypatch, machine: str) -> None:
    real = os.uname()
    fake = types.SimpleNamespace(sysname=real.sysname, nodename=real.nodename,
                                 release=real.release, version=real.version, machine=machine)
    monkeypatch.setattr(os, "uname", lambda: fake)


def _entry(platform: str) -> dict:
    os_name, arch, *variant = platform.split("/")
    spec = {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}
    digest = "sha256:" + format(EVERY_PLATFORM.index(platform) if platform in EVERY_PLATFORM
                                else 99, "064x")
    return {"mediaType": mediatypes.OCI_MANIFEST, "digest": digest, "size": 1, "platform": spec,
            "annotations": {"test.platform": platform}}


@pytest.mark.parametrize("offers", [
    EVERY_PLATFORM,
    # Older variants only: an arm/v7 or v8 host runs v6 and v5 images too.
    ["linux/386", "linux/amd64", "linux/arm/v5", "linux/arm/v6", "linux/arm64/v8"],
], ids=["every platform", "older arm variants"])
@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_pull_and_run_choose_the_same_image_on_every_machine(monkeypatch, machine, offers):
    _on_machine(monkeypatch, machine)
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
             "manifests": [_entry(p) for p in offers]}
    want = MACHINES[machine]
    assert pull.host_platform() == want
    acceptable = [p for p in offers if p == want or (
        want.startswith("linux/arm/v") and p.startswith("linux/arm/v") and p <= want)]
    if not acceptable:
        with pytest.raises(Exception) as by_pull:
            pull.choose_platform(index, pull.host_platform(), "x")
        assert f"no image for platform {want}" in str(by_pull.value)
        with pytest.raises(Exception) as by_run:
            bundle.pick_platform(index)
        assert f"no {want} image" in str(by_run.value)
        return
    by_pull = pull.choose_platform(index, pull.host_platform(), "x")
    by_run = bundle.pick_platform(index)
    assert by_run is by_pull
    assert by_run["annotations"]["test.platform"] == max(acceptable)  # the newest variant first


@pytest.mark.root  # the unpack sets owners and makes device nodes
@pytest.mark.parametrize("machine", ["i386", "armv6l", "armv7l", "s390x"])
def test_run_unpacks_the_image_pull_would_choose(minict_dir, monkeypatch, machine):
    """run (bundle.create) and list-images resolve a stored index as pull does, end to end."""
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    _on_machine(monkeypatch, machine)
    entries = []
    for platform in ("linux/amd64", "linux/386", "linux/arm/v6", "linux/arm/v7", "linux/s390x"):
        os_name, arch, *variant = platform.split("/")
        image = Image([[File("platform", platform.encode())]], architecture=arch)
        entries.append((image, {"os": os_name, "architecture": arch,
                                **({"variant": variant[0]} if variant else {})}))
    index = Index(entries)
    ref = reference.parse("multi:1")
    write_layout(store.image_dir(ref), ref.tag, index)

    chosen = pull.choose_platform(index.manifest, pull.host_platform(), "multi:1")
    image = next(i for i, _ in entries if i.digest == chosen["digest"])
    path = bundle.create(ref, "m")
    assert (path / "rootfs/platform").read_bytes() == MACHINES[machine].encode()
    [row] = listing.image_rows()
    assert row["size"] == len(image.config_bytes) + sum(len(layer.blob) for layer in image.layers)


# -- atomic writes --------------------------------------------------------------------------

# Writes `argv[2]` copies of "new!" over argv[1], stopping (SIGSTOP) just before the rename.
_WRITER = """
import os, signal, sys
from minict import fsutil
rename = os.replace
def stop_then_rename(src, dst):
    os.kill(os.getpid(), signal.SIGSTOP)
    rename(src, dst)
os.replace = stop_then_rename
fsutil.write_json_atomic(sys.argv[1], {"data": "new!" * int(sys.argv[2])}, fsync=True)
"""


def _leftovers(directory: Path, name: str) -> list[str]:
    return [e for e in os.listdir(directory) if e != name]


@pytest.mark.parametrize("size", [1, 1 << 18])
def test_a_writer_killed_between_write_and_rename_leaves_the_old_file(tmp_path, size):
    path = tmp_path / "state.json"
    fsutil.write_json_atomic(path, {"data": "old"}, fsync=False)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(size)],
                              cwd=MINICT.parent)
    try:
        _, status = os.waitpid(writer.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the writer ended before its rename"
        # Stopped with the new file written in full under its temporary name...
        [tmp] = _leftovers(tmp_path, "state.json")
        assert fsutil.read_json(tmp_path / tmp) == {"data": "new!" * size}
        # ...which readers never open: the name holds the old document.
        assert fsutil.read_json(path) == {"data": "old"}
        writer.send_signal(signal.SIGKILL)
        _, status = os.waitpid(writer.pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        writer.returncode = 0  # reaped above: Popen must not wait for it again
        if writer.poll() is None:
            writer.kill()
    assert fsutil.read_json(path) == {"data": "old"}
    # What the kill left is a hidden file of another name, which no reader lists.
    [tmp] = _leftovers(tmp_path, "state.json")
    assert tmp.startswith(".state.json.") and tmp.endswith(".tmp")


def test_a_writer_killed_at_any_moment_leaves_a_whole_file(tmp_path):
    """SIGKILL at random points of a loop of big writes: always one whole document."""
    path = tmp_path / "index.json"
    loop = ("import sys\nfrom minict import fsutil\n"
            "for i in range(10**6):\n"
            "    fsutil.write_atomic(sys.argv[1], bytes([65 + i % 2]) * (4 << 20), fsync=False)\n")
    fsutil.write_atomic(path, b"A" * (4 << 20), fsync=False)
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        writer = subprocess.Popen([sys.executable, "-c", loop, str(path)], cwd=MINICT.parent)
        time.sleep(delay)
        writer.kill()
        writer.wait()
        data = path.read_bytes()
        assert data in (b"A" * (4 << 20), b"B" * (4 << 20))
        assert all(e.startswith(".index.json.") for e in _leftovers(tmp_path, "index.json"))


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "network.json"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        fsutil.write_atomic(path, 12345, fsync=False)  # not bytes: fails after the temp file exists
    assert os.listdir(tmp_path) == ["network.json"] and path.read_text() == "old\n"


def test_write_atomic_mode_and_reader_default(tmp_path):
    path = tmp_path / "f"
    fsutil.write_atomic(path, "x", fsync=True, mode=0o600, sync_dir=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    (tmp_path / "deep").write_text("[" * 200_000)
    (tmp_path / "list").write_text("[]")
    for name in ("absent", "deep", "list"):
        assert fsutil.read_json(tmp_path / name, {"default": 1}) == {"default": 1}


# -- one owner, as a test of the source ----------------------------------------------------

def _string_constants(path: Path):
    """Yield the string constants of `path`'s code (not its docstrings)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.value


def _modules_except(*owners: str):
    return [p for p in sorted(MINICT.rglob("*.py")) if p.name not in owners]


def test_only_store_names_files_under_minict_dir():
    names = {store.COMPLETE_MARK, store.STATE_NAME, store.NETWORK_SETTINGS_NAME,
             store.SECCOMP_CACHE_NAME, store.PARTIAL_PREFIX, store.LEASES_NAME, "containers",
             "images", ".lock", store.LAYOUT_INDEX_NAME, store.LAYOUT_MARKER_NAME,
             store.LAYOUT_BLOBS_NAME, store.LAYOUT_LOCK_NAME, store.LAYOUT_PARTIAL_NAME}
    found = {(p.name, s) for p in _modules_except("store.py") for s in _string_constants(p)
             if s in names}
    assert not found


def test_only_mediatypes_spells_a_media_type():
    found = {(p.name, s) for p in _modules_except("mediatypes.py") for s in _string_constants(p)
             if s.startswith("application/vnd.")}
    assert not found


def _modules_start_imports() -> set[str]:
    """Return the modules `minict start` imports (a missing container: the same imports)."""
    _, imported = run_importing(["-m", "minict", "start", "--name", "no-such-container"],
                                cwd=MINICT.parent,
                                env={**os.environ, "MINICT_DIR": "/nonexistent/minict-test"})
    return imported


def test_start_does_not_import_the_image_side():
    imported = _modules_start_imports()
    assert "minict.runtime.container" in imported
    assert not imported & {"minict.image.mediatypes", "minict.image.pull", "minict.bundle.create",
                           "minict.image.layout"}


def test_start_does_not_import_what_it_only_annotates_or_copies_with():
    """typing, platform and copy cost `start` ~3 ms together (issue 12's start budget)."""
    imported = _modules_start_imports()
    assert "minict.runtime.container" in imported and "minict.bundle.devices" in imported
    assert not imported & {"typing", "platform", "copy"}


def test_a_seccomp_profile_nested_too_deep_is_refused_in_one_line(tmp_path):
    """Files a user hands over are parsed by boundedjson too: no RecursionError traceback."""
    from minict.bundle import seccomp

    profile = tmp_path / "deep.json"
    profile.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(seccomp.SeccompError, match="nested deeper than"):
        seccomp.read_profile(str(profile))


# -- errors: typed, and the stage prefix added in one place ----------------------------

def test_a_step_names_its_failures_once_and_typed_errors_keep_their_type():
    from minict import errors

    with pytest.raises(errors.UnpackError) as caught, errors.stage(errors.UnpackError):
        raise FileNotFoundError(2, "No such file or directory", "/x/config.json")
    assert str(caught.value) == ("Failed to unpack image. Error received: "
                                 "No such file or directory: /x/config.json")
    with pytest.raises(errors.ImageNotFound) as caught, errors.stage(errors.UnpackError):
        raise errors.ImageNotFound("image a:1 not found")
    assert str(caught.value) == "Failed to unpack image. Error received: image a:1 not found"
    # A pull inside run stays a pull; the request's own errors are never prefixed.
    with pytest.raises(errors.RegistryError) as caught, errors.stage(errors.LaunchError):
        raise errors.RegistryError("manifest: not found", 404)
    assert caught.value.status == 404 and str(caught.value).startswith("Failed to pull image.")
    with pytest.raises(errors.ContainerError) as caught, errors.stage(errors.LaunchError):
        raise errors.ContainerError("Container with name x is already running.")
    assert str(caught.value) == "Container with name x is already running."
