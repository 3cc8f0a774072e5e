//! Container benchmarks, side by side with the plain tools that do the same job. Both need
//! root, runc, iptables, Debian's docker-registry and busybox-static; `pull` also
//! skopeo and umoci (scripts/setup installs them all).
//!
//! - `container-start`: a real hub and agent (processes), a busybox image from a loopback
//!   registry, cached on the node. Each sample applies a Pod and times, from the moment apply
//!   returned, until the container's own process has run: its command is
//!   `echo started > /tmp/started; exec sleep 3600`, and a thread on the host notes when
//!   `/tmp/started` appears in the container's writable overlay layer. The peer is raw
//!   `runc run -d` of the very `config.json` the agent generated (copied while a pod ran, with
//!   its own rootfs over the same image snapshot and a network namespace made once), timed to
//!   the same file. Samples of the two alternate, so that both see the same machine. Also
//!   the stages of a start as the host sees them, CPU per start, and the agent's memory idle
//!   and with 20 running containers.
//! - `pull`: a ~50 MB image (busybox and three layers of random bytes, gzip) pulled from the
//!   loopback registry into a fresh store and unpacked, against `skopeo copy` into an OCI
//!   layout and `umoci unpack`; medians of 5 runs.
use crate::{Proc, cpu_time, mib, percentile, rss, start_agent, start_hub, wait_nodes_ready};
use anyhow::{Context as _, bail, ensure};
use fleet::Client;
use flotilla_oci::pull::{Registry as Puller, RegistryConfig};
use flotilla_oci::store::Store;
use flotilla_proto::api::{Kind, Object, Pod};
use flotilla_testkit::registry::{
    LAYER_GZIP, Layer, Registry, TestImage, busybox_image, busybox_layer, image_config,
};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const RUNC: &str = "/usr/sbin/runc";
/// Pod starts measured, and as many raw runc starts.
const STARTS: usize = 100;
/// Running containers for the memory figure.
const RUNNING: usize = 20;
/// The agent's bridge and pod CIDR, apart from the defaults and from the test suite's.
const BRIDGE: &str = "fltbench0";
const POD_CIDR: &str = "10.90.0.0/24";
/// The network namespace the raw runc peer joins (made once, like a pod's, but not per run).
const PEER_NETNS: &str = "fltbench-peer";
const CONTAINER: &str = "c";
/// The container's command: note that it ran, then stay running.
const CMD: &[&str] = &["sh", "-c", "echo started > /tmp/started; exec sleep 3600"];
/// Where that note lands in a bundle: the overlay's writable layer.
const MARKER: &str = "upper/tmp/started";
/// How often the host-side watcher scans; a sighting is late by about this much at most.
const POLL: Duration = Duration::from_micros(250);
const TIMEOUT: Duration = Duration::from_secs(60);
/// How often a starting pod is looked up in the API, only to notice a failure.
const SLOW_POLL: Duration = Duration::from_millis(100);

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

/// Fails with what is missing and how to get it.
fn prerequisites(paths: &[&str]) -> anyhow::Result<()> {
    ensure!(is_root(), "container benchmarks need root");
    for p in paths {
        ensure!(
            Path::new(p).exists(),
            "container benchmarks need {p}: run scripts/setup"
        );
    }
    Ok(())
}

/// Runs a command to completion; fails with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Children's user + system CPU time of a process (those it has waited for), from
/// /proc/PID/stat fields 16 and 17.
fn children_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(13).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(14).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The processes whose parent is `pid`, with their command names.
fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some((child, comm))
        })
        .collect()
}

/// A directory to scan, and paths under each of its entries to look for as well.
struct Watch {
    dir: PathBuf,
    nested: &'static [&'static str],
}

