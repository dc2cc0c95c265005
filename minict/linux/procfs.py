"""What proc(5) tells: the mount table, a process's state and start time, flock holders.

Reading files, not calling the kernel: no ctypes here.
"""

import collections
import os
import re

# -- the mount table: proc(5) /proc/self/mountinfo ----------------------------

# A namedtuple, not typing.NamedTuple: importing typing costs `start` ~2 ms.
class Mount(collections.namedtuple("Mount", "root point fstype source super_options")):
    """One line of /proc/self/mountinfo (proc(5)), unescaped.

    root: the directory of the file system mounted here; point: where it is
    mounted; fstype; source; super_options: the file system's own options
    ("rw,devices" for a v1 cgroup).
    """

    __slots__ = ()


def _unescape(field: bytes) -> str:
    # Space, tab, newline and backslash are written as octal escapes (proc(5)).
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def mount_table() -> list[Mount]:
    """Return the mounts of this mount namespace in /proc/self/mountinfo order; raise OSError."""
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            # Optional fields run from the 7th up to a lone "-".
            tail = fields.index(b"-", 6)
            found.append(Mount(_unescape(fields[3]), _unescape(fields[4]),
                               _unescape(fields[tail + 1]), _unescape(fields[tail + 2]),
                               _unescape(fields[tail + 3]) if len(fields) > tail + 3 else ""))
    return found


def mounts_below(base: str) -> list[str]:
    """Return the mount points at or below `base` in /proc/self/mountinfo; raise OSError."""
    prefix = base.rstrip("/") + "/"
    return [m.point for m in mount_table() if m.point == base or m.point.startswith(prefix)]



# -- processes by pid: proc(5) /proc/<pid>/stat and /proc/locks, pidfds ---------

# Field 3 (R, S, D, T stopped, Z zombie...), field 4 and field 22 (clock ticks after boot).
ProcessStat = collections.namedtuple("ProcessStat", "state ppid start_time")


def process_stat(pid: int) -> ProcessStat | None:
    """Return the state, parent and start time of process `pid`, or None if there is none.

    A pid names a process only until it is reaped; the pair (pid, start time)
    names one for good, which is how runc recognises its container's init
    (libcontainer's initProcessStartTime) and how minict does.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return ProcessStat(fields[0].decode(), int(fields[1]), int(fields[19]))


def flock_holder(path) -> int | None:
    """Return the pid that holds a flock(2) on the file `path`, or None (proc(5), /proc/locks).

    The kernel shows the pid of the process that took the lock (in our pid
    namespace), even if children inherited the descriptor since.
    """
    try:
        st = os.stat(path)
        with open("/proc/locks", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 00:1d:393 0 EOF"; waiters show "->" after the number.
        words = line.split()
        if len(words) >= 6 and words[1] == "FLOCK" and words[5] == wanted:
            pid = int(words[4])
            return pid if pid > 0 else None  # 0: a process of a pid namespace we cannot see
    return None
