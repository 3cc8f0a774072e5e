//! The Flotilla agent: joins a hub, syncs its node's desired pods over QUIC into a local cache,
//! and runs them under wasmtime, on its own when the hub is away. `main.rs` wraps [`start`].
pub mod artifacts;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod envsource;
pub mod events;
pub mod exec;
pub mod files;
pub mod identity;
pub mod images;
pub mod ingress;
pub mod logs;
pub mod mesh;
pub mod network;
pub mod node;
pub mod outbound;
pub mod pod;
pub mod probe;
pub mod runtime;
pub mod supervisor;
pub mod sync;
pub mod volumes;

use anyhow::Context as _;
use flotilla_proto::api::{Container, Pod};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// State the agent's tasks share.
pub struct Shared {
    pub cfg: Config,
    pub cache: cache::Cache,
    pub runtime: Arc<runtime::wasm::WasmRuntime>,
    /// The current hub connection; None while the hub is unreachable.
    pub hub: watch::Sender<Option<quinn::Connection>>,
    /// Compiled artifacts by digest, shared by every pod that runs them.
    pub artifacts: Mutex<HashMap<String, runtime::wasm::Artifact>>,
    logs: Mutex<HashMap<String, logs::PodLog>>,
    /// Events about this node's pods, waiting for the hub (delivered by `sync`).
    pub events: events::EventQueue,
    pub tracker: TaskTracker,
    pub images: images::Images,
    /// runc, or why this node cannot run containers.
    pub containers: Result<runtime::oci::ContainerRuntime, String>,
    /// The node's pod network, or why containers get none.
    pub network: Result<network::PodNetwork, String>,
    /// The cluster's Services, EndpointSlices and Nodes as this node knows them (cached).
    pub discovery: watch::Sender<discovery::Objects>,
    /// The mesh link's UDP port, reported in the node status; None when it does not serve.
    pub mesh_port: Option<u16>,
    /// The service table the proxy and the mesh link work from (`mesh::table`).
    pub mesh_table: watch::Sender<Arc<mesh::table::Table>>,
    /// The cluster's names as the node DNS answers them, for WASI pods' outgoing requests
    /// (kept by `dns`).
    pub names: watch::Sender<Arc<flotilla_dns::Names>>,
}

impl Shared {
    fn log_key(namespace: &str, name: &str, container: &str) -> String {
        format!("{namespace}/{name}/{container}")
    }

    /// A container's log, opened on first use. Directories are named by pod uid (as kubelet's
    /// `/var/log/pods`), so a re-created pod with the same name starts fresh logs.
    pub fn log_for(&self, pod: &Pod, container: &str) -> logs::PodLog {
        let key = Self::log_key(pod.namespace(), &pod.metadata.name, container);
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = logs.get(&key) {
            return l.clone();
        }
        let dir = format!(
            "{}_{}_{}",
            pod.namespace(),
            pod.metadata.name,
            pod.metadata.uid
        );
        let path = self
            .cfg
            .data_dir
            .join("logs")
            .join(dir)
            .join(format!("{container}.log"));
        let log = logs::PodLog::open(&path, self.cfg.log_max_bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, path = %path.display(), "cannot open container log; logging to a temp file");
            let tmp = std::env::temp_dir().join(format!("flotilla-{}-{container}.log", pod.metadata.uid));
            logs::PodLog::open(&tmp, self.cfg.log_max_bytes).expect("temp dir must be writable")
        });
        logs.insert(key, log.clone());
        log
    }

    pub fn log_named(&self, namespace: &str, name: &str, container: &str) -> Option<logs::PodLog> {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::log_key(namespace, name, container))
            .cloned()
    }

    /// Drops a removed pod's logs (Kubernetes deletes logs with the pod).
    pub fn forget_log(&self, pod: &Pod) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        for c in pod.spec.all_containers() {
            if let Some(l) =
                logs.remove(&Self::log_key(pod.namespace(), &pod.metadata.name, &c.name))
            {
                l.remove();
            }
        }
        drop(logs);
        let dir = format!(
            "{}_{}_{}",
            pod.namespace(),
            pod.metadata.name,
            pod.metadata.uid
        );
        let _ = std::fs::remove_dir(self.cfg.data_dir.join("logs").join(dir));
    }

    /// The pod on this node named `namespace/name`, from the local cache.
    pub fn pod_named(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.cache.pods().ok().and_then(|pods| {
            pods.into_values()
                .find(|p| p.namespace() == namespace && p.metadata.name == name)
        })
    }
}

