"""The devices cgroup of a container: config.json's device rules, enforced by the kernel.

Which cgroup version: v1 when the v1 devices controller is mounted, else v2.
MINICT_CGROUP_DEVICES=v1 or v2 overrides it (a hybrid machine has both).

The rules and their meaning are bundle/devices.py's.
"""

import collections
import os
import struct
import sys

from minict.bundle.devices import DeviceError, Rule, rules_of

ENV_VERSION = "MINICT_CGROUP_DEVICES"


# -- the cgroup -------------------------------------------------------------------

def cgroup_version() -> int:
    """Return 1 or 2: the devices cgroup minict uses here (MINICT_CGROUP_DEVICES overrides)."""
    from minict.runtime import cgroups

    wanted = os.environ.get(ENV_VERSION, "")
    if wanted in ("v1", "1"):
        return 1
    if wanted in ("v2", "2"):
        return 2
    if wanted:
        raise DeviceError(f"{ENV_VERSION}={wanted!r}: use v1 or v2")
    return 1 if "devices" in cgroups.hierarchies().v1 else 2


def create_cgroup(name: str, config: dict):
    """Create container `name`'s cgroup with config.json's device rules; return it (a Cgroup).

    Raise DeviceError or cgroups.CgroupError; nothing is left on failure.
    """
    from minict.runtime import cgroups

    rules = rules_of(config)
    version = cgroup_version()
    try:
        cgroup = cgroups.open_cgroup(name, {"devices": version})
    except cgroups.CgroupError as err:
        # `ip netns exec` mounts a sysfs of its own over /sys, hiding the
        # host's /sys/fs/cgroup: the likeliest reason none is found.
        raise DeviceError(f"devices cgroup: {err.message}",
                          hint="every container runs in a devices cgroup: mount the cgroup "
                          "file systems under /sys/fs/cgroup (`ip netns exec` hides them; "
                          f"`nsenter --net=/run/netns/NAME` does not), or set {ENV_VERSION}="
                          "v1 or v2 to choose the version") from None
    cgroup.create()
    try:
        directory = cgroup.directory("devices")
        if version == 1:
            _apply_v1(directory, rules)
        else:
            _apply_v2(directory, rules)
    except BaseException:
        cgroup.remove()
        raise
    return cgroup


def _apply_v1(directory, rules: list[Rule]) -> None:
    """Write the rules in order to devices.allow / devices.deny (cgroup-v1/devices.rst)."""
    for rule in rules:
        target = os.path.join(directory, "devices.allow" if rule.allow else "devices.deny")
        try:
            with open(target, "w") as f:
                f.write(rule.v1_line())
        except OSError as err:
            raise DeviceError(f"write {rule.v1_line()!r} to {target}: {err.strerror}") from None


def _apply_v2(directory, rules: list[Rule]) -> None:
    """Load the rules' eBPF program and attach it to the cgroup `directory`."""
    from minict import linux

    try:
        prog = linux.bpf_prog_load(linux.BPF_PROG_TYPE_CGROUP_DEVICE, encode(program(rules)),
                                   "MIT")
    except OSError as err:
        raise DeviceError(f"load the device filter: {err.strerror}") from None
    try:
        target = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.bpf_prog_attach(target, prog, linux.BPF_CGROUP_DEVICE, linux.BPF_F_ALLOW_MULTI)
        finally:
            os.close(target)
    except OSError as err:
        raise DeviceError(f"attach the device filter to {directory}: {err.strerror}") from None
    finally:
        os.close(prog)  # the attachment holds the program; rmdir of the cgroup frees both


# -- the eBPF program (cgroup v2) ----------------------------------------------------
#
# The kernel calls it for each open and mknod of a device node with struct
# bpf_cgroup_dev_ctx (linux/bpf.h): u32 access_type (device type in the low
# 16 bits, BPF_DEVCG_DEV_*; the accesses asked for in the high 16,
# BPF_DEVCG_ACC_*), u32 major, u32 minor.  It returns 1 to allow, 0 to deny.
#
#     r2 = type   r3 = accesses still undecided   r4 = major   r5 = minor
#     for each rule, last first:
#         if the rule does not match the device: next rule
#         allow rule: r3 &= ~its accesses; if r3 == 0: return 1
#         deny rule:  if r3 & its accesses: return 0
#     return 1                            (nothing decided the rest: allowed)

