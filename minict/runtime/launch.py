"""The parent side of starting a container: fork, map ids, relay, wait.

Three processes take part (init.py holds the children's side):

    minict (P) --fork--> intermediate (I) --fork--> container init (C, PID 1)

I unshares the namespaces; C, being I's child, is the first process of the
new pid namespace.  I exits as soon as C exists; minict is a child subreaper,
so C becomes minict's own child and minict waits for it directly: its exit
status is the container's, with nothing in between.  For `exec`, I joins a
running container's namespaces and root instead of making new ones, and C
becomes the executed command (init.joiner); the messages are the same.

P and the children talk over one SOCK_SEQPACKET socket pair (one message per
send, and it can carry a descriptor).  The children's end is close-on-exec,
so its end-of-file tells P that C's execve succeeded.

    | from | message               | meaning                                              |
    |------|-----------------------|------------------------------------------------------|
    | I    | `userns`              | I has unshared; write my uid_map and gid_map          |
    | P    | `rootfs` + fd         | the rootfs, idmapped through I's user namespace, as a |
    |      |                       | detached mount (SCM_RIGHTS); only with --userns auto  |
    | P    | `mapped`              | the maps are written; go on                           |
    | I    | `netns`               | I has a new network namespace; set it up              |
    | P    | `networked`           | lo (and eth0) are configured; go on                   |
    | I    | `pid <n>`             | C is forked, its host pid is n; I exits               |
    | C    | `pty` + fd            | C's pty master (SCM_RIGHTS), only with a terminal     |
    | P    | `reaped`              | I is reaped and C is P's child: C may set PDEATHSIG   |
    | I, C | `error <status> <text>` | a step failed; the sender exits with <status>       |
    | C    | end of file           | execve succeeded (or every child is gone)            |

Streams: the container never gets a descriptor of the host's terminal, and
its processes start in a session of their own (init.py), without the host's
terminal as their controlling terminal.  With `process.terminal` and a
terminal on all of minict's descriptors 0-2, the container gets a pty from
its own devpts and minict relays bytes between it and the host terminal (pty_relay.py; raw
while the container runs, restored after).  Otherwise each of 0-2 that is a
terminal becomes a pipe minict copies (streams.py); the rest (files, pipes,
/dev/null) the container inherits, so redirections and `$(...)` work as for
any command.

While the container runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to
minict, by kill(2) or by its terminal (Ctrl-C), are passed on to it: being in
another session, it gets none of them from the terminal itself.  With a pty,
SIGWINCH passes the window size.
"""

import os
import select
import signal
import sys

from minict import linux, log, store
from minict.bundle import usermap
from minict.bundle.seccomp import SeccompError
from minict.errors import STAGE_PREFIXES, LaunchError
from minict.runtime import execute, init, pty_relay, seccomp_filter, streams, userns

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
WATCHED = FORWARDED + (signal.SIGCHLD, signal.SIGWINCH)
# Identity-map the whole id range: the container's root is the host's root
# for file access, while its capabilities count only inside its own user
# namespace (user_namespaces(7)).
WHOLE_RANGE = [{"containerID": 0, "hostID": 0, "size": 4294967295}]
_MESSAGE_MAX = 4096


