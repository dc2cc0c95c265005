"""`minict pull` against a real registry: what it stores, what it refuses, how it fails."""

import json
import os
import pty
import shutil
import subprocess
import sys

import pytest

from minict.image.layout import REF_NAME, SOURCE_DIGEST, SOURCE_PLATFORM
from tests.support import ci
from tests.support.images import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Dir,
    File,
    Image,
    Index,
    Layer,
    host_platform,
    push,
    sha256,
)
from tests.support.procs import read_terminal, run_importing
from tests.support.registry import free_port

FATAL = "fatal Failed to pull image. Error received: "


def small_image(tag_text: str, *, media="oci", base=None, **kw) -> Image:
    """An image with a shared base layer (if given) and one layer of its own."""
    own = [Dir("etc"), File("etc/which", tag_text.encode())]
    layers = ([base] if base is not None else []) + [own]
    return Image(layers, config={"Cmd": ["sh"]}, media=media, **kw)


def layout_dir(minict_dir, repository):
    return minict_dir / "images" / repository


def index_of(minict_dir, repository) -> dict:
    return json.loads((layout_dir(minict_dir, repository) / "index.json").read_text())


def stored_manifest(minict_dir, repository, tag) -> tuple[dict, dict]:
    """Return (index descriptor, manifest) stored for `tag`."""
    for d in index_of(minict_dir, repository)["manifests"]:
        if d["annotations"][REF_NAME] == tag:
            blob = layout_dir(minict_dir, repository) / "blobs/sha256" / d["digest"][7:]
            data = blob.read_bytes()
            assert sha256(data) == d["digest"] and len(data) == d["size"]
            return d, json.loads(data)
    raise AssertionError(f"{tag} not in index.json")


def blob_names(minict_dir, repository) -> set[str]:
    return {"sha256:" + p.name for p in (layout_dir(minict_dir, repository) / "blobs/sha256").iterdir()}


def list_images(minict) -> list[str]:
    done = minict("list-images")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ok(done):
    assert done.returncode == 0, done.stderr
    assert done.stderr.rstrip().endswith("info Image pulled successfully."), done.stderr
    return done


def fails(done, *words):
    assert done.returncode == 1, done.stderr
    # One fatal line, last; progress lines of blobs that finished may come before it.
    lines = done.stderr.strip().splitlines()
    assert FATAL in lines[-1] and sum(" fatal " in line for line in lines) == 1, done.stderr
    for word in words:
        assert word in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr
    return lines[-1]


def test_oci_image_is_stored_as_pushed(registry, minict, minict_dir):
    image = small_image("oci")
    push(registry.url, registry.repo("test/app"), "latest", image)
    done = ok(minict("pull", "--image", registry.ref("test/app")))
    for digest in [*(layer.digest for layer in image.layers)]:
        assert f"Copying blob {digest[7:19]} done" in done.stderr
    assert f"Copying config {image.config_digest[7:19]} done" in done.stderr

    repo = registry.ref("test/app")
    descriptor, _ = stored_manifest(minict_dir, repo, "latest")
    assert descriptor["digest"] == image.digest  # OCI bytes are kept as they are
    assert descriptor["annotations"][SOURCE_DIGEST] == image.digest
    assert blob_names(minict_dir, repo) == {image.digest, *image.blobs}
    for digest, data in image.blobs.items():
        assert (layout_dir(minict_dir, repo) / "blobs/sha256" / digest[7:]).read_bytes() == data
    assert json.loads((layout_dir(minict_dir, repo) / "oci-layout").read_text()) == \
        {"imageLayoutVersion": "1.0.0"}
    assert list_images(minict) == [f"{repo}:latest"]
    partial = layout_dir(minict_dir, repo) / ".partial"
    assert not partial.exists() or not any(partial.iterdir())


def test_docker_image_is_converted_to_oci(registry, minict, minict_dir):
    image = small_image("docker", media="docker", compression="gzip")
    push(registry.url, registry.repo("team/app"), "v1", image)
    ok(minict("pull", "--image", registry.ref("team/app:v1")))
    descriptor, manifest = stored_manifest(minict_dir, registry.ref("team/app"), "v1")
    assert descriptor["mediaType"] == OCI_MANIFEST
    assert descriptor["digest"] != image.digest
    assert descriptor["annotations"][SOURCE_DIGEST] == image.digest
    assert manifest["mediaType"] == OCI_MANIFEST
    # The config bytes are kept, so its digest is the Docker one.
    assert manifest["config"] == {"mediaType": OCI_CONFIG, "digest": image.config_digest,
                                  "size": len(image.config_bytes)}
    assert manifest["layers"] == [{"mediaType": OCI_LAYER["gzip"], "digest": layer.digest,
                                   "size": len(layer.blob)} for layer in image.layers]


