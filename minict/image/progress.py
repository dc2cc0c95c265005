"""What a pull shows while it runs: bars on a terminal, one log line per blob otherwise.

rich (~100 ms to import) is loaded only for the bars, on a terminal.
"""

import sys

from minict import log


class PlainProgress:
    """One log line per blob (not a TTY): `Copying blob da7391352a9b done`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def start(self, kind: str, digest: str, size: int, done: int = 0) -> "PlainProgress._Task":
        return self._Task(kind, digest)

    def skipped(self, kind: str, digest: str, size: int) -> None:
        log.info(f"Copying {kind} {_short(digest)} skipped: already exists")

    class _Task:
        def __init__(self, kind, digest):
            self.kind, self.digest = kind, digest

        def advance(self, n: int) -> None:
            pass

        def restart(self, done: int) -> None:
            pass

        def finish(self) -> None:
            log.info(f"Copying {self.kind} {_short(self.digest)} done")


class QuietProgress(PlainProgress):
    """Nothing at all (--quiet)."""

    def skipped(self, kind, digest, size):
        pass

    class _Task(PlainProgress._Task):
        def finish(self):
            pass


class RichProgress:
    """A rich progress bar per blob on a TTY, like skopeo's."""

    def __init__(self):
        # Imported here: rich costs ~100 ms, paid only when a bar is shown.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        console = Console(stderr=True)

        def one_line():
            # A row that wraps is redrawn as two at every refresh: cut instead.
            return Column(no_wrap=True, overflow="ellipsis")

        # The text beside the bar takes up to ~70 columns ("Copying config
        # <12 hex>", "123.4/456.7 MiB", "123.4 MB/s", "already exists"): the
        # bar gets what is left, so a row fits on an 80-column terminal.
        self._progress = Progress(
            TextColumn("Copying {task.fields[kind]} {task.fields[short]}", table_column=one_line()),
            BarColumn(bar_width=max(6, min(40, console.width - 72)), table_column=one_line()),
            DownloadColumn(binary_units=True, table_column=one_line()),
            TransferSpeedColumn(table_column=one_line()),
            TextColumn("{task.fields[status]}", table_column=one_line()),
            console=console,
        )

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def start(self, kind: str, digest: str, size: int, done: int = 0):
        task = self._progress.add_task("", total=size, completed=done, kind=kind,
                                       short=_short(digest), status="")
        return self._Task(self._progress, task)

    def skipped(self, kind: str, digest: str, size: int) -> None:
        self._progress.add_task("", total=size, completed=size, kind=kind, short=_short(digest),
                                status="already exists")

    class _Task:
        def __init__(self, progress, task):
            self._progress, self._task = progress, task

        def advance(self, n: int) -> None:
            self._progress.advance(self._task, n)

        def restart(self, done: int) -> None:
            self._progress.update(self._task, completed=done)

        def finish(self) -> None:
            self._progress.update(self._task, status="done")


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def for_this_terminal():
    """The display for this pull: rich bars on a terminal, log lines otherwise, or nothing."""
    if log.quiet():
        return QuietProgress()
    if sys.stderr.isatty() and not log.debug_enabled():
        return RichProgress()
    return PlainProgress()
