"""Bundles made directly, without pulling: a busybox rootfs and spec.generate's config.

    path = make_bundle(minict_dir, "box", template, cmd=["sh", "-c", "echo hi"])

or, in a test module, `from tests.support.bundles import box, busybox_rootfs`
and ask for the `box` fixture: `box(cmd, name="box", **image_config)`.

The container tests need many small containers; building each from a
registry image would cost seconds, and the config.json they run is the very
one `run` writes (minict.spec.generate), so nothing is faked but the unpack.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from minict import store
from minict.bundle import spec
from tests.support import tools


def busybox_template(workdir) -> Path:
    """Build the busybox rootfs once under `workdir`; return it."""
    return tools.busybox_rootfs(Path(workdir) / "rootfs")


def make_bundle(minict_dir, name: str, template: Path, *, cmd=None, user=None, env=None,
                workdir=None, edit=None) -> Path:
    """Create containers/<name> from `template` with the given image config; return it.

    `edit(config)` may change the generated config.json document in place.
    """
    path = Path(minict_dir) / "containers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    rootfs = path / "rootfs"
    shutil.copytree(template, rootfs, symlinks=True)
    image = {"architecture": "amd64", "os": "linux", "config": {
        "Cmd": cmd or ["sh"], "User": user or "", "Env": env or [tools.PATH],
        "WorkingDir": workdir or "/"}}
    config = spec.generate(image, name, (rootfs / "etc/passwd").read_text(),
                           (rootfs / "etc/group").read_text())
    if edit is not None:
        edit(config)
    (path / store.CONFIG_NAME).write_text(json.dumps(config, indent="\t"))
    (path / store.COMPLETE_MARK).write_text("{}\n")
    os.chmod(path, 0o700)
    return path


@pytest.fixture(scope="module")
def busybox_rootfs(tmp_path_factory):
    """The busybox rootfs every bundle of a test module copies."""
    return busybox_template(tmp_path_factory.mktemp("busybox"))


@pytest.fixture
def box(minict_dir, busybox_rootfs):
    """box(cmd, name="box", **image_config) -> the bundle path of a new busybox container."""

    def make(cmd, name="box", **kw):
        return make_bundle(minict_dir, name, busybox_rootfs, cmd=cmd, **kw)

    return make