/// Notes when paths first appear, from a thread of its own scanning a few directories every
/// [`POLL`]: the moments a pod's network namespace, files, bundle and marker come into being,
/// without asking the agent. A path that disappears, or is no longer watched, is forgotten, so
/// that it can be seen appearing again. Scanning costs the machine CPU, so only what the
/// sample under way needs is watched ([`Sightings::watch`]), nothing between samples.
struct Sightings {
    watches: Arc<Mutex<Vec<Watch>>>,
    seen: Arc<Mutex<HashMap<PathBuf, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sightings {
    fn start() -> Sightings {
        let watches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (watches, seen, stop) = (watches.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    Self::scan(
                        &watches.lock().unwrap_or_else(PoisonError::into_inner),
                        &seen,
                    );
                    std::thread::sleep(POLL);
                }
            })
        };
        Sightings {
            watches,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Watches these directories from now on (and no others).
    fn watch(&self, watches: Vec<Watch>) {
        *self.watches.lock().unwrap_or_else(PoisonError::into_inner) = watches;
    }

    fn scan(watches: &[Watch], seen: &Mutex<HashMap<PathBuf, Instant>>) {
        let mut present = HashMap::new();
        for w in watches {
            let Ok(entries) = std::fs::read_dir(&w.dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                for n in w.nested {
                    let p = path.join(n);
                    if p.exists() {
                        present.insert(p, Instant::now());
                    }
                }
                present.insert(path, Instant::now());
            }
        }
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|p, _| present.contains_key(p));
        for (p, at) in present {
            seen.entry(p).or_insert(at);
        }
    }

    /// When `path` appeared, if it is there and appeared no earlier than `after`.
    fn at(&self, path: &Path, after: Instant) -> Option<Instant> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(path).copied().filter(|at| *at >= after)
    }

    fn present(&self, path: &Path) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.contains_key(path)
    }
}

impl Drop for Sightings {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn remove_link(name: &str) {
    if Path::new("/sys/class/net").join(name).exists() {
        let _ = run("ip", &["link", "del", name]);
    }
}

/// A hub and one agent (real processes) in a temp dir, and everything the benchmark made.
/// Dropping it stops the agent gracefully (so that it stops its containers and detaches their
/// networks), then removes whatever is left: runc containers, mounts, network namespaces
/// and the bridge.
struct Node {
    agent: Option<Proc>,
    client: Client,
    /// The agent's data dir.
    data: PathBuf,
    /// The raw runc peer's bundle.
    peer: PathBuf,
    // Dropped after `drop` has cleaned up, in this order.
    _hub: Proc,
    dir: tempfile::TempDir,
    shm: tempfile::TempDir,
}

impl Node {
    async fn start(registry: &str) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new().prefix("fltbench-").tempdir()?;
        // Secret volumes on a tmpfs of the benchmark's own.
        let shm = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
        // A bridge an earlier, interrupted run left behind.
        remove_link(BRIDGE);
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let (hub, client) = start_hub(dir.path(), port, &[]).await?;
        let mut node = Node {
            agent: None,
            client,
            data: dir.path().join("agent-bench"),
            peer: dir.path().join("peer"),
            _hub: hub,
            dir,
            shm,
        };
        let token = node.client.create_token(Some(600), None).await?;
        let secrets = node.shm.path().to_string_lossy().to_string();
        node.agent = Some(start_agent(
            node.dir.path(),
            port,
            &token,
            "bench",
            &[
                "--insecure-registry",
                registry,
                "--bridge",
                BRIDGE,
                "--pod-cidr",
                POD_CIDR,
                "--secret-dir",
                &secrets,
            ],
        )?);
        wait_nodes_ready(&node.client, 1).await?;
        Ok(node)
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map_or(0, Proc::pid)
    }

    fn bundle(&self, uid: &str) -> PathBuf {
        self.data
            .join("containers")
            .join(format!("{uid}-{CONTAINER}"))
    }

    /// The agent's name for a pod's network namespace (`flt-` and the uid's first 24).
    fn netns(uid: &str) -> PathBuf {
        Path::new("/run/netns").join(format!("flt-{}", &uid[..uid.len().min(24)]))
    }

