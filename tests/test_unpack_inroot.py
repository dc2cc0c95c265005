"""Images whose layers go through symlinks: pushed, pulled, unpacked in root, started.

The image has the shapes real images have: a merged /usr (`bin -> usr/bin`),
`var/run -> ../run`, an absolute `lib -> /usr/lib`, and one absolute link
aimed at a host directory (the canary).  Later layers write through them,
white out through them, and hardlink through them.  minict's tree must be
`umoci unpack`'s entry by entry, the container must find each file where
in-root resolution puts it, and the canary must not change.
"""

import os
import shutil

import pytest

from minict.bundle import create as bundle
from minict.image import reference
from tests.support import ci, tools
from tests.support.images import (
    Dir,
    File,
    Hardlink,
    Image,
    Opaque,
    Symlink,
    Whiteout,
    push,
    rootfs_entries,
)
from tests.support.layers import tree
from tests.support.oracle import umoci_unpack

pytestmark = pytest.mark.root


def merged_usr_busybox(root):
    """The busybox rootfs with its programs in /usr/bin and `bin -> usr/bin`, as Debian's."""
    tools.busybox_rootfs(root)
    (root / "usr").mkdir()
    shutil.move(root / "bin", root / "usr/bin")
    os.symlink("usr/bin", root / "bin")
    (root / "usr/lib").mkdir()
    os.symlink("/usr/lib", root / "lib")
    (root / "run").mkdir()
    os.symlink("../run", root / "var/run")
    return rootfs_entries(root)


def symlinked_image(tmp_path, canary) -> Image:
    base = merged_usr_busybox(tmp_path / "base")
    writes = [
        File("bin/tool", b"#!/bin/sh\necho tool ran\n", mode=0o755),   # -> usr/bin/tool
        File("bin/gone", b"whited out later\n"),
        File("var/run/app.pid", b"42\n"),                              # -> run/app.pid
        File("lib/x.so", b"\x7fELF library\n"),                        # -> usr/lib/x.so
        Dir("lib/plugins"),
        File("lib/plugins/old.so", b"old\n"),
        Hardlink("usr/lib/hard.so", "lib/x.so"),                       # target through lib
        Hardlink("lib/abs.so", "/lib/x.so"),
        Symlink("host", str(canary)),                                  # a host path
        File("host/escape", b"must land in the rootfs\n"),
    ]
    changes = [
        Whiteout("bin/gone"),                                          # usr/bin/gone removed
        Opaque("lib/plugins"),                                         # usr/lib/plugins emptied
        File("lib/plugins/new.so", b"new\n"),
    ]
    return Image([base, writes, changes],
                 config={"Cmd": ["sh"], "Env": [tools.PATH], "WorkingDir": "/"})




def test_an_image_through_symlinks_unpacks_like_umoci_and_runs(registry, minict, minict_dir,
                                                               tmp_path, canary, monkeypatch):
    ci.require_tool("umoci")
    before = tree(canary)
    image = symlinked_image(tmp_path, canary)
    push(registry.url, registry.repo("test/inroot"), "latest", image)
    ref = registry.ref("test/inroot")
    assert minict("pull", "--image", ref).returncode == 0

    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    made = bundle.create(reference.parse(ref), "unpacked") / "rootfs"
    assert tree(made) == tree(umoci_unpack(tmp_path / "umoci", image))
    assert (made / "usr/bin/tool").exists() and not (made / "usr/bin/gone").exists()
    assert (made / "run/app.pid").read_text() == "42\n"
    assert os.stat(made / "usr/lib/hard.so").st_ino == os.stat(made / "usr/lib/x.so").st_ino
    assert os.stat(made / "usr/lib/abs.so").st_ino == os.stat(made / "usr/lib/x.so").st_ino
    assert os.listdir(made / "usr/lib/plugins") == ["new.so"]
    assert (made / str(canary).lstrip("/") / "escape").exists()

    # -w through the link to the host path: made inside the rootfs too.
    done = minict("run", "--image", ref, "--name", "inroot", "-w", "/host/work", "--", "sh", "-c",
                  "pwd -P; tool; cat /run/app.pid /var/run/app.pid; ls /lib/plugins;"
                  f" cat {canary}/escape; ls {canary}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{canary}/work\ntool ran\n42\n42\nnew.so\n"
                           "must land in the rootfs\nescape\nwork\n")
    assert tree(canary) == before
    rootfs = minict_dir / "containers/inroot/rootfs"
    assert (rootfs / str(canary).lstrip("/") / "work").is_dir()
