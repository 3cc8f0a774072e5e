//! OCI runtime specs: the `config.json` runc runs a pod's container from, built from the pod,
//! the container, the image's config and the prepared rootfs.
//!
//! The result follows what Kubernetes asks of containerd, hardened by default much like the
//! `restricted` Pod Security Standard:
//!
//! - **process**: `command` replaces the image's Entrypoint (and drops its Cmd), `args`
//!   replaces Cmd. The environment is the image's, a default `PATH`, `HOSTNAME`, then the
//!   pod's (later wins). The working directory is the container's, the image's or `/`.
//! - **user**: `runAsUser`/`runAsGroup` (container over pod) over the image's `User`, resolved
//!   against the rootfs' `/etc/passwd` and `/etc/group` — read without following symlinks, so
//!   that a hostile image cannot point them at the host's files. Supplementary groups are the
//!   primary group, the user's groups in `/etc/group`, `supplementalGroups` and `fsGroup`.
//!   `runAsNonRoot` refuses uid 0.
//! - **hardening**: no capabilities unless added, `noNewPrivileges` unless
//!   `allowPrivilegeEscalation`, the `RuntimeDefault` seccomp allow-list ([`crate::seccomp`])
//!   unless `Unconfined`, containerd's masked and read-only `/proc` and `/sys` paths, a
//!   read-only `/sys`, a device cgroup denying all but runc's default devices, and
//!   optionally a read-only rootfs. `privileged` lifts all of it and exposes the host's
//!   devices; whether a pod may be privileged is decided before this module is reached.
//! - **namespaces**: new pid, ipc, uts, mount, cgroup and network namespaces (or the given
//!   network namespace); `hostNetwork` (which also shares the host's UTS namespace, as in
//!   Kubernetes), `hostPID` and `hostIPC` share the host's instead.
//! - **resources**: memory limit without swap, CFS quota from `limits.cpu`, shares from
//!   `requests.cpu`, a pids limit, the cgroup path, and kubelet's QoS `oom_score_adj`. runc
//!   maps these to cgroup v1 or v2, whichever the host runs.
use crate::seccomp;
use flotilla_proto::api::{Container, Pod, PodSecurityContext, PodSpec, SecurityContext};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A host path bind-mounted into the container (a volume, `/etc/hosts`, `/etc/resolv.conf`...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    /// An absolute path in the container.
    pub destination: String,
    pub read_only: bool,
}

/// Everything a container's runtime spec is built from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    /// The image config's `config` section (Entrypoint, Cmd, Env, WorkingDir, User).
    pub image: Option<&'a oci_spec::image::Config>,
    /// The prepared rootfs directory (runc's `root.path`); `/etc/passwd` and `/etc/group`
    /// are read from it.
    pub rootfs: &'a Path,
    /// The pod's resolved environment; overrides image variables of the same name.
    pub env: &'a [(String, String)],
    /// Volumes, `/etc/hosts`, `/etc/resolv.conf`, ... as bind mounts.
    pub mounts: &'a [BindMount],
    /// The network namespace to join; `None` (without `hostNetwork`) gives a new, empty one.
    pub netns: Option<&'a Path>,
    /// The container's cgroup, e.g. `/flotilla/<container id>`.
    pub cgroups_path: &'a str,
    /// The most processes and threads the container may have; 0 or less for no limit.
    pub pids_limit: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A pod or container field that cannot be honoured; `field` is its path in the pod's
    /// spec, e.g. `containers[web].securityContext.runAsNonRoot`.
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    /// An image `User` that does not resolve against the rootfs' `/etc/passwd` and `/etc/group`.
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
    /// `/etc/passwd` or `/etc/group` of the rootfs cannot be read (safely).
    #[error("{path} in the rootfs: {reason}")]
    Rootfs { path: String, reason: String },
    #[error("building the runtime spec: {0}")]
    Oci(#[from] OciSpecError),
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The `PATH` of a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from unprivileged containers (containerd's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in unprivileged containers (containerd's defaults).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability, indexed by its number in the kernel (`CAP_CHOWN` is 0): what a
/// privileged container and `capabilities.add: [ALL]` get, less what the agent itself cannot
/// grant (see [`available_capabilities`]).
pub const ALL_CAPABILITIES: [Capability; 41] = {
    use Capability::*;
    [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ]
};

/// The capabilities the agent's processes (runc among them) can hold: its bounding set.
/// It leaves out what the kernel does not know (an older Raspberry Pi kernel has no
/// `CAP_BPF`) and what the agent was started without; asking runc for more would fail.
/// Every capability when /proc cannot tell.
pub fn available_capabilities() -> Capabilities {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_capabilities(&status, "CapBnd"));
    match bounding {
        Some(mask) => ALL_CAPABILITIES
            .into_iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, cap)| cap)
            .collect(),
        None => ALL_CAPABILITIES.into_iter().collect(),
    }
}

/// A capability mask (`CapEff`, `CapBnd`, ...) from the text of /proc/<pid>/status.
fn status_capabilities(status: &str, set: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// A capability by its Kubernetes name (`NET_BIND_SERVICE`) or its kernel name
/// (`CAP_NET_BIND_SERVICE`), in any case.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

/// The CFS period; quotas are per 100ms as in Kubernetes.
const CPU_PERIOD: u64 = 100_000;
/// The smallest CFS quota Kubernetes sets (1ms).
const MIN_CPU_QUOTA: i64 = 1_000;
/// cgroup v1's bounds for cpu.shares (runc maps shares to cgroup v2's cpu.weight).
const MIN_CPU_SHARES: u64 = 2;
const MAX_CPU_SHARES: u64 = 262_144;
/// The soft RLIMIT_NOFILE of a container; the hard limit is the agent's own (which is
/// what a container under containerd 2 gets from systemd: 1024 soft, a high hard limit
/// programs may raise theirs to).
const NOFILE_SOFT: u64 = 1024;
/// The largest uid or gid Kubernetes accepts.
const MAX_ID: i64 = i32::MAX as i64;
/// `/etc/passwd` and `/etc/group` larger than this are refused.
const MAX_USER_DB: u64 = 8 << 20;

/// kubelet's `oom_score_adj` by QoS class.
const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// Builds the runtime spec of `input.container`.
pub fn build(input: &Input) -> Result<Spec, SpecError> {
    let pod = input.pod;
    let container = input.container;
    let image = input.image;
    let at = |field: &str| format!("containers[{}].{field}", container.name);
    let sc = container.security_context.as_ref();
    let psc = pod.spec.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);

    let args = process_args(container, image).ok_or_else(|| {
        field_error(
            at("command"),
            "neither the container nor its image sets a command to run",
        )
    })?;
    let hostname = pod_hostname(pod);
    let hostname_env = match &hostname {
        Some(h) => Some(h.clone()),
        // A container in the host's UTS namespace sees the host's name.
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string()),
    };
    let image_env = image.and_then(|i| i.env().as_deref()).unwrap_or_default();
    let env = environment(image_env, hostname_env.as_deref(), input.env);
    let cwd = working_dir(container, image, &at)?;
    let user = process_user(input, sc, psc, &at)?;
    let caps = capabilities(sc, privileged, &at)?;
    let seccomp = seccomp_profile(sc, psc, privileged, &caps, &at)?;
    let no_new_privileges = !privileged
        && !sc
            .and_then(|s| s.allow_privilege_escalation)
            .unwrap_or(false);

    let (nofile_soft, nofile_hard) = nofile_limits();
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(nofile_soft)
                .hard(nofile_hard)
                .build()?,
        ])
        .no_new_privileges(no_new_privileges)
        .build()?;
    let oom = qos_oom_score_adj(&pod.spec, container, memory_capacity());
    process.set_oom_score_adj(Some(permitted_oom_score_adj(oom)));

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(&pod.spec, input.netns)?)
        .resources(resources(
            container,
            input.pids_limit,
            privileged,
            swap_accounting(),
            &at,
        )?)
        .cgroups_path(input.cgroups_path)
        .build()?;
    linux.set_seccomp(seccomp);
    if privileged {
        linux.set_devices(Some(host_devices(Path::new("/dev"))));
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        linux.set_devices(None);
        linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
        linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    }

    let read_only_root = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_root(Some(
        RootBuilder::default()
            .path(input.rootfs)
            .readonly(read_only_root)
            .build()?,
    ));
    spec.set_mounts(Some(mounts(&pod.spec, input.mounts, privileged, &at)?));
    spec.set_process(Some(process));
    spec.set_hostname(hostname);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The process's argv by Kubernetes' rules: `command` replaces the image's Entrypoint and
