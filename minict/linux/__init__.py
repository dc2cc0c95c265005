"""Every ctypes system call minict makes, and the readers of /proc beside them.

Python 3.11 has no os.unshare/os.setns and no mount, pivot_root or capset at
all, so they are called through libc here.  Each wrapper raises OSError with
errno, the system call's name and the path it acted on, so the one printed
line says which call failed and why.  The constants carry the man page they
come from; their values are the kernel's UAPI ones (the same on x86_64 and
aarch64 unless noted).

The package is split by subject (libc.py the binding, mount.py, paths.py,
process.py, bpf.py, procfs.py); callers use `linux.<name>` whatever the file.
"""

from minict.linux.bpf import *
from minict.linux.mount import *
from minict.linux.paths import *
from minict.linux.process import *
from minict.linux.procfs import *