def launch(bundle: str, config: dict, on_start=None, on_netns=None, *,
           join: int | None = None, cgroup=None) -> int:
    """Run the container of `bundle` (its parsed `config`) and return its exit status.

    With `join` (a descriptor of /proc/<pid> of a running container's init),
    run config's process inside that container instead (`exec`, init.joiner).

    `on_netns(pid)` is called when the process `pid` has unshared a new
    network namespace, before anything runs in it; `on_start(pid)` once the
    container's init exists.  `cgroup` (cgroups.Cgroup) gets I, and so
    every process of the container, before anything else happens in it:
    I moves itself in as its first step (init._enter_cgroup).
    Failures of minict or of the container's setup
    raise LaunchError; a command that cannot be executed is logged and gives
    126 or 127, as a shell would.
    """
    from _socket import AF_UNIX, SOCK_SEQPACKET, socketpair  # socket.py's enums cost ~3 ms

    process = config.get("process") or {}
    terminal = bool(process.get("terminal")) and all(os.isatty(fd) for fd in (0, 1, 2))
    syscall_filter = _syscall_filter(bundle, config)
    try:
        pipes = None if terminal else streams.Relay.for_terminals()
    except OSError as err:
        raise LaunchError(f"make pipes for the terminal's streams: {err.strerror}") from None
    ours, theirs = socketpair(AF_UNIX, SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    # Block the watched signals before forking: the children unblock them,
    # and here they wait in a signalfd until the container is running.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        linux.set_child_subreaper()
        intermediate = os.fork()
        if intermediate == 0:
            ours.close()
            if pipes is not None:
                _give_pipes(pipes)
            if join is not None:
                init.joiner(theirs, join, bundle, config, terminal, syscall_filter, cgroup)
            init.intermediate(theirs, bundle, config, terminal, syscall_filter, cgroup)
        theirs.close()
        if pipes is not None:
            pipes.close_child_ends()
        started = _handshake(ours, intermediate, bundle, config, on_netns)
        if started.error is not None:
            return _failed(started)
        try:
            if on_start is not None:
                on_start(started.pid)
            return _supervise(started.pid, started.master, pipes)
        except BaseException:
            _kill_and_reap(started.pid)
            raise
    finally:
        ours.close()
        if pipes is not None:
            pipes.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _syscall_filter(bundle: str, config: dict):
    """Build config.json's seccomp filter (None without one); raise LaunchError.

    Built here, before any fork, with the host's libseccomp binding: a
    filter minict cannot honour, or no binding, is one error line before
    anything starts, and the child only has to load it.
    """
    section = (config.get("linux") or {}).get("seccomp")
    if section is None:
        return None
    try:
        return seccomp_filter.program(section, store.bundle_file(bundle, store.SECCOMP_CACHE_NAME))
    except SeccompError as err:
        raise LaunchError(f"config.json's linux.seccomp: {err.message}") from None


def _give_pipes(pipes) -> None:
    """In the intermediate child: take the pipes' ends in place of the host's terminal."""
    try:
        pipes.give_to_child()
    except BaseException:  # noqa: BLE001 - a forked child must never return into minict
        os._exit(1)


class _Started:
    pid = None
    master = None
    error = None  # (status, text)


def _handshake(channel, intermediate: int, bundle: str, config: dict, on_netns) -> _Started:
    """Answer the children until execve (end of file); return what they told."""
    started = _Started()
    try:
        while True:
            try:
                data, ancillary, _, _ = channel.recvmsg(_MESSAGE_MAX, 64)
            except ConnectionResetError:
                # A child exited with a message of ours unread.  The kernel
                # reports that once, before what the child sent last (its
                # error, say), which the next recv returns; then end of file.
                continue
            if not data:
                break
            kind, _, rest = data.partition(b" ")
            if kind == b"userns":
                _write_id_maps(intermediate, config.get("linux") or {})
                if usermap.idmapped(config):
                    _send_idmapped_rootfs(channel, bundle, config, intermediate)
                _send(channel, b"mapped")
            elif kind == b"netns":
                if on_netns is not None:
                    on_netns(intermediate)
                _send(channel, b"networked")
            elif kind == b"pid":
                started.pid = int(rest)
                os.waitpid(intermediate, 0)
                intermediate = None
                _send(channel, b"reaped")
            elif kind == b"pty":
                started.master = int.from_bytes(ancillary[0][2][:4], "little")
            elif kind == b"error":
                status, _, text = rest.partition(b" ")
                started.error = (int(status), text.decode(errors="replace"))
    except BaseException:
        _kill_and_reap(intermediate, started.pid)
        raise
    if intermediate is not None:
        os.waitpid(intermediate, 0)
    if started.pid is None and started.error is None:
        started.error = (1, "the container's init process died before it started")
    return started


def _send(channel, message: bytes) -> None:
    """Send `message` to the children; if they are gone, what they said before tells why."""
    try:
        channel.send(message)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _write_id_maps(pid: int, linux_config: dict) -> None:
    """Write the child's uid_map and gid_map from config.json (or the identity map)."""
    uid_maps = linux_config.get("uidMappings") or _default_map(os.geteuid())
    gid_maps = linux_config.get("gidMappings") or _default_map(os.getegid())
    try:
        if os.geteuid() != 0:
            # Without CAP_SETGID in the parent namespace, gid_map may be
            # written only after setgroups is denied (user_namespaces(7)).
            _write_proc(pid, "setgroups", "deny")
        _write_proc(pid, "uid_map", _format_map(uid_maps))
        _write_proc(pid, "gid_map", _format_map(gid_maps))
    except OSError as err:
        raise LaunchError(f"write the user namespace's id maps: {err.strerror}") from None


def _send_idmapped_rootfs(channel, bundle: str, config: dict, pid: int) -> None:
    """Make the rootfs's idmapped mount for `pid`'s user namespace; pass it on the channel."""
    from _socket import SCM_RIGHTS, SOL_SOCKET

    rootfs = os.path.join(bundle, (config.get("root") or {}).get("path", "rootfs"))
    tree = userns.idmapped_rootfs(rootfs, pid)
    try:
        channel.sendmsg([b"rootfs"], [(SOL_SOCKET, SCM_RIGHTS, tree.to_bytes(4, "little"))])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child is gone; what it said before tells why
    finally:
        os.close(tree)


def _default_map(own_id: int) -> list[dict]:
    if os.geteuid() == 0:
        return WHOLE_RANGE
    return [{"containerID": 0, "hostID": own_id, "size": 1}]


def _format_map(mappings) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def _write_proc(pid: int, name: str, text: str) -> None:
    fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _kill_and_reap(*pids) -> None:
    for pid in pids:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                pass


def _failed(started: _Started) -> int:
    """Reap a container that failed before its command ran; raise or return 126/127."""
    status, text = started.error
    if started.pid is not None:
        os.waitpid(started.pid, 0)
    if started.master is not None:
        os.close(started.master)
    if status in (execute.NOT_EXECUTABLE, execute.NOT_FOUND):
        log.error(STAGE_PREFIXES["run"] + text)
        return status
    raise LaunchError(text)


def _supervise(pid: int, master: int | None, pipes) -> int:
    """Relay signals (and the terminal or the pipes) until the container exits; return its status."""
    sigfd = linux.signalfd(WATCHED)
    poller = select.poll()
    poller.register(sigfd, select.POLLIN)
    relay = pty_relay.TerminalRelay(master, poller) if master is not None else None
    if pipes is not None:
        pipes.attach(poller)
    status = None
    try:
        while status is None or (relay is not None and relay.open):
            ready = poller.poll(pipes.timeout if pipes is not None else None)
            if not ready and pipes is not None:
                pipes.on_timeout()
            for fd, events in ready:
                if fd == sigfd:
                    signals = linux.read_signals(sigfd)
                    if status is None:
                        status = _on_signals(signals, pid, relay)
                elif relay is not None:
                    relay.on_event(fd, events)
                elif pipes is not None:
                    pipes.on_event(fd, events)
        if pipes is not None:
            pipes.finish()
    finally:
        if relay is not None:
            relay.close()
        # Signals that came in after the exit must not hit minict itself
        # once they are unblocked.
        os.set_blocking(sigfd, False)
        try:
            while linux.read_signals(sigfd):
                pass
        except BlockingIOError:
            pass
        os.close(sigfd)
    return status


def _on_signals(signals, pid: int, relay) -> int | None:
    """Act on (signal, si_code) pairs; return the container's exit status once it is reaped."""
    status = None
    for signo, _ in signals:
        if signo == signal.SIGCHLD:
            # One read may hold two SIGCHLDs (the intermediate's, still
            # pending, and the container's): once reaped, never wait again.
            if status is not None:
                continue
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = _exit_status(raw)
        elif signo == signal.SIGWINCH:
            if relay is not None:
                relay.copy_window_size()
        else:
            # The container is in a session of its own: what the terminal
            # sends (a Ctrl-C, si_code SI_KERNEL) reaches it only through us.
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass
    if status is None:
        # SIGCHLDs coalesce: look once more in case one was merged away.
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = _exit_status(raw)
    return status


def _exit_status(raw: int) -> int:
    """Return the shell's view of a wait status: the code, or 128+N after signal N."""
    code = os.waitstatus_to_exitcode(raw)
    return 128 - code if code < 0 else code


