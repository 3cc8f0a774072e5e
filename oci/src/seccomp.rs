//! The agent's `RuntimeDefault` seccomp profile for runc: an allow-list in the spirit of
//! Docker's and containerd's default profiles, written for Flotilla.
//!
//! Anything not listed fails with `EPERM`. What a normal program needs is allowed: file and
//! directory I/O, memory management, signals, sockets (except `AF_VSOCK`), time, futexes,
//! epoll, AIO, System V and POSIX IPC (the container has its own IPC namespace). What is
//! left out is the kernel's attack surface and everything that reaches beyond the
//! container: mounts, namespaces (`unshare`, `setns`, `clone` with namespace flags), kernel
//! modules, `kexec`, `bpf`, `perf_event_open`, the keyring, `ptrace`, `userfaultfd`,
//! `io_uring`, setting the clock, swap, accounting, `reboot`, raw I/O ports,
//! `open_by_handle_at` and unsafe `personality` values.
//!
//! `clone3` fails with `ENOSYS` rather than `EPERM`: its flags live in memory where seccomp
//! cannot see them, and `ENOSYS` makes glibc fall back to `clone`, whose flags are checked.
//!
//! A capability granted to the container unlocks the syscalls it governs (as Docker does),
//! since the capability is what the kernel checks anyway: `CAP_SYS_ADMIN` unlocks mounts and
//! namespaces, `CAP_SYS_PTRACE` `ptrace`, `CAP_SYS_TIME` setting the clock, and so on.
//!
//! Syscall names that libseccomp does not know for an architecture (`mmap2` on x86_64,
//! `arch_prctl` on arm) are skipped by runc, so one list serves every architecture.
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};
use std::collections::BTreeSet;

/// The errno of a syscall the profile does not allow.
pub const EPERM: u32 = 1;
/// The errno of `clone3`, so that libcs fall back to `clone`.
pub const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: `clone` is allowed only with none of these set.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `socket(2)`'s address family for host/guest sockets (the hypervisor's side channel).
const AF_VSOCK: u64 = 40;

/// The `personality(2)` values a container may set (or query): `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, both, and `0xffffffff` (query). Others such as `ADDR_NO_RANDOMIZE` are refused.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Syscalls every container may make.
const ALLOWED: &[&str] = &[
    // Files and directories.
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "flock",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "lchown",
    "lchown32",
    "link",
    "linkat",
    "_llseek",
    "lseek",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    // Extended attributes.
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "fsetxattr",
    "getxattr",
    "getxattrat",
    "lgetxattr",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "removexattr",
    "removexattrat",
    "setxattr",
    "setxattrat",
    // Waiting for file descriptors and events.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "_newselect",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    // Asynchronous I/O (not io_uring).
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    // Memory.
    "brk",
    "cachestat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "mseal",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // Processes and threads (`clone` and `personality` are checked separately).
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setpgid",
    "setpriority",
    "setrlimit",
    "setsid",
    "sysinfo",
    "ugetrlimit",
    "uname",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    // Credentials (the kernel checks CAP_SETUID / CAP_SETGID).
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getuid",
    "getuid32",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setuid",
    "setuid32",
    // Signals.
    "kill",
    "pause",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
    // Futexes.
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    // Time (reading it; setting it needs CAP_SYS_TIME, below).
    "adjtimex",
    "alarm",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    // Sockets (`socket` itself is checked separately).
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
    // System V and POSIX IPC, confined to the container's IPC namespace.
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
];

/// Syscalls of one architecture family that its binaries need.
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const ARCH_ALLOWED: &[&str] = &["arch_prctl"];
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "sync_file_range2",
];
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
)))]
const ARCH_ALLOWED: &[&str] = &[];

/// Syscalls unlocked by a capability the container was granted.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (
        Capability::DacReadSearch,
        &["name_to_handle_at", "open_by_handle_at"],
    ),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (
        Capability::SysTime,
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "finit_module", "init_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::Syslog, &["syslog"]),
];

/// The architectures a filter covers: the build target's and the 32-bit ones its kernel can
/// also run (an x86_64 kernel runs i386 and x32 binaries, an arm64 kernel arm binaries).
pub fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "arm") {
        vec![Arch::ScmpArchArm]
    } else if cfg!(target_arch = "x86") {
        vec![Arch::ScmpArchX86]
    } else {
        // runc's native architecture only.
        Vec::new()
    }
}

/// The `RuntimeDefault` profile for a container holding `caps` (its bounding set).
pub fn runtime_default(caps: &Capabilities) -> Result<LinuxSeccomp, OciSpecError> {
    let sys_admin = caps.contains(&Capability::SysAdmin);

    let mut allowed: BTreeSet<&str> = ALLOWED.iter().chain(ARCH_ALLOWED).copied().collect();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            allowed.extend(names.iter().copied());
        }
    }
    if sys_admin {
        // Creating namespaces is what CAP_SYS_ADMIN is for.
        allowed.extend(["clone", "clone3"]);
    }

    let mut syscalls = vec![allow(allowed, Vec::new())];
    if !sys_admin {
        syscalls.push(allow(
            ["clone"],
            vec![arg(
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
            )?],
        ));
        syscalls.push(fail("clone3", ENOSYS));
    }
    syscalls.push(allow(
        ["socket"],
        vec![arg(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, None)?],
    ));
    // One rule per value: the conditions of a single rule must all hold.
    for value in PERSONALITIES {
        syscalls.push(allow(
            ["personality"],
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, value, None)?],
        ));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(EPERM));
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// An allow rule for `names` under `args` (all of which must hold).
fn allow<'a>(names: impl IntoIterator<Item = &'a str>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.into_iter().map(str::to_string).collect());
    rule.set_action(LinuxSeccompAction::ScmpActAllow);
    if !args.is_empty() {
        rule.set_args(Some(args));
    }
    rule
}