    /// What the host-side watcher scans while a pod starts: network namespaces, the agent's
    /// records of them and host-local's leases, pod files, and container bundles (their
    /// config.json and marker).
    fn watches(&self) -> Vec<Watch> {
        let dir = |dir: PathBuf, nested: &'static [&'static str]| Watch { dir, nested };
        vec![
            dir("/run/netns".into(), &[]),
            dir(self.data.join("net"), &[]),
            dir(self.data.join("pods"), &["etc"]),
            dir(self.data.join("containers"), &["config.json", MARKER]),
        ]
    }

    /// SIGINT, as Ctrl-C: the agent stops its pods and detaches their networks. SIGKILL
    /// after 20 s.
    fn stop_agent(&mut self) {
        let Some(mut agent) = self.agent.take() else {
            return;
        };
        let _ = run("kill", &["-INT", &agent.pid().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(agent.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("  note: the agent did not stop within 20 s; killed");
        drop(agent);
    }

    /// Removes what a stopped agent or the peer may have left: containers in both runc
    /// state dirs, mounts under the temp dir, the network namespaces of this agent's pods
    /// (from its records) and the peer's, and the bridge.
    fn clean_up(&self) {
        for root in [self.data.join("runc"), self.peer.join("runc")] {
            let Ok(out) = Command::new(RUNC)
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
            else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                println!("  note: removing leftover container {id}");
                let _ = Command::new(RUNC)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "-f", id])
                    .output();
            }
        }
        let dir = self.dir.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect();
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run("umount", &["-l", &m]);
        }
        let records = std::fs::read_dir(self.data.join("net"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        name.strip_suffix(".json").map(str::to_string)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for uid in records {
            let ns = Self::netns(&uid);
            if ns.exists() {
                println!(
                    "  note: removing leftover network namespace {}",
                    ns.display()
                );
                let _ = run("ip", &["netns", "del", &ns.to_string_lossy()]);
            }
        }
        if Path::new("/run/netns").join(PEER_NETNS).exists() {
            let _ = run("ip", &["netns", "del", PEER_NETNS]);
        }
        remove_link(BRIDGE);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent();
        self.clean_up();
    }
}

fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{bench: container-start}}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: {CONTAINER}, image: {image}, imagePullPolicy: IfNotPresent}}\n"
    )
}

fn deployment_yaml(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: idle}}\nspec:\n  replicas: {RUNNING}\n  selector: {{matchLabels: {{app: idle}}}}\n  template:\n    metadata: {{labels: {{app: idle}}}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n      - {{name: {CONTAINER}, image: {image}, imagePullPolicy: IfNotPresent}}\n"
    )
}

