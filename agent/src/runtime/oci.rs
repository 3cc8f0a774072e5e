//! OCI containers under runc: the only module that runs runc.
//!
//! One container is one bundle under `<data>/containers/<id>/`: `config.json`, an overlayfs
//! `rootfs` (the image's shared read-only snapshot below, the container's own `upper/` above;
//! a full copy where overlayfs is unavailable), and a pid file. `runc run --detach` starts
//! the container and returns; the container's process, orphaned by runc, becomes the agent's
//! child (the agent is a child subreaper), so the agent reaps it and has its exit status
//! without a runc (10 MiB each) waiting beside every container. Its stdout and stderr are
//! pipes into the pod log, whose reading ends only the agent holds. A pod in the host's pid
//! namespace is the exception: its orphans would be the agent's to reap, so its `runc run`
//! stays in the foreground (a subreaper itself) and its exit status is the container's.
//! Containers live in runc's state directory `<data>/runc`, which is how an agent that
//! crashed finds what it left behind.
use crate::logs::{LogStream, PodLog};
use flotilla_oci::spec;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Exit code of a container killed by SIGKILL (as runc and Kubernetes report it).
const EXIT_KILLED: i32 = 137;
/// The cgroup every container's cgroup sits under (`/flotilla/<id>`).
const CGROUP_PARENT: &str = "flotilla";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("runc is not installed ({0}); run scripts/setup or install Debian's runc")]
    NoRunc(String),
    #[error("{0}")]
    Spec(#[from] spec::SpecError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("runc {what}: {message}")]
    Runc { what: String, message: String },
    #[error("cannot become the containers' subreaper: {0}")]
    Subreaper(nix::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// Completed, Error, OOMKilled or Killed.
    pub reason: String,
}

pub struct ContainerRuntime {
    runc: PathBuf,
    /// runc's `--root`: the state of the containers this agent started.
    state: PathBuf,
    bundles: PathBuf,
    /// What `runc --version` said, for node status.
    pub version: String,
    /// The same, understood (upstream version, commit line), for node status.
    pub runc_version: super::runc_cves::RuncVersion,
    cgroup_v2: bool,
}

impl ContainerRuntime {
    /// Finds runc and prepares the agent's directories. Fails when runc is missing: the agent
    /// then runs WASI pods only and refuses container pods with this reason.
    pub fn new(data_dir: &Path) -> Result<ContainerRuntime, ContainerError> {
        let runc = which("runc").ok_or_else(|| ContainerError::NoRunc("not on PATH".into()))?;
        let out = std::process::Command::new(&runc)
            .arg("--version")
            .output()
            .map_err(|e| ContainerError::NoRunc(e.to_string()))?;
        let runc_version =
            super::runc_cves::RuncVersion::parse(&String::from_utf8_lossy(&out.stdout));
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("runc")
            .trim()
            .to_string();
        // Detached containers are orphaned by runc at start: as a subreaper the agent gets
        // them as children (else init would), and with them their exit status.
        nix::sys::prctl::set_child_subreaper(true).map_err(ContainerError::Subreaper)?;
        let state = data_dir.join("runc");
        let bundles = data_dir.join("containers");
        for d in [&state, &bundles] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        Ok(ContainerRuntime {
            runc,
            state,
            bundles,
            version,
            runc_version,
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        })
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root").arg(&self.state);
        c.stdin(Stdio::null()).kill_on_drop(false);
        c
    }

    pub fn cgroups_path(id: &str) -> String {
        format!("/{CGROUP_PARENT}/{id}")
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// Builds the container's bundle: its rootfs over the image snapshot and `config.json`
    /// from `make_spec` (which is handed the rootfs path).
    pub fn create_bundle(
        &self,
        id: &str,
        snapshot: &Path,
        make_spec: impl FnOnce(&Path) -> Result<flotilla_oci::oci_spec::runtime::Spec, spec::SpecError>,
    ) -> Result<PathBuf, ContainerError> {
        let bundle = self.bundle(id);
        if bundle.exists() {
            self.remove_bundle(id);
        }
        let rootfs = bundle.join("rootfs");
        for d in ["rootfs", "upper", "work"] {
            let p = bundle.join(d);
            std::fs::create_dir_all(&p).map_err(io(format!("create {}", p.display())))?;
        }
        mount_rootfs(snapshot, &bundle, &rootfs)?;
        let spec = make_spec(&rootfs).inspect_err(|_| self.remove_bundle(id))?;
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| ContainerError::Runc {
            what: "spec".into(),
            message: e.to_string(),
        })?;
        let config = bundle.join("config.json");
        std::fs::write(&config, json).map_err(io(format!("write {}", config.display())))?;
        Ok(bundle)
    }

    /// Starts the container (`runc run`); [`ContainerRuntime::finish`] waits for its end.
    /// Output goes to `log`. `host_pid`: the container shares the host's pid namespace (see
    /// the module's notes).
    pub async fn start(
        &self,
        id: &str,
        log: PodLog,
        host_pid: bool,
    ) -> Result<Running, ContainerError> {
        let bundle = self.bundle(id);
        let pid_file = bundle.join("pid");
        let (stdout, stdout_w) = std::io::pipe().map_err(io("create a log pipe"))?;
        let (stderr, stderr_w) = std::io::pipe().map_err(io("create a log pipe"))?;
        let pumps = [
            pump(stdout, log.clone(), LogStream::Stdout)?,
            pump(stderr, log.clone(), LogStream::Stderr)?,
        ];
        let mut runc = self.runc();
        runc.arg("run");
        if !host_pid {
            runc.args(["--detach", "--pid-file"]).arg(&pid_file);
        }
        runc.arg("--bundle")
            .arg(&bundle)
            .arg(id)
            .stdout(stdout_w)
            .stderr(stderr_w);
        let started = match host_pid {
            true => Ok(Started {
                exited: foreground(runc.spawn().map_err(io("spawn runc"))?),
                pidfd: None,
            }),
            false => self.detached(id, runc.status().await, &pid_file).await?,
        };
        // The command held the pipes' writing ends; from here only the container does, so
        // the pumps end when it exits. What runc itself says on failure is in the log.
        drop(runc);
        Ok(Running {
            id: id.to_string(),
            started,
            pumps,
        })
    }

    /// Waits until the started container exits or `stop` fires; then SIGTERM, `grace`,
    /// SIGKILL. The bundle and runc's state are removed before returning.
    pub async fn finish(&self, running: Running, stop: CancellationToken, grace: Duration) -> Exit {
        let Running { id, started, pumps } = running;
        let id = id.as_str();
        let code = match started {
            Ok(mut started) => tokio::select! {
                s = &mut started.exited => s.unwrap_or(EXIT_KILLED),
                _ = stop.cancelled() => self.stop(id, started, grace).await,
            },
            Err(code) => code,
        };
        for p in pumps {
            let _ = p.await;
        }
        let oom = self.oom_killed(id);
        self.delete(id).await;
        self.remove_bundle(id);
        let reason = match code {
            _ if oom => "OOMKilled",
            0 => "Completed",
            _ if stop.is_cancelled() => "Killed",
            _ => "Error",
        };
        debug!(container = id, code, reason, "container exited");
        Exit {
            code: if oom { EXIT_KILLED } else { code },
            reason: reason.to_string(),
        }
    }

    /// What `runc run --detach` left: the running container, or the code runc failed with
    /// before the container ran (it stands for the container's).
    async fn detached(
        &self,
        id: &str,
        started: std::io::Result<std::process::ExitStatus>,
        pid_file: &Path,
    ) -> Result<Result<Started, i32>, ContainerError> {
        let started = started.map_err(io("run runc"))?;
        if !started.success() {
            return Ok(Err(exit_code(&started)));
        }
        let Some(pid) = read_pid(pid_file) else {
            warn!(
                container = id,
                "runc started the container but wrote no pid"
            );
            self.kill(id, "KILL").await;
            return Ok(Err(EXIT_KILLED));
        };
        // Opened before the agent can reap the process, so it names this process and no
        // later one with the same pid.
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        match reap(id, pid) {
            Ok(exited) => Ok(Ok(Started { exited, pidfd })),
            Err(e) => {
                warn!(container = id, error = %e, "killing the container: it cannot be waited for");
                self.kill(id, "KILL").await;
                Ok(Err(EXIT_KILLED))
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace` (at once when it is zero: Kubernetes' "stop
    /// immediately via the kill signal"); returns the container's exit code.
    async fn stop(&self, id: &str, mut c: Started, grace: Duration) -> i32 {
        if !grace.is_zero() {
            self.kill(id, "TERM").await;
            if let Ok(code) = tokio::time::timeout(grace, &mut c.exited).await {
                return code.unwrap_or(EXIT_KILLED);
            }
            info!(container = id, "container ignored SIGTERM; killing it");
        }
        self.kill_started(id, &c).await;
        match tokio::time::timeout(Duration::from_secs(10), c.exited).await {
            Ok(code) => code.unwrap_or(EXIT_KILLED),
            Err(_) => {
                warn!(container = id, "container still there 10 s after SIGKILL");
                EXIT_KILLED
            }
        }
    }

    /// SIGKILL to a started container. Through its process's pidfd where the agent has one:
    /// the end of a pid namespace's first process ends all of it, as `runc kill --all KILL`
    /// would, without a runc (some 10 ms of CPU) per stop. Else (a container in the host's pid
    /// namespace, a kernel without pidfds) through runc.
    async fn kill_started(&self, id: &str, c: &Started) {
        let Some(fd) = &c.pidfd else {
            return self.kill(id, "KILL").await;
        };
        match rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL) {
            // Gone already: its exit is on its way.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                debug!(container = id, error = %e, "cannot kill the container through its pidfd");
                self.kill(id, "KILL").await;
            }
        }
    }

    /// `runc kill --all`: `signal` to every process of the container.
    async fn kill(&self, id: &str, signal: &str) {
        let out = self
            .runc()
            .args(["kill", "--all", id, signal])
            .output()
            .await;
        if let Ok(o) = out
            && !o.status.success()
        {
            debug!(container = id, signal, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "runc kill failed");
        }
    }

    /// `runc exec` of `argv` in the running container.
    /// `runc exec` of `argv` in the container; with `tty`, under a terminal of its own (runc
    /// then relays its own stdio, which must be a terminal, to it).
    /// The guard kills the command (not runc, which then reaps it and exits) unless it is told
    /// the command finished, so nothing is orphaned to the agent when a caller gives up.
    pub fn exec_command(&self, id: &str, argv: &[String], tty: bool) -> (Command, ExecGuard) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid_file = self.bundle(id).join(format!("exec-{n}.pid"));
        let mut cmd = self.runc();
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        if tty {
            // What CRI runtimes give a terminal.
            cmd.args(["--tty", "--env", "TERM=xterm"]);
        }
        cmd.arg(id).args(argv);
        let guard = ExecGuard {
            pid_file,
            runc: None,
            finished: false,
        };
        (cmd, guard)
    }

    /// Runs `argv` inside the running container; returns its exit code and output.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>), ContainerError> {
        let (mut cmd, mut guard) = self.exec_command(id, argv, false);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("spawn runc exec"))?;
        guard.spawned(child.id());
        drop(cmd);
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| ContainerError::Runc {
                what: "exec".into(),
                message: format!("timed out after {}", humantime::format_duration(timeout)),
            })?
            .map_err(io("spawn runc exec"))?;
        guard.finished();
        let mut output = out.stdout;
        output.extend_from_slice(&out.stderr);
        Ok((exit_code(&out.status), output))
    }

    /// Whether the kernel's OOM killer struck in the container's cgroup.
    fn oom_killed(&self, id: &str) -> bool {
        let path = if self.cgroup_v2 {
            PathBuf::from(format!("/sys/fs/cgroup/{CGROUP_PARENT}/{id}/memory.events"))
        } else {
            PathBuf::from(format!(
                "/sys/fs/cgroup/memory/{CGROUP_PARENT}/{id}/memory.oom_control"
            ))
        };
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().to_string()))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    }

    async fn delete(&self, id: &str) {
        match self.runc().args(["delete", "--force", id]).output().await {
            Ok(o) if !o.status.success() => {
                let msg = String::from_utf8_lossy(&o.stderr);
                if !msg.contains("does not exist") {
                    warn!(container = id, stderr = %msg.trim(), "runc delete failed");
                }
            }
            Err(e) => warn!(container = id, error = %e, "runc delete failed"),
            _ => {}
        }
    }

    fn remove_bundle(&self, id: &str) {
        let bundle = self.bundle(id);
        unmount(&bundle.join("rootfs"));
        if let Err(e) = std::fs::remove_dir_all(&bundle)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(container = id, error = %e, "cannot remove container bundle");
        }
    }

    /// The ids of containers runc still knows about in this agent's state directory.
    pub async fn list(&self) -> Vec<String> {
        let Ok(out) = self
            .runc()
            .args(["list", "--format", "json"])
            .output()
            .await
        else {
            return Vec::new();
        };
        #[derive(serde::Deserialize)]
        struct Entry {
            id: String,
        }
        serde_json::from_slice::<Option<Vec<Entry>>>(&out.stdout)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// After a crash: kills and deletes every container this agent left running, unmounts
    /// and removes their bundles. The supervisor then starts the cached pods afresh.
    pub async fn clean_up_leftovers(&self) -> usize {
        let ids = self.list().await;
        for id in &ids {
            self.kill(id, "KILL").await;
            self.delete(id).await;
        }
        let mut n = ids.len();
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                self.remove_bundle(&id);
                if !ids.contains(&id) {
                    n += 1;
                }
            }
        }
        if n > 0 {
            info!(containers = n, "removed containers left by a previous run");
        }
        n
    }
}

/// A process's exit code, 128 + the signal for one killed by a signal (as shells say it).
pub fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}

/// Copies a container's output into the pod log as it arrives, until every writer has
/// closed the pipe.
fn pump(
    from: std::io::PipeReader,
    log: PodLog,
    stream: LogStream,
) -> Result<tokio::task::JoinHandle<()>, ContainerError> {
    use futures::StreamExt as _;
    let from = tokio::net::unix::pipe::Receiver::from_owned_fd(from.into())
        .map_err(io("read a log pipe"))?;
    Ok(tokio::spawn(async move {
        let mut chunks = tokio_util::io::ReaderStream::new(from);
        while let Some(Ok(bytes)) = chunks.next().await {
            log.append(stream, &bytes);
        }
    }))
}

/// A `runc exec` under way. Dropped before [`ExecGuard::finished`], it kills the command
/// runc started in the container: runc, a subreaper, then reaps it and exits (tokio reaps
/// runc), whereas killing runc would hand the command to the agent, which never reaps it.
pub struct ExecGuard {
    pid_file: PathBuf,
    /// The `runc exec` process, once spawned.
    runc: Option<u32>,
    finished: bool,
}

impl ExecGuard {
    /// `runc exec` is running as `pid`.
    pub fn spawned(&mut self, pid: Option<u32>) {
        self.runc = pid;
    }

    /// The command has exited and runc has reaped it: its pid may belong to anyone now.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if let Some(runc) = self.runc.filter(|_| !self.finished) {
            // Only a process that is still runc's child is the command (else runc reaped it
            // and its pid may be anyone's); without one, runc itself, while it is still ours.
            let target = match read_pid(&self.pid_file) {
                Some(pid) => (parent_of(pid as u32) == Some(runc)).then_some(pid as u32),
                None => (parent_of(runc) == Some(std::process::id())).then_some(runc),
            };
            if let Some(pid) = target {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pid runc wrote for a container it started (or an exec'd process).
fn read_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

/// A container's exit code, once the agent has reaped its process.
type Exited = tokio::sync::oneshot::Receiver<i32>;

/// A container that `runc run` was asked to start: what [`ContainerRuntime::finish`] needs.
pub struct Running {
    id: String,
    /// Started, or the code runc failed with before the container ran.
    started: Result<Started, i32>,
    /// The copies of its output into the pod log.
    pumps: [tokio::task::JoinHandle<()>; 2],
}

impl Running {
    /// The code runc failed with, when it did not start the container.
    pub fn failed(&self) -> Option<i32> {
        self.started.as_ref().err().copied()
    }
}

/// A container that runc started.
struct Started {
    exited: Exited,
    /// Its process, to kill (none where the agent does not have it; see
    /// [`ContainerRuntime::kill_started`]).
    pidfd: Option<std::os::fd::OwnedFd>,
}

/// A foreground `runc run`'s exit code: the container's.
fn foreground(mut runc: tokio::process::Child) -> Exited {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let code = match runc.wait().await {
            Ok(status) => exit_code(&status),
            Err(_) => EXIT_KILLED,
        };
        let _ = tx.send(code);
    });
    rx
}

/// Waits for the container's process `pid`, the agent's child since runc left it, on a
/// small thread of its own (a blocking wait for that pid only, so no other child's status is
/// taken), and gives its exit code as a shell says it.
fn reap(id: &str, pid: i32) -> Result<Exited, ContainerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = format!("reap-{}", id.chars().take(10).collect::<String>());
    let container = id.to_owned();
    std::thread::Builder::new()
        .name(name)
        .stack_size(64 * 1024)
        .spawn(move || {
            let code = wait_for(pid).unwrap_or_else(|e| {
                // Not the agent's child (reaped elsewhere, or never handed to the agent): its
                // status is lost, so it counts as killed once it is gone.
                warn!(container, %e, "cannot wait for the container's process");
                let pid = nix::unistd::Pid::from_raw(pid);
                while nix::sys::signal::kill(pid, None).is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                EXIT_KILLED
            });
            let _ = tx.send(code);
        })
        .map_err(io("start a thread to wait for the container"))?;
    Ok(rx)
}

/// Blocks until the child `pid` exits and reaps it: its exit code, or 128 + the signal that
/// killed it (any signal, real-time ones too).
#[allow(
    unsafe_code,
    reason = "waitpid has no safe wrapper that reports every signal"
)]
fn wait_for(pid: i32) -> std::io::Result<i32> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the call's duration; waitpid takes
        // no other pointer. `pid` > 0 names one process, so no other child is reaped.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Mounts an overlay of `snapshot` (read-only, shared) and the bundle's `upper` at `rootfs`;
/// where overlayfs is not available the snapshot is copied instead.
fn mount_rootfs(snapshot: &Path, bundle: &Path, rootfs: &Path) -> Result<(), ContainerError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        snapshot.display(),
        bundle.join("upper").display(),
        bundle.join("work").display()
    );
    let mounted = nix::mount::mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    );
    match mounted {
        Ok(()) => Ok(()),
        Err(e) => {
            warn!(error = %e, "overlayfs unavailable; copying the image for this container");
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", snapshot.display()))
                .arg(rootfs)
                .status()
                .map_err(io("copy the image"))?;
            if status.success() {
                Ok(())
            } else {
                Err(ContainerError::Runc {
                    what: "rootfs".into(),
                    message: format!("copying {} failed", snapshot.display()),
                })
            }
        }
    }
}

fn unmount(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        warn!(path = %path.display(), error = %e, "cannot unmount container rootfs");
    }
}

/// runc from the usual system directories (the agent reads no environment outside `main`).
fn which(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}