/// drops its Cmd, `args` replaces Cmd. `None` when that leaves nothing to run.
fn process_args(
    container: &Container,
    image: Option<&oci_spec::image::Config>,
) -> Option<Vec<String>> {
    let entrypoint = image.and_then(|i| i.entrypoint().as_deref());
    let cmd = image.and_then(|i| i.cmd().as_deref());
    let args: Vec<String> = if !container.command.is_empty() {
        container
            .command
            .iter()
            .chain(&container.args)
            .cloned()
            .collect()
    } else {
        let tail = if container.args.is_empty() {
            cmd.unwrap_or_default()
        } else {
            &container.args
        };
        entrypoint
            .unwrap_or_default()
            .iter()
            .chain(tail)
            .cloned()
            .collect()
    };
    (!args.is_empty()).then_some(args)
}

/// `KEY=value` lines: the image's, `PATH` if it has none, `HOSTNAME`, then the pod's. A later
/// value replaces an earlier one in place, so every key appears once.
fn environment(
    image_env: &[String],
    hostname: Option<&str>,
    pod_env: &[(String, String)],
) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if key.is_empty() {
            return;
        }
        match vars.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => vars.push((key.to_string(), value.to_string())),
        }
    };
    // An image entry without `=` names no value: skipped.
    for (key, value) in image_env.iter().filter_map(|e| e.split_once('=')) {
        set(key, value);
    }
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        set("PATH", DEFAULT_PATH);
    }
    if let Some(hostname) = hostname {
        set("HOSTNAME", hostname);
    }
    for (key, value) in pod_env {
        set(key, value);
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `workingDir`, else the image's WorkingDir, else `/`.
fn working_dir(
    container: &Container,
    image: Option<&oci_spec::image::Config>,
    at: &dyn Fn(&str) -> String,
) -> Result<String, SpecError> {
    if let Some(dir) = container.working_dir.as_deref().filter(|d| !d.is_empty()) {
        if !dir.starts_with('/') {
            return Err(field_error(at("workingDir"), "must be an absolute path"));
        }
        return Ok(dir.to_string());
    }
    Ok(
        match image
            .and_then(|i| i.working_dir().as_deref())
            .filter(|d| !d.is_empty())
        {
            // Docker reads a relative WorkingDir from `/`.
            Some(dir) if !dir.starts_with('/') => format!("/{dir}"),
            Some(dir) => dir.to_string(),
            None => "/".to_string(),
        },
    )
}

/// The pod's hostname: `hostname`, else its name, cut to a DNS label as kubelet does.
/// `None` with `hostNetwork`: the container keeps the host's UTS namespace and name.
fn pod_hostname(pod: &Pod) -> Option<String> {
    if pod.spec.host_network {
        return None;
    }
    let name = pod
        .spec
        .hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(&pod.metadata.name);
    let label: String = name.chars().take(63).collect();
    let label = label.trim_end_matches(['-', '.']);
    (!label.is_empty()).then(|| label.to_string())
}

/// A container setting if present, else the pod's, with the field path it came from.
fn pick<T: Copy>(
    container: Option<T>,
    pod: Option<T>,
    name: &str,
    at: &dyn Fn(&str) -> String,
) -> Option<(T, String)> {
    container
        .map(|v| (v, at(&format!("securityContext.{name}"))))
        .or_else(|| pod.map(|v| (v, format!("securityContext.{name}"))))
}

/// A Kubernetes uid or gid.
fn id(value: i64, field: &str) -> Result<u32, SpecError> {
    if (0..=MAX_ID).contains(&value) {
        Ok(value as u32)
    } else {
        Err(field_error(
            field,
            format!("must be between 0 and {MAX_ID}"),
        ))
    }
}

/// The process's uid, gid and supplementary groups.
fn process_user(
    input: &Input,
    sc: Option<&SecurityContext>,
    psc: Option<&PodSecurityContext>,
    at: &dyn Fn(&str) -> String,
) -> Result<User, SpecError> {
    let run_as_user = pick(
        sc.and_then(|s| s.run_as_user),
        psc.and_then(|s| s.run_as_user),
        "runAsUser",
        at,
    );
    let run_as_group = pick(
        sc.and_then(|s| s.run_as_group),
        psc.and_then(|s| s.run_as_group),
        "runAsGroup",
        at,
    );
    let run_as_non_root = pick(
        sc.and_then(|s| s.run_as_non_root),
        psc.and_then(|s| s.run_as_non_root),
        "runAsNonRoot",
        at,
    );

    let image_field = at("image");
    let db = UserDb::load(input.rootfs).map_err(|e| field_error(&image_field, e.to_string()))?;
    let mut user = match &run_as_user {
        Some((uid, field)) => db.by_uid(id(*uid, field)?),
        None => {
            let name = input
                .image
                .and_then(|i| i.user().as_deref())
                .unwrap_or_default();
            db.resolve(name)
                .map_err(|e| field_error(&image_field, format!("the image's {e}")))?
        }
    };
    if let Some((gid, field)) = &run_as_group {
        user.gid = id(*gid, field)?;
    }
    if let Some((true, field)) = &run_as_non_root
        && user.uid == 0
    {
        let reason = match run_as_user {
            Some((_, from)) => format!("{from} is 0 (root)"),
            None => "the image runs as root (uid 0)".to_string(),
        };
        return Err(field_error(field, reason));
    }

    // The primary group first (as containerd does since CVE-2023-25173), then the user's
    // groups, then the pod's.
    let mut gids = vec![user.gid];
    gids.extend(&user.additional_gids);
    if let Some(psc) = psc {
        for (i, gid) in psc.supplemental_groups.iter().enumerate() {
            gids.push(id(
                *gid,
                &format!("securityContext.supplementalGroups[{i}]"),
            )?);
        }
        if let Some(gid) = psc.fs_group {
            gids.push(id(gid, "securityContext.fsGroup")?);
        }
    }
    let mut seen = HashSet::new();
    gids.retain(|g| seen.insert(*g));
    // From here on, every group runc is to set (`process.user.additionalGids`).
    user.additional_gids = gids;
    Ok(user)
}

/// The container's capabilities (the same set is bounding, effective and permitted).
/// Kubernetes' order: add ALL, drop ALL, then the named additions and drops.
fn capabilities(
    sc: Option<&SecurityContext>,
    privileged: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<Capabilities, SpecError> {
    if privileged {
        return Ok(available_capabilities());
    }
    let mut set = Capabilities::new();
    let Some(caps) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(set);
    };
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    if caps.add.iter().any(is_all) {
        set = available_capabilities();
    }
    if caps.drop.iter().any(is_all) {
        set.clear();
    }
    let parse = |list: &str, i: usize, name: &str| {
        parse_capability(name).ok_or_else(|| {
            field_error(
                at(&format!("securityContext.capabilities.{list}[{i}]")),
                format!("unknown capability {name:?}"),
            )
        })
    };
    for (i, name) in caps.add.iter().enumerate().filter(|(_, n)| !is_all(n)) {
        set.insert(parse("add", i, name)?);
    }
    for (i, name) in caps.drop.iter().enumerate().filter(|(_, n)| !is_all(n)) {
        set.remove(&parse("drop", i, name)?);
    }
    Ok(set)
}

/// The seccomp filter: the container's profile over the pod's, `RuntimeDefault` when
/// neither sets one; none for privileged containers (as containerd).
fn seccomp_profile(
    sc: Option<&SecurityContext>,
    psc: Option<&PodSecurityContext>,
    privileged: bool,
    caps: &Capabilities,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    let profile = pick(
        sc.and_then(|s| s.seccomp_profile.as_ref()),
        psc.and_then(|s| s.seccomp_profile.as_ref()),
        "seccompProfile",
        at,
    );
    let Some((profile, field)) = profile else {
        return Ok(Some(seccomp::runtime_default(caps)?));
    };
    match profile.type_.as_str() {
        "RuntimeDefault" => Ok(Some(seccomp::runtime_default(caps)?)),
        "Unconfined" => Ok(None),
        "Localhost" => Err(field_error(
            format!("{field}.type"),
            "Localhost profiles are not supported; use RuntimeDefault or Unconfined",
        )),
        other => Err(field_error(
            format!("{field}.type"),
            format!(
                "unknown seccomp profile type {other:?} (RuntimeDefault, Unconfined or Localhost)"
            ),
        )),
    }
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The standard mounts (containerd's), then the bind mounts, parents before children.
fn mounts(
    pod: &PodSpec,
    binds: &[BindMount],
    privileged: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<Mount>, SpecError> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        if pod.host_ipc {
            // The host's POSIX shared memory goes with its IPC namespace.
            mount(
                "/dev/shm",
                "bind",
                "/dev/shm",
                &["rbind", "rprivate", "nosuid", "noexec", "nodev"],
            )?
        } else {
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?
        },
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ];

    let mut binds: Vec<&BindMount> = binds.iter().collect();
    // Stable: mounts at the same depth keep their order.
    binds.sort_by_key(|b| Path::new(&b.destination).components().count());
    for bind in binds {
        if !bind.destination.starts_with('/') {
            return Err(field_error(
                at("volumeMounts"),
                format!(
                    "mount destination {:?} is not an absolute path",
                    bind.destination
                ),
            ));
        }
        let mode = if bind.read_only { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(&bind.destination)
                .typ("bind")
                .source(&bind.source)
                .options(
                    ["rbind", "rprivate", "nosuid", "nodev", mode]
                        .map(String::from)
                        .to_vec(),
                )
                .build()?,
        );
    }
    Ok(mounts)
}

/// The namespaces to create (or, for the network, to join).
fn namespaces(
    pod: &PodSpec,
    netns: Option<&Path>,
) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, SpecError> {
    let mut list = Vec::new();
    let mut add = |typ: LinuxNamespaceType, path: Option<&Path>| -> Result<(), SpecError> {
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(path) = path {
            ns = ns.path(path);
        }
        list.push(ns.build()?);
        Ok(())
    };
    if !pod.host_pid {
        add(LinuxNamespaceType::Pid, None)?;
    }
    if !pod.host_network {
        add(LinuxNamespaceType::Network, netns)?;
    }
    if !pod.host_ipc {
        add(LinuxNamespaceType::Ipc, None)?;
    }
    if !pod.host_network {
        add(LinuxNamespaceType::Uts, None)?;
    }
    add(LinuxNamespaceType::Mount, None)?;
    add(LinuxNamespaceType::Cgroup, None)?;
    Ok(list)
}

/// A resource quantity of the container, `None` when absent or zero.
fn quantity(
    container: &Container,
    requests: bool,
    name: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<u64>, SpecError> {
    let (map, list) = if requests {
        (&container.resources.requests, "requests")
    } else {
        (&container.resources.limits, "limits")
    };
    let Some(q) = map.get(name) else {
        return Ok(None);
    };
    let value = if name == "cpu" {
        q.millicores()
    } else {
        q.bytes()
    };
    let value =
        value.map_err(|e| field_error(at(&format!("resources.{list}.{name}")), e.to_string()))?;
    Ok((value > 0).then_some(value))
}

/// `linux.resources`: memory, CPU, pids and the device cgroup. `swap_accounting` says
/// whether the host's cgroups can limit swap (cgroup v1 without `memory.memsw` cannot).
fn resources(
    container: &Container,
    pids_limit: i64,
    privileged: bool,
    swap_accounting: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<LinuxResources, SpecError> {
    let too_large = |field: &str| field_error(at(field), "too large");
    let mut resources = LinuxResourcesBuilder::default();

    if let Some(bytes) = quantity(container, false, "memory", at)? {
        let limit = i64::try_from(bytes).map_err(|_| too_large("resources.limits.memory"))?;
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if swap_accounting {
            // memory+swap = memory: no swap at all, as kubelet.
            memory = memory.swap(limit);
        }
        resources = resources.memory(memory.build()?);
    }

    let cpu_limit = quantity(container, false, "cpu", at)?;
    // Kubernetes defaults a missing request to the limit.
    let cpu_request = quantity(container, true, "cpu", at)?.or(cpu_limit);
    let shares = cpu_request
        .map_or(MIN_CPU_SHARES, |m| m.saturating_mul(1024) / 1000)
        .clamp(MIN_CPU_SHARES, MAX_CPU_SHARES);
    let mut cpu = LinuxCpuBuilder::default().shares(shares);
    if let Some(millicores) = cpu_limit {
        let quota = i64::try_from(millicores.saturating_mul(CPU_PERIOD / 1000))
            .map_err(|_| too_large("resources.limits.cpu"))?;
        cpu = cpu.quota(quota.max(MIN_CPU_QUOTA)).period(CPU_PERIOD);
    }
    resources = resources.cpu(cpu.build()?);

    if pids_limit > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids_limit).build()?);
    }

    // Deny every device but those runc adds itself (null, zero, full, tty, random, urandom,
    // the pty); privileged containers may use all.
    resources = resources.devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .typ(LinuxDeviceType::A)
            .access("rwm")
            .build()?,
    ]);
    Ok(resources.build()?)
}