async fn get_pod(client: &Client, name: &str) -> Option<Pod> {
    match client
        .get(Kind::Pod, Some("default"), Some(name))
        .await
        .ok()?
        .into_iter()
        .next()
    {
        Some(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

/// A pod's phase and its container's state, for error messages.
fn describe(p: &Pod) -> String {
    let state = p.status.container_statuses.first().map(|c| &c.state);
    let why = state
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            format!(
                "waiting: {} {}",
                w.reason.as_deref().unwrap_or(""),
                w.message.as_deref().unwrap_or("")
            )
        })
        .or_else(|| {
            state
                .and_then(|s| s.terminated.as_ref())
                .map(|t| format!("terminated: exit code {}", t.exit_code))
        })
        .unwrap_or_default();
    format!("phase {:?} {why}", p.status.phase)
}

/// One pod start, as the host saw it. Moments are from the instant apply returned.
struct Start {
    uid: String,
    /// The apply call itself.
    apply: Duration,
    /// The API shows the pod Running (polled every millisecond).
    running: Duration,
    /// The container's process wrote its marker.
    started: Duration,
    /// The stages of a start: between the moments of [`STAGES`], from apply returned.
    stages: [Duration; STAGES.len()],
    /// Moments the watcher did not see (their stage is counted in the next one).
    missed: usize,
}

/// What ends each stage of a start, as the host sees it, and what happens in it.
const STAGES: [(&str, &str); 6] = [
    (
        "pod's network recorded",
        "hub binds and sends the pod; agent starts it (image cached), leases its address",
    ),
    ("pod's netns exists", "the namespace's file is created"),
    (
        "pod's /etc written",
        "netlink: namespace bound, lo, veth to the bridge, eth0's address and route",
    ),
    (
        "bundle dir created",
        "hosts, hostname, resolv.conf; to a blocking thread",
    ),
    ("config.json written", "overlay mount, runtime spec"),
    ("container's process ran", "runc run --detach, sh"),
];

/// Applies pod `name` and waits until its container has run (its marker appeared) and the
/// API shows it Running. Between one read of the pod (for its uid) and the marker, the API
/// is asked only every [`SLOW_POLL`] (for a pod that failed), so that the benchmark's own
/// requests do not load the hub while the container starts; the peer has none either.
async fn start_pod(
    node: &Node,
    seen: &Sightings,
    name: &str,
    image: &str,
) -> anyhow::Result<Start> {
    let yaml = pod_yaml(name, image);
    seen.watch(node.watches());
    let called = Instant::now();
    node.client.apply_text(&yaml).await?;
    let t0 = Instant::now();
    let pod = get_pod(&node.client, name)
        .await
        .with_context(|| format!("pod {name} is not in the API after apply"))?;
    let uid = pod.metadata.uid.clone();
    let marker = node.bundle(&uid).join(MARKER);
    let mut asked = Instant::now();
    let started = loop {
        if let Some(at) = seen.at(&marker, called) {
            break at;
        }
        if asked.elapsed() >= SLOW_POLL {
            asked = Instant::now();
            if let Some(p) = get_pod(&node.client, name).await
                && matches!(p.status.phase.as_str(), "Failed" | "Succeeded")
            {
                bail!("pod {name} ended: {}", describe(&p));
            }
        }
        ensure!(
            t0.elapsed() < TIMEOUT,
            "pod {name} did not start in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let running = loop {
        let p = get_pod(&node.client, name).await;
        match p.as_ref().map(|p| p.status.phase.as_str()) {
            Some("Running") => break Instant::now(),
            Some("Failed" | "Succeeded") => bail!(
                "pod {name} ended: {}",
                p.as_ref().map(describe).unwrap_or_default()
            ),
            _ => {}
        }
        ensure!(
            t0.elapsed() < TIMEOUT,
            "pod {name} ran but the API did not show it Running in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let net = node.data.join("net");
    let paths = [
        net.join(format!("{uid}.json")),
        Node::netns(&uid),
        node.data.join("pods").join(&uid).join("etc"),
        node.bundle(&uid),
        node.bundle(&uid).join("config.json"),
    ];
    let mut moments: Vec<Option<Instant>> = paths.iter().map(|p| seen.at(p, called)).collect();
    moments.push(Some(started));
    let mut stages = [Duration::ZERO; STAGES.len()];
    let mut prev = t0;
    for (s, m) in stages.iter_mut().zip(&moments) {
        if let Some(m) = m {
            *s = m.saturating_duration_since(prev);
            prev = prev.max(*m);
        }
    }
    seen.watch(Vec::new());
    Ok(Start {
        uid,
        apply: t0 - called,
        running: running.saturating_duration_since(t0),
        started: started.saturating_duration_since(t0),
        stages,
        missed: moments.iter().filter(|m| m.is_none()).count(),
    })
}

/// Deletes pod `name` and waits until it is gone from the API and the node has removed its
/// bundle, files and network namespace; returns how long that took.
async fn delete_pod(node: &Node, name: &str, uid: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    node.client.delete(Kind::Pod, "default", name).await?;
    let mut in_api = true;
    loop {
        if in_api {
            in_api = node
                .client
                .pods(Some("default"))
                .await?
                .iter()
                .any(|p| p.metadata.name == name);
        }
        let on_node = node.bundle(uid).exists()
            || Node::netns(uid).exists()
            || node.data.join("pods").join(uid).exists();
        if !in_api && !on_node {
            return Ok(t.elapsed());
        }
        ensure!(
            t.elapsed() < TIMEOUT,
            "pod {name} not cleaned up in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The raw runc peer: a bundle with the agent's own config.json for a pod of the same image,
/// its rootfs an overlay over the agent's snapshot of that image, its network namespace one
/// made once.
struct Peer {
    bundle: PathBuf,
    state: PathBuf,
    /// The marker in the writable layer (watched), and in the merged rootfs (to remove it).
    marker: PathBuf,
    merged_marker: PathBuf,
}

impl Peer {
    /// Copies the running pod `uid`'s config.json (and the agent's files it bind-mounts),
    /// pointing it at a rootfs, network namespace and cgroup of the peer's own.
    fn prepare(node: &Node, uid: &str) -> anyhow::Result<Peer> {
        let bundle = node.peer.clone();
        for d in ["rootfs", "upper", "work", "binds", "runc"] {
            std::fs::create_dir_all(bundle.join(d))?;
        }
        let snapshots: Vec<PathBuf> = std::fs::read_dir(node.data.join("images/snapshots"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        let [snapshot] = snapshots.as_slice() else {
            bail!("expected one image snapshot on the node, found {snapshots:?}");
        };
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            snapshot.display(),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        run(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &opts,
                &bundle.join("rootfs").to_string_lossy(),
            ],
        )?;
        if Path::new("/run/netns").join(PEER_NETNS).exists() {
            run("ip", &["netns", "del", PEER_NETNS])?;
        }
        run("ip", &["netns", "add", PEER_NETNS])?;
        run("ip", &["-n", PEER_NETNS, "link", "set", "lo", "up"])?;

        let from = node.bundle(uid).join("config.json");
        let mut spec: Value = serde_json::from_slice(
            &std::fs::read(&from).with_context(|| format!("read {}", from.display()))?,
        )?;
        spec["root"]["path"] = json!(bundle.join("rootfs"));
        if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
            for ns in namespaces.iter_mut().filter(|n| n["type"] == "network") {
                ns["path"] = json!(Path::new("/run/netns").join(PEER_NETNS));
            }
        }
        spec["linux"]["cgroupsPath"] = json!("/flotilla/fltbench-peer");
        // The pod's /etc/hosts, hostname, resolv.conf (and any volume) go with the pod.
        let agent_files = [node.dir.path(), node.shm.path()];
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for (i, m) in mounts.iter_mut().enumerate() {
                let Some(src) = m["source"].as_str().map(PathBuf::from) else {
                    continue;
                };
                if !agent_files.iter().any(|d| src.starts_with(d)) {
                    continue;
                }
                let name = src.file_name().map(|n| n.to_string_lossy().to_string());
                let to = bundle
                    .join("binds")
                    .join(format!("{i}-{}", name.unwrap_or_default()));
                run("cp", &["-a", &src.to_string_lossy(), &to.to_string_lossy()])?;
                m["source"] = json!(to);
            }
        }
        let text = serde_json::to_string_pretty(&spec)?;
        ensure!(
            !text.contains(&*node.data.to_string_lossy()),
            "the peer's config.json still refers to the agent's files: {text}"
        );
        std::fs::write(bundle.join("config.json"), text)?;
        Ok(Peer {
            marker: bundle.join(MARKER),
            merged_marker: bundle.join("rootfs/tmp/started"),
            state: bundle.join("runc"),
            bundle,
        })
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(RUNC);
        c.arg("--root").arg(&self.state).stdin(Stdio::null());
        c
    }

    /// `runc run -d` of container `id`: how long until runc returned, and until the
    /// container's marker appeared. Then `runc delete -f`.
    async fn start(&self, seen: &Sightings, id: &str) -> anyhow::Result<(Duration, Duration)> {
        // The container's stdio is a file: a pipe would stay open as long as it runs.
        let log = std::fs::File::create(self.bundle.join("run.log"))?;
        seen.watch(vec![Watch {
            dir: self.bundle.join("upper/tmp"),
            nested: &[],
        }]);
        let t0 = Instant::now();
        let status = self
            .runc()
            .args(["run", "-d", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        let returned = t0.elapsed();
        ensure!(
            status.success(),
            "runc run: {}",
            std::fs::read_to_string(self.bundle.join("run.log")).unwrap_or_default()
        );
        let started = loop {
            if let Some(at) = seen.at(&self.marker, t0) {
                break at - t0;
            }
            ensure!(t0.elapsed() < TIMEOUT, "runc container {id} did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let out = self.runc().args(["delete", "-f", id]).output()?;
        ensure!(
            out.status.success(),
            "runc delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&self.merged_marker)?;
        while seen.present(&self.marker) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen.watch(Vec::new());
        Ok((returned, started))
    }
}

fn p50_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `flotilla-bench container-start`.
pub async fn container_start() -> anyhow::Result<()> {
    prerequisites(&[
        RUNC,
        "/usr/sbin/iptables",
        "/usr/bin/docker-registry",
        "/usr/bin/busybox",
    ])?;
    flotilla_transport::install_crypto_provider();
    let registry = Registry::start()?;
    let host = registry.host();
    registry
        .push("bench/busybox:v1", &busybox_image(CMD, json!({}))?)
        .await?;
    let image = format!("{host}/bench/busybox:v1");
    let mut node = Node::start(&host).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss(node.agent_pid());

    let seen = Sightings::start();
    // The first pod pulls and unpacks the image; while it runs, its spec is the peer's.
    let warm = start_pod(&node, &seen, "warm-up", &image).await?;
    let peer = Peer::prepare(&node, &warm.uid)?;
    delete_pod(&node, "warm-up", &warm.uid).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_cached = rss(node.agent_pid());

    println!(
        "== container start, {STARTS} starts each, alternating (busybox image cached; load average {})",
        loadavg()
    );
    let agent = node.agent_pid();
    let (agent_cpu0, agent_children0) = (cpu_time(agent), children_cpu(agent));
    let (bench_cpu0, peer_cpu0) = (
        cpu_time(std::process::id()),
        children_cpu(std::process::id()),
    );
    let mut ours = Vec::with_capacity(STARTS);
    let mut deletes = Vec::with_capacity(STARTS);
    let mut runc = Vec::with_capacity(STARTS);
    for i in 0..STARTS {
        let name = format!("start-{i}");
        let s = start_pod(&node, &seen, &name, &image).await?;
        deletes.push(delete_pod(&node, &name, &s.uid).await?);
        ours.push(s);
        runc.push(peer.start(&seen, &format!("fltbench-{i}")).await?);
    }
    let agent_cpu = cpu_time(agent).saturating_sub(agent_cpu0);
    let agent_children = children_cpu(agent).saturating_sub(agent_children0);
    let peer_cpu = children_cpu(std::process::id()).saturating_sub(peer_cpu0);
    let bench_cpu = cpu_time(std::process::id()).saturating_sub(bench_cpu0);
    drop(seen);

    let (started50, started99) = p50_p99(&mut ours.iter().map(|s| s.started).collect::<Vec<_>>());
    let (running50, running99) = p50_p99(&mut ours.iter().map(|s| s.running).collect::<Vec<_>>());
    let (apply50, apply99) = p50_p99(&mut ours.iter().map(|s| s.apply).collect::<Vec<_>>());
    let (ret50, ret99) = p50_p99(&mut runc.iter().map(|r| r.0).collect::<Vec<_>>());
    let (rs50, rs99) = p50_p99(&mut runc.iter().map(|r| r.1).collect::<Vec<_>>());
    let (del50, del99) = p50_p99(&mut deletes);
    println!(
        "  flotilla, apply returned -> container's process ran:  p50 {:>9}   p99 {:>9}",
        ms(started50),
        ms(started99)
    );
    println!(
        "  flotilla, apply returned -> API shows Running:        p50 {:>9}   p99 {:>9}   (the agent reports Running once runc has started the process)",
        ms(running50),
        ms(running99)
    );
    println!(
        "  runc run -d, spawn -> container's process ran:        p50 {:>9}   p99 {:>9}   (same config.json, same image)",
        ms(rs50),
        ms(rs99)
    );
    println!(
        "  runc run -d, spawn -> runc returned:                  p50 {:>9}   p99 {:>9}",
        ms(ret50),
        ms(ret99)
    );
    // Differences of the percentiles; either may be negative on a noisy machine.
    let diff = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
    println!(
        "  overhead flotilla - runc: p50 {:+.2} ms   p99 {:+.2} ms   ({:.1}x runc at p50; goal <= 5 ms)",
        diff(started50, rs50),
        diff(started99, rs99),
        started50.as_secs_f64() / rs50.as_secs_f64()
    );
    println!("  where flotilla's time goes, seen from the host (p50 / p99 of each stage):");
    let mut from = "apply returned";
    for (i, (to, what)) in STAGES.iter().enumerate() {
        let (p50, p99) = p50_p99(&mut ours.iter().map(|s| s.stages[i]).collect::<Vec<_>>());
        println!(
            "    {:<46} {:>9} / {:>9}   {what}",
            format!("{from} -> {to}"),
            ms(p50),
            ms(p99)
        );
        from = to;
    }
    println!(
        "    (the apply call itself: p50 {} / p99 {}; sightings are up to {} late{})",
        ms(apply50),
        ms(apply99),
        ms(POLL),
        match ours.iter().map(|s| s.missed).sum::<usize>() {
            0 => String::new(),
            n => format!("; {n} moments not seen, counted in the next stage"),
        }
    );
    let per = |d: Duration| ms(d / STARTS as u32);
    println!(
        "  CPU per start + delete: flotilla-agent {} + its children (runc, iptables) {}; runc peer (run -d + delete -f) {}",
        per(agent_cpu),
        per(agent_children),
        per(peer_cpu)
    );
    println!(
        "    (the benchmark itself, its watcher and API polls: {} per start pair; the agent's own figure includes the kernel's time reaping its children, which grows with load)",
        per(bench_cpu)
    );
    println!(
        "  flotilla, delete -> gone from the API and the node: p50 {}   p99 {}",
        ms(del50),
        ms(del99)
    );

    println!("== agent memory, container pods");
    println!(
        "  agent RSS, idle, 0 pods:                 {}",
        mib(rss_idle)
    );
    println!(
        "  agent RSS, 0 pods, image pulled:         {}",
        mib(rss_cached)
    );
    node.client.apply_text(&deployment_yaml(&image)).await?;
    let t = Instant::now();
    loop {
        let pods = node.client.pods(Some("default")).await?;
        let running: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.metadata.labels.get("app").map(String::as_str) == Some("idle")
                    && p.status.phase == "Running"
            })
            .collect();
        let started = running
            .iter()
            .filter(|p| node.bundle(&p.metadata.uid).join(MARKER).exists())
            .count();
        if started == RUNNING {
            break;
        }
        ensure!(
            t.elapsed() < TIMEOUT,
            "only {started}/{RUNNING} containers started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_running = rss(node.agent_pid());
    let runcs: Vec<u32> = children(node.agent_pid())
        .into_iter()
        .filter(|(_, comm)| comm == "runc")
        .map(|(pid, _)| pid)
        .collect();
    let runc_rss: u64 = runcs.iter().map(|p| rss(*p)).sum();
    println!(
        "  agent RSS, {RUNNING} running containers:     {}   ({:.0} KiB per container over the pulled figure; all {RUNNING} running in {:.2} s)",
        mib(rss_running),
        rss_running.saturating_sub(rss_cached) as f64 / RUNNING as f64 / 1024.0,
        up.as_secs_f64()
    );
    println!(
        "  plus {} `runc` processes left beside the containers: {} ({:.1} MiB each)",
        runcs.len(),
        mib(runc_rss),
        runc_rss as f64 / runcs.len().max(1) as f64 / (1024.0 * 1024.0)
    );
    node.client
        .delete(Kind::Deployment, "default", "idle")
        .await?;
    let t = Instant::now();
    while std::fs::read_dir(node.data.join("containers"))?.count() > 0 {
        ensure!(t.elapsed() < TIMEOUT, "the Deployment's containers remain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(peer);
    node.stop_agent();
    drop(node);
    drop(registry);
    Ok(())
}

/// Layers of random bytes in the `pull` image, files per layer, bytes per file: 48 MiB.
const RANDOM_LAYERS: usize = 3;
const FILES_PER_LAYER: usize = 4;
const FILE_BYTES: usize = 4 << 20;
const PULL_RUNS: usize = 5;

fn gzip(tar: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar)?;
    Ok(gz.finish()?)
}

/// busybox and [`RANDOM_LAYERS`] layers of incompressible files, gzip; also the compressed
/// and uncompressed sizes.
fn big_image() -> anyhow::Result<(TestImage, u64, u64)> {
    let mut tars = vec![busybox_layer()?.tar()];
    let mut random = std::fs::File::open("/dev/urandom")?;
    for l in 0..RANDOM_LAYERS {
        let mut layer = Layer::new().dir("data").dir(&format!("data/{l}"));
        for f in 0..FILES_PER_LAYER {
            let mut buf = vec![0u8; FILE_BYTES];
            random.read_exact(&mut buf)?;
            layer = layer.file(&format!("data/{l}/{f}.bin"), 0o644, &buf);
        }
        tars.push(layer.tar());
    }
    // The push fills in the config's diff_ids (umoci checks them, as the agent does).
    let config = image_config(flotilla_oci::pull::platform().1, &[], &["sh"], json!({}));
    let unpacked = tars.iter().map(|t| t.len() as u64).sum();
    let layers = tars
        .iter()
        .map(|t| Ok((gzip(t)?, LAYER_GZIP.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let packed = layers.iter().map(|(b, _)| b.len() as u64).sum();
    let image = TestImage {
        layers,
        config,
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
    };
    Ok((image, packed, unpacked))
}

#[derive(Clone, Copy, Default)]
struct Timing {
    pull: Duration,
    unpack: Duration,
}

impl Timing {
    fn total(&self) -> Duration {
        self.pull + self.unpack
    }
}

/// Ours: resolve + fetch into a fresh store in `dir`, then unpack the snapshot.
async fn pull_ours(host: &str, reference: &str, dir: &Path) -> anyhow::Result<Timing> {
    let t = Instant::now();
    let store = Store::open(dir)?;
    let puller = Puller::new(&RegistryConfig {
        insecure: vec![host.to_string()],
    });
    let digest = puller
        .resolve(&store, reference, &RegistryAuth::Anonymous)
        .await?;
    let (image, _) = puller
        .fetch(&store, reference, &digest, &RegistryAuth::Anonymous)
        .await?;
    let pull = t.elapsed();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || store.snapshot(&image)).await??;
    Ok(Timing {
        pull,
        unpack: t.elapsed(),
    })
}

/// The peer: `skopeo copy` into an OCI layout, then `umoci unpack` (which also writes a
/// config.json and an mtree manifest hashing every file), and apart from that `umoci raw
/// unpack` (the rootfs alone, as ours).
fn pull_peer(reference: &str, dir: &Path) -> anyhow::Result<(Timing, Duration)> {
    std::fs::create_dir_all(dir)?;
    let layout = dir.join("oci");
    let layout_tag = format!("{}:v1", layout.display());
    let t = Instant::now();
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{layout_tag}"),
        ],
    )?;
    let pull = t.elapsed();
    let t = Instant::now();
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &layout_tag,
            &dir.join("bundle").to_string_lossy(),
        ],
    )?;
    let unpack = t.elapsed();
    let t = Instant::now();
    run(
        "umoci",
        &[
            "raw",
            "unpack",
            "--image",
            &layout_tag,
            &dir.join("rootfs").to_string_lossy(),
        ],
    )?;
    Ok((Timing { pull, unpack }, t.elapsed()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `flotilla-bench pull`.
pub async fn pull() -> anyhow::Result<()> {
    prerequisites(&[
        "/usr/bin/docker-registry",
        "/usr/bin/busybox",
        "/usr/bin/skopeo",
        "/usr/bin/umoci",
    ])?;
    flotilla_transport::install_crypto_provider();
    let registry = Registry::start()?;
    let (image, packed, unpacked) = big_image()?;
    registry.push("bench/big:v1", &image).await?;
    drop(image);
    let host = registry.host();
    let reference = format!("{host}/bench/big:v1");
    let dir = tempfile::Builder::new()
        .prefix("fltbench-pull-")
        .tempdir()?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut raw = Vec::new();
    println!(
        "== image pull + unpack, {:.1} MB compressed ({:.1} MB unpacked, {} gzip layers), loopback registry, {PULL_RUNS} runs alternating, medians (load average {})",
        packed as f64 / 1e6,
        unpacked as f64 / 1e6,
        RANDOM_LAYERS + 1,
        loadavg()
    );
    for run in 0..PULL_RUNS {
        let d = dir.path().join(format!("ours-{run}"));
        ours.push(pull_ours(&host, &reference, &d).await?);
        std::fs::remove_dir_all(&d)?;
        let d = dir.path().join(format!("peer-{run}"));
        let (t, r) = pull_peer(&reference, &d)?;
        theirs.push(t);
        raw.push(r);
        std::fs::remove_dir_all(&d)?;
    }
    let med = |v: &[Timing], f: fn(&Timing) -> Duration| median(v.iter().map(f).collect());
    let rate = |d: Duration| packed as f64 / 1e6 / d.as_secs_f64();
    let line = |who: &str, t: [Duration; 3]| {
        println!(
            "  {who:<34} pull {:>9} ({:>6.0} MB/s)   unpack {:>9} ({:>6.0} MB/s)   total {:>9} ({:>6.0} MB/s)",
            ms(t[0]),
            rate(t[0]),
            ms(t[1]),
            rate(t[1]),
            ms(t[2]),
            rate(t[2])
        );
    };
    let o = [
        med(&ours, |t| t.pull),
        med(&ours, |t| t.unpack),
        med(&ours, Timing::total),
    ];
    let p = [
        med(&theirs, |t| t.pull),
        med(&theirs, |t| t.unpack),
        med(&theirs, Timing::total),
    ];
    let r = median(raw);
    line("flotilla (oci::pull + snapshot):", o);
    line("skopeo copy + umoci unpack:", p);
    println!(
        "  {:<34} {:>27} unpack {:>9} ({:>6.0} MB/s)",
        "umoci raw unpack (rootfs only):",
        "",
        ms(r),
        rate(r)
    );
    println!(
        "  ratio flotilla/peer (time; < 1 is faster): pull {:.2}x   unpack {:.2}x (vs raw unpack {:.2}x)   total {:.2}x",
        o[0].as_secs_f64() / p[0].as_secs_f64(),
        o[1].as_secs_f64() / p[1].as_secs_f64(),
        o[1].as_secs_f64() / r.as_secs_f64(),
        o[2].as_secs_f64() / p[2].as_secs_f64()
    );
    println!("  (MB/s of compressed image bytes; flotilla fsyncs each blob it stores)");
    drop(registry);
    Ok(())
}
