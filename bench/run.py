"""Benchmark minict against the tools it replaces, on the local bench image.

    bench/run.py unpack|pull|launch|all [--runs N] [--markdown] [--plain-venv]

Starts a docker-registry on loopback, pushes the cached bench image to it
(bench/image.py), then runs each comparison's commands alternately, round
after round (bench/timing.py), and prints medians, median ratios and the
goals from the issues.  Run as root: unpacking keeps owners and device
nodes, and launching creates namespaces.

Python commands run as `<venv>/bin/python` directly, never through a pyenv
shim (which adds ~130 ms per start), with bytecode caching allowed so the
warm-up round leaves .pyc files for every later round.
"""

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import image
import timing
import trees
from image import BenchError, sh
from timing import Command

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.support.registry import Registry, RegistryError

DEFAULT_PYTHON = REPO / ".venv" / "bin" / "python"
CLONE_NEWNS = 0x00020000
MB = 1_000_000


@dataclass
class Row:
    """One line of the report: a measured value, and the goal it answers if any."""

    benchmark: str
    measure: str
    value: str
    goal: str = ""
    met: bool | None = None


class Session:
    """What every comparison shares: a work directory, the registry, the pushed image."""

    def __init__(self, python: Path, stack: contextlib.ExitStack):
        self.python = python
        self.stack = stack
        self.work = Path(tempfile.mkdtemp(prefix="minict-bench."))
        stack.callback(remove_tree, self.work)
        self.registry = stack.enter_context(Registry(self.work / "registry"))
        self.reference = image.push(self.registry.host)

    def env(self, **extra: str) -> dict[str, str]:
        """Return this process's environment with bytecode caching on, plus `extra`."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(extra)
        return env

    def minict(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "minict", *args]

    def python_c(self, code: str) -> list[str]:
        return [str(self.python), "-c", code]

    def skopeo_copy(self, destination: Path) -> list[str]:
        """Return argv copying the bench image from the registry into OCI layout `destination`."""
        return ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{self.reference}", f"oci:{destination}:{image.TAG}"]

    def seed_store(self, minict_dir: Path) -> Path:
        """Put the bench image into `minict_dir`'s store as `minict pull` would; return the layout.

        Done with skopeo, so unpack and launch do not depend on minict's pull.
        The path is store.image_dir's: images/<registry host>/<repository>.
        """
        layout = minict_dir / "images" / self.registry.host / image.REPOSITORY
        layout.mkdir(parents=True, exist_ok=True)  # skopeo resolves the symlink below
        (minict_dir / "containers").mkdir(parents=True, exist_ok=True)
        sh(*self.skopeo_copy(colon_free(layout, self.work)))
        return layout


def colon_free(path: Path, work: Path) -> Path:
    """Return a colon-free symlink to `path` (skopeo and umoci split `PATH:TAG` at a colon)."""
    if ":" not in str(path):
        return path
    link = Path(tempfile.mkdtemp(prefix="link.", dir=work)) / "layout"
    link.symlink_to(path)
    return link


def remove_tree(path: Path) -> None:
    """Delete `path` recursively without crossing into other mounted file systems."""
    if path.exists() or path.is_symlink():
        sh("rm", "-rf", "--one-file-system", "--", path)


class Trash:
    """Moves outputs aside between runs and deletes them only when emptied.

    Deleting a large tree on this disk (ext4 with discard) slows it for a
    while, so an unpack timed after a deletion can take 3x longer
    (verified-facts.md).  A rename costs nothing; the deletion waits until
    no command is being timed.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.count = 0

    def fresh(self, path: Path):
        """Return a setup hook: move `path` into the trash, then flush dirty pages.

        The sync keeps the previous command's write-back out of this one's time.
        """
        def setup(run: int) -> None:
            if path.exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                self.count += 1
                path.rename(self.directory / f"{self.count}-{path.name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.sync()
        return setup

    def empty(self) -> None:
        """Delete what was moved aside; sync so ext4 issues its discards now, untimed."""
        remove_tree(self.directory)
        os.sync()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def median_rows(benchmark: str, results: timing.Results) -> list[Row]:
    return [Row(benchmark, f"{label} (median)", ms(results.median(label)))
            for label in results.samples]


def goal_row(benchmark: str, measure: str, value: float, goal: float, unit: str = "x") -> Row:
    shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.0f} {unit}"
    limit = f"{goal:g}{unit}" if unit == "x" else f"{goal:g} {unit}"
    return Row(benchmark, measure, shown, f"<= {limit}", value <= goal)


# -- pull --------------------------------------------------------------------------------