/// Whether runc can set a swap limit: always on cgroup v2 (runc tolerates a kernel without
/// swap accounting there), on cgroup v1 only with the `memory.memsw` files.
fn swap_accounting() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
}

/// A pod's quality-of-service class, by kubelet's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A container's effective (request, limit) of cpu (millicores) or memory (bytes); a missing
/// request defaults to the limit. Invalid quantities count as absent (they are refused
/// when the container itself is built).
fn request_and_limit(container: &Container, name: &str) -> (Option<u64>, Option<u64>) {
    let get = |map: &std::collections::BTreeMap<String, flotilla_proto::quantity::Quantity>| {
        map.get(name)
            .and_then(|q| {
                if name == "cpu" {
                    q.millicores().ok()
                } else {
                    q.bytes().ok()
                }
            })
            .filter(|v| *v > 0)
    };
    let limit = get(&container.resources.limits);
    (get(&container.resources.requests).or(limit), limit)
}

fn qos(pod: &PodSpec) -> Qos {
    let mut any = false;
    let mut guaranteed = true;
    for container in pod.all_containers() {
        for name in ["cpu", "memory"] {
            let (request, limit) = request_and_limit(container, name);
            any |= request.is_some() || limit.is_some();
            guaranteed &= limit.is_some() && request == limit;
        }
    }
    match (any, guaranteed) {
        (false, _) => Qos::BestEffort,
        (true, true) => Qos::Guaranteed,
        (true, false) => Qos::Burstable,
    }
}

