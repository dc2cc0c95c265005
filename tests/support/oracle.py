"""The umoci oracle for hand-built images: what `umoci unpack` makes of them.

    rootfs = umoci_unpack(tmp_path / "umoci", Image(layers))
    assert tree(minict_rootfs) == tree(rootfs)          # tests.support.layers.tree

umoci resolves every member's directory inside the rootfs (securejoin), as
minict does; its tree is the reference, entry by entry.
"""

import subprocess
from pathlib import Path

from tests.support.images import write_layout


def umoci_unpack(workdir, image) -> Path:
    """Write `image` (an Image) as a layout under `workdir`, `umoci unpack` it; return its rootfs.

    Raise RuntimeError with umoci's last line when it refuses the image.
    """
    workdir = Path(workdir)
    write_layout(workdir / "layout", "t", image)
    done = subprocess.run(["umoci", "unpack", "--image", f"{workdir / 'layout'}:t",
                           str(workdir / "bundle")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"umoci unpack: {done.stderr.strip().splitlines()[-1:]}")
    return workdir / "bundle" / "rootfs"