/// A rule failing `name` with `errno` (instead of the default EPERM).
fn fail(name: &str, errno: u32) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(vec![name.to_string()]);
    rule.set_action(LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(errno));
    rule
}

/// A condition on argument `index`. For `SCMP_CMP_MASKED_EQ`, `value` is the mask and
/// `value_two` what the masked argument must equal.
fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSeccompArg, OciSpecError> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(value_two) = value_two {
        arg = arg.value_two(value_two);
    }
    arg.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names an unconditional allow rule covers.
    fn unconditional(profile: &LinuxSeccomp) -> BTreeSet<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
            .flat_map(|r| r.names().iter().cloned())
            .collect()
    }

    /// Every rule naming `name`, as compact text.
    fn rules_for(profile: &LinuxSeccomp, name: &str) -> Vec<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .map(|r| {
                serde_json::to_string(&serde_json::json!({
                    "action": r.action(),
                    "errnoRet": r.errno_ret(),
                    "args": r.args(),
                }))
                .unwrap()
            })
            .collect()
    }

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    #[test]
    fn denies_by_default_with_eperm_for_the_build_architectures() {
        let p = runtime_default(&caps(&[])).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
    }

    #[test]
    fn allows_what_ordinary_programs_need() {
        let allowed = unconditional(&runtime_default(&caps(&[])).unwrap());
        for name in [
            "read",
            "write",
            "openat",
            "close",
            "mmap",
            "futex",
            "epoll_pwait",
            "rt_sigaction",
            "execve",
            "wait4",
            "connect",
            "accept4",
            "clock_gettime",
            "nanosleep",
            "rseq",
            "getrandom",
            "statx",
            "prctl",
            "setresuid",
            "exit_group",
        ] {
            assert!(allowed.contains(name), "{name} should be allowed");
        }
    }

    #[test]
    fn refuses_the_dangerous_syscalls() {
        let p = runtime_default(&caps(&[])).unwrap();
        let allowed = unconditional(&p);
        for name in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "ptrace",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "iopl",
            "ioperm",
            "open_by_handle_at",
            "userfaultfd",
            "lookup_dcookie",
            "quotactl",
            "nfsservctl",
            "io_uring_setup",
            "io_uring_enter",
            "chroot",
            "clone",
            "clone3",
            "personality",
            "socket",
        ] {
            assert!(
                !allowed.contains(name),
                "{name} must not be allowed unconditionally"
            );
        }
    }

    #[test]
    fn the_lists_are_consistent() {
        // No duplicates, and nothing gated by a capability is also allowed to everyone.
        let all: BTreeSet<_> = ALLOWED.iter().collect();
        assert_eq!(all.len(), ALLOWED.len());
        for (cap, names) in BY_CAPABILITY {
            for name in *names {
                assert!(
                    !all.contains(name),
                    "{name} is both allowed and gated by {cap}"
                );
            }
        }
    }

    #[test]
    fn checks_clone_flags_and_sends_clone3_to_clone() {
        let p = runtime_default(&caps(&[])).unwrap();
        expect_test::expect![[r#"
            [
                "{\"action\":\"SCMP_ACT_ALLOW\",\"args\":[{\"index\":0,\"op\":\"SCMP_CMP_MASKED_EQ\",\"value\":2114060288,\"valueTwo\":0}],\"errnoRet\":null}",
            ]
        "#]]
        .assert_debug_eq(&rules_for(&p, "clone"));
        assert_eq!(CLONE_NAMESPACE_FLAGS, 2_114_060_288);
        expect_test::expect![[r#"
            [
                "{\"action\":\"SCMP_ACT_ERRNO\",\"args\":null,\"errnoRet\":38}",
            ]
        "#]]
        .assert_debug_eq(&rules_for(&p, "clone3"));
        expect_test::expect![[r#"
            [
                "{\"action\":\"SCMP_ACT_ALLOW\",\"args\":[{\"index\":0,\"op\":\"SCMP_CMP_NE\",\"value\":40}],\"errnoRet\":null}",
            ]
        "#]]
        .assert_debug_eq(&rules_for(&p, "socket"));
        assert_eq!(rules_for(&p, "personality").len(), PERSONALITIES.len());
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let none = unconditional(&runtime_default(&caps(&[])).unwrap());
        let admin = runtime_default(&caps(&[Capability::SysAdmin])).unwrap();
        let with_admin = unconditional(&admin);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "sethostname",
        ] {
            assert!(!none.contains(name) && with_admin.contains(name), "{name}");
        }
        // With CAP_SYS_ADMIN clone is unconditional: no second, conflicting rule.
        assert_eq!(rules_for(&admin, "clone").len(), 1);
        assert_eq!(rules_for(&admin, "clone3").len(), 1);

        let ptrace = unconditional(&runtime_default(&caps(&[Capability::SysPtrace])).unwrap());
        assert!(ptrace.contains("ptrace") && ptrace.contains("process_vm_readv"));
        assert!(!ptrace.contains("mount"));

        let time = unconditional(&runtime_default(&caps(&[Capability::SysTime])).unwrap());
        assert!(time.contains("settimeofday") && time.contains("clock_settime"));

        // kexec stays out whatever the capabilities (the container would replace the host's kernel).
        let all = unconditional(
            &runtime_default(&crate::spec::ALL_CAPABILITIES.into_iter().collect()).unwrap(),
        );
        assert!(!all.contains("kexec_load") && !all.contains("io_uring_setup"));
    }
}
