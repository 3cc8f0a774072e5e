//! Dev-only harness: a real hub and N real agents in one process on loopback (each agent on its
//! own 127.0.0.x address, each with its own data dir), plus fixtures and `eventually`. With
//! [`Builder::on`] the hub and each agent live in network namespaces of their own instead
//! ([`netns::Net`]), so tests can cut links.
pub mod netns;
pub mod registry;

use anyhow::Context as _;
use fleet::Client;
use flotilla_agent::AgentHandle;
use flotilla_hub::HubHandle;
use flotilla_hub::config::ClientFile;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use fleet::up::http_get;

/// Logs go to the test's output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A built example component. A missing fixture fails loudly; it is never skipped.
pub fn example_wasm(name: &str) -> Vec<u8> {
    let path = fleet::up::example_wasm(&examples_dir(), name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-examples first", path.display()))
}

/// Polls `f` until it yields Some, for at most `timeout`; panics naming `what` otherwise.
pub async fn eventually_within<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(30), f).await
}

/// A test's changes to an agent's configuration (agent index, config).
type Configure = std::sync::Arc<dyn Fn(usize, &mut flotilla_agent::Config) + Send + Sync>;

pub struct Builder {
    agents: usize,
    labels: Vec<(usize, String, String)>,
    placement: Option<Placement>,
    insecure_registries: Vec<String>,
    cluster_cidr: Option<String>,
    configure: Option<Configure>,
}

/// Bridges handed to agents in this process, so clusters of parallel tests never share one.
static NEXT_BRIDGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The next free /24 of 10.89.0.0/16 for a cluster CIDR: each cluster's hub hands its agents
/// /24s from a slice of its own, so the clusters of parallel tests (all in this host's
/// network namespace) never give out the same pod addresses.
static NEXT_POD_BLOCK: std::sync::Mutex<u32> = std::sync::Mutex::new(0);

/// A cluster CIDR inside 10.89.0.0/16 with room for `agents` /24s, not used by another
/// cluster of this process (until 256 /24s have gone round).
pub fn free_cluster_cidr(agents: usize) -> String {
    let size = (agents.max(1) as u32).next_power_of_two().min(256);
    let mut next = NEXT_POD_BLOCK.lock().unwrap_or_else(|p| p.into_inner());
    let start = next.div_ceil(size) * size % 256;
    *next = start + size;
    format!("10.89.{start}.0/{}", 24 - size.trailing_zeros())
}

/// Where the hub and agents run when not all on loopback in the test's runtime.
#[derive(Clone)]
struct Placement {
    hub_ip: IpAddr,
    agent_ips: Vec<IpAddr>,
    runtimes: Vec<tokio::runtime::Handle>,
}

impl Builder {
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// A node label agent `i` reports from the start.
    pub fn label(mut self, i: usize, key: &str, value: &str) -> Self {
        self.labels.push((i, key.into(), value.into()));
        self
    }

    /// Runs the hub in `net`'s hub namespace (the caller must be on [`netns::Net::block_on`])
    /// and agent `i` in agent namespace `i`, on its own runtime.
    pub fn on(mut self, net: &netns::Net) -> Self {
        self.placement = Some(Placement {
            hub_ip: IpAddr::from(netns::Net::HUB_IP),
            agent_ips: (0..self.agents).map(netns::Net::agent_ip).collect(),
            runtimes: (0..self.agents).map(|i| net.agent_runtime(i)).collect(),
        });
        self
    }

    /// The hub's cluster CIDR (default: a slice of 10.89.0.0/16 of this cluster's own, with
    /// a /24 for each agent).
    pub fn cluster_cidr(mut self, cidr: &str) -> Self {
        self.cluster_cidr = Some(cidr.to_string());
        self
    }

    /// Agents reach this registry (`host:port`) over plain HTTP.
    pub fn registry(mut self, host: &str) -> Self {
        self.insecure_registries.push(host.to_string());
        self
    }

    /// Changes agent `i`'s configuration after the harness's defaults (e.g. image GC
    /// thresholds).
    pub fn configure(
        mut self,
        f: impl Fn(usize, &mut flotilla_agent::Config) + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(std::sync::Arc::new(f));
        self
    }