def other_platform() -> dict:
    host = host_platform()
    return {"os": "linux", "architecture": "arm64" if host["architecture"] != "arm64" else "amd64"}


def two_platform_index(media="oci"):
    host, other = host_platform(), other_platform()
    mine = small_image("host", media=media, architecture=host["architecture"])
    theirs = small_image("other", media=media, architecture=other["architecture"])
    attestation = small_image("attestation", media=media)
    index = Index([(attestation, {"os": "unknown", "architecture": "unknown"}),
                   (theirs, other), (mine, host)], media=media)
    return index, mine, theirs


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_index_gives_the_host_platform(registry, minict, minict_dir, media):
    index, mine, _ = two_platform_index(media)
    push(registry.url, registry.repo("test/multi"), "latest", index)
    ok(minict("pull", "--image", registry.ref("test/multi")))
    descriptor, manifest = stored_manifest(minict_dir, registry.ref("test/multi"), "latest")
    assert manifest["config"]["digest"] == mine.config_digest
    assert descriptor["annotations"][SOURCE_DIGEST] == index.digest
    if media == "oci":
        assert descriptor["digest"] == mine.digest


def test_platform_option_and_no_match(registry, minict, minict_dir):
    index, _, theirs = two_platform_index()
    push(registry.url, registry.repo("test/multi"), "latest", index)
    other = other_platform()
    ok(minict("pull", "--image", registry.ref("test/multi"),
              "--platform", f"linux/{other['architecture']}"))
    descriptor, manifest = stored_manifest(minict_dir, registry.ref("test/multi"), "latest")
    assert manifest["config"]["digest"] == theirs.config_digest
    assert descriptor["annotations"][SOURCE_PLATFORM].startswith(f"linux/{other['architecture']}")

    line = fails(minict("pull", "--image", registry.ref("test/multi"),
                        "--platform", "linux/riscv64"), "no image for platform linux/riscv64")
    assert "linux/arm64/v8" in line and "linux/amd64" in line and "unknown" not in line
    fails(minict("pull", "--image", registry.ref("test/multi"), "--platform", "linux"),
          "invalid platform")


@pytest.mark.own_registry  # it stops the registry
def test_pull_by_digest(registry, minict, minict_dir):
    image = small_image("by digest", media="docker")
    digest = push(registry.url, registry.repo("test/app"), "latest", image)
    ref = registry.ref(f"test/app@{digest}")
    ok(minict("pull", "--image", ref))
    assert list_images(minict) == [ref]
    descriptor, _ = stored_manifest(minict_dir, registry.ref("test/app"), digest)
    assert descriptor["annotations"][SOURCE_DIGEST] == digest
    unknown = "sha256:" + "0" * 64
    fails(minict("pull", "--image", registry.ref(f"test/app@{unknown}")), "manifest unknown")
    # Content named by digest cannot change: pulled once, it needs no registry again.
    registry.stop()
    ok(minict("pull", "--image", ref))


def test_two_tags_share_blobs_and_a_tag_moves(registry, minict, minict_dir):
    base = [Dir("usr"), File("usr/base", b"shared base layer")]
    one, two = small_image("one", base=base), small_image("two", base=base)
    push(registry.url, registry.repo("test/app"), "1", one)
    push(registry.url, registry.repo("test/app"), "2", two)
    repo = registry.ref("test/app")
    ok(minict("pull", "--image", f"{repo}:1"))
    done = ok(minict("pull", "--image", f"{repo}:2"))
    shared = one.layers[0].digest
    assert f"Copying blob {shared[7:19]} skipped: already exists" in done.stderr
    assert list_images(minict) == [f"{repo}:1", f"{repo}:2"]
    assert blob_names(minict_dir, repo) == {one.digest, two.digest, *one.blobs, *two.blobs}

    three = small_image("three", base=base)
    push(registry.url, registry.repo("test/app"), "1", three)
    ok(minict("pull", "--image", f"{repo}:1"))
    tags = [d["annotations"][REF_NAME] for d in index_of(minict_dir, repo)["manifests"]]
    assert sorted(tags) == ["1", "2"]
    assert stored_manifest(minict_dir, repo, "1")[0]["digest"] == three.digest


