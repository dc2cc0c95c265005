"""Time commands alternately and summarise them by medians.

Each round runs every command once, in order, so slow drift of the machine
(page cache, disk discard after large deletions, other load) falls on all of
them alike.  A command's setup and teardown hooks run outside the timed span.
Each run is reaped with wait4(2), which also gives its peak resident set size.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class CommandFailed(Exception):
    """A timed command exited non-zero."""

    def __init__(self, command: "Command", argv: list[str], status: int, stderr: str):
        last = stderr.strip().splitlines()[-1:] or ["(no output)"]
        super().__init__(f"{command.label} exited {status}: {last[0][:200]}")
        self.command = command
        self.argv = argv
        self.stderr = stderr


@dataclass
class Command:
    """One command to time, and optional untimed hooks around each run.

    `argv` is a list, or a function of the run number (0, 1, ...) returning
    one, for commands that need a new container id or output directory per
    run; the hooks get the run number too.
    """

    label: str
    argv: Sequence[str] | Callable[[int], Sequence[str]]
    env: dict[str, str] | None = None
    setup: Callable[[int], None] | None = None
    teardown: Callable[[int], None] | None = None
    # Runs in the child between fork and exec (e.g. to enter a namespace).
    preexec: Callable[[], None] | None = None

    def argv_for(self, run: int) -> list[str]:
        return [str(a) for a in (self.argv(run) if callable(self.argv) else self.argv)]


@dataclass
class Sample:
    seconds: float
    max_rss_kib: int


@dataclass
class Results:
    """Samples per label, one per round, in round order."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def seconds(self, label: str) -> list[float]:
        return [s.seconds for s in self.samples[label]]

    def median(self, label: str) -> float:
        """Return the median wall time of `label`, in seconds."""
        return statistics.median(self.seconds(label))

    def ratio(self, label: str, baseline: str) -> float:
        """Return the median over rounds of label's time / baseline's time."""
        return statistics.median(
            a / b for a, b in zip(self.seconds(label), self.seconds(baseline), strict=True))

    def difference(self, label: str, baseline: str) -> float:
        """Return the median over rounds of label's time - baseline's time, in seconds."""
        return statistics.median(
            a - b for a, b in zip(self.seconds(label), self.seconds(baseline), strict=True))

    def max_rss_mib(self, label: str) -> float:
        """Return the largest peak RSS any run of `label` reached, in MiB."""
        return max(s.max_rss_kib for s in self.samples[label]) / 1024


def run_once(command: Command, run: int = 0) -> Sample:
    """Run `command` once with stdout discarded; return its wall time and peak RSS.

    Raise CommandFailed if it exits non-zero.
    """
    argv = command.argv_for(run)
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, env=command.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errors,
            preexec_fn=command.preexec)  # noqa: PLW1509 - the bench runs no threads
        # wait4 rather than wait(): its rusage holds this child's own peak RSS,
        # where getrusage(RUSAGE_CHILDREN) keeps the maximum over all children.
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise CommandFailed(command, argv, process.returncode,
                                errors.read().decode(errors="replace"))
    return Sample(elapsed, usage.ru_maxrss)


def alternate(commands: Sequence[Command], runs: int, warmup: int = 1) -> Results:
    """Run each command once per round for warmup + runs rounds; keep the last `runs`.

    The warm-up round fills caches (page cache, Python bytecode) and is discarded.
    """
    results = Results({c.label: [] for c in commands})
    for run in range(warmup + runs):
        for command in commands:
            if command.setup:
                command.setup(run)
            sample = run_once(command, run)
            if command.teardown:
                command.teardown(run)
            if run >= warmup:
                results.samples[command.label].append(sample)
        if run >= warmup:
            print(f"  round {run - warmup + 1}/{runs}: " + "  ".join(
                f"{label} {samples[-1].seconds * 1000:.0f} ms"
                for label, samples in results.samples.items()), file=sys.stderr, flush=True)
    return results