    pub async fn start(self) -> Cluster {
        Cluster::start(
            self.agents,
            &self.labels,
            self.placement,
            &self.insecure_registries,
            self.cluster_cidr,
            self.configure,
        )
        .await
        .expect("cluster failed to start")
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Agents' secret volumes: under /dev/shm (tmpfs) where the system has it.
    pub shm: tempfile::TempDir,
    pub hub_addr: SocketAddr,
    hub: Option<HubHandle>,
    agents: Vec<Option<AgentHandle>>,
    agent_cfgs: Vec<flotilla_agent::Config>,
    pub client_file: ClientFile,
    placement: Option<Placement>,
    /// The hub's cluster CIDR (node pod CIDRs are /24s of it).
    pub cluster_cidr: String,
}

/// Deletes a network interface if it exists (the bridges container tests create).
/// Removes an agent's bridge and the node masquerade chain the agent made for it (agents
/// leave both in place when they stop, as they would on a real node).
fn remove_link(name: &str) {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .status();
    }
    let chain = format!("FLT-MASQ-{name}");
    let iptables = |args: &[&str]| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(rules) = iptables(&["-S", "POSTROUTING"]) else {
        return;
    };
    for rule in rules
        .lines()
        .filter(|r| r.ends_with(&format!("-j {chain}")))
    {
        let words: Vec<&str> = rule.split_whitespace().skip(1).collect();
        iptables(&[&["-D"][..], &words].concat());
    }
    iptables(&["-F", &chain]);
    iptables(&["-X", &chain]);
}

/// The loopback address agent `i` serves workloads on.
pub fn agent_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + i as u8])
}

impl Cluster {
    pub fn builder() -> Builder {
        Builder {
            agents: 1,
            labels: Vec::new(),
            placement: None,
            insecure_registries: Vec::new(),
            cluster_cidr: None,
            configure: None,
        }
    }

    fn hub_config(dir: &std::path::Path, cluster_cidr: &str) -> flotilla_hub::Config {
        let mut c = flotilla_hub::Config::new(dir.join("hub"));
        c.cluster_cidr = cluster_cidr.to_string();
        c.node_grace = Duration::from_secs(5);
        c.job_backoff = Duration::from_millis(200);
        c
    }