def bench_pull(session: Session, runs: int) -> list[Row]:
    """Cold and warm pulls of the bench image: minict against skopeo, plus peak RSS."""
    work = session.work / "pull"
    trash = Trash(work / "trash")
    cold_store, cold_oci = work / "cold-store", work / "cold-oci"
    warm_store, warm_oci = work / "warm-store", work / "warm-oci"
    pull = session.minict("pull", "--image", session.reference)
    import_both = "python -c 'import click, requests'"

    cold = timing.alternate([
        Command("minict pull, cold", pull, session.env(MINICT_DIR=str(cold_store)),
                setup=trash.fresh(cold_store)),
        Command("skopeo copy, cold", session.skopeo_copy(cold_oci),
                setup=trash.fresh(cold_oci)),
    ], runs)
    trash.empty()

    warm_oci.mkdir(parents=True)
    sh(*session.skopeo_copy(warm_oci))
    sh(*pull, env=session.env(MINICT_DIR=str(warm_store)))
    warm = timing.alternate([
        Command("minict pull, warm", pull, session.env(MINICT_DIR=str(warm_store))),
        Command("skopeo copy, warm", session.skopeo_copy(warm_oci)),
        Command(import_both, session.python_c("import click, requests"), session.env()),
    ], runs)

    peak = max(cold.max_rss_mib("minict pull, cold"), warm.max_rss_mib("minict pull, warm"))
    return [
        *median_rows("pull", cold),
        goal_row("pull", "cold: minict / skopeo",
                 cold.ratio("minict pull, cold", "skopeo copy, cold"), 0.85),  # issue 12
        *median_rows("pull", warm),
        goal_row("pull", "warm: minict / python import click, requests",
                 warm.ratio("minict pull, warm", import_both), 1.3),
        Row("pull", "warm: minict / skopeo",
            f"{warm.ratio('minict pull, warm', 'skopeo copy, warm'):.2f}x"),
        goal_row("pull", "minict pull peak RSS (largest of all runs)",
                 peak * 1024 * 1024 / MB, 80, "MB"),
    ]


# -- unpack ------------------------------------------------------------------------------

def bench_unpack(session: Session, runs: int) -> list[Row]:
    """Unpack on disk and on a tmpfs: minict against umoci and plain tar."""
    disk = session.work / "unpack-disk"
    probe = disk_probe(disk / "probe")
    rows = [Row("unpack (disk)", "disk probe: 2,000 files of 4 KiB written + sync "
                "(idle disk ~70 ms)", ms(probe))]
    rows += bench_unpack_on(session, disk, "disk", runs)
    tmpfs = session.work / "unpack-tmpfs"
    tmpfs.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", tmpfs)
    try:
        rows += bench_unpack_on(session, tmpfs, "tmpfs", runs)
    finally:
        sh("umount", tmpfs)
    return rows


def disk_probe(directory: Path, count: int = 2000) -> float:
    """Return the seconds it takes to write `count` small files under `directory` and sync.

    This disk turns ~10x slower at creating files for minutes after a large
    deletion (a previous benchmark's clean-up, a test run's): the probe
    shows in the table whether the disk numbers were taken in that state.
    The files are left for the comparison's clean-up, since deleting them
    now would itself slow the disk.
    """
    directory.mkdir(parents=True)
    os.sync()
    started = time.perf_counter()
    for number in range(count):
        (directory / str(number)).write_bytes(b"\0" * 4096)
    os.sync()
    return time.perf_counter() - started


