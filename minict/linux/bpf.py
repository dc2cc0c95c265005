"""bpf(2): load an eBPF program and attach it to a cgroup (the v2 device filter).
"""

import ctypes
import os
import struct

from minict.linux.libc import check, libc, syscall_number

# -- bpf(2): load an eBPF program and attach it to a cgroup --------------------
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
# Let cgroups below (and above) attach programs of their own; all of them
# must allow an access (bpf(2), BPF_PROG_ATTACH; what runc and systemd use).
BPF_F_ALLOW_MULTI = 2
_BPF_LOG_SIZE = 64 * 1024


def bpf_prog_load(prog_type: int, instructions: bytes, license: str) -> int:
    """Load an eBPF program (8-byte instructions); return its close-on-exec descriptor.

    When the verifier refuses the program, the OSError's message carries the
    end of its log (bpf(2), BPF_PROG_LOAD).
    """
    code = ctypes.create_string_buffer(instructions, len(instructions))
    licence = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(_BPF_LOG_SIZE)
    # union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type: prog_type,
    # insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16], prog_ifindex, expected_attach_type.
    attr = struct.pack("IIQQIIQII16sII", prog_type, len(instructions) // 8,
                       ctypes.addressof(code), ctypes.addressof(licence), 1, _BPF_LOG_SIZE,
                       ctypes.addressof(log), 0, 0, b"minict", 0, 0)
    fd = libc.syscall(ctypes.c_long(syscall_number("bpf")), ctypes.c_int(BPF_PROG_LOAD),
                       attr, ctypes.c_uint(len(attr)))
    if fd == -1:
        errno = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(errno, f"bpf(BPF_PROG_LOAD): {os.strerror(errno)}"
                      + (f" ({' / '.join(verifier)})" if verifier else ""))
    return fd


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach the program `prog_fd` to the cgroup directory `target_fd` (BPF_PROG_ATTACH)."""
    # union bpf_attr for BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type,
    # attach_flags, replace_bpf_fd.
    attr = struct.pack("IIIII", target_fd, prog_fd, attach_type, flags, 0)
    check(libc.syscall(ctypes.c_long(syscall_number("bpf")), ctypes.c_int(BPF_PROG_ATTACH),
                         attr, ctypes.c_uint(len(attr))), "bpf(BPF_PROG_ATTACH)")
