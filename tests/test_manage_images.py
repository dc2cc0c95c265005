"""rmi and prune: only unreferenced blobs go, and never under a pull that is running."""

import functools
import json
import os
import subprocess
import sys
import time

import pytest

from minict.image import gc
from tests.support import waiting
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.images import File, Image, Index, host_platform, push, write_layout

BASE = [File("etc/base", b"shared\n")]

wait_for = functools.partial(waiting.wait_for, timeout=20.0)  # the 20 s these waits always had


def two_tags():
    """v1 and v2: the base layer shared, one layer of each only theirs."""
    v1 = Image([BASE, [File("etc/v1", b"one\n")]], config={"Cmd": ["sh"]})
    v2 = Image([BASE, [File("etc/v2", os.urandom(300_000))]], config={"Cmd": ["sh", "-l"]},
               compression=None)
    return v1, v2


def blobs_of(image) -> set[str]:
    return {image.digest, *image.blobs}


def stored(layout) -> set[str]:
    return {"sha256:" + n for n in os.listdir(layout / "blobs" / "sha256")}


def spawn(minict_dir, *args):
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    env.pop("MINICT_LOG_LEVEL", None)
    return subprocess.Popen([sys.executable, "-m", "minict", *map(str, args)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_rmi_of_one_tag_keeps_the_layers_the_other_shares(minict, minict_dir):
    v1, v2 = two_tags()
    layout = minict_dir / "images" / "app"
    write_layout(layout, "v1", v1)
    write_layout(layout, "v2", v2)

    done = minict("rmi", "--image", "app:v1")
    assert done.returncode == 0, done.stderr
    only_v1 = blobs_of(v1) - blobs_of(v2)
    assert stored(layout) == blobs_of(v2)
    assert done.stdout.splitlines()[0] == "Untagged: app:v1"
    assert sorted(done.stdout.splitlines()[1:]) == sorted(f"Deleted: {d}" for d in only_v1)
    assert json.loads(minict("list-images").stdout) == ["app:v2"]

    done = minict("rmi", "--image", "app:v2")
    assert done.returncode == 0, done.stderr
    assert not layout.exists()  # the repository went with its last tag
    assert json.loads(minict("list-images").stdout) == []


def test_rmi_keeps_what_an_index_still_references(minict, minict_dir):
    v1, v2 = two_tags()
    layout = minict_dir / "images" / "multi"
    index = Index([(v1, host_platform()), (v2, {"os": "linux", "architecture": "s390x"})])
    write_layout(layout, "all", index)
    write_layout(layout, "one", v1)
    assert minict("rmi", "--image", "multi:one").returncode == 0
    assert stored(layout) == blobs_of(v1) | blobs_of(v2) | {index.digest}
    assert minict("rmi", "--image", "multi:all").returncode == 0
    assert not layout.exists()


def test_rmi_by_digest_and_nested_repositories_stay(minict, minict_dir):
    v1, v2 = two_tags()
    outer, inner = minict_dir / "images" / "team", minict_dir / "images" / "team" / "app"
    write_layout(outer, "v1", v1)
    write_layout(inner, "v2", v2)
    done = minict("rmi", "--image", f"team@{v1.digest}")
    assert done.returncode == 0, done.stderr
    assert not (outer / "index.json").exists() and not (outer / "blobs").exists()
    assert stored(inner) == blobs_of(v2)
    assert json.loads(minict("list-images").stdout) == ["team/app:v2"]


def test_rmi_of_a_missing_image_is_one_clear_line(minict, minict_dir):
    write_layout(minict_dir / "images" / "app", "v1", two_tags()[0])
    for ref in ("app:v9", "nothing:latest"):
        done = minict("rmi", "--image", ref)
        assert done.returncode == 1
        assert done.stderr.strip().endswith(f"fatal image {ref} not found"), done.stderr
        assert "Traceback" not in done.stderr


def test_prune_deletes_unreferenced_blobs_only(minict, minict_dir):
    v1, v2 = two_tags()
    layout = minict_dir / "images" / "app"
    write_layout(layout, "v1", v1)
    write_layout(layout, "v2", v2)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [d for d in index["manifests"]
                          if d["annotations"]["org.opencontainers.image.ref.name"] == "v2"]
    (layout / "index.json").write_text(json.dumps(index))  # v1 untagged by hand
    partial = layout / ".partial" / ("0" * 64)
    partial.parent.mkdir()
    partial.write_bytes(b"half a download")

    refused = minict("prune", input="n\n")
    assert refused.returncode == 0 and stored(layout) == blobs_of(v1) | blobs_of(v2)
    done = minict("prune", input="y\n")
    assert done.returncode == 0, done.stderr
    assert stored(layout) == blobs_of(v2)
    assert partial.exists()  # younger than an hour: a later pull resumes it
    # --force takes every leftover no pull is writing (test_hardening_local has the rest).
    assert minict("prune", "-f").stdout == f"Deleted partial download: sha256:{'0' * 64}\n"
    assert minict("prune", "-f").stdout == ""


def test_a_sweep_waits_for_a_pull_or_unpack_holding_the_blobs(minict_dir, monkeypatch):
    v1, v2 = two_tags()
    layout = minict_dir / "images" / "app"
    write_layout(layout, "v1", v1)
    write_layout(layout, "v2", v2)
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    with gc.using():
        rmi = spawn(minict_dir, "rmi", "--image", "app:v1")
        wait_for(lambda: "waiting for pulls and unpacks" in _peek(rmi))
        time.sleep(0.3)
        assert rmi.poll() is None
        assert stored(layout) == blobs_of(v1) | blobs_of(v2)
    _, err = rmi.communicate(timeout=30)
    assert rmi.returncode == 0, err
    assert stored(layout) == blobs_of(v2)


def _peek(proc) -> str:
    """Read what `proc` wrote to stderr so far (a line at a time, without blocking)."""
    import select

    text = getattr(proc, "_seen", "")
    while select.select([proc.stderr], [], [], 0)[0]:
        line = proc.stderr.readline()
        if not line:
            break
        text += line
    proc._seen = text
    return text


def test_rmi_during_a_real_pull_of_a_sibling_tag_harms_neither(minict, minict_dir, registry):
    """The pull finds the shared base present and skips it; rmi of the tag that brought it
    must not delete it before the pull names it."""
    v1, v2 = two_tags()
    push(registry.url, registry.repo("test/app"), "v1", v1)
    push(registry.url, registry.repo("test/app"), "v2", v2)
    only_v2 = v2.layers[1]
    with FaultProxy(registry.url) as proxy:
        repo = f"{proxy.host}/{registry.repo('test/app')}"
        assert minict("pull", "--image", f"{repo}:v1").returncode == 0
        proxy.add(Fault(only_v2.digest, stall_after=1000))
        pull = spawn(minict_dir, "pull", "--image", f"{repo}:v2")
        assert proxy.stalled.wait(20), "the pull never reached the stalled blob"
        rmi = spawn(minict_dir, "rmi", "--image", f"{repo}:v1")
        wait_for(lambda: "waiting for pulls and unpacks" in _peek(rmi))
        time.sleep(0.3)
        assert rmi.poll() is None  # not one blob deleted under the pull
        proxy.release()
        _, pull_err = pull.communicate(timeout=60)
        _, rmi_err = rmi.communicate(timeout=60)
    assert pull.returncode == 0, pull_err
    assert rmi.returncode == 0, rmi_err
    layout = minict_dir / "images" / proxy.host / registry.repo("test/app")
    assert stored(layout) == blobs_of(v2)
    assert json.loads(minict("list-images").stdout) == [f"{repo}:v2"]
    assert not (layout / ".partial" / only_v2.digest.split(":")[1]).exists()


@pytest.mark.parametrize("output", ["json", None])
def test_list_images_json_stays_the_default(minict, minict_dir, output):
    v1, v2 = two_tags()
    write_layout(minict_dir / "images" / "app", "v2", v2)
    write_layout(minict_dir / "images" / "app", "v1", v1)
    args = ["list-images"] + (["--format", output] if output else [])
    assert minict(*args).stdout == '[\n\t"app:v1",\n\t"app:v2"\n]\n'


def test_list_images_table(minict, minict_dir):
    v1, v2 = two_tags()
    write_layout(minict_dir / "images" / "app", "v2", v2)
    write_layout(minict_dir / "images" / "app", "v1", v1)
    done = minict("list-images", "--format", "table")
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert lines[0] == ["NAME", "TAG", "DIGEST", "SIZE", "CREATED"]
    size = sum(len(b) for b in v2.blobs.values())
    assert lines[2] == ["app", "v1", v1.digest[7:19], *lines[2][3:5], "2023-11-14", "22:13:20"]
    assert lines[3][:3] == ["app", "v2", v2.digest[7:19]]
    assert " ".join(lines[3][3:5]) == f"{size / 1000:.1f} kB"


@pytest.mark.parametrize("answer", ["n\n", "\n", ""], ids=["no", "default", "no input"])
def test_declining_prune_is_no_failure(minict, minict_dir, answer):
    # `echo n | minict prune` printed the prompt and `fatal aborted` on one
    # line and exited 1; declining (or no answer at all) removes nothing and
    # is no failure.
    layout = minict_dir / "images" / "app"
    v1, _ = two_tags()
    write_layout(layout, "v1", v1)
    before = stored(layout)
    done = minict("prune", input=answer)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "nothing removed\n"
    assert "fatal" not in done.stderr and done.stderr.endswith("\n"), done.stderr
    assert stored(layout) == before