    async fn start(
        n: usize,
        labels: &[(usize, String, String)],
        placement: Option<Placement>,
        insecure_registries: &[String],
        cluster_cidr: Option<String>,
        configure: Option<Configure>,
    ) -> anyhow::Result<Cluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let hub_ip = placement
            .as_ref()
            .map_or(IpAddr::from([127, 0, 0, 1]), |p| p.hub_ip);
        let socket = std::net::UdpSocket::bind(SocketAddr::new(hub_ip, 0))?;
        let cluster_cidr = cluster_cidr.unwrap_or_else(|| free_cluster_cidr(n));
        let hub = flotilla_hub::start(Self::hub_config(dir.path(), &cluster_cidr), socket).await?;
        let hub_addr = hub.addr;
        let client_file = hub.client_config();
        let client = Client::connect(&client_file).await?;
        let token = client.create_token(Some(600), None).await?;
        client.close().await;
        let shm = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
        let mut cluster = Cluster {
            dir,
            shm,
            hub_addr,
            hub: Some(hub),
            agents: Vec::new(),
            agent_cfgs: Vec::new(),
            client_file,
            placement,
            cluster_cidr,
        };
        for i in 0..n {
            let mut cfg = flotilla_agent::Config::new(
                cluster.dir.path().join(format!("agent-{i}")),
                format!("node-{i}"),
            );
            cfg.hub = Some(hub_addr);
            cfg.token = Some(token.clone());
            cfg.node_ip = cluster
                .placement
                .as_ref()
                .map_or(agent_ip(i), |p| p.agent_ips[i]);
            // Clusters of one test binary share agent addresses: any free port.
            cfg.dns_listen = Some(vec![std::net::SocketAddr::new(cfg.node_ip, 0)]);
            cfg.mesh_listen = Some(std::net::SocketAddr::new(cfg.node_ip, 0));
            // Agents sharing this host's namespace would take each other's cluster IPs.
            cfg.service_proxy = cluster.placement.is_some();
            // The same for the ingress's ports 80 and 443.
            if cluster.placement.is_none() {
                cfg.ingress_listen = Some(Vec::new());
                cfg.ingress_https_listen = Some(Vec::new());
            }
            cfg.heartbeat = Duration::from_secs(1);
            cfg.backoff_base = Duration::from_millis(200);
            cfg.backoff_max = Duration::from_secs(2);
            cfg.cpu_millis = Some(4000);
            cfg.memory_bytes = Some(4 << 30);
            cfg.max_instances = 200;
            cfg.volume_refresh = Duration::from_millis(300);
            // Secret volumes on a tmpfs of this cluster's own, so clusters never share one.
            cfg.secret_dir = cluster.shm.path().join(format!("agent-{i}"));
            cfg.insecure_registries = insecure_registries.to_vec();
            cfg.pids_limit = 64;
            let k = NEXT_BRIDGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
            cfg.bridge = format!("flt{k}");
            // A bridge an earlier, crashed test run left is removed first.
            remove_link(&cfg.bridge);
            for (_, k, v) in labels.iter().filter(|(j, _, _)| *j == i) {
                cfg.labels.insert(k.clone(), v.clone());
            }
            if let Some(f) = &configure {
                f(i, &mut cfg);
            }
            cluster.agent_cfgs.push(cfg);
            cluster.agents.push(None);
            cluster.agents[i] = Some(
                cluster
                    .launch_agent(i)
                    .await
                    .with_context(|| format!("agent {i} failed to start"))?,
            );
        }
        cluster.wait_nodes_ready(n).await;
        Ok(cluster)
    }

    pub async fn wait_nodes_ready(&self, n: usize) {
        eventually(&format!("{n} ready nodes"), || async {
            let c = self.fleet().await;
            let nodes = c.get(flotilla_proto::Kind::Node, None, None).await.ok()?;
            c.close().await;
            let ready = nodes
                .iter()
                .filter(|o| matches!(o, flotilla_proto::Object::Node(n) if n.is_ready()))
                .count();
            (ready == n).then_some(())
        })
        .await;
    }

    /// A CLI client (same code as `fleet`).
    pub async fn fleet(&self) -> Client {
        Client::connect(&self.client_file)
            .await
            .expect("connect to hub")
    }

    /// The Events of `namespace` (none when the hub cannot be asked).
    pub async fn events(&self, namespace: &str) -> Vec<flotilla_proto::api::Event> {
        let c = self.fleet().await;
        let r = c
            .get(flotilla_proto::api::Kind::Event, Some(namespace), None)
            .await;
        c.close().await;
        r.unwrap_or_default()
            .into_iter()
            .filter_map(|o| match o {
                flotilla_proto::Object::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Waits (up to a minute) for an Event in `default` with `reason` about the object of
    /// `kind` called `object`; returns it.
    pub async fn event_about(
        &self,
        kind: &str,
        object: &str,
        reason: &str,
    ) -> flotilla_proto::api::Event {
        eventually_within(
            &format!("event {reason} on {kind} {object}"),
            Duration::from_secs(60),
            || async {
                self.events("default").await.into_iter().find(|e| {
                    e.involved_object.kind == kind
                        && e.involved_object.name == object
                        && e.reason == reason
                })
            },
        )
        .await
    }

    /// Runs the real `fleet` binary (built by scripts/test) against this cluster, with `stdin`
    /// piped in; returns (exit code, stdout, stderr). Blocks the calling worker thread.
    pub fn fleet_cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use std::io::Write;
        // Next to the test binary's `deps/` (any CARGO_TARGET_DIR), else the workspace's.
        let bin = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("fleet")))
            .filter(|b| b.exists())
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/fleet")
            });
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --release` (scripts/test does)",
            bin.display()
        );
        let config = self.dir.path().join("fleet.yaml");
        if !config.exists() {
            self.client_file.write(&config).expect("write fleet config");
        }
        tokio::task::block_in_place(|| {
            let mut child = std::process::Command::new(&bin)
                .args(args)
                .env("FLEET_CONFIG", &config)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run fleet");
            if let Some(text) = stdin {
                let mut pipe = child.stdin.take().expect("stdin");
                pipe.write_all(text.as_bytes()).expect("write stdin");
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().expect("wait for fleet");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    }

    pub fn agent(&self, i: usize) -> &AgentHandle {
        self.agents[i].as_ref().expect("agent is stopped")
    }

    pub fn agent_config(&self, i: usize) -> &flotilla_agent::Config {
        &self.agent_cfgs[i]
    }

    /// A QUIC connection to the hub made with agent `i`'s own node certificate (for tests of
    /// what a node may and may not ask).
    pub async fn node_connection(&self, i: usize) -> (quinn::Endpoint, quinn::Connection) {
        let id = flotilla_agent::identity::Identity::load(&self.agent_cfgs[i].data_dir)
            .expect("read node identity")
            .expect("agent has joined");
        flotilla_transport::connect(self.hub_addr, id.client_config().expect("node tls"))
            .await
            .expect("connect as node")
    }

    pub async fn stop_agent(&mut self, i: usize) {
        if let Some(a) = self.agents[i].take() {
            a.shutdown().await;
        }
    }

    /// Adds a label agent `i` reports from its next start on.
    pub fn set_agent_label(&mut self, i: usize, key: &str, value: &str) {
        self.agent_cfgs[i].labels.insert(key.into(), value.into());
    }

    /// Sets the `--pod-cidr` agent `i` has from its next start on (None: the hub's range).
    pub fn set_agent_pod_cidr(&mut self, i: usize, cidr: Option<&str>) {
        self.agent_cfgs[i].pod_cidr = cidr.map(str::to_string);
    }

    pub async fn start_agent(&mut self, i: usize) {
        let a = self.launch_agent(i).await.expect("agent restart");
        self.agents[i] = Some(a);
    }

    /// Starts agent `i` from its config, on its own runtime when it has one.
    async fn launch_agent(&self, i: usize) -> anyhow::Result<AgentHandle> {
        let cfg = self.agent_cfgs[i].clone();
        match &self.placement {
            Some(p) => p.runtimes[i].spawn(flotilla_agent::start(cfg)).await?,
            None => flotilla_agent::start(cfg).await,
        }
    }

    pub async fn stop_hub(&mut self) {
        if let Some(h) = self.hub.take() {
            h.shutdown().await;
        }
    }

    /// Restarts the hub on the same address and data dir.
    pub async fn start_hub(&mut self) {
        let socket = std::net::UdpSocket::bind(self.hub_addr).expect("rebind hub address");
        self.hub = Some(
            flotilla_hub::start(
                Self::hub_config(self.dir.path(), &self.cluster_cidr),
                socket,
            )
            .await
            .expect("hub restart"),
        );
    }

    pub fn hub(&self) -> &HubHandle {
        self.hub.as_ref().expect("hub is stopped")
    }

    /// Pushes an example component as `name:latest`.
    pub async fn push_example(&self, name: &str) -> String {
        let c = self.fleet().await;
        let d = c
            .push(&example_wasm(name), name, "latest")
            .await
            .expect("push");
        c.close().await;
        d
    }

    pub async fn apply(&self, yaml: &str) -> anyhow::Result<Vec<flotilla_proto::wire::Applied>> {
        let c = self.fleet().await;
        let r = c.apply_text(yaml).await.map(|(_, r)| r);
        c.close().await;
        r
    }

    pub async fn pods(&self) -> Vec<flotilla_proto::api::Pod> {
        let c = self.fleet().await;
        let p = c.pods(Some("default")).await.expect("list pods");
        c.close().await;
        p
    }

    /// Waits until exactly `n` pods labelled `app=<app>` exist and all are Ready with an
    /// endpoint; returns them.
    /// The pod named `name` once `f` holds for it (within 60 s; `what` names the wait).
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        f: impl Fn(&flotilla_proto::api::Pod) -> bool,
    ) -> flotilla_proto::api::Pod {
        eventually_within(
            &format!("pod {name}: {what}"),
            Duration::from_secs(60),
            || async {
                self.pods()
                    .await
                    .into_iter()
                    .find(|p| p.metadata.name == name)
                    .filter(|p| f(p))
            },
        )
        .await
    }

    pub async fn wait_ready(&self, app: &str, n: usize) -> Vec<flotilla_proto::api::Pod> {
        eventually(&format!("{n} ready pods of {app}"), || async {
            let pods = self.pods().await;
            let all = app_pods(&pods, app);
            let ready: Vec<_> = all
                .iter()
                .filter(|p| p.is_ready() && p.status.endpoint.is_some())
                .map(|p| (*p).clone())
                .collect();
            (all.len() == n && ready.len() == n).then_some(ready)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.agents.len() {
            self.stop_agent(i).await;
        }
        self.stop_hub().await;
        for cfg in &self.agent_cfgs {
            remove_link(&cfg.bridge);
        }
    }
}

/// What a [`PodTracker`] saw.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// The fewest Ready pods of the app at any committed state after the tracker started.
    pub min_ready: usize,
    /// The most pods of the app that existed at once.
    pub max_pods: usize,
    /// The most unfinished pods of the app that existed at once.
    pub max_active: usize,
    /// Whether pods of two templates (pod-template-hash) ever existed at once.
    pub mixed_templates: bool,
    /// Committed pod changes seen.
    pub changes: usize,
}

/// Follows every committed pod change of one app on the hub (in process, so no state is
/// skipped): a rollout's availability floor is checked at every step, not sampled.
pub struct PodTracker {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Observed>,
}

impl PodTracker {
    pub async fn finish(self) -> Observed {
        self.stop.cancel();
        self.task.await.expect("pod tracker panicked")
    }
}

impl Cluster {
    /// Starts tracking pods labelled `app=<app>` in the default namespace.
    pub fn track_pods(&self, app: &str) -> PodTracker {
        use flotilla_proto::{Kind, Object};
        use std::collections::BTreeMap;
        let store = &self.hub().hub.store;
        let mut rx = store.subscribe();
        let (pods, from) = store.list(Kind::Pod, Some("default")).expect("list pods");
        let ours = {
            let app = app.to_string();
            move |o: &Object| match o {
                Object::Pod(p) if p.metadata.labels.get("app") == Some(&app) => Some(p.clone()),
                _ => None,
            }
        };
        // name -> (template hash, ready, finished)
        type State = BTreeMap<String, (String, bool, bool)>;
        let mut state: State = BTreeMap::new();
        let record = |state: &mut State, p: &flotilla_proto::api::Pod| {
            let labels = &p.metadata.labels;
            let hash = labels
                .get(flotilla_proto::api::TEMPLATE_HASH_LABEL)
                .or(labels.get(flotilla_proto::api::CONTROLLER_REVISION_LABEL))
                .cloned()
                .unwrap_or_default();
            state.insert(
                p.metadata.name.clone(),
                (hash, p.is_ready(), p.is_terminal()),
            );
        };
        for p in pods.iter().filter_map(&ours) {
            record(&mut state, &p);
        }
        let measure = |state: &State, o: &mut Observed| {
            let ready = state.values().filter(|(_, r, _)| *r).count();
            o.min_ready = o.min_ready.min(ready);
            o.max_pods = o.max_pods.max(state.len());
            let active = state.values().filter(|(_, _, done)| !done).count();
            o.max_active = o.max_active.max(active);
            let hashes: std::collections::BTreeSet<_> = state.values().map(|(h, _, _)| h).collect();
            o.mixed_templates |= hashes.len() > 1;
        };
        let mut observed = Observed {
            min_ready: usize::MAX,
            ..Default::default()
        };
        measure(&state, &mut observed);
        let stop = tokio_util::sync::CancellationToken::new();
        let cancel = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    _ = cancel.cancelled() => return observed,
                    e = rx.recv() => e.expect("pod tracker lagged behind the store: the test cannot vouch for every state"),
                };
                if e.revision <= from || e.key.kind != Kind::Pod {
                    continue;
                }
                match e.object.as_ref().and_then(&ours) {
                    Some(p) => record(&mut state, &p),
                    None => {
                        if e.prev.as_ref().and_then(&ours).is_none() {
                            continue;
                        }
                        state.remove(&e.key.name);
                    }
                }
                observed.changes += 1;
                measure(&state, &mut observed);
            }
        });
        PodTracker { stop, task }
    }
}

/// The pods labelled `app=<app>`.
pub fn app_pods<'a>(
    pods: &'a [flotilla_proto::api::Pod],
    app: &str,
) -> Vec<&'a flotilla_proto::api::Pod> {
    pods.iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some(app))
        .collect()
}

/// GET with the real curl client: (status, body).
pub fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl must be installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
