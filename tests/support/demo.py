"""`make demo`: the whole minict flow on one machine, with no Docker Hub.

Starts a CNCF distribution registry on loopback, builds a small image from
Debian's busybox-static with umoci, pushes it with skopeo, then pulls, lists,
runs, starts and removes it with the installed `minict`, printing each
command before it runs.  Everything lives in a temporary directory (the
registry's storage and MINICT_DIR) that is deleted at the end.
"""

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.registry import Registry
from tests.support.tools import build_busybox_layout, run, skopeo_push

GREETING = "echo; echo \"Hello from $(hostname), PID $$ in its own namespaces:\"; ps; id; echo"


def step(*argv, env):
    """Print a command as a user would type it, then run it; stop on failure."""
    print(f"\n$ {shlex.join(argv)}", flush=True)
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: {argv[1]} failed with exit status {done.returncode}")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("demo: run as root (containers need namespaces and mounts)")
    minict = os.environ.get("MINICT", "minict")
    with tempfile.TemporaryDirectory(prefix="minict-demo-") as tmp:
        work = Path(tmp)
        print("Building a busybox image with umoci and pushing it with skopeo ...", flush=True)
        layout = build_busybox_layout(work / "build")
        run("umoci", "config", "--image", f"{layout}:latest", "--clear=config.cmd",
            "--config.cmd", "sh", "--config.cmd", "-c", "--config.cmd", GREETING)
        with Registry(work / "registry") as registry:
            image = skopeo_push(layout, registry, "demo/busybox", "latest")
            env = {**os.environ, "MINICT_DIR": str(work / "minict")}
            print(f"Local registry at {registry.url}; MINICT_DIR={env['MINICT_DIR']}")
            step(minict, "pull", "--image", image, env=env)
            step(minict, "list-images", env=env)
            step(minict, "run", "--image", image, "--name", "demo", env=env)
            step(minict, "list-containers", env=env)
            step(minict, "start", "--name", "demo", env=env)
            step(minict, "rm", "--name", "demo", env=env)
    print("\nDemo finished; its registry and MINICT_DIR were removed.")


if __name__ == "__main__":
    main()