/// The container a request names, or the pod's default one (the
/// `kubectl.kubernetes.io/default-container` annotation, else the first), or why there is none.
pub fn pick_container<'p>(pod: &'p Pod, name: Option<&str>) -> Result<&'p Container, String> {
    let name = name.or_else(|| {
        pod.metadata
            .annotations
            .get(DEFAULT_CONTAINER_ANNOTATION)
            .map(String::as_str)
    });
    let found = match name {
        Some(n) => pod.spec.all_containers().find(|c| c.name == n),
        None => pod.spec.containers.first(),
    };
    found.ok_or_else(|| {
        let names: Vec<&str> = pod.spec.all_containers().map(|c| c.name.as_str()).collect();
        format!(
            "container {:?} is not valid for pod {} (containers: {})",
            name.unwrap_or(""),
            pod.metadata.name,
            names.join(", ")
        )
    })
}

/// kubectl's annotation naming the container `logs` and `exec` use by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// A running agent.
pub struct AgentHandle {
    pub node_name: String,
    /// Where the node DNS answers the host (`Config::dns_listen`, ports resolved).
    pub dns_addrs: Vec<SocketAddr>,
    pub shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl AgentHandle {
    /// Stops syncing and every workload (wasm guests are interrupted), bounded by a grace period.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = %self.node_name, "agent tasks did not stop within 10s");
        }
    }

    /// Whether the agent currently has a live hub connection.
    pub fn connected(&self) -> bool {
        self.shared.hub.borrow().is_some()
    }
}

