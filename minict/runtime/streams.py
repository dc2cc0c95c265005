"""The container's standard streams without a pty: pipes in place of the host's terminal.

A container must never hold a descriptor of the host's terminal.  With one,
ioctl(TIOCSTI) pushes a line into the input of the shell that started
minict, which runs it as root once minict exits, and the rest of
tty_ioctl(4) acts on the host's terminal too.  So each of minict's
descriptors 0-2 that is a terminal is replaced, for the container, by a
pipe, and minict copies between the two (as the docker client does without
-t).  What is not a terminal (a file, a pipe, /dev/null) the container
inherits as it is, so redirections and `$(...)` work as for any command.

    fd 0 a terminal     terminal -> pipe -> the container's stdin; the end of
                        input (Ctrl-D) closes the pipe
    fd 1, 2 terminals   the container's stdout, stderr -> pipe -> terminal;
                        one pipe when both are the same terminal, so that
                        their order is kept

Back-pressure, never a growing buffer: at most one read (64 KiB) per stream
waits in minict, and until it is written minict reads nothing more from
that source.  A container that floods a terminal nobody reads blocks in its
own write; a container that never reads leaves the typed input where it is.

minict writes and reads the terminal through descriptors of its own
(re-opened through /proc/self/fd), made non-blocking there: setting
O_NONBLOCK on the inherited ones would change them for the shell too.

Job control: a process that reads its terminal from a background process
group is stopped (SIGTTIN).  So minict reads the terminal only while its
process group is the terminal's foreground one; in the background it leaves
the input to the shell and looks again every PARKED_RECHECK_MS.

launch.py owns the order: for_terminals() before fork, give_to_child() in the
child, close_child_ends() in the parent, then attach(), on_event() and
finish() while it supervises.
"""

import fcntl
import os
import select
import termios

_CHUNK = 65536
PARKED_RECHECK_MS = 250
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR


class Relay:
    """Pipes standing in for the host's terminal on some of descriptors 0-2, and their copying."""

    def __init__(self):
        self.child_fds = {}  # 0, 1 or 2 -> the pipe end the container gets there
        self.copies = []
        self._ours = []  # every descriptor this relay opened
        self.poller = None

    @classmethod
    def for_terminals(cls) -> "Relay | None":
        """Make a pipe for each of descriptors 0-2 that is a terminal; None if none is."""
        ttys = [fd for fd in (0, 1, 2) if os.isatty(fd)]
        if not ttys:
            return None
        relay = cls()
        try:
            if 0 in ttys:
                read_end, write_end = relay._pipe()
                os.set_blocking(write_end, False)  # ours; the container's end stays blocking
                relay.child_fds[0] = read_end
                relay.copies.append(_Copy(relay._reopen(0, os.O_RDONLY), write_end,
                                          is_input=True))
            outputs = [fd for fd in (1, 2) if fd in ttys]
            shared = outputs == [1, 2] and _same_file(1, 2)
            for fd in [1] if shared else outputs:
                read_end, write_end = relay._pipe()
                os.set_blocking(read_end, False)
                relay.child_fds[fd] = write_end
                relay.copies.append(_Copy(read_end, relay._reopen(fd, os.O_WRONLY),
                                          blocking_destination=fd))
            if shared:  # stderr shares stdout's pipe: what the two say stays in order
                relay.child_fds[2] = relay.child_fds[1]
        except BaseException:
            relay.close()
            raise
        return relay

    def _pipe(self) -> tuple[int, int]:
        # Above 2 even when minict runs with one of 0-2 closed: the pipe must
        # not take the place of a stream it stands in for.
        ends = []
        for fd in os.pipe2(os.O_CLOEXEC):
            if fd <= 2:
                moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                os.close(fd)
                fd = moved
            ends.append(fd)
            self._ours.append(fd)
        return ends[0], ends[1]

    def _reopen(self, fd: int, mode: int) -> int:
        """Return a non-blocking descriptor of the terminal on `fd` that is minict's alone."""
        try:
            ours = os.open(f"/proc/self/fd/{fd}", mode | os.O_NOCTTY | os.O_NONBLOCK
                           | os.O_CLOEXEC)
        except OSError:
            # No /proc, or a terminal that refuses a second open: share the
            # caller's description, blocking (a slow terminal then stalls us).
            ours = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        self._ours.append(ours)
        return ours

    # -- around fork ---------------------------------------------------------------

    def give_to_child(self) -> None:
        """In the forked child: put the pipe ends on 0-2 and close every other descriptor of ours."""
        for target, fd in self.child_fds.items():
            os.dup2(fd, target)  # the copy on 0-2 is inheritable: it survives execve
        for fd in self._ours:
            os.close(fd)
        self._ours = []

    def close_child_ends(self) -> None:
        """In minict after fork: drop the container's ends, so that its exit is our end of file."""
        for fd in set(self.child_fds.values()):
            self._close(fd)

    # -- while the container runs ----------------------------------------------------

    def attach(self, poller) -> None:
        """Start copying: register what each copy waits for with `poller`."""
        self.poller = poller
        for copy in self.copies:
            self._arm(copy)

    @property
    def timeout(self) -> int | None:
        """How long supervision may wait in poll (ms): parked input is looked at again."""
        return PARKED_RECHECK_MS if any(c.parked for c in self.copies) else None

    def on_timeout(self) -> None:
        for copy in self.copies:
            if copy.parked:
                copy.parked = False
                self._arm(copy)

    def on_event(self, fd: int, events: int) -> None:
        """Move what `events` on `fd` (one of ours) allow; never block."""
        for copy in self.copies:
            if fd == copy.source and copy.waiting_for == "source":
                self._read(copy)
            elif fd == copy.destination and copy.waiting_for == "destination":
                self._write(copy)
            else:
                continue
            self._arm(copy)
            return

    def _read(self, copy) -> None:
        if copy.is_input and not _in_foreground(copy.source):
            copy.parked = True
            return
        try:
            data = os.read(copy.source, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal hung up, or our process group is orphaned
            data = b""
        if not data:
            copy.source_open = False
        elif copy.destination_open:
            copy.pending = data  # else the reader is gone: keep draining, drop it

    def _write(self, copy) -> None:
        try:
            written = os.write(copy.destination, copy.pending)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the container closed its stdin; EIO: the terminal is gone
            copy.pending = b""
            copy.destination_open = False
            if copy.is_input:
                copy.source_open = False  # nobody takes input any more: stop reading it
            return
        copy.pending = copy.pending[written:]

    def _arm(self, copy) -> None:
        """Register the one descriptor `copy` waits for now; close what it is done with."""
        for fd in (copy.source, copy.destination):
            if fd in copy.registered:
                self.poller.unregister(fd)
                copy.registered.discard(fd)
        if copy.pending and copy.destination_open:
            copy.waiting_for = "destination"
            self.poller.register(copy.destination, _WRITABLE)
            copy.registered.add(copy.destination)
        elif copy.source_open and not copy.parked:
            copy.waiting_for = "source"
            self.poller.register(copy.source, _READABLE)
            copy.registered.add(copy.source)
        else:
            copy.waiting_for = None
            if not copy.source_open and copy.is_input:
                # End of input and all of it delivered: the container reads end of file.
                self._close(copy.destination)
                copy.destination_open = False

    # -- after the container exited -----------------------------------------------

    def finish(self) -> None:
        """Write out what the container left in its output pipes, then close everything.

        Only what is in a pipe now: the container's processes are gone, but
        an exec'd command's children may still hold the pipe and write on.
        """
        for copy in self.copies:
            if copy.is_input or copy.blocking_destination is None:
                continue
            _write_all(copy.blocking_destination, copy.pending)
            copy.pending = b""
            if not copy.source_open:
                continue
            left = _available(copy.source)
            while left > 0:
                try:
                    data = os.read(copy.source, min(left, _CHUNK))
                except OSError:
                    break
                if not data:
                    break
                left -= len(data)
                _write_all(copy.blocking_destination, data)
        self.close()

    def close(self) -> None:
        """Close every descriptor of ours (idempotent)."""
        for fd in list(self._ours):
            self._close(fd)

    def _close(self, fd: int) -> None:
        if fd in self._ours:
            self._ours.remove(fd)
            for copy in self.copies:
                if fd in copy.registered:
                    copy.registered.discard(fd)
                    self.poller.unregister(fd)
            os.close(fd)


class _Copy:
    """One direction: `source` -> `destination`, with at most one read waiting in `pending`."""

    def __init__(self, source: int, destination: int, *, is_input=False,
                 blocking_destination=None):
        self.source = source
        self.destination = destination
        # Input reads the terminal: only while in its foreground process group.
        self.is_input = is_input
        # Output: the caller's own (blocking) descriptor, for the last writes.
        self.blocking_destination = blocking_destination
        self.pending = b""
        self.source_open = True
        self.destination_open = True
        self.parked = False
        self.waiting_for = None
        self.registered = set()


def _same_file(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino, first.st_rdev) == (second.st_dev, second.st_ino,
                                                           second.st_rdev)


def _in_foreground(fd: int) -> bool:
    """Return whether our process group may read the terminal `fd` without being stopped."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # ENOTTY: not our controlling terminal, so no job control applies
        return True


def _available(fd: int) -> int:
    """Return how many bytes wait in the pipe `fd` (FIONREAD, pipe(7))."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
    except OSError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to the blocking `fd`; drop it if the terminal is gone."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass
