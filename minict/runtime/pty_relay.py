"""The container's own pseudo-terminal: the host terminal in raw mode, bytes copied both ways.

When all three of minict's standard streams are a terminal, the container
gets a pty of its own (init.py makes it in the container's devpts) and
minict copies between it and the host terminal, which is put in raw mode
for the time and restored after; window size changes follow (SIGWINCH,
launch.py).  Without a pty, streams.py relays pipes instead.
"""

import fcntl
import os
import select
import termios


class TerminalRelay:
    """Copy bytes between the host terminal and the container's pty master."""

    def __init__(self, master: int, poller):
        import tty

        self.master = master
        self.poller = poller
        self.pending = b""
        self.open = True
        self.saved = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)
        os.set_blocking(master, False)
        poller.register(0, select.POLLIN)
        poller.register(master, self._master_events())
        self.copy_window_size()

    def _master_events(self):
        return select.POLLIN | (select.POLLOUT if self.pending else 0)

    def copy_window_size(self) -> None:
        try:
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def on_event(self, fd: int, events: int) -> None:
        if fd == 0:
            data = os.read(0, 65536) if events & (select.POLLIN | select.POLLHUP) else b""
            if not data:
                self.poller.unregister(0)  # end of input: stop reading, keep showing output
            else:
                self.pending += data
        elif fd == self.master and self.open:
            if events & select.POLLOUT and self.pending:
                try:
                    self.pending = self.pending[os.write(self.master, self.pending):]
                except BlockingIOError:
                    pass
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._drain()
        if self.open:
            self.poller.modify(self.master, self._master_events())

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every slave descriptor is closed
                data = b""
            if not data:
                self.poller.unregister(self.master)
                self.open = False
                return
            _write_all(1, data)

    def close(self) -> None:
        termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
        os.close(self.master)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