/// Starts the agent. With a stored identity it starts its cached workloads at once, hub or not;
/// otherwise it joins the hub with the configured token first.
pub async fn start(cfg: Config) -> anyhow::Result<AgentHandle> {
    flotilla_transport::install_crypto_provider();
    if let Some(cidr) = &cfg.pod_cidr {
        network::parse_cidr(cidr)?;
    }
    cfg.image_gc.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("failed to create data dir {}", cfg.data_dir.display()))?;
    let identity = match identity::Identity::load(&cfg.data_dir)? {
        Some(id) => {
            if id.node_name != cfg.node_name {
                anyhow::bail!(
                    "data dir {} belongs to node {:?}, not {:?}",
                    cfg.data_dir.display(),
                    id.node_name,
                    cfg.node_name
                );
            }
            id
        }
        None => {
            let token = cfg.token.as_deref().context("this agent has not joined a hub yet: pass --token (from `fleet token create`) and --hub")?;
            let hub = cfg
                .hub
                .context("this agent has not joined a hub yet: pass --hub ADDRESS")?;
            identity::Identity::join(&cfg.data_dir, hub, token, &cfg.node_name)
                .await
                .context("failed to join the hub")?
        }
    };
    let cache_key =
        flotilla_transport::seal::Sealer::load_or_create_key(&cfg.data_dir.join("cache.key"))
            .context("failed to load the cache sealing key")?;
    let cache = cache::Cache::open(&cfg.data_dir.join("agent.redb"), &cache_key)
        .context("failed to open the agent cache")?;
    // Files a crash left half written go before anything writes there again.
    for dir in ["blobs", "compiled", "net"] {
        let removed = files::remove_temporaries(&cfg.data_dir.join(dir));
        if removed > 0 {
            tracing::info!(
                dir,
                removed,
                "removed files a previous run left half written"
            );
        }
    }
    let runtime = runtime::wasm::WasmRuntime::new(runtime::wasm::RuntimeConfig {
        cache_dir: cfg.data_dir.join("compiled"),
        node_memory_bytes: cfg.memory_bytes.unwrap_or_else(node::total_memory),
        max_instances: cfg.max_instances,
    })
    .context("failed to start the wasm runtime")?;
    let images = images::Images::open(
        &cfg.data_dir,
        &flotilla_oci::pull::RegistryConfig {
            insecure: cfg.insecure_registries.clone(),
        },
    )
    .context("failed to open the image store")?;
    let containers = runtime::oci::ContainerRuntime::new(&cfg.data_dir).map_err(|e| e.to_string());
    let network = network::PodNetwork::new(&cfg.data_dir, &cfg.bridge, cfg.pod_cidr.as_deref())
        .map_err(|e| e.to_string());
    match &containers {
        Ok(c) => {
            // Containers and networks a crashed agent left behind go before anything starts;
            // the cached pods are then started afresh.
            c.clean_up_leftovers().await;
            if let Ok(net) = &network {
                for uid in net.recorded() {
                    net.detach(&uid).await;
                }
            }
            tracing::info!(runc = %c.version, "container runtime ready");
        }
        Err(e) => tracing::warn!(error = %e, "container pods cannot run on this node"),
    }
    let discovery_cached = discovery::load(&cache);
    let mesh_socket = mesh_socket(&cfg, &identity)?;
    let mesh_port = mesh_socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port());
    let names = flotilla_dns::Names::empty(&cfg.cluster_domain)
        .map_err(|e| anyhow::anyhow!("--cluster-domain: {e}"))?;
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        cfg,
        cache,
        runtime: Arc::new(runtime),
        hub: watch::channel(None).0,
        artifacts: Mutex::new(HashMap::new()),
        logs: Mutex::new(HashMap::new()),
        events: Default::default(),
        tracker: tracker.clone(),
        images,
        containers,
        network,
        discovery: watch::channel(discovery_cached).0,
        mesh_port,
        mesh_table: watch::channel(Default::default()).0,
        names: watch::channel(Arc::new(names)).0,
    });
    // Volumes of pods deleted while the agent was down go now; those of cached pods stay.
    match shared.cache.pods() {
        Ok(pods) => volumes::sweep(&shared, &pods.keys().cloned().collect()),
        Err(e) => tracing::warn!(error = %e, "cannot read cached pods to sweep volumes"),
    }
    let cancel = CancellationToken::new();
    let dns_addrs = dns::start(shared.clone(), cancel.child_token()).await?;
    mesh::start(shared.clone(), &identity, mesh_socket, cancel.child_token())
        .await
        .context("failed to start the mesh")?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (reports_tx, reports_rx) = watch::channel(Default::default());
    tracker.spawn(supervisor::run(
        shared.clone(),
        events_rx,
        events_tx.clone(),
        reports_tx,
        cancel.child_token(),
        tracker.clone(),
    ));
    tracker.spawn(sync::run(
        shared.clone(),
        identity,
        events_tx,
        reports_rx,
        cancel.child_token(),
    ));
    tracker.spawn(images::gc_loop(shared.clone(), cancel.child_token()));
    tracing::info!(node = %shared.cfg.node_name, "agent started");
    Ok(AgentHandle {
        node_name: shared.cfg.node_name.clone(),
        dns_addrs,
        shared,
        cancel,
        tracker,
    })
}

/// The mesh link's socket: the configured address (failing the start if it cannot be had),
/// or `node_ip:7444` (only warning). None when the node cannot serve peers; it then still
/// dials them.
fn mesh_socket(
    cfg: &Config,
    id: &identity::Identity,
) -> anyhow::Result<Option<std::net::UdpSocket>> {
    if !flotilla_transport::cert_serves(&id.cert_pem) {
        tracing::warn!(
            "this node's certificate predates the mesh (it is not valid for serving): other nodes cannot reach its endpoints until it joins again"
        );
        return Ok(None);
    }
    let addr = cfg
        .mesh_listen
        .unwrap_or_else(|| SocketAddr::new(cfg.node_ip, config::MESH_PORT));
    match std::net::UdpSocket::bind(addr) {
        Ok(s) => Ok(Some(s)),
        Err(e) if cfg.mesh_listen.is_some() => {
            Err(anyhow::anyhow!("mesh link: cannot bind {addr}: {e}"))
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "mesh link does not serve (set --mesh-listen): other nodes cannot reach this node's endpoints");
            Ok(None)
        }
    }
}