def test_warm_repull_asks_one_head_and_nothing_else(registry, minict):
    push(registry.url, registry.repo("test/app"), "latest", small_image("warm", media="docker"))
    ref = registry.ref("test/app:latest")
    ok(minict("pull", "--image", ref))
    done = ok(minict("--debug", "pull", "--image", ref))
    requests = [line.split(" debug ", 1)[1] for line in done.stderr.splitlines()
                if " debug GET " in line or " debug HEAD " in line]
    manifest = f"{registry.host}/v2/{registry.repo('test/app')}/manifests/latest"
    assert requests == [f"GET http://{registry.host}/v2/ 200", f"HEAD http://{manifest} 200"]


def test_repull_fetches_only_missing_blobs(registry, minict, minict_dir):
    image = small_image("repair")
    push(registry.url, registry.repo("test/app"), "latest", image)
    ref = registry.ref("test/app:latest")
    ok(minict("pull", "--image", ref))
    lost = image.layers[0].digest
    (layout_dir(minict_dir, registry.ref("test/app")) / "blobs/sha256" / lost[7:]).unlink()
    done = ok(minict("--debug", "pull", "--image", ref))
    fetched = [line for line in done.stderr.splitlines() if "/blobs/sha256:" in line and " GET " in line]
    assert len(fetched) == 1 and lost in fetched[0]


def test_unknown_repository_and_tag(registry, minict, minict_dir):
    push(registry.url, registry.repo("test/app"), "latest", small_image("x"))
    fails(minict("pull", "--image", registry.ref("test/app:nope")), "manifest unknown", "nope")
    fails(minict("pull", "--image", registry.ref("no/such")), "unknown")
    assert list_images(minict) == []


def test_connection_refused(minict):
    port = free_port()
    fails(minict("pull", "--image", f"127.0.0.1:{port}/test/app"), "connection refused")


@pytest.mark.root  # unshare: a private mount or network namespace
def test_dns_failure(minict_dir):
    # In an empty network namespace no packet leaves this machine, and the lookup fails.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        ci.skip_or_fail("needs root and unshare for a network namespace")
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "minict", "pull", "--image",
                           "registry.example.com/test/app"], capture_output=True, text=True,
                          env={**os.environ, "MINICT_DIR": str(minict_dir)}, timeout=60,
                          check=False)
    fails(done, "cannot resolve registry host 'registry.example.com'")


@pytest.mark.own_registry  # it corrupts a stored blob
def test_tampered_blob_is_refused_and_nothing_is_stored(registry, minict, minict_dir):
    image = small_image("tampered")
    push(registry.url, registry.repo("test/app"), "latest", image)
    victim = image.layers[0].digest
    path = registry.blob_data_path(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    line = fails(minict("pull", "--image", registry.ref("test/app")), victim,
                 "does not match its digest")
    assert "Traceback" not in line
    assert list_images(minict) == []
    repo_dir = layout_dir(minict_dir, registry.ref("test/app"))
    assert not (repo_dir / "blobs/sha256" / victim[7:]).exists()
    partial = repo_dir / ".partial" / victim[7:]
    assert not partial.exists() or partial.stat().st_size == 0


def test_concurrent_pulls_into_one_repository_both_land(registry, minict_dir):
    base = [Dir("usr"), File("usr/base", os.urandom(300_000))]
    images = {f"t{i}": small_image(f"t{i}", base=base) for i in range(4)}
    for tag, image in images.items():
        push(registry.url, registry.repo("test/app"), tag, image)
    env = {**os.environ, "MINICT_DIR": str(minict_dir)}
    procs = [subprocess.Popen([sys.executable, "-m", "minict", "pull", "--image",
                               registry.ref(f"test/app:{tag}")], env=env,
                              stderr=subprocess.PIPE, text=True) for tag in images]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    done = subprocess.run([sys.executable, "-m", "minict", "list-images"], env=env,
                          capture_output=True, text=True, check=True)
    assert sorted(json.loads(done.stdout)) == [registry.ref(f"test/app:{tag}") for tag in images]


def test_skopeo_and_umoci_read_the_layout(registry, minict, minict_dir, require_tool, tmp_path):
    require_tool("skopeo")
    require_tool("umoci")
    index, mine, _ = two_platform_index("docker")
    push(registry.url, registry.repo("test/app"), "v1", index)
    ok(minict("pull", "--image", registry.ref("test/app:v1")))
    # skopeo's oci:PATH:REF cannot take a PATH with ':' (the registry's port).
    link = tmp_path / "layout"
    link.symlink_to(layout_dir(minict_dir, registry.ref("test/app")))
    inspected = subprocess.run(["skopeo", "inspect", f"oci:{link}:v1"], capture_output=True,
                               text=True, check=False)
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["Layers"] == [layer.digest for layer in mine.layers]
    assert info["Architecture"] == host_platform()["architecture"]
    listed = subprocess.run(["umoci", "ls", "--layout", str(link)], capture_output=True,
                            text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["v1"]


def test_quiet_prints_nothing_but_errors(registry, minict):
    push(registry.url, registry.repo("test/app"), "latest", small_image("quiet"))
    done = minict("pull", "--quiet", "--image", registry.ref("test/app"))
    assert done.returncode == 0 and done.stderr == ""
    fails(minict("pull", "--quiet", "--image", registry.ref("test/app:nope")), "manifest unknown")


def test_progress_bars_on_a_tty_and_no_rich_otherwise(registry, minict_dir):
    image = small_image("tty")
    push(registry.url, registry.repo("test/app"), "latest", image)
    env = {**os.environ, "MINICT_DIR": str(minict_dir), "COLUMNS": "120", "TERM": "xterm"}
    env.pop("MINICT_LOG_LEVEL", None)
    main, sub = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minict", "pull", "--image",
                                 registry.ref("test/app")], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=sub)
        os.close(sub)
        output = read_terminal(main)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(main)
    text = output.decode(errors="replace")
    assert f"Copying blob {image.layers[0].digest[7:19]}" in text
    assert "\x1b[" in text and "done" in text  # drawn by rich, on the terminal
    assert "Image pulled successfully." in text

    # Not on a TTY, rich (~100 ms to import) is never loaded.  (pull ends in
    # os._exit, so what it imported is seen through -X importtime.)
    code = ("import sys\nfrom minict.cli import commands as cli\n"
            "cli.main(['pull', '--image', sys.argv[1]])\n")
    done, imported = run_importing(["-c", code, registry.ref("test/app")], env=env)
    assert done.returncode == 0, done.stderr
    assert "minict.image.pull" in imported and "rich" not in imported