/// kubelet's `oom_score_adj`: Guaranteed pods last, BestEffort first, Burstable containers
/// by the share of the node's memory they request.
fn qos_oom_score_adj(pod: &PodSpec, container: &Container, memory_capacity: Option<u64>) -> i32 {
    match qos(pod) {
        Qos::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        Qos::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        Qos::Burstable => {
            let request = request_and_limit(container, "memory").0.unwrap_or(0);
            let adj = match memory_capacity.filter(|c| *c > 0) {
                Some(capacity) => {
                    1000 - (1000 * u128::from(request) / u128::from(capacity)).min(1000) as i32
                }
                None => BEST_EFFORT_OOM_SCORE_ADJ,
            };
            // Above Guaranteed pods, below BestEffort ones.
            adj.clamp(
                1000 + GUARANTEED_OOM_SCORE_ADJ,
                BEST_EFFORT_OOM_SCORE_ADJ - 1,
            )
        }
    }
}

/// The node's memory, from /proc/meminfo.
fn memory_capacity() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Lowering an `oom_score_adj` below one's own needs CAP_SYS_RESOURCE; without it runc
/// could not start the container, so the agent's own value is the floor (containerd's
/// `restrict_oom_score_adj`).
fn permitted_oom_score_adj(adj: i32) -> i32 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status_capabilities(&status, "CapEff");
    if effective.is_none_or(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0) {
        return adj;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(adj, |own| adj.max(own))
}

/// RLIMIT_NOFILE (soft, hard): a soft 1024 under the agent's own hard limit, which the
/// container cannot raise without CAP_SYS_RESOURCE and runc could not exceed without it.
fn nofile_limits() -> (u64, u64) {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => (NOFILE_SOFT.min(hard), hard),
        Err(_) => (NOFILE_SOFT, NOFILE_SOFT),
    }
}

/// The host's device nodes under `dir`, for a privileged container (what containerd's
/// `WithHostDevices` gives it): GPIO, I²C, serial ports and the like on an edge device.
fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut devices = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return devices;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Symlinks are skipped: `symlink_metadata` does not follow them.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            // runc's own mounts, and the container runtimes' bookkeeping.
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                devices.extend(host_devices(&path));
            }
            continue;
        }
        let typ = if file_type.is_char_device() {
            LinuxDeviceType::C
        } else if file_type.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if name == "console" {
            continue;
        }
        let rdev = meta.rdev();
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        if let Ok(device) = LinuxDeviceBuilder::default()
            .path(&path)
            .typ(typ)
            .major(major as i64)
            .minor(minor as i64)
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build()
        {
            devices.push(device);
        }
    }
    devices
}

// ---------------------------------------------------------------- users

/// A resolved user: what runc's `process.user` needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The user's groups in `/etc/group` (without the primary group).
    pub additional_gids: Vec<u32>,
}

/// Resolves an image `User` ("", "name", "uid", "uid:gid", "name:group", "uid:group")
/// against `rootfs`/etc/passwd and /etc/group. "" is root. A numeric uid needs no passwd
/// entry (its group is then 0); a name must have one. The files are opened without
/// following symlinks: an image cannot make the agent read the host's.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<User, SpecError> {
    UserDb::load(rootfs)?.resolve(user)
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// A rootfs' /etc/passwd and /etc/group (empty when absent).
#[derive(Default)]
struct UserDb {
    passwd: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

impl UserDb {
    fn load(rootfs: &Path) -> Result<UserDb, SpecError> {
        let passwd = read_etc(rootfs, "passwd")?.unwrap_or_default();
        let group = read_etc(rootfs, "group")?.unwrap_or_default();
        let fields = |text: &str| -> Vec<Vec<String>> {
            text.lines()
                .map(str::trim)
                // Comments, and NIS `+`/`-` lines.
                .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect()
        };
        Ok(UserDb {
            passwd: fields(&passwd)
                .into_iter()
                .filter_map(|f| {
                    Some(PasswdEntry {
                        uid: f.get(2)?.parse().ok()?,
                        gid: f.get(3)?.parse().ok()?,
                        name: f.into_iter().next()?,
                    })
                })
                .collect(),
            groups: fields(&group)
                .into_iter()
                .filter_map(|f| {
                    Some(GroupEntry {
                        gid: f.get(2)?.parse().ok()?,
                        members: f
                            .get(3)
                            .map(|m| {
                                m.split(',')
                                    .map(str::trim)
                                    .filter(|m| !m.is_empty())
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default(),
                        name: f.into_iter().next()?,
                    })
                })
                .collect(),
        })
    }

    /// The supplementary groups of the user called `name`.
    fn groups_of(&self, name: &str, primary: u32) -> Vec<u32> {
        let mut gids: Vec<u32> = Vec::new();
        for g in &self.groups {
            if g.gid != primary && !gids.contains(&g.gid) && g.members.iter().any(|m| m == name) {
                gids.push(g.gid);
            }
        }
        gids
    }

    fn user(&self, entry: &PasswdEntry) -> User {
        User {
            uid: entry.uid,
            gid: entry.gid,
            additional_gids: self.groups_of(&entry.name, entry.gid),
        }
    }

    /// A numeric uid: its passwd entry's group and groups if it has one, else group 0.
    fn by_uid(&self, uid: u32) -> User {
        match self.passwd.iter().find(|p| p.uid == uid) {
            Some(entry) => self.user(entry),
            None => User {
                uid,
                ..User::default()
            },
        }
    }

    fn resolve(&self, spec: &str) -> Result<User, SpecError> {
        let error = |reason: String| SpecError::User {
            user: spec.to_string(),
            reason,
        };
        let (name, group) = match spec.split_once(':') {
            Some((name, group)) => (name, Some(group)),
            None => (spec, None),
        };
        let mut user = if name.is_empty() {
            if group.is_some() {
                return Err(error("no user before the ':'".into()));
            }
            self.by_uid(0)
        } else if let Ok(uid) = name.parse::<u32>() {
            self.by_uid(uid)
        } else {
            let entry = self
                .passwd
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| error(format!("no user {name:?} in /etc/passwd")))?;
            self.user(entry)
        };
        if let Some(group) = group {
            user.gid = if group.is_empty() {
                return Err(error("no group after the ':'".into()));
            } else if let Ok(gid) = group.parse::<u32>() {
                gid
            } else {
                self.groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or_else(|| error(format!("no group {group:?} in /etc/group")))?
                    .gid
            };
            let gid = user.gid;
            user.additional_gids.retain(|g| *g != gid);
        }
        Ok(user)
    }
}

/// Reads `rootfs`/etc/`name` confined to the rootfs: neither `etc` nor the file may be a
/// symlink (which could point at the host's files), and it must be a regular file (not a
/// FIFO that would block, nor a device). `None` when it does not exist.
fn read_etc(rootfs: &Path, name: &str) -> Result<Option<String>, SpecError> {
    let path = format!("/etc/{name}");
    let error = |reason: String| SpecError::Rootfs {
        path: path.clone(),
        reason,
    };
    let refused = |what: &str, e: Errno| match e {
        Errno::ELOOP => {
            format!("{what} is a symbolic link; refusing to follow it out of the rootfs")
        }
        e => format!("opening {what}: {}", e.desc()),
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = open(rootfs, dir_flags, Mode::empty()).map_err(|e| {
        error(format!(
            "opening the rootfs {}: {}",
            rootfs.display(),
            e.desc()
        ))
    })?;
    let etc = match openat(&root, "etc", dir_flags | OFlag::O_NOFOLLOW, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        // O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR on some kernels.
        Err(Errno::ENOTDIR) if is_symlink(&rootfs.join("etc")) => {
            return Err(error(refused("/etc", Errno::ELOOP)));
        }
        Err(e) => return Err(error(refused("/etc", e))),
    };
    let file_flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let file = match openat(&etc, name, file_flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(error(refused("it", e))),
    };
    let meta = file
        .metadata()
        .map_err(|e| error(format!("reading it: {e}")))?;
    if !meta.is_file() {
        return Err(error("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_USER_DB + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(format!("reading it: {e}")))?;
    if bytes.len() as u64 > MAX_USER_DB {
        return Err(error(format!("larger than {MAX_USER_DB} bytes")));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::{Capabilities as KubeCaps, PodSecurityContext, SeccompProfile};
    use flotilla_proto::quantity::Quantity;
    use oci_spec::image::ConfigBuilder;
    use std::collections::BTreeSet;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:1:::
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:root
app:x:1000:
staff:x:50:app,daemon
audio:x:29:daemon, app
";

    /// A rootfs with /etc/passwd and /etc/group.
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    /// One pod with one container called `web`, and what `build` needs besides.
    struct Case {
        pod: Pod,
        image: Option<oci_spec::image::Config>,
        rootfs: tempfile::TempDir,
        env: Vec<(String, String)>,
        mounts: Vec<BindMount>,
        netns: Option<PathBuf>,
    }

    impl Case {
        fn new() -> Case {
            let mut pod = Pod::default();
            pod.metadata.name = "web-0".into();
            pod.spec.containers.push(Container {
                name: "web".into(),
                image: "example/web".into(),
                ..Container::default()
            });
            Case {
                pod,
                image: Some(
                    ConfigBuilder::default()
                        .entrypoint(vec!["/bin/web".to_string()])
                        .cmd(vec!["--serve".to_string()])
                        .build()
                        .unwrap(),
                ),
                rootfs: rootfs(),
                env: Vec::new(),
                mounts: Vec::new(),
                netns: None,
            }
        }

        fn container(&mut self) -> &mut Container {
            &mut self.pod.spec.containers[0]
        }

        fn sc(&mut self) -> &mut SecurityContext {
            self.container()
                .security_context
                .get_or_insert_with(SecurityContext::default)
        }

        fn psc(&mut self) -> &mut PodSecurityContext {
            self.pod
                .spec
                .security_context
                .get_or_insert_with(PodSecurityContext::default)
        }

        fn image(&mut self) -> &mut oci_spec::image::Config {
            self.image.get_or_insert_with(Default::default)
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build(&Input {
                pod: &self.pod,
                container: &self.pod.spec.containers[0],
                image: self.image.as_ref(),
                rootfs: self.rootfs.path(),
                env: &self.env,
                mounts: &self.mounts,
                netns: self.netns.as_deref(),
                cgroups_path: "/flotilla/c1",
                pids_limit: 256,
            })
        }

        fn spec(&self) -> Spec {
            self.build().unwrap()
        }

        fn error(&self) -> String {
            self.build().unwrap_err().to_string()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn args(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().args().clone().unwrap()
    }

    fn process(spec: &Spec) -> &oci_spec::runtime::Process {
        spec.process().as_ref().unwrap()
    }

    fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
        spec.linux().as_ref().unwrap()
    }

    fn caps(spec: &Spec) -> BTreeSet<String> {
        let caps = process(spec).capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding(), caps.effective());
        assert_eq!(caps.bounding(), caps.permitted());
        assert_eq!(caps.inheritable().as_ref().map(|c| c.len()), Some(0));
        assert_eq!(caps.ambient().as_ref().map(|c| c.len()), Some(0));
        caps.bounding()
            .iter()
            .flatten()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn user(spec: &Spec) -> (u32, u32, Vec<u32>) {
        let u = process(spec).user();
        (
            u.uid(),
            u.gid(),
            u.additional_gids().clone().unwrap_or_default(),
        )
    }

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn command_replaces_entrypoint_and_args_replace_cmd() {
        let mut case = Case::new();
        assert_eq!(args(&case.spec()), strings(&["/bin/web", "--serve"]));

        case.container().args = strings(&["--debug"]);
        assert_eq!(args(&case.spec()), strings(&["/bin/web", "--debug"]));

        // `command` drops the image's Cmd even without `args`.
        case.container().args.clear();
        case.container().command = strings(&["/bin/sh", "-c"]);
        assert_eq!(args(&case.spec()), strings(&["/bin/sh", "-c"]));

        case.container().args = strings(&["echo hi"]);
        assert_eq!(args(&case.spec()), strings(&["/bin/sh", "-c", "echo hi"]));

        // No image Entrypoint: args alone are the command.
        case.container().command.clear();
        case.image = None;
        assert_eq!(args(&case.spec()), strings(&["echo hi"]));

        case.container().args.clear();
        expect_test::expect![
            "containers[web].command: neither the container nor its image sets a command to run"
        ]
        .assert_eq(&case.error());
    }

    #[test]
    fn environment_merges_image_path_hostname_and_pod() {
        let mut case = Case::new();
        case.image().set_env(Some(strings(&[
            "FOO=image",
            "BAR=image",
            "NOVALUE",
            "EQ=a=b",
        ])));
        case.env = vec![
            ("FOO".into(), "pod".into()),
            ("NEW".into(), "1".into()),
            ("NEW".into(), "2".into()),
        ];
        expect_test::expect![[r#"
            [
                "FOO=pod",
                "BAR=image",
                "EQ=a=b",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOSTNAME=web-0",
                "NEW=2",
            ]
        "#]]
        .assert_debug_eq(process(&case.spec()).env().as_ref().unwrap());

        // The image's PATH is kept; the pod may still override it and HOSTNAME.
        case.image().set_env(Some(strings(&["PATH=/opt/bin"])));
        case.env = vec![("HOSTNAME".into(), "custom".into())];
        assert_eq!(
            process(&case.spec()).env().clone().unwrap(),
            strings(&["PATH=/opt/bin", "HOSTNAME=custom"])
        );
    }

    #[test]
    fn working_dir_from_container_then_image_then_root() {
        let mut case = Case::new();
        let cwd = |case: &Case| process(&case.spec()).cwd().display().to_string();
        assert_eq!(cwd(&case), "/");
        case.image().set_working_dir(Some("srv".into()));
        assert_eq!(cwd(&case), "/srv");
        case.image().set_working_dir(Some("/app".into()));
        assert_eq!(cwd(&case), "/app");
        case.container().working_dir = Some("/data".into());
        assert_eq!(cwd(&case), "/data");
        case.container().working_dir = Some("data".into());
        expect_test::expect!["containers[web].workingDir: must be an absolute path"]
            .assert_eq(&case.error());
    }

    #[test]
    fn hostname_is_the_pods() {
        let mut case = Case::new();
        assert_eq!(case.spec().hostname().as_deref(), Some("web-0"));
        case.pod.spec.hostname = Some("db-1".into());
        assert_eq!(case.spec().hostname().as_deref(), Some("db-1"));
        case.pod.spec.hostname = None;
        case.pod.metadata.name = format!("{}-x", "a".repeat(62));
        // Cut to 63 characters, without the trailing '-'.
        assert_eq!(case.spec().hostname().clone().unwrap(), "a".repeat(62));
    }

    #[test]
    fn resolves_image_users() {
        let root = rootfs();
        let r = |user: &str| resolve_user(root.path(), user);
        let u = |uid, gid, extra: &[u32]| User {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        };
        assert_eq!(r("").unwrap(), u(0, 0, &[10]));
        assert_eq!(r("root").unwrap(), u(0, 0, &[10]));
        assert_eq!(r("app").unwrap(), u(1000, 1000, &[50, 29]));
        assert_eq!(r("1000").unwrap(), u(1000, 1000, &[50, 29]));
        assert_eq!(r("1000:2000").unwrap(), u(1000, 2000, &[50, 29]));
        assert_eq!(r("app:staff").unwrap(), u(1000, 50, &[29]));
        assert_eq!(r("1000:daemon").unwrap(), u(1000, 1, &[50, 29]));
        // A uid without a passwd entry runs with group 0 and no other groups.
        assert_eq!(r("4242").unwrap(), u(4242, 0, &[]));
        assert_eq!(r("4242:7").unwrap(), u(4242, 7, &[]));

        let errors: Vec<String> = ["nobody", "app:nogroup", ":1", "app:", "broken"]
            .iter()
            .map(|user| r(user).unwrap_err().to_string())
            .collect();
        expect_test::expect![[r#"
            [
                "user \"nobody\": no user \"nobody\" in /etc/passwd",
                "user \"app:nogroup\": no group \"nogroup\" in /etc/group",
                "user \":1\": no user before the ':'",
                "user \"app:\": no group after the ':'",
                "user \"broken\": no user \"broken\" in /etc/passwd",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn a_rootfs_without_user_files_knows_numeric_users_only() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(resolve_user(root.path(), "").unwrap(), User::default());
        assert_eq!(resolve_user(root.path(), "5:6").unwrap().gid, 6);
        assert!(resolve_user(root.path(), "app").is_err());
    }

    #[test]
    fn never_follows_symlinks_out_of_the_rootfs() {
        // /etc/passwd pointing at the host's: refused, not read.
        let root = rootfs();
        let passwd = root.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &passwd).unwrap();
        let err = resolve_user(root.path(), "root").unwrap_err().to_string();
        expect_test::expect!["/etc/passwd in the rootfs: it is a symbolic link; refusing to follow it out of the rootfs"]
            .assert_eq(&err);
        // Even a relative one that stays inside the rootfs: symlinks are not followed at all.
        std::fs::remove_file(&passwd).unwrap();
        std::fs::write(root.path().join("etc/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("passwd.real", &passwd).unwrap();
        assert!(resolve_user(root.path(), "app").is_err());

        // /etc itself a symlink to the host's /etc.
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("etc")).unwrap();
        let err = resolve_user(root.path(), "root").unwrap_err().to_string();
        expect_test::expect!["/etc/passwd in the rootfs: /etc is a symbolic link; refusing to follow it out of the rootfs"]
            .assert_eq(&err);

        // build() names the container.
        let mut case = Case::new();
        case.rootfs = root;
        expect_test::expect!["containers[web].image: /etc/passwd in the rootfs: /etc is a symbolic link; refusing to follow it out of the rootfs"]
            .assert_eq(&case.error());
    }

    #[test]
    fn refuses_user_files_that_are_not_regular_files() {
        let root = rootfs();
        let passwd = root.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        // A FIFO would block a reader forever: opened non-blocking, then refused.
        nix::unistd::mkfifo(&passwd, Mode::from_bits_truncate(0o644)).unwrap();
        let err = resolve_user(root.path(), "app").unwrap_err().to_string();
        assert_eq!(err, "/etc/passwd in the rootfs: not a regular file");
    }

    #[test]
    fn user_from_security_context_over_image() {
        let mut case = Case::new();
        // The image's default (root), with root's groups.
        assert_eq!(user(&case.spec()), (0, 0, vec![0, 10]));

        case.image().set_user(Some("app".into()));
        assert_eq!(user(&case.spec()), (1000, 1000, vec![1000, 50, 29]));

        // The pod's runAsUser over the image's user, the container's over the pod's.
        case.psc().run_as_user = Some(1);
        assert_eq!(user(&case.spec()), (1, 1, vec![1, 50, 29]));
        case.sc().run_as_user = Some(4242);
        assert_eq!(user(&case.spec()), (4242, 0, vec![0]));

        // runAsGroup, supplementalGroups and fsGroup.
        case.psc().run_as_group = Some(3000);
        case.psc().supplemental_groups = vec![4000, 3000];
        case.psc().fs_group = Some(5000);
        assert_eq!(user(&case.spec()), (4242, 3000, vec![3000, 4000, 5000]));
        case.sc().run_as_group = Some(7);
        assert_eq!(user(&case.spec()).1, 7);

        case.sc().run_as_user = Some(-1);
        expect_test::expect![
            "containers[web].securityContext.runAsUser: must be between 0 and 2147483647"
        ]
        .assert_eq(&case.error());
        case.sc().run_as_user = None;
        case.psc().run_as_user = None;
        case.image().set_user(Some("ghost".into()));
        expect_test::expect![[
            r#"containers[web].image: the image's user "ghost": no user "ghost" in /etc/passwd"#
        ]]
        .assert_eq(&case.error());
    }

    #[test]
    fn run_as_non_root_refuses_uid_0() {
        let mut case = Case::new();
        case.psc().run_as_non_root = Some(true);
        expect_test::expect!["securityContext.runAsNonRoot: the image runs as root (uid 0)"]
            .assert_eq(&case.error());
        case.sc().run_as_non_root = Some(true);
        case.image().set_user(Some("root".into()));
        expect_test::expect![
            "containers[web].securityContext.runAsNonRoot: the image runs as root (uid 0)"
        ]
        .assert_eq(&case.error());
        case.sc().run_as_user = Some(0);
        expect_test::expect!["containers[web].securityContext.runAsNonRoot: containers[web].securityContext.runAsUser is 0 (root)"]
            .assert_eq(&case.error());

        // A named user resolved to a non-zero uid is verifiably not root.
        case.sc().run_as_user = None;
        case.image().set_user(Some("app".into()));
        assert_eq!(user(&case.spec()).0, 1000);
        case.sc().run_as_non_root = Some(false);
        case.image().set_user(Some("root".into()));
        assert_eq!(user(&case.spec()).0, 0);
    }

    #[test]
    fn no_capabilities_unless_added() {
        let mut case = Case::new();
        assert!(caps(&case.spec()).is_empty());

        case.sc().capabilities = Some(KubeCaps {
            add: strings(&["NET_BIND_SERVICE", "CAP_CHOWN", "sys_time"]),
            drop: strings(&["ALL"]),
        });
        expect_test::expect![[r#"
            {
                "CAP_CHOWN",
                "CAP_NET_BIND_SERVICE",
                "CAP_SYS_TIME",
            }
        "#]]
        .assert_debug_eq(&caps(&case.spec()));

        case.sc().capabilities = Some(KubeCaps {
            add: strings(&["ALL"]),
            drop: strings(&["CHOWN", "CAP_SYS_ADMIN"]),
        });
        let all = caps(&case.spec());
        assert_eq!(all.len(), available_capabilities().len() - 2);
        assert!(!all.contains("CAP_CHOWN") && !all.contains("CAP_SYS_ADMIN"));

        case.sc().capabilities = Some(KubeCaps {
            add: strings(&["NET_ADMIN", "FLY"]),
            drop: Vec::new(),
        });
        expect_test::expect![[
            r#"containers[web].securityContext.capabilities.add[1]: unknown capability "FLY""#
        ]]
        .assert_eq(&case.error());
        case.sc().capabilities = Some(KubeCaps {
            add: Vec::new(),
            drop: strings(&["CAP_NOPE"]),
        });
        expect_test::expect![[
            r#"containers[web].securityContext.capabilities.drop[0]: unknown capability "CAP_NOPE""#
        ]]
        .assert_eq(&case.error());
    }

    #[test]
    fn every_capability_parses_by_either_name() {
        for cap in ALL_CAPABILITIES {
            let kernel = serde_json::to_value(cap)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let bare = kernel.strip_prefix("CAP_").unwrap();
            assert_eq!(parse_capability(&kernel), Some(cap));
            assert_eq!(parse_capability(bare), Some(cap));
            assert_eq!(parse_capability(&bare.to_lowercase()), Some(cap));
        }
        assert_eq!(parse_capability("ALL"), None);
        // Indexed by kernel number.
        assert_eq!(ALL_CAPABILITIES[0], Capability::Chown);
        assert_eq!(ALL_CAPABILITIES[10], Capability::NetBindService);
        assert_eq!(ALL_CAPABILITIES[21], Capability::SysAdmin);
        assert_eq!(ALL_CAPABILITIES[40], Capability::CheckpointRestore);
        let status = "Name:\tx\nCapBnd:\t000001fffeffffff\nCapEff:\t0000000000000400\n";
        assert_eq!(status_capabilities(status, "CapEff"), Some(0x400));
        assert_eq!(status_capabilities(status, "CapBnd"), Some(0x1fffeffffff));
        assert_eq!(ALL_CAPABILITIES.iter().collect::<HashSet<_>>().len(), 41);
    }

    #[test]
    fn hardened_by_default() {
        let case = Case::new();
        let spec = case.spec();
        let p = process(&spec);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let l = linux(&spec);
        assert_eq!(l.masked_paths().clone().unwrap(), strings(MASKED_PATHS));
        assert_eq!(l.readonly_paths().clone().unwrap(), strings(READONLY_PATHS));
        assert!(l.seccomp().is_some());
        let devices = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].to_string(), "a *:* rwm");
        assert!(!devices[0].allow());

        let mut case = Case::new();
        case.sc().allow_privilege_escalation = Some(true);
        case.sc().read_only_root_filesystem = Some(true);
        let spec = case.spec();
        assert_eq!(process(&spec).no_new_privileges(), Some(false));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    }

    #[test]
    fn privileged_lifts_the_hardening() {
        let mut case = Case::new();
        case.sc().privileged = Some(true);
        case.sc().capabilities = Some(KubeCaps {
            add: Vec::new(),
            drop: strings(&["ALL"]),
        });
        let spec = case.spec();
        assert_eq!(caps(&spec).len(), available_capabilities().len());
        assert!(caps(&spec).contains("CAP_SYS_ADMIN"));
        assert_eq!(process(&spec).no_new_privileges(), Some(false));
        let l = linux(&spec);
        assert!(l.seccomp().is_none());
        assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
        let devices = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert!(devices[0].allow());
        // The host's devices (this host has /dev/null at least).
        assert!(
            l.devices()
                .iter()
                .flatten()
                .any(|d| d.path() == Path::new("/dev/null"))
        );
        let sys = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().iter().flatten().any(|o| o == "rw"));
    }

    fn namespaces_of(spec: &Spec) -> Vec<String> {
        linux(spec)
            .namespaces()
            .iter()
            .flatten()
            .map(|ns| match ns.path() {
                Some(path) => format!("{}={}", ns.typ(), path.display()),
                None => ns.typ().to_string(),
            })
            .collect()
    }

    #[test]
    fn namespaces_new_joined_or_the_hosts() {
        let mut case = Case::new();
        assert_eq!(
            namespaces_of(&case.spec()),
            strings(&["pid", "net", "ipc", "uts", "mnt", "cgroup"])
        );
        case.netns = Some("/run/netns/pod-1".into());
        assert_eq!(
            namespaces_of(&case.spec()),
            strings(&["pid", "net=/run/netns/pod-1", "ipc", "uts", "mnt", "cgroup"])
        );

        case.pod.spec.host_network = true;
        let spec = case.spec();
        assert_eq!(
            namespaces_of(&spec),
            strings(&["pid", "ipc", "mnt", "cgroup"])
        );
        assert_eq!(spec.hostname(), &None);

        case.pod.spec.host_pid = true;
        case.pod.spec.host_ipc = true;
        let spec = case.spec();
        assert_eq!(namespaces_of(&spec), strings(&["mnt", "cgroup"]));
        let shm = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .unwrap();
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
    }

    #[test]
    fn seccomp_profile_selection() {
        let mut case = Case::new();
        let seccomp = |case: &Case| linux(&case.spec()).seccomp().is_some();
        assert!(seccomp(&case));
        case.psc().seccomp_profile = Some(SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        });
        assert!(!seccomp(&case));
        // The container's profile over the pod's.
        case.sc().seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        });
        assert!(seccomp(&case));
        case.sc().seccomp_profile = Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some("profiles/audit.json".into()),
        });
        expect_test::expect!["containers[web].securityContext.seccompProfile.type: Localhost profiles are not supported; use RuntimeDefault or Unconfined"]
            .assert_eq(&case.error());
        case.sc().seccomp_profile = None;
        case.psc().seccomp_profile = Some(SeccompProfile {
            type_: "Strict".into(),
            localhost_profile: None,
        });
        expect_test::expect![[r#"securityContext.seccompProfile.type: unknown seccomp profile type "Strict" (RuntimeDefault, Unconfined or Localhost)"#]]
            .assert_eq(&case.error());
    }

    #[test]
    fn granted_capabilities_unlock_their_syscalls() {
        let mut case = Case::new();
        let allows_mount = |case: &Case| {
            linux(&case.spec())
                .seccomp()
                .as_ref()
                .unwrap()
                .syscalls()
                .iter()
                .flatten()
                .any(|r| r.names().iter().any(|n| n == "mount"))
        };
        assert!(!allows_mount(&case));
        case.sc().capabilities = Some(KubeCaps {
            add: strings(&["SYS_ADMIN"]),
            drop: Vec::new(),
        });
        assert!(allows_mount(&case));
    }

    fn resources_json(container: &Container, swap: bool) -> String {
        let r = resources(container, 64, false, swap, &|f| {
            format!("containers[x].{f}")
        })
        .unwrap();
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("devices");
        v.to_string()
    }

    #[test]
    fn resources_from_requests_and_limits() {
        let mut c = Container::default();
        // BestEffort: the smallest shares, no memory limit.
        expect_test::expect![[r#"{"cpu":{"shares":2},"pids":{"limit":64}}"#]]
            .assert_eq(&resources_json(&c, true));

        c.resources.limits.insert("cpu".into(), q("500m"));
        c.resources.limits.insert("memory".into(), q("64Mi"));
        // Requests default to limits.
        expect_test::expect![[r#"{"cpu":{"period":100000,"quota":50000,"shares":512},"memory":{"limit":67108864,"swap":67108864},"pids":{"limit":64}}"#]]
            .assert_eq(&resources_json(&c, true));
        // No swap limit where the host cannot enforce one.
        expect_test::expect![[r#"{"cpu":{"period":100000,"quota":50000,"shares":512},"memory":{"limit":67108864},"pids":{"limit":64}}"#]]
            .assert_eq(&resources_json(&c, false));

        c.resources.requests.insert("cpu".into(), q("250m"));
        c.resources.limits.insert("cpu".into(), q("2"));
        expect_test::expect![[r#"{"cpu":{"period":100000,"quota":200000,"shares":256},"memory":{"limit":67108864,"swap":67108864},"pids":{"limit":64}}"#]]
            .assert_eq(&resources_json(&c, true));

        // The smallest quota is 1ms, the smallest shares 2.
        c.resources.requests.insert("cpu".into(), q("1m"));
        c.resources.limits.insert("cpu".into(), q("1m"));
        c.resources.limits.remove("memory");
        expect_test::expect![[
            r#"{"cpu":{"period":100000,"quota":1000,"shares":2},"pids":{"limit":64}}"#
        ]]
        .assert_eq(&resources_json(&c, true));

        c.resources.limits.insert("memory".into(), q("lots"));
        let err = resources(&c, 0, false, true, &|f| format!("containers[x].{f}")).unwrap_err();
        expect_test::expect![[r#"containers[x].resources.limits.memory: invalid quantity "lots""#]]
            .assert_eq(&err.to_string());
    }

    #[test]
    fn cgroups_path_and_pids_limit() {
        let spec = Case::new().spec();
        let l = linux(&spec);
        assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/flotilla/c1")));
        let pids = l.resources().as_ref().unwrap().pids().unwrap();
        assert_eq!(pids.limit(), 256);
    }

    #[test]
    fn oom_score_adj_by_qos() {
        let mut pod = PodSpec::default();
        let mut c = Container::default();
        pod.containers.push(c.clone());
        let gib = 1 << 30;
        assert_eq!(qos_oom_score_adj(&pod, &c, Some(4 * gib)), 1000);

        c.resources.limits.insert("cpu".into(), q("1"));
        c.resources.limits.insert("memory".into(), q("1Gi"));
        pod.containers[0] = c.clone();
        assert_eq!(qos(&pod), Qos::Guaranteed);
        assert_eq!(qos_oom_score_adj(&pod, &c, Some(4 * gib)), -997);

        // A request below the limit: Burstable, scored by the share of the node requested.
        c.resources.requests.insert("memory".into(), q("512Mi"));
        pod.containers[0] = c.clone();
        assert_eq!(qos(&pod), Qos::Burstable);
        assert_eq!(qos_oom_score_adj(&pod, &c, Some(4 * gib)), 875);
        assert_eq!(qos_oom_score_adj(&pod, &c, Some(gib / 2)), 3);

        // One container without limits makes the pod Burstable; its score is nearly BestEffort's.
        let bare = Container::default();
        pod.containers[0].resources.requests.clear();
        pod.containers.push(bare.clone());
        assert_eq!(qos(&pod), Qos::Burstable);
        assert_eq!(qos_oom_score_adj(&pod, &bare, Some(4 * gib)), 999);
    }

    #[test]
    fn bind_mounts_parents_first() {
        let mut case = Case::new();
        case.mounts = vec![
            BindMount {
                source: "/var/lib/flotilla/v/cache".into(),
                destination: "/data/cache".into(),
                read_only: false,
            },
            BindMount {
                source: "/var/lib/flotilla/v/data".into(),
                destination: "/data".into(),
                read_only: true,
            },
        ];
        let spec = case.spec();
        let binds: Vec<String> = spec
            .mounts()
            .iter()
            .flatten()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .map(|m| {
                format!(
                    "{} <- {} {:?}",
                    m.destination().display(),
                    m.source().as_ref().unwrap().display(),
                    m.options().clone().unwrap()
                )
            })
            .collect();
        expect_test::expect![[r#"
            [
                "/data <- /var/lib/flotilla/v/data [\"rbind\", \"rprivate\", \"nosuid\", \"nodev\", \"ro\"]",
                "/data/cache <- /var/lib/flotilla/v/cache [\"rbind\", \"rprivate\", \"nosuid\", \"nodev\", \"rw\"]",
            ]
        "#]]
        .assert_debug_eq(&binds);

        case.mounts[0].destination = "data".into();
        expect_test::expect![[
            r#"containers[web].volumeMounts: mount destination "data" is not an absolute path"#
        ]]
        .assert_eq(&case.error());
    }

    /// The whole config.json of a typical container, without what depends on the host
    /// (the rootfs path, rlimits, oom_score_adj, swap) and the seccomp profile (tested on its own).
    #[test]
    fn snapshot_of_a_typical_spec() {
        let mut case = Case::new();
        case.image().set_user(Some("app".into()));
        case.image().set_env(Some(strings(&["LANG=C.UTF-8"])));
        case.env = vec![("MODE".into(), "prod".into())];
        case.container()
            .resources
            .limits
            .insert("cpu".into(), q("1"));
        case.container()
            .resources
            .limits
            .insert("memory".into(), q("128Mi"));
        case.sc().read_only_root_filesystem = Some(true);
        case.sc().capabilities = Some(KubeCaps {
            add: strings(&["NET_BIND_SERVICE"]),
            drop: strings(&["ALL"]),
        });
        case.netns = Some("/run/netns/web-0".into());
        case.mounts = vec![BindMount {
            source: "/var/lib/flotilla/pods/p1/etc-hosts".into(),
            destination: "/etc/hosts".into(),
            read_only: true,
        }];
        let mut json = serde_json::to_value(case.spec()).unwrap();
        json["root"]["path"] = "<rootfs>".into();
        let process = json["process"].as_object_mut().unwrap();
        assert!(process.remove("rlimits").is_some());
        assert!(process.remove("oomScoreAdj").is_some());
        let linux = json["linux"].as_object_mut().unwrap();
        assert!(linux.remove("seccomp").is_some());
        linux["resources"]["memory"]
            .as_object_mut()
            .unwrap()
            .remove("swap");
        expect_test::expect![[r#"
            {
              "hostname": "web-0",
              "linux": {
                "cgroupsPath": "/flotilla/c1",
                "maskedPaths": [
                  "/proc/acpi",
                  "/proc/kcore",
                  "/proc/keys",
                  "/proc/latency_stats",
                  "/proc/timer_list",
                  "/proc/timer_stats",
                  "/proc/sched_debug",
                  "/proc/scsi",
                  "/sys/firmware",
                  "/sys/devices/virtual/powercap"
                ],
                "namespaces": [
                  {
                    "type": "pid"
                  },
                  {
                    "path": "/run/netns/web-0",
                    "type": "network"
                  },
                  {
                    "type": "ipc"
                  },
                  {
                    "type": "uts"
                  },
                  {
                    "type": "mount"
                  },
                  {
                    "type": "cgroup"
                  }
                ],
                "readonlyPaths": [
                  "/proc/asound",
                  "/proc/bus",
                  "/proc/fs",
                  "/proc/irq",
                  "/proc/sys",
                  "/proc/sysrq-trigger"
                ],
                "resources": {
                  "cpu": {
                    "period": 100000,
                    "quota": 100000,
                    "shares": 1024
                  },
                  "devices": [
                    {
                      "access": "rwm",
                      "allow": false,
                      "type": "a"
                    }
                  ],
                  "memory": {
                    "limit": 134217728
                  },
                  "pids": {
                    "limit": 256
                  }
                }
              },
              "mounts": [
                {
                  "destination": "/proc",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev"
                  ],
                  "source": "proc",
                  "type": "proc"
                },
                {
                  "destination": "/dev",
                  "options": [
                    "nosuid",
                    "strictatime",
                    "mode=755",
                    "size=65536k"
                  ],
                  "source": "tmpfs",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/pts",
                  "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5"
                  ],
                  "source": "devpts",
                  "type": "devpts"
                },
                {
                  "destination": "/dev/shm",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "mode=1777",
                    "size=65536k"
                  ],
                  "source": "shm",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/mqueue",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev"
                  ],
                  "source": "mqueue",
                  "type": "mqueue"
                },
                {
                  "destination": "/sys",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "ro"
                  ],
                  "source": "sysfs",
                  "type": "sysfs"
                },
                {
                  "destination": "/sys/fs/cgroup",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "relatime",
                    "ro"
                  ],
                  "source": "cgroup",
                  "type": "cgroup"
                },
                {
                  "destination": "/etc/hosts",
                  "options": [
                    "rbind",
                    "rprivate",
                    "nosuid",
                    "nodev",
                    "ro"
                  ],
                  "source": "/var/lib/flotilla/pods/p1/etc-hosts",
                  "type": "bind"
                }
              ],
              "ociVersion": "1.0.2",
              "process": {
                "args": [
                  "/bin/web",
                  "--serve"
                ],
                "capabilities": {
                  "ambient": [],
                  "bounding": [
                    "CAP_NET_BIND_SERVICE"
                  ],
                  "effective": [
                    "CAP_NET_BIND_SERVICE"
                  ],
                  "inheritable": [],
                  "permitted": [
                    "CAP_NET_BIND_SERVICE"
                  ]
                },
                "cwd": "/",
                "env": [
                  "LANG=C.UTF-8",
                  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "HOSTNAME=web-0",
                  "MODE=prod"
                ],
                "noNewPrivileges": true,
                "terminal": false,
                "user": {
                  "additionalGids": [
                    1000,
                    50,
                    29
                  ],
                  "gid": 1000,
                  "uid": 1000
                }
              },
              "root": {
                "path": "<rootfs>",
                "readonly": true
              }
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&json).unwrap());
    }
}