DEV_BLOCK, DEV_CHAR = 1, 2                      # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4        # BPF_DEVCG_ACC_*
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPE_CODE = {"b": DEV_BLOCK, "c": DEV_CHAR}

# Opcodes (linux/bpf_common.h, linux/bpf.h): class | operation | source.
LDX_W = 0x61          # BPF_LDX | BPF_MEM | BPF_W:   dst = *(u32 *)(src + off)
AND32_K = 0x54        # BPF_ALU | BPF_AND | BPF_K:   dst &= imm
RSH32_K = 0x74        # BPF_ALU | BPF_RSH | BPF_K:   dst >>= imm
MOV32_K = 0xB4        # BPF_ALU | BPF_MOV | BPF_K:   dst = imm
MOV32_X = 0xBC        # BPF_ALU | BPF_MOV | BPF_X:   dst = src
JNE_K = 0x55          # BPF_JMP | BPF_JNE | BPF_K:   if dst != imm: pc += off
JEQ_K = 0x15          # BPF_JMP | BPF_JEQ | BPF_K:   if dst == imm: pc += off
EXIT = 0x95           # BPF_JMP | BPF_EXIT:          return r0


# A namedtuple, not typing.NamedTuple: importing typing costs `start` ~2 ms.
class Insn(collections.namedtuple("Insn", "code dst src off imm", defaults=(0, 0, 0, 0))):
    """One eBPF instruction (struct bpf_insn): code, dst, src, off, imm (all but code 0 by default)."""

    __slots__ = ()


def program(rules: list[Rule]) -> list[Insn]:
    """Return the BPF_PROG_TYPE_CGROUP_DEVICE program that enforces `rules`."""
    insns = [
        Insn(LDX_W, dst=2, src=1, off=0), Insn(AND32_K, dst=2, imm=0xFFFF),   # r2 = type
        Insn(LDX_W, dst=3, src=1, off=0), Insn(RSH32_K, dst=3, imm=16),       # r3 = accesses
        Insn(LDX_W, dst=4, src=1, off=4),                                     # r4 = major
        Insn(LDX_W, dst=5, src=1, off=8),                                     # r5 = minor
    ]
    for rule in reversed(rules):
        insns += _block(rule)
    insns += [Insn(MOV32_K, dst=0, imm=1), Insn(EXIT)]
    return insns


def _block(rule: Rule) -> list[Insn]:
    """Return the instructions of one rule; each of its jumps goes to the next rule's."""
    block = []
    if rule.type != "a":
        block.append(Insn(JNE_K, dst=2, imm=_TYPE_CODE[rule.type]))
    if rule.major is not None:
        block.append(Insn(JNE_K, dst=4, imm=rule.major))
    if rule.minor is not None:
        block.append(Insn(JNE_K, dst=5, imm=rule.minor))
    bits = sum(_ACCESS_BITS[a] for a in rule.access)
    if rule.allow:
        block += [Insn(AND32_K, dst=3, imm=~bits & 7),   # these accesses are granted
                  Insn(JNE_K, dst=3, imm=0),             # others asked for: earlier rules say
                  Insn(MOV32_K, dst=0, imm=1), Insn(EXIT)]
    else:
        block += [Insn(MOV32_X, dst=1, src=3), Insn(AND32_K, dst=1, imm=bits),
                  Insn(JEQ_K, dst=1, imm=0),             # asks for nothing this rule denies
                  Insn(MOV32_K, dst=0, imm=0), Insn(EXIT)]
    # A jump's offset counts the instructions it skips: the rest of the block.
    return [insn._replace(off=len(block) - index - 1) if insn.code in (JNE_K, JEQ_K) else insn
            for index, insn in enumerate(block)]


def encode(insns: list[Insn]) -> bytes:
    """Return the instructions as the kernel reads them (8 bytes each, host byte order)."""
    out = bytearray()
    for insn in insns:
        # dst_reg and src_reg are 4-bit fields of one byte, dst first in memory order.
        regs = (insn.src << 4) | insn.dst if sys.byteorder == "little" else \
            (insn.dst << 4) | insn.src
        out += struct.pack("=BBhi", insn.code, regs, insn.off, insn.imm)
    return bytes(out)
