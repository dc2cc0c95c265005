"""First-hour fixes of [compat]: tables at 80 columns, the state dirs, DNS debug lines.

Each of these was met by a new user following the README: list-containers
dropped the NAME column at 80 columns, images/ and containers/ appeared only
after some commands, and `--debug` was silent about a failed DNS lookup.
"""

import io
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from tests.support import ci
from tests.support.images import File, Image, write_layout
from tests.support.procs import read_terminal

# CSI and OSC sequences rich writes to a terminal (colours, cursor moves).
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

LONG_NAME = "n" + "-very-long-container-name" * 5 + "x" * 2  # 128 characters
LONG_IMAGE = "registry.example.com:5000/" + "team/" * 6 + "application-server:v1.2.3-with-a-long-tag"
LONG_COMMAND = ["/usr/local/bin/server", "--config", "/etc/server/" + "c" * 60 + ".yaml", "--verbose"]


def run_on_terminal(argv, env) -> tuple[int, str, str]:
    """Run `python -m minict ARGV` with stdout on a pseudo-terminal; return (status, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "minict", *argv], env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        output = read_terminal(master)
    finally:
        os.close(master)
    stderr = proc.stderr.read().decode()
    status = proc.wait(timeout=60)
    text = ANSI.sub("", output.decode())
    return status, text.replace("\r\n", "\n"), stderr


def add_container(minict_dir, name, image, args, status="exited", code=0):
    bundle = minict_dir / "containers" / name
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": args}}))
    (bundle / ".minict-complete").write_text(json.dumps(
        {"image": image, "created": "2026-12-01T21:07:16.123456Z"}))
    (bundle / "state.json").write_text(json.dumps({"status": status, "exitStatus": code}))


def squeezed(text: str) -> str:
    """`text` without blanks and line ends: a folded cell reads whole again."""
    return re.sub(r"\s+", "", text)


def column(out: str, header: str) -> str:
    """The text under `header` in every line of the table `out`, squeezed: its cells, folded or not."""
    lines = out.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    i = names.index(header)
    end = starts[i + 1] if i + 1 < len(starts) else None
    return squeezed("".join(line[starts[i]:end] for line in lines[2:]))


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_list_containers_table_keeps_every_name_whole(minict_dir, columns):
    add_container(minict_dir, LONG_NAME, LONG_IMAGE, LONG_COMMAND)
    add_container(minict_dir, "web", "busybox:latest", ["sh"], status="exited", code=137)
    env = dict(os.environ, MINICT_DIR=str(minict_dir), COLUMNS=str(columns))
    env.pop("MINICT_LOG_LEVEL", None)
    status, out, err = run_on_terminal(["list-containers", "--format", "table"], env)
    assert status == 0, err
    lines = out.splitlines()
    assert lines, out
    assert all(len(line) <= columns for line in lines), "\n" + out
    assert lines[0].split() == ["NAME", "IMAGE", "STATUS", "CREATED", "COMMAND"], out
    names, images = column(out, "NAME"), column(out, "IMAGE")
    assert names == LONG_NAME + "web" or names == "web" + LONG_NAME, "\n" + out
    assert squeezed(LONG_IMAGE) in images and "busybox:latest" in images, "\n" + out
    assert column(out, "STATUS") in ("exited(0)exited(137)", "exited(137)exited(0)"), "\n" + out
    assert column(out, "CREATED") == "2026-12-0121:07:16" * 2, "\n" + out
    assert column(out, "COMMAND").startswith("/usr/local/bin/server--config"), "\n" + out


@pytest.mark.parametrize("columns", [80, 100])
def test_list_images_table_fits_and_keeps_names(minict_dir, columns):
    long_repo = "localhost:5000/" + "group/" * 8 + "an-image-with-a-long-name"
    write_layout(minict_dir / "images" / long_repo, "a-long-tag-name-v1.2.3", Image([[File("a", b"a")]]))
    write_layout(minict_dir / "images" / "busybox", "latest", Image([[File("a", b"a")]]))
    env = dict(os.environ, MINICT_DIR=str(minict_dir), COLUMNS=str(columns))
    env.pop("MINICT_LOG_LEVEL", None)
    status, out, err = run_on_terminal(["list-images", "--format", "table"], env)
    assert status == 0, err
    assert all(len(line) <= columns for line in out.splitlines()), "\n" + out
    assert column(out, "NAME") == "busybox" + long_repo, "\n" + out
    assert column(out, "TAG") == "latest" + "a-long-tag-name-v1.2.3", "\n" + out


def test_table_cells_stay_escaped_when_folded(minict_dir):
    add_container(minict_dir, "evil", "busybox", ["sh", "-c", "\x1b]0;owned\x07[red]x[/red]" * 4])
    env = dict(os.environ, MINICT_DIR=str(minict_dir), COLUMNS="80")
    env.pop("MINICT_LOG_LEVEL", None)
    master_status, out, err = run_on_terminal(["list-containers", "--format", "table"], env)
    assert master_status == 0, err
    assert "owned" in out and "\x07" not in out and "\\x1b" in squeezed(out)
    assert "[red]" in squeezed(out)  # shown as text, not read as markup


@pytest.mark.parametrize("columns", [80, 100])
def test_pull_progress_rows_fit_on_one_line(monkeypatch, columns):
    # The bars rich draws for a pull on a terminal: every blob's row, its
    # status included, on one line of at most COLUMNS characters.
    from rich.console import Console

    from minict.image import progress as pull_progress

    monkeypatch.setenv("COLUMNS", str(columns))
    progress = pull_progress.RichProgress()
    task = progress.start("config", "sha256:" + "a" * 64, 1234)
    task.finish()
    running = progress.start("blob", "sha256:" + "b" * 64, 987_654_321, 123_456_789)
    running.advance(1000)
    time.sleep(0.3)
    running.advance(98_765_432)  # a transfer speed to show, as wide as it gets
    progress.skipped("blob", "sha256:" + "c" * 64, 999_999_999)
    out = io.StringIO()
    Console(file=out, width=columns, color_system=None).print(progress._progress.get_renderable())
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, "\n" + out.getvalue()
    assert all(len(line) <= columns for line in lines), "\n" + out.getvalue()
    assert lines[0].startswith("Copying config aaaaaaaaaaaa") and lines[0].rstrip().endswith("done")
    assert lines[2].rstrip().endswith("already exists"), lines[2]
    assert "MB/s" in lines[1], lines[1]


# -- images/ and containers/ after every command that uses the state -----------


STATE_COMMANDS = [
    ["list-images"], ["list-containers"], ["list-containers", "--format", "table"],
    ["pull", "--image", "127.0.0.1:1/nothing/here"], ["run", "--image", "not-pulled:1", "--name", "c1"],
    ["start", "--name", "nothere"], ["start", "--name=nothere"], ["--debug", "start", "--name", "nothere"],
    ["rm", "--name", "nothere"], ["rmi", "--image", "not-pulled:1"], ["prune", "--force"],
    ["inspect", "--name", "nothere"], ["exec", "--name", "nothere", "--", "true"],
]


@pytest.mark.parametrize("argv", STATE_COMMANDS, ids=" ".join)
def test_state_dirs_exist_after_every_state_command(minict, tmp_path, argv):
    fresh = tmp_path / "fresh" / "minict"
    minict(*argv, env={"MINICT_DIR": str(fresh)})
    for sub in ("images", "containers"):
        mode = os.stat(fresh / sub).st_mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700, (sub, oct(mode))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["start", "--help"], ["rm", "--help"],
                                  ["help"], ["help", "pull"], ["list-images", "--help"]], ids=" ".join)
def test_help_and_version_leave_minict_dir_absent(minict, tmp_path, argv):
    fresh = tmp_path / "fresh" / "minict"
    done = minict(*argv, env={"MINICT_DIR": str(fresh)})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "fresh").exists()


# -- --debug and a failed DNS lookup ---------------------------------------------


@pytest.mark.root  # unshare: an empty network namespace, where every lookup fails
def test_debug_line_for_failed_dns_lookup(minict_dir):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        ci.skip_or_fail("needs root and unshare for a network namespace")
    env = dict(os.environ, MINICT_DIR=str(minict_dir))
    env.pop("MINICT_LOG_LEVEL", None)
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "minict", "--debug", "pull", "--image",
                           "no-such-host.invalid/x"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].split()[2] == "fatal" and "no-such-host.invalid" in lines[-1], done.stderr
    debug = [line for line in lines[:-1] if line.split()[2:3] == ["debug"]]
    assert any("no-such-host.invalid" in line for line in debug), done.stderr