def bench_unpack_on(session: Session, base: Path, where: str, runs: int) -> list[Row]:
    """Time the three unpackers with every input and output under `base`.

    minict's unpack is timed alone through bundle.create, in a fresh Python
    like the others' fresh processes; `minict run` would add the launch.
    tar is the floor: it extracts the layers in order into one directory,
    leaving whiteout files as they are.
    """
    store = base / "minict"
    layout = session.seed_store(store)
    trash = Trash(base / "trash")
    bundle = store / "containers" / "x"
    umoci_bundle, tar_root = base / "umoci-bundle", base / "tar-rootfs"
    create = ("from minict.bundle import create; from minict.image import reference; "
              f"create.create(reference.parse({session.reference!r}), 'x')")
    extract = [f"tar -xzf {shlex.quote(str(blob))} -C {shlex.quote(str(tar_root))}"
               for blob in image.layer_blobs(layout)]

    results = timing.alternate([
        Command("minict unpack", session.python_c(create), session.env(MINICT_DIR=str(store)),
                setup=trash.fresh(bundle)),
        Command("umoci unpack", ["umoci", "unpack", "--image",
                                 f"{colon_free(layout, session.work)}:{image.TAG}", umoci_bundle],
                setup=trash.fresh(umoci_bundle)),
        Command("tar -xzf layers",
                ["sh", "-c", " && ".join([f"mkdir {shlex.quote(str(tar_root))}", *extract])],
                setup=trash.fresh(tar_root)),
    ], runs)
    benchmark = f"unpack ({where})"
    differing = trees.differences(bundle / "rootfs", umoci_bundle / "rootfs")
    if differing:
        print(f"bench: minict and umoci rootfs differ at {len(differing)} paths: "
              + ", ".join(differing[:10]), file=sys.stderr)
    same = Row(benchmark, "minict rootfs matches umoci's",
               f"{len(differing)} paths differ" if differing else "yes", "yes", not differing)
    trash.empty()
    for path in (bundle, umoci_bundle, tar_root):
        remove_tree(path)

    to_umoci = results.ratio("minict unpack", "umoci unpack")
    to_tar = results.ratio("minict unpack", "tar -xzf layers")
    if where == "disk":
        compared = [goal_row(benchmark, "minict / umoci", to_umoci, 0.5),
                    Row(benchmark, "minict / tar", f"{to_tar:.2f}x")]
    else:
        compared = [Row(benchmark, "minict / umoci", f"{to_umoci:.2f}x"),
                    goal_row(benchmark, "minict / tar", to_tar, 1.0)]
    return [*median_rows(benchmark, results), *compared, same]


# -- launch ------------------------------------------------------------------------------

def bench_launch(session: Session, runs: int) -> list[Row]:
    """Start latency of /bin/true: minict start against runc, crun and bare Python."""
    store = session.work / "launch"
    session.seed_store(store)
    env = session.env(MINICT_DIR=str(store))
    sh(*session.minict("run", "--image", session.reference, "--name", "bench"), env=env)
    peer_bundle = peer_copy(store / "containers" / "bench", session.work / "peer-bundle")
    in_crun_namespace = session.stack.enter_context(mount_namespace_without_unified())
    import_click = "python -c 'import click'"

    def peer(label: str, runtime: list[str], preexec=None) -> Command:
        """Return `runtime run` of the peer bundle, with a new container id per run."""
        def container_id(run: int) -> str:
            return f"minict-bench-{os.getpid()}-{run}"

        def delete(run: int) -> None:
            subprocess.run([*runtime, "delete", "-f", container_id(run)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=preexec)

        return Command(label, lambda run: [*runtime, "run", "--bundle", peer_bundle,
                                           container_id(run)],
                       teardown=delete, preexec=preexec)

    results = timing.alternate([
        Command("minict start", session.minict("start", "--name", "bench"), env),
        peer("runc run", ["runc"]),
        peer("crun run", ["crun", "--cgroup-manager=disabled"], preexec=in_crun_namespace),
        Command(import_click, session.python_c("import click"), session.env()),
        Command("python -c pass", session.python_c("pass"), session.env()),
    ], runs)
    return [
        *median_rows("launch", results),
        goal_row("launch", "minict − python import click",
                 results.difference("minict start", import_click) * 1000, 25, "ms"),
        goal_row("launch", "minict / runc", results.ratio("minict start", "runc run"), 1.4),  # issue 12
        Row("launch", "minict / crun", f"{results.ratio('minict start', 'crun run'):.2f}x"),
    ]


def peer_copy(bundle: Path, destination: Path) -> Path:
    """Return a bundle for runc and crun: minict's config.json, adapted, on minict's rootfs.

    Adapted: no terminal (stdin is /dev/null), an absolute rootfs path, and
    an identity uid/gid mapping when a user namespace is asked for without one.
    """
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["root"]["path"] = str(bundle / config["root"]["path"])
    linux = config.setdefault("linux", {})
    if any(ns["type"] == "user" for ns in linux.get("namespaces", [])):
        identity = [{"containerID": 0, "hostID": 0, "size": 4294967295}]
        linux.setdefault("uidMappings", identity)
        linux.setdefault("gidMappings", identity)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "config.json").write_text(json.dumps(config, indent=2))
    return destination


