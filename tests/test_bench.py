"""The benchmark's own machinery: alternation, summaries, mirror lookup, tree comparison."""

import os
import sys

import pytest

from bench import image, timing, trees


def test_alternate_runs_each_command_once_per_round_with_hooks(tmp_path):
    log = tmp_path / "log"

    def note(text):
        return lambda run: log.open("a").write(f"{text}{run}\n")

    commands = [
        timing.Command("a", lambda run: ["sh", "-c", f"echo a{run} >> {log}"],
                       setup=note("setup-a"), teardown=note("teardown-a")),
        timing.Command("b", ["sh", "-c", f"echo b >> {log}"]),
    ]
    results = timing.alternate(commands, runs=2, warmup=1)

    assert log.read_text().split() == [
        "setup-a0", "a0", "teardown-a0", "b",
        "setup-a1", "a1", "teardown-a1", "b",
        "setup-a2", "a2", "teardown-a2", "b",
    ]
    assert [len(results.samples[label]) for label in ("a", "b")] == [2, 2]
    assert all(sample.max_rss_kib > 0 for sample in results.samples["a"])


def test_summaries_are_medians_of_per_round_values():
    results = timing.Results({
        "x": [timing.Sample(s, 1024) for s in (2.0, 9.0, 4.0)],
        "y": [timing.Sample(s, 2048) for s in (1.0, 3.0, 1.0)],
    })
    assert results.median("x") == 4.0
    assert results.ratio("x", "y") == 3.0  # per round: 2, 3, 4
    assert results.difference("x", "y") == 3.0  # per round: 1, 6, 3
    assert results.max_rss_mib("y") == 2.0


def test_a_failing_command_raises_with_its_stderr():
    with pytest.raises(timing.CommandFailed, match="boom exited 3: it broke"):
        timing.run_once(timing.Command("boom", ["sh", "-c", "echo it broke >&2; exit 3"]))


def test_peak_rss_is_the_commands_own(tmp_path):
    small = timing.run_once(timing.Command("small", ["true"]))
    big = timing.run_once(timing.Command(
        "big", [sys.executable, "-c", "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"]))
    assert big.max_rss_kib > 200 * 1024 > small.max_rss_kib


@pytest.mark.parametrize("name, text", [
    ("debian.sources",
     ("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
      "Components: main\n\n"
      "Types: deb\nEnabled: no\nURIs: http://disabled.example/debian\nSuites: bookworm\n\n"
      "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\n"
      "Suites: bookworm bookworm-updates\nComponents: main\n")),
    ("sources.list",
     ("# deb http://wrong.example/debian bookworm main\n"
      "deb http://mirror.example/debian-security bookworm-security main\n"
      "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")),
])
def test_debian_mirror_reads_both_apt_source_formats(tmp_path, monkeypatch, name, text):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / name).write_text(text)
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://wrong.example/debian bookworm main\n")
    monkeypatch.setattr(image, "APT_SOURCES", [tmp_path / "sources.list", tmp_path / "sources.list.d"])
    assert image.debian_mirror() == "http://mirror.example/debian"


def test_debian_mirror_without_the_suite_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    monkeypatch.setattr(image, "APT_SOURCES", [tmp_path / "sources.list"])
    with pytest.raises(image.BenchError, match="no apt source for Debian bookworm"):
        image.debian_mirror()


def _same_mtimes(*roots):
    # Whole seconds are compared: pin them, so a second boundary between the
    # two trees' writes cannot make them differ.
    for root in roots:
        for path in sorted(root.rglob("*"), reverse=True):
            os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)


def test_trees_differ_in_mode_link_target_and_missing_entries(tmp_path):
    left, right = tmp_path / "left", tmp_path / "right"
    for root in (left, right):
        (root / "dir").mkdir(parents=True)
        (root / "dir" / "file").write_text("same")
        os.symlink("file", root / "dir" / "link")
    _same_mtimes(left, right)
    assert trees.differences(left, right) == []

    (right / "dir" / "file").chmod(0o600)
    (right / "dir" / "link").unlink()
    os.symlink("elsewhere", right / "dir" / "link")
    (left / "only-left").write_text("")
    _same_mtimes(left, right)
    assert trees.differences(left, right) == ["dir/file", "dir/link", "only-left"]
    os.utime(right / "dir", (2_000_000, 2_000_000))
    assert trees.differences(left, right) == ["dir", "dir/file", "dir/link", "only-left"]
