"""Small static C programs that a test copies into a container to try one thing.

    probe = compile_probe("tiocsti", SOURCE)    # a cached static binary (Path)
    install_probe(rootfs, probe)                # -> /usr/local/bin/<name> inside

busybox has no tool for ioctl(TIOCSTI), keyctl(2), raw system calls or
opening a device node by path and reporting errno, so the isolation tests
compile what they need with the host's gcc, statically (the busybox rootfs
has no libc).  Binaries are cached by the hash of their source.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "minict-probes"


def compile_probe(name: str, source: str) -> Path:
    """Compile `source` (C) into a static binary named `name`; return its path."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    target = CACHE / f"{name}-{digest}"
    if target.exists():
        return target
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler: install gcc and libc6-dev")
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / f"{name}-{digest}.c"
    src.write_text(source)
    tmp = target.with_suffix(".tmp")
    done = subprocess.run([cc, "-static", "-O1", "-o", str(tmp), str(src)],
                          check=False, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"compiling probe {name} failed:\n{done.stderr}")
    os.replace(tmp, target)
    return target


def install_probe(rootfs, probe: Path, name: str | None = None) -> str:
    """Copy `probe` into the rootfs's /usr/local/bin; return its path inside the container."""
    name = name or probe.name.rsplit("-", 1)[0]
    bindir = Path(rootfs) / "usr/local/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(probe, bindir / name)
    os.chmod(bindir / name, 0o755)
    return f"/usr/local/bin/{name}"
