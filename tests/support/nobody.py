"""Running minict as the nobody user from a test run by root, wherever the clone lives.

The natural clone is under /root, a 0700 home: nobody cannot read the checkout nor its
.venv there, whatever the interpreter.  So the packages `python -m minict` imports are
copied once per session into a world-readable directory under /tmp and run by the
system's interpreter (the venv's one is a link to it).  When even that cannot work, the
reason names the directory nobody cannot enter, not just "no interpreter".
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = {"user": 65534, "group": 65534, "extra_groups": []}
# What the copy must hold: every top-level module outside the standard library that
# `python -m minict --help` imports (the editable-install finder and setuptools' hack
# are loaded by .pth files, which PYTHONPATH does not read).
_IMPORTED = """
import runpy, sys, sysconfig
sys.argv = ["minict", "--help"]
try:
    runpy.run_module("minict", run_name="__main__")
except SystemExit:
    pass
stdlib = sysconfig.get_paths()["stdlib"]
for module in list(sys.modules.values()):
    origin = getattr(module, "__file__", None)
    if origin and not origin.startswith(stdlib) and "." not in module.__name__:
        print(module.__name__, origin, file=sys.stderr)
"""
_SKIP = {"__editable___minict_0_1_0_finder", "_distutils_hack"}


def unreadable_by_nobody(path: Path) -> str | None:
    """Return why nobody cannot read `path` (the first closed directory on the way), or None."""
    path = Path(path).absolute()
    chain = [*reversed(path.parents), path]
    # One shell as nobody walks the chain: the first entry it cannot enter (or read) is the answer.
    walk = 'for p in "$@"; do if [ -d "$p" ]; then [ -x "$p" ] && [ -r "$p" ] || ' \
           '{ echo "$p"; exit; }; else [ -r "$p" ] || { echo "$p"; exit; }; fi; done'
    done = subprocess.run(["sh", "-c", walk, "sh", *map(str, chain)], capture_output=True,
                          text=True, check=False, cwd="/", **NOBODY)
    closed = done.stdout.strip()
    if not closed:
        return None if path.exists() else f"{path} does not exist"
    st = os.stat(closed)
    return (f"nobody cannot read {path}: {closed} is mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner uid {st.st_uid}")


def imported_packages(python: str, pythonpath: str) -> list[Path]:
    """Return the files or package directories of what `python -m minict --help` imports."""
    done = subprocess.run([python, "-c", _IMPORTED], capture_output=True, text=True,
                          check=True, cwd="/", env={"PYTHONPATH": pythonpath})
    found = []
    for line in done.stderr.splitlines():
        name, origin = line.split(" ", 1)
        if name in _SKIP:
            continue
        origin = Path(origin)
        found.append(origin.parent if origin.name == "__init__.py" else origin)
    return found


def readable_copy(sources: list[Path], into: Path) -> Path:
    """Copy `sources` (packages or modules) into `into`, a new directory everyone can read."""
    into.mkdir(mode=0o755)
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, into / source.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, into / source.name)
    for dirpath, dirnames, filenames in os.walk(into):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return into


def python_for_nobody(pythonpath: str, into: Path) -> tuple[str, str]:
    """Return (interpreter, PYTHONPATH) with which nobody can run `python -m minict`.

    `pythonpath` is where root finds the packages; when nobody cannot import them from
    there, they are copied into `into` (made here, in a directory nobody can enter).  Fails with the reason when nobody still cannot.
    """
    python = os.path.realpath(sys.executable)
    if (why := unreadable_by_nobody(Path(python))) is not None:
        raise RuntimeError(why)
    if _imports_as_nobody(python, pythonpath):
        return python, pythonpath
    copy = readable_copy(imported_packages(python, pythonpath), into)
    if _imports_as_nobody(python, str(copy)):
        return python, str(copy)
    reasons = [unreadable_by_nobody(Path(p)) for p in [*pythonpath.split(":"), copy]]
    raise RuntimeError("; ".join(r for r in reasons if r)
                       or f"nobody cannot import minict with {python} from {copy}")


def _imports_as_nobody(python: str, pythonpath: str) -> bool:
    probe = subprocess.run([python, "-c", "import minict.cli.commands"], capture_output=True, check=False,
                           cwd="/", env={"PYTHONPATH": pythonpath}, **NOBODY)
    return probe.returncode == 0


def world_readable_tmp() -> Path:
    """Return a new directory under /tmp that nobody can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="minict-nobody-"))
    path.chmod(0o755)
    return path
