"""A config.json's `linux.seccomp` made into BPF code by libseccomp, cached, and loaded.

The third stage of bundle/seccomp.py's pipeline (its docstring says why two
filters are stacked and why a cache).
"""

import contextlib
import errno as errnos
import os

from minict import fsutil, linux
from minict.bundle.seccomp import ARCHES, FLAGS, OPERATORS, SeccompError, check

# A default that lets calls through needs no ENOSYS for unknown ones (runc's
# isAllowAction: a tracer handles new calls itself).
_PERMISSIVE = {"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"}
# Numbers libseccomp's own tables may hold on the native architecture: real
# ones from 0, and its pseudo numbers (system calls other architectures have)
# from -10001 down (seccomp_syscall_resolve_num_arch(3)).
_NUMBERS = (range(1024), range(-10001, -10512, -1))


# -- OCI -> libseccomp -> BPF ----------------------------------------------------------

def binding():
    """Return libseccomp's Python module; raise SeccompError saying how to get it."""
    try:
        import seccomp as libseccomp
    except ImportError:
        raise SeccompError(
            "libseccomp's Python binding (module 'seccomp') is missing: install Debian's "
            "python3-seccomp and re-run 'make install' (it links the module into minict's "
            "venv), or run with --security-opt seccomp=unconfined") from None
    return libseccomp


class Program:
    """The filters of one `linux.seccomp` section: (seccomp(2) flags, BPF code) pairs."""

    def __init__(self, filters: list[tuple[int, bytes]]):
        self.filters = filters

    def load(self) -> None:
        """Install the filters on this process, in order; raise OSError."""
        for flags, code in self.filters:
            linux.seccomp_set_filter(code, flags)


def program(section: dict, cache: str | None = None) -> Program:
    """Return the filters `section` asks for (see the module docstring); raise SeccompError.

    libseccomp takes ~30 ms to generate them for x86_64 with its two 32-bit
    entries, as long as the rest of `start`: so the code is kept in the file
    `cache` (in the bundle), reused while the section and the libseccomp
    binding are the same.  System calls libseccomp does not know are
    skipped, as runc does: a profile may list calls newer than the library
    (they get ENOSYS then).
    """
    check(section)
    lib = binding()
    made_by = os.stat(lib.__file__)
    # What the code depends on; compared whole (hashing would cost an import).
    key = {"section": section, "machine": os.uname().machine,
           "binding": [lib.__file__, made_by.st_size, made_by.st_mtime_ns]}
    if cache is not None:
        try:
            stored = fsutil.load_json(cache)
            if stored.get("key") == key:
                return Program([(f, bytes.fromhex(c)) for f, c in stored["filters"]])
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # absent, unreadable or stale: build it again
    built = Program(_build(section, lib))
    if cache is not None:
        _store(cache, {"key": key, "filters": [[f, c.hex()] for f, c in built.filters]})
    return built


def _store(path: str, document: dict) -> None:
    """Replace `path` by `document` atomically; a failure only costs the next start time."""
    with contextlib.suppress(OSError):
        fsutil.write_json_atomic(path, document, fsync=False)


def _build(section: dict, lib) -> list[tuple[int, bytes]]:
    arches = [getattr(lib.Arch, ARCHES[a], None) for a in section.get("architectures") or []]
    if None in arches:
        missing = [a for a in section["architectures"] if not hasattr(lib.Arch, ARCHES[a])]
        raise SeccompError(f"this libseccomp cannot filter architecture {missing[0]}")
    flags = sum(FLAGS[f] for f in set(section.get("flags") or []))
    default = section["defaultAction"]
    profile = _new_filter(lib, _to_action(lib, default, section.get("defaultErrnoRet")), arches)
    names = set()
    for rule in section.get("syscalls") or []:
        action = _to_action(lib, rule["action"], rule.get("errnoRet"))
        for name in rule["names"]:
            names.add(name)
            _add(lib, profile, action, name, rule.get("args") or [])
    filters = [(flags, _export(profile))]
    if default not in _PERMISSIVE:
        known = _new_filter(lib, lib.ERRNO(errnos.ENOSYS), arches)
        for name in _known_names(lib) | names:
            _add(lib, known, lib.ALLOW, name, [])
        filters.append((flags, _export(known)))
    return filters


def _new_filter(lib, action, arches):
    syscall_filter = lib.SyscallFilter(action)
    # A binary tree rather than a chain of ~400 comparisons per call.
    syscall_filter.set_attr(lib.Attr.CTL_OPTIMIZE, 2)
    for arch in arches:
        if not syscall_filter.exist_arch(arch):
            syscall_filter.add_arch(arch)
    return syscall_filter


def _export(syscall_filter) -> bytes:
    """Return the filter's BPF code, as libseccomp would load it."""
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    with open(fd, "w+b") as file:
        syscall_filter.export_bpf(file)
        file.seek(0)
        return file.read()


def _to_action(lib, action: str, errno_ret):
    if action == "SCMP_ACT_ERRNO":
        return lib.ERRNO(errnos.EPERM if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_TRACE":
        return lib.TRACE(errnos.EPERM if errno_ret is None else errno_ret)
    return {"SCMP_ACT_KILL": lib.KILL, "SCMP_ACT_KILL_THREAD": lib.KILL,
            "SCMP_ACT_KILL_PROCESS": lib.KILL_PROCESS, "SCMP_ACT_TRAP": lib.TRAP,
            "SCMP_ACT_ALLOW": lib.ALLOW, "SCMP_ACT_LOG": lib.LOG}[action]


def _add(lib, syscall_filter, action, name: str, args) -> None:
    """Add one rule; several conditions on one argument become one rule each (runc's way)."""
    conditions = [lib.Arg(a["index"], getattr(lib, OPERATORS[a["op"]]), a.get("value", 0),
                          a.get("valueTwo", 0)) for a in args]
    indexes = [a["index"] for a in args]
    groups = [[c] for c in conditions] if len(set(indexes)) < len(indexes) else [conditions]
    for group in groups:
        try:
            syscall_filter.add_rule(action, name, *group)
        except RuntimeError as err:
            if not _is_known(lib, name):
                return  # newer than this libseccomp: skipped, as runc does
            raise SeccompError(f"seccomp rule for {name}: libseccomp refused it "
                               f"({os.strerror(_errno_of(err))})") from None
        except ValueError as err:
            raise SeccompError(f"seccomp rule for {name}: {err}") from None


_KNOWN: set[str] = set()


def _known_names(lib) -> set[str]:
    """Return the names of every system call libseccomp knows, on any architecture."""
    if not _KNOWN:
        for numbers in _NUMBERS:
            for number in numbers:
                try:
                    _KNOWN.add(lib.resolve_syscall(lib.Arch.NATIVE, number).decode())
                except ValueError:
                    pass
    return _KNOWN


def _is_known(lib, name: str) -> bool:
    scratch = lib.SyscallFilter(lib.ALLOW)
    try:
        scratch.add_rule(lib.ERRNO(errnos.EPERM), name)
    except RuntimeError:
        return False
    return True


def _errno_of(err: RuntimeError) -> int:
    """Return N of the binding's 'Library error (errno = -N)'; EINVAL if it has none."""
    text = str(err)
    digits = text[text.rfind("-") + 1:].rstrip(")").strip()
    return int(digits) if digits.isdigit() else errnos.EINVAL
