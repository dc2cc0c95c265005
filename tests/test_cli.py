"""The command line contract: commands, help, version, list output, log lines, bad input."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from minict import log
from tests.support import ci, nobody
from tests.support.images import File, Image, push, write_layout
from tests.support.procs import run_importing

# The original's seven first, in its order, then what minict added ([manage]).
COMMANDS = ["pull", "run", "start", "rm", "list-containers", "list-images", "help, h",
            "exec", "rmi", "prune", "inspect"]
FATAL_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d fatal .+")
LONG_NAME = "n" * 129


def snapshot(root: Path) -> dict:
    """Return {relative path: what it is} for everything below `root` (and `root` itself)."""
    tree = {}
    paths = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        what = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISREG(st.st_mode):
            what += (hashlib.sha256(path.read_bytes()).hexdigest(),)
        elif stat.S_ISLNK(st.st_mode):
            what += (os.readlink(path),)
        tree[str(path.relative_to(root.parent))] = what
    return tree


def command_names(help_text: str) -> list[str]:
    """Return the command names listed under "Commands:" in `help_text`."""
    section = help_text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+(?:, \S+)*)  ", section, re.MULTILINE)]


# -- help and version ------------------------------------------------------


def test_help_lists_the_commands_in_the_originals_order(minict):
    done = minict("--help")
    assert done.returncode == 0, done.stderr
    assert "A minimal, easy-to-understand container runtime." in done.stdout
    assert command_names(done.stdout) == COMMANDS
    assert done.stderr == ""


@pytest.mark.parametrize("argv", [["h", "pull"], ["help", "pull"], ["pull", "--help"],
                                  ["pull", "-h"]])
def test_help_for_one_command(minict, argv):
    done = minict(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: minict pull [OPTIONS]")
    assert "Pull an image from Dockerhub or a different container registry." in done.stdout
    assert "--image" in done.stdout


@pytest.mark.parametrize("argv", [["help"], ["h"]])
def test_bare_help_lists_commands(minict, argv):
    done = minict(*argv)
    assert done.returncode == 0, done.stderr
    assert command_names(done.stdout) == COMMANDS


def test_no_command_shows_the_commands(minict):
    done = minict()
    # click's no-args usage (exit 2, on stderr); urfave/cli printed help and exited 0.
    assert done.returncode in (0, 2)
    assert command_names(done.stdout + done.stderr) == COMMANDS


@pytest.mark.parametrize("command", ["run", "start", "rm", "list-containers", "list-images"])
def test_every_command_has_help(minict, command):
    done = minict("help", command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: minict {command} [OPTIONS]")


def test_version(minict):
    import minict as package

    done = minict("--version")
    assert (done.returncode, done.stdout) == (0, f"minict version {package.__version__}\n")


# Our checkout and the venv's packages, for an interpreter outside the venv.
PYTHONPATH = f"{Path(__file__).parents[1]}:{sysconfig.get_path('purelib')}"


@pytest.fixture(scope="session")
def unprivileged_python():
    """(interpreter, PYTHONPATH) with which nobody runs minict, from any clone location."""
    # A clone under /root (0700) is unreadable to nobody: nobody.py copies what it needs.
    into = nobody.world_readable_tmp()
    try:
        yield nobody.python_for_nobody(PYTHONPATH, into / "site")
    except RuntimeError as e:
        ci.skip_or_fail(str(e))
    finally:
        shutil.rmtree(into)


HELP_ARGV = [["--help"], ["help", "run"], ["rm", "--help"], ["--version"]]


@pytest.mark.parametrize("argv", HELP_ARGV)
def test_help_creates_nothing(minict, tmp_path, argv):
    missing = tmp_path / "not-there" / "minict"
    done = minict(*argv, env={"MINICT_DIR": str(missing)})
    assert done.returncode == 0, done.stderr
    assert done.stdout
    assert not (tmp_path / "not-there").exists()


@pytest.mark.parametrize("argv", HELP_ARGV)
def test_help_needs_no_root(request, argv):
    env = dict(os.environ, MINICT_DIR="/nonexistent/minict", PYTHONDONTWRITEBYTECODE="1")
    python, kw = sys.executable, {}
    if os.geteuid() == 0:
        python, env["PYTHONPATH"] = request.getfixturevalue("unprivileged_python")
        kw = nobody.NOBODY
    done = subprocess.run([python, "-m", "minict", *argv], env=env, capture_output=True,
                          text=True, check=False, cwd="/", timeout=60, **kw)
    assert done.returncode == 0, done.stderr
    assert done.stdout and done.stderr == ""


# -- list output -----------------------------------------------------------


@pytest.mark.parametrize("command", ["list-images", "list-containers"])
def test_lists_are_empty_arrays_in_a_new_dir(minict, tmp_path, command):
    new = tmp_path / "new-minict-dir"
    done = minict(command, env={"MINICT_DIR": str(new)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_list_images_is_sorted_and_tab_indented(minict, minict_dir):
    images = minict_dir / "images"
    small = Image([[File("a", b"a")]])
    write_layout(images / "user" / "app", "1", small)
    write_layout(images / "busybox", "latest", small)
    write_layout(images / "busybox", "1.36", small)
    write_layout(images / "localhost:5000" / "team" / "app", "v1", small)
    done = minict("list-images")
    assert done.returncode == 0, done.stderr
    expected = ["busybox:1.36", "busybox:latest", "localhost:5000/team/app:v1", "user/app:1"]
    # Go's json.MarshalIndent(x, "", "\t"): one tab per level, no trailing spaces.
    assert done.stdout == "[\n" + ",\n".join(f'\t"{i}"' for i in expected) + "\n]\n"
    assert json.loads(done.stdout) == expected


def test_list_containers_is_sorted_and_tab_indented(minict, minict_dir):
    for name in ["web", "db", "a.1"]:
        (minict_dir / "containers" / name / "rootfs").mkdir(parents=True)
    (minict_dir / "containers" / "stray-file").write_text("not a container")
    done = minict("list-containers")
    assert done.returncode == 0, done.stderr
    assert done.stdout == '[\n\t"a.1",\n\t"db",\n\t"web"\n]\n'


# -- log lines -------------------------------------------------------------


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("level,shown", [(log.DEBUG, "debug"), (log.INFO, " info"),
                                         (log.WARN, " warn"), (log.ERROR, "error"),
                                         (log.FATAL, "fatal")])
def test_log_line_format(utc, level, shown):
    when = 1609877127  # 2021-01-05 20:05:27 UTC
    assert log.format_line(level, "Image pulled successfully.", when) == (
        f"2021/01/05 20:05:27 {shown} Image pulled successfully.")


def test_log_line_uses_local_time(utc):
    line = log.format_line(log.INFO, "x")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d  info x", line)
    stamp = time.mktime(time.strptime(line[:19], "%Y/%m/%d %H:%M:%S"))
    assert abs(stamp - time.time()) < 5


# -- bad input -------------------------------------------------------------


def populate(minict_dir: Path) -> None:
    """Give MINICT_DIR an image and a container, so 'unchanged' means something."""
    write_layout(minict_dir / "images" / "busybox", "latest", Image([[File("a", b"a")]]))
    bundle = minict_dir / "containers" / "existing"
    (bundle / "rootfs" / "etc").mkdir(parents=True)
    (bundle / "rootfs" / "etc" / "hostname").write_text("existing\n")
    (bundle / "config.json").write_text("{}")
    # What `--name ../../etc` would reach if names were not checked.
    (minict_dir.parent / "etc").mkdir(exist_ok=True)
    (minict_dir.parent / "etc" / "canary").write_text("still here\n")


NAMES = ["..", ".", "a/b", "../../etc", "", LONG_NAME, "-x", "a b", "/abs", "é"]
BAD_REFERENCES = ["FOO", "a//b", "x@sha256:1", "", "a:b:c", ":tag", "-a", " ubuntu"]

BAD_INPUT = (
    [pytest.param(["start", "--name", "ghost"], 1, id="start-unknown")]
    + [pytest.param(["rm", "--name", "ghost"], 1, id="rm-unknown")]
    + [pytest.param(["rm", "--force", "--name", "ghost"], 1, id="rm-force-unknown")]
    + [pytest.param(["rm", "--name", "n" * 128], 1, id="rm-unknown-128")]
    + [pytest.param(["pull", "--image", ref], 1, id=f"pull-ref-{ref!r}") for ref in BAD_REFERENCES]
    + [pytest.param(["run", "--image", ref, "--name", "c1"], 1, id=f"run-ref-{ref!r}")
       for ref in BAD_REFERENCES]
    + [pytest.param(["run", "--image", "not-pulled:1", "--name", "c1"], 1, id="run-not-pulled")]
    + [pytest.param([cmd, "--name", name], 1, id=f"{cmd}-name-{name!r}")
       for cmd in ("start", "rm") for name in NAMES]
    + [pytest.param(["run", "--image", "busybox", "--name", name], 1, id=f"run-name-{name!r}")
       for name in NAMES]
    + [pytest.param(["pull"], 2, id="pull-no-image"),
       pytest.param(["run", "--name", "c1"], 2, id="run-no-image"),
       pytest.param(["run", "--image", "busybox"], 2, id="run-no-name"),
       pytest.param(["start"], 2, id="start-no-name"),
       pytest.param(["rm"], 2, id="rm-no-name"),
       pytest.param(["rm", "--name"], 2, id="rm-name-no-value"),
       pytest.param(["pull", "--image", "a", "--jobs", "0"], 2, id="pull-jobs-0"),
       pytest.param(["list-images", "extra"], 2, id="list-images-extra-arg"),
       pytest.param(["list-containers", "--nope"], 2, id="list-containers-unknown-flag"),
       pytest.param(["nope"], 2, id="unknown-command"),
       pytest.param(["--nope"], 2, id="unknown-global-flag"),
       pytest.param(["help", "nope"], 1, id="help-nope"),
       pytest.param(["h", "nope"], 1, id="h-nope")]
)


def check_failure(done, code):
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == code, output
    if code == 1:
        lines = done.stderr.splitlines()
        assert lines and FATAL_LINE.match(lines[-1]), done.stderr
        assert done.stdout == ""


@pytest.mark.parametrize("argv,code", BAD_INPUT)
def test_bad_input_fails_cleanly_and_touches_nothing(minict, minict_dir, argv, code):
    populate(minict_dir)
    before = snapshot(minict_dir.parent)
    done = minict(*argv)
    check_failure(done, code)
    assert snapshot(minict_dir.parent) == before


def test_rm_dotdot_name_is_one_fatal_line(minict, minict_dir):
    populate(minict_dir)
    before = snapshot(minict_dir.parent)
    done = minict("rm", "--name", "../../etc")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert FATAL_LINE.match(line) and "../../etc" in line
    assert snapshot(minict_dir.parent) == before
    assert (minict_dir.parent / "etc" / "canary").read_text() == "still here\n"


# Every command, with MINICT_DIR a regular file or a path below one: no
# directory can be made or read there, whatever the user running the tests.
EVERY_COMMAND = [
    ["list-images"], ["list-containers"], ["start", "--name", "c1"], ["rm", "--name", "c1"],
    ["rm", "--force", "--name", "c1"], ["run", "--image", "busybox", "--name", "c1"],
    ["pull", "--image", "REGISTRY/test/small:latest", "--insecure"],
]


@pytest.mark.parametrize("where", ["file", "below-file"])
@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=lambda argv: argv[0] + "-" + argv[-1])
def test_unusable_minict_dir(minict, tmp_path, request, argv, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file, not a directory\n")
    target = blocker if where == "file" else blocker / "minict"
    if "pull" in argv:
        registry = request.getfixturevalue("registry")
        push(registry.url, registry.repo("test/small"), "latest", Image([[File("a", b"a")]]))
        argv = [a.replace("REGISTRY/test/small", registry.ref("test/small")) for a in argv]
    before = snapshot(tmp_path / "blocker")
    done = minict(*argv, env={"MINICT_DIR": str(target)})
    check_failure(done, 1)
    assert snapshot(tmp_path / "blocker") == before


# -- `start --name N` and `pull --image I` without click (minict/cli/main.py) -----------------


def _message(stderr: str) -> str:
    """The last log line without its time stamp."""
    return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["start", "--name", "ghost"], ["start", "--name=ghost"],
                                  ["start", "--name", "../x"], ["pull", "--image", "Upper/case"],
                                  ["pull", "--image=a//b"]])
def test_plain_start_or_pull_skips_click_and_says_what_click_path_says(minict_dir, argv):
    env = {**os.environ, "MINICT_DIR": str(minict_dir)}
    env.pop("MINICT_LOG_LEVEL", None)
    fast, imported = run_importing(["-m", "minict", *argv], env=env, stdin=subprocess.DEVNULL)
    assert "minict.cli.main" in imported and "click" not in imported
    messages = fast.stderr
    via_click = "import sys; from minict.cli import commands as cli; cli.main(sys.argv[1:])"
    slow = subprocess.run([sys.executable, "-c", via_click, *argv], check=False,
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert fast.returncode == slow.returncode == 1
    assert _message(messages) == _message(slow.stderr)
    assert "fatal" in _message(slow.stderr)


@pytest.mark.parametrize("argv", [["start", "--name", "ghost", "-h"], ["--debug", "start", "--name",
                                  "ghost"], ["start", "--name", "-h"], ["start", "--name"]])
def test_other_start_forms_go_through_click(minict, argv):
    done = minict(*argv)
    assert "Traceback" not in done.stderr
    if argv[-1] == "-h" and argv[-2] == "--name":
        assert done.returncode == 1 and "Invalid container name '-h'" in done.stderr
    elif "-h" in argv:
        assert done.returncode == 0 and "Usage: minict start" in done.stdout
    elif argv == ["start", "--name"]:
        assert done.returncode == 2 and "requires an argument" in done.stderr
    else:
        assert done.returncode == 1 and "does not exist" in done.stderr
