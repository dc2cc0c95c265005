"""Images made by the real tools users have: umoci builds, skopeo pushes.

    layout = build_busybox_layout(workdir)         # an OCI layout, tag "latest"
    ref = skopeo_push(layout, registry, "test/busybox", "latest")

The image is one layer made by `umoci insert` from a rootfs around the static
busybox: applet symlinks in /bin (as `busybox --install -s` makes them),
/etc/passwd and /etc/group with root and app (1000:1000), /tmp 1777, and
Cmd ["sh"].  Nothing here imports pytest: bench/ uses it too.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
BUSYBOX_TOOLS = ("busybox", "umoci", "skopeo")
APPLETS = (
    "[", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "dirname",
    "du", "echo", "env", "false", "find", "grep", "head", "hexdump", "hostname", "id",
    "ifconfig", "ip", "kill", "ln", "ls", "mkdir", "mknod", "mount", "mv", "nc", "nproc",
    "od", "ping", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh",
    "sleep", "sort", "stat", "sync", "tail", "tee", "test", "touch", "tr", "true", "tty",
    "umount", "uname", "uniq", "wc", "wget", "which", "whoami", "xargs", "yes",
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\n"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PushedImage(str):
    """A reference string (`127.0.0.1:PORT/repo:tag`) that also knows where it came from."""

    registry: object
    layout: Path
    repo: str
    tag: str


def run(*argv, **kw) -> subprocess.CompletedProcess:
    """Run a tool; raise RuntimeError with its output if it fails."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done


def busybox_rootfs(root: Path) -> Path:
    """Create the busybox rootfs at `root` (which must not exist) and return it."""
    applets = set(run(BUSYBOX, "--list").stdout.split())
    root.mkdir()
    for name, mode in [("bin", 0o755), ("etc", 0o755), ("dev", 0o755), ("proc", 0o555),
                       ("sys", 0o555), ("root", 0o700), ("home", 0o755), ("tmp", 0o1777),
                       ("var", 0o755)]:
        (root / name).mkdir()
        os.chmod(root / name, mode)  # chmod, because mkdir's mode passes through the umask
    home = root / "home" / "app"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, 1000, 1000)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in APPLETS:
        if applet in applets:
            # Absolute, as `busybox --install -s` makes them: they resolve only
            # inside the container's root, which is the point.
            os.symlink("/bin/busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    for name in ("passwd", "group"):
        os.chmod(root / "etc" / name, 0o644)
    return root


def build_busybox_layout(workdir) -> Path:
    """Build the busybox image with umoci into `workdir/layout` (tag latest); return it."""
    workdir = Path(workdir)
    if ":" in str(workdir):
        raise ValueError(f"umoci's --image PATH:TAG cannot take {workdir} (it has a ':')")
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / "layout"
    rootfs = busybox_rootfs(workdir / "rootfs")
    image = f"{layout}:latest"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", image)
    run("umoci", "insert", "--image", image, "--history.created_by", "tests.support.tools",
        rootfs, "/")
    run("umoci", "config", "--image", image, "--config.cmd", "sh", "--config.env", PATH,
        "--config.workingdir", "/")
    return layout


def skopeo_push(layout, registry, repo, tag, creds=None, *, source_tag="latest",
                options=()) -> PushedImage:
    """Copy `layout:source_tag` to `registry` (a Registry or a Namespace of one) as repo:tag.

    `options` are more `skopeo copy` options (`--format v2s2`, say).
    """
    layout = _colon_free(Path(layout))
    repo = registry.repo(repo)
    reference = f"{registry.host}/{repo}:{tag}"
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds:
        argv += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    run(*argv, *options, f"oci:{layout}:{source_tag}", f"docker://{reference}")
    pushed = PushedImage(reference)
    pushed.registry, pushed.layout, pushed.repo, pushed.tag = registry, layout, repo, tag
    return pushed


def _colon_free(path: Path) -> Path:
    """Return `path`, or a colon-free symlink to it: skopeo's oci:PATH:REF splits on ':'."""
    if ":" not in str(path):
        return path
    link = Path(tempfile.mkdtemp(prefix="minict-oci-")) / "layout"
    link.symlink_to(path.resolve())
    return link
