"""Bundles made directly, without pulling: a busybox rootfs and spec.generate's config.

    path = make_bundle(minict_dir, "box", cmd=["sh", "-c", "echo hi"])

The container tests need many small containers; building each from a
registry image would cost seconds, and the config.json they run is the very
one `run` writes (minict.spec.generate), so nothing is faked but the unpack.
"""

import json
import os
import shutil
from pathlib import Path

from minict import container, spec
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
    (path / container.CONFIG_NAME).write_text(json.dumps(config, indent="\t"))
    (path / container.COMPLETE_MARK).write_text("{}\n")
    os.chmod(path, 0o700)
    return path