@contextlib.contextmanager
def mount_namespace_without_unified():
    """Yield a preexec hook that enters a mount namespace lacking /sys/fs/cgroup/unified.

    crun refuses this VM's hybrid cgroup setup otherwise (verified-facts.md).
    A sleeping holder process keeps the namespace alive; the timed crun only
    pays for one setns(2) between fork and exec.
    """
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "umount /sys/fs/cgroup/unified 2>/dev/null; exec sleep infinity"])
    try:
        mountinfo = Path(f"/proc/{holder.pid}/mountinfo")
        deadline = time.monotonic() + 5
        while (holder.poll() is None and time.monotonic() < deadline
               and (Path(f"/proc/{holder.pid}/comm").read_text().strip() != "sleep"
                    or " /sys/fs/cgroup/unified " in mountinfo.read_text())):
            time.sleep(0.01)
        if holder.poll() is not None or " /sys/fs/cgroup/unified " in mountinfo.read_text():
            raise BenchError("could not make a mount namespace without /sys/fs/cgroup/unified")
        namespace = os.open(f"/proc/{holder.pid}/ns/mnt", os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)

        def enter() -> None:
            if libc.setns(namespace, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns into the crun mount namespace")

        try:
            yield enter
        finally:
            os.close(namespace)
    finally:
        holder.kill()
        holder.wait()


# -- report ------------------------------------------------------------------------------

def print_table(rows: list[Row], markdown: bool) -> None:
    header = ["Benchmark", "Measure", "Value", "Goal", "Met"]
    cells = [[r.benchmark, r.measure, r.value, r.goal,
              "" if r.met is None else ("yes" if r.met else "no")] for r in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|---|---:|---|---|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for row in [header, *cells]:
        print("  ".join(c.rjust(w) if i == 2 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def plain_venv(dev_python: Path, directory: Path) -> Path:
    """Make a venv in `directory` that imports minict as an installed copy would; return its python.

    `pip install -e` finds minict through an import hook that its .pth file
    loads at every start (pathlib, re, importlib.util: ~20 ms here).  This
    venv has the same interpreter and packages, with minict found through a
    plain path line instead, as `make install`'s non-editable copy is.
    """
    query = ("import sys, sysconfig; "
             "print(sys._base_executable); print(sysconfig.get_paths()['purelib'])")
    base, site_packages = sh(dev_python, "-c", query).stdout.split()
    sh(base, "-m", "venv", "--without-pip", directory)
    python = directory / "bin" / "python"
    own_site = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(own_site.stdout.strip(), "minict-bench.pth").write_text(f"{REPO}\n{site_packages}\n")
    return python


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:120]


# unpack first: its disk half is the one most disturbed by earlier deletions.
COMPARISONS = {"unpack": bench_unpack, "pull": bench_pull, "launch": bench_launch}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparison", choices=[*COMPARISONS, "all"])
    parser.add_argument("--runs", type=positive, default=7, help="timed rounds (default 7)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--python", type=Path, default=DEFAULT_PYTHON,
                        help="the venv python that runs minict (default: the repo's .venv)")
    parser.add_argument("--plain-venv", action="store_true",
                        help="run every Python command through a venv that finds minict on a "
                        "plain sys.path entry, as an installed copy is found, instead of the "
                        "editable install's import hook (~20 ms per start)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: unpacking and launching need it")

    chosen = list(COMPARISONS) if args.comparison == "all" else [args.comparison]
    rows, failed = [], []
    load_before = os.getloadavg()[0]
    try:
        with contextlib.ExitStack() as stack:
            python = args.python
            if args.plain_venv:
                python = plain_venv(args.python, Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="minict-bench-venv."))))
            session = Session(python, stack)
            for name in chosen:
                print(f"bench: {name}", file=sys.stderr, flush=True)
                try:
                    rows += COMPARISONS[name](session, args.runs)
                except (BenchError, timing.CommandFailed) as err:
                    failed.append(name)
                    rows.append(Row(name, f"could not run: {first_line(err)}", "-"))
                    print(f"bench: {name} failed: {err}", file=sys.stderr)
                    if isinstance(err, timing.CommandFailed):
                        print(err.stderr[-3000:], file=sys.stderr)
    except (BenchError, RegistryError) as err:  # setting up or cleaning up
        failed.append("session")
        rows.append(Row("session", f"failed: {first_line(err)}", "-"))
        print(f"bench: {err}", file=sys.stderr)
    finder = ", minict on a plain sys.path line (--plain-venv)" if args.plain_venv else ""
    rows += [Row("machine", "load average (1 min) before, after",
                 f"{load_before:.1f}, {os.getloadavg()[0]:.1f}"),
             Row("machine", f"Python: {args.python}{finder}", "")]
    print_table(rows, args.markdown)
    if args.markdown:
        print(f"\n{args.runs} timed rounds after one warm-up round, {os.cpu_count()} CPUs; "
              "times are medians, ratios and differences are medians of per-round values.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