@pytest.mark.root  # unshare: a private mount or network namespace
def test_disk_full_is_one_clear_line_and_nothing_is_listed(registry, minict_dir, tmp_path):
    # A 1 MiB tmpfs as MINICT_DIR, mounted in a private mount namespace that
    # dies with the shell, so nothing stays mounted.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        ci.skip_or_fail("needs root and unshare for a private tmpfs")
    image = Image([[File("big", os.urandom(3_000_000))]], config={"Cmd": ["sh"]})
    push(registry.url, registry.repo("test/app"), "latest", image)
    python = sys.executable
    script = (f'mount -t tmpfs -o size=1m,mode=700 tmpfs "$MINICT_DIR" || exit 99\n'
              f'{python} -m minict pull --image {registry.ref("test/app")}\n'
              f'echo "exit=$?" >&2\n{python} -m minict list-images\n')
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env={**os.environ, "MINICT_DIR": str(minict_dir)}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    *_, fatal, status = done.stderr.strip().splitlines()
    assert FATAL in fatal and "No space left on device" in fatal and "Traceback" not in done.stderr
    assert status == "exit=1"
    assert json.loads(done.stdout) == []


def test_config_over_4_mib_is_refused(registry, minict):
    # (The registry itself refuses manifests over 4 MiB; configs are plain blobs.)
    huge = small_image("huge", extra={"filler": "x" * (4 * 1024 * 1024)})
    push(registry.url, registry.repo("test/app"), "latest", huge)
    fails(minict("pull", "--image", registry.ref("test/app")), "4194304-byte limit")
    assert list_images(minict) == []


def test_a_large_layer_is_streamed_not_held_in_memory(registry, minict_dir):
    data = os.urandom(64 * 1024 * 1024)
    image = Image([Layer(data, None, blob=data)], config={"Cmd": ["sh"]})
    push(registry.url, registry.repo("test/large"), "latest", image)
    del data
    # A fresh parent whose only child is the pull, so RUSAGE_CHILDREN is the pull's peak.
    measure = ("import resource, subprocess, sys\n"
               "code = subprocess.run(sys.argv[1:]).returncode\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "minict", "pull",
                           "--image", registry.ref("test/large")],
                          env={**os.environ, "MINICT_DIR": str(minict_dir)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout) / 1024
    assert peak_mib < 80, f"peak RSS {peak_mib:.0f} MiB for a 64 MiB layer"
