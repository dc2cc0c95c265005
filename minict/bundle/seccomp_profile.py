"""docker's default seccomp profile, as data (moby/profiles/seccomp v0.2.3, default.json).

In docker's format: rules may apply only with a capability, on an
architecture or from a kernel version on; seccomp.to_oci decides those for
a container.  Kept apart from seccomp.py's logic because it is long and only
changes when docker's profile does.
"""

import errno as errnos


def _rule(action: str, names: str, **extra) -> dict:
    return {"names": names.split(), "action": action, **extra}


_ALLOW = "SCMP_ACT_ALLOW"

# docker's default profile (moby/profiles/seccomp v0.2.3 default.json).
DEFAULT_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": errnos.EPERM,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64",
         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_MIPS64",
         "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]},
        {"architecture": "SCMP_ARCH_MIPS64N32",
         "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]},
        {"architecture": "SCMP_ARCH_MIPSEL64",
         "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]},
        {"architecture": "SCMP_ARCH_MIPSEL64N32",
         "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"]},
        {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
        {"architecture": "SCMP_ARCH_LOONGARCH64", "subArchitectures": None},
    ],
    "syscalls": [
        # Everything an ordinary program needs.  Absent, hence refused: keyctl,
        # add_key, request_key (the kernel keyring is not namespaced),
        # io_uring_*, userfaultfd, kexec_*, swapon, pivot_root, ...
        _rule(_ALLOW, """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
    chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
    fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr
    flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
    getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
    getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
    getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl
    io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup
    io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
    lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek
    lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
    mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
    mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock
    munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2
    pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
    recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
    renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
    rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
    sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
    setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
    sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount
    statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
    timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
    timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
    tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat
    utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev"""),
        # Since 4.8 seccomp runs after ptrace, so a tracer cannot skip the filter.
        _rule(_ALLOW, "process_vm_readv process_vm_writev ptrace",
              includes={"minKernel": "4.8"}),
        # Every socket family but AF_ALG (38) and AF_VSOCK (40).  On 32-bit x86
        # socket() may go through socketcall(2), whose arguments a filter cannot
        # see: there both families stay reachable (as under docker).
        _rule(_ALLOW, "socket", args=[{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]),
        _rule(_ALLOW, "socket", args=[{"index": 0, "value": 39, "op": "SCMP_CMP_EQ"}]),
        _rule(_ALLOW, "socket", args=[{"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]),
        # personality(2): only PER_LINUX, PER_LINUX32, UNAME26 combinations and the query.
        *[_rule(_ALLOW, "personality", args=[{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}])
          for v in (0x0, 0x8, 0x20000, 0x20008, 0xffffffff)],
        _rule(_ALLOW, "sync_file_range2 swapcontext", includes={"arches": ["ppc64le"]}),
        _rule(_ALLOW, "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint "
              "cacheflush set_tls", includes={"arches": ["arm", "arm64"]}),
        _rule(_ALLOW, "arch_prctl", includes={"arches": ["amd64", "x32"]}),
        _rule(_ALLOW, "modify_ldt", includes={"arches": ["amd64", "x32", "x86"]}),
        _rule(_ALLOW, "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
              includes={"arches": ["s390", "s390x"]}),
        _rule(_ALLOW, "riscv_flush_icache", includes={"arches": ["riscv64"]}),
        # The rest only with the capability that makes them useful.
        _rule(_ALLOW, "open_by_handle_at", includes={"caps": ["CAP_DAC_READ_SEARCH"]}),
        _rule(_ALLOW, """
    bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
    lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount
    open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
    umount umount2 unshare""", includes={"caps": ["CAP_SYS_ADMIN"]}),
        # Without CAP_SYS_ADMIN, clone may not make namespaces (CLONE_NEWNS |
        # NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET = 0x7e020000);
        # s390 passes the flags second.
        _rule(_ALLOW, "clone", args=[{"index": 0, "value": 0x7E020000,
                                      "op": "SCMP_CMP_MASKED_EQ"}],
              excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}),
        _rule(_ALLOW, "clone", args=[{"index": 1, "value": 0x7E020000,
                                      "op": "SCMP_CMP_MASKED_EQ"}],
              includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        # clone3 passes its flags in memory, out of a filter's reach: ENOSYS
        # makes the C library fall back to clone, whose flags are checked.
        _rule("SCMP_ACT_ERRNO", "clone3", errnoRet=errnos.ENOSYS,
              excludes={"caps": ["CAP_SYS_ADMIN"]}),
        _rule(_ALLOW, "reboot", includes={"caps": ["CAP_SYS_BOOT"]}),
        _rule(_ALLOW, "chroot", includes={"caps": ["CAP_SYS_CHROOT"]}),
        _rule(_ALLOW, "delete_module init_module finit_module",
              includes={"caps": ["CAP_SYS_MODULE"]}),
        _rule(_ALLOW, "acct", includes={"caps": ["CAP_SYS_PACCT"]}),
        _rule(_ALLOW, "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev "
              "ptrace", includes={"caps": ["CAP_SYS_PTRACE"]}),
        _rule(_ALLOW, "iopl ioperm", includes={"caps": ["CAP_SYS_RAWIO"]}),
        _rule(_ALLOW, "settimeofday stime clock_settime clock_settime64",
              includes={"caps": ["CAP_SYS_TIME"]}),
        _rule(_ALLOW, "vhangup", includes={"caps": ["CAP_SYS_TTY_CONFIG"]}),
        _rule(_ALLOW, "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
              includes={"caps": ["CAP_SYS_NICE"]}),
        _rule(_ALLOW, "syslog", includes={"caps": ["CAP_SYSLOG"]}),
        _rule(_ALLOW, "bpf", includes={"caps": ["CAP_BPF"]}),
        _rule(_ALLOW, "perf_event_open", includes={"caps": ["CAP_PERFMON"]}),
    ],
}
