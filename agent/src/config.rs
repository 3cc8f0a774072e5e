//! Agent configuration (built by `main` from flags/env, or by tests directly).
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    /// Identity, cache, blobs, compiled code and logs live here.
    pub data_dir: PathBuf,
    /// The hub's QUIC address. Needed to join; afterwards remembered in the data dir.
    pub hub: Option<SocketAddr>,
    /// Join token (`fleet token create`); only used when the data dir has no identity yet.
    pub token: Option<String>,
    pub node_name: String,
    /// The address this node serves workloads on and reports as InternalIP.
    pub node_ip: IpAddr,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Overrides for the detected capacity (millicores, bytes), e.g. to reserve room for the OS.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub heartbeat: Duration,
    /// Crash-loop back-off: first delay and cap (Kubernetes uses 10 s and 5 min).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Per-pod log bound (two files of this size at most).
    pub log_max_bytes: u64,
    pub max_instances: u32,
    /// Where secret volumes (and emptyDir with medium Memory) are written: a tmpfs, so secrets
    /// never reach the disk. Default `/dev/shm/flotilla-<node>`.
    pub secret_dir: PathBuf,
    /// How often projected volumes (configMap, secret, downwardAPI) are re-read and rewritten.
    pub volume_refresh: Duration,
    /// Registries (`host[:port]`) spoken to over plain HTTP, e.g. a registry on the LAN.
    pub insecure_registries: Vec<String>,
    /// The node's bridge for container pods (also the CNI network's name).
    pub bridge: String,
    /// A static pod CIDR for container pods (`--pod-cidr`); None takes the one the hub
    /// assigns from its cluster CIDR.
    pub pod_cidr: Option<String>,
    /// The pids limit of every container (a fork bomb stops here).
    pub pids_limit: i64,
    /// Image garbage collection thresholds on the filesystem of `data_dir` (kubelet's
    /// `--image-gc-high-threshold`/`--image-gc-low-threshold`: 85/80; high 100 disables it;
    /// tests set 0/0 to collect every unused image).
    pub image_gc: flotilla_oci::gc::Thresholds,
    /// How often image garbage collection looks at the disk (it also runs after pulls).
    pub image_gc_period: Duration,
    /// The cluster domain the node DNS answers for (kubelet's `--cluster-domain`).
    pub cluster_domain: String,
    /// Where the node DNS listens for the host and other nodes; None is `node_ip:53`, an
    /// empty list none. Container pods always reach it on their bridge's gateway, port 53.
    pub dns_listen: Option<Vec<SocketAddr>>,
    /// Where the mesh link (QUIC) answers other nodes; None is `node_ip:7444`.
    pub mesh_listen: Option<SocketAddr>,
    /// Whether this node carries service traffic: listeners on cluster IPs (with a local
    /// route each, which needs CAP_NET_ADMIN) and node ports. Off only where several agents
    /// share one network namespace (tests on loopback), since they would take each other's
    /// addresses.
    pub service_proxy: bool,
    /// Where the ingress answers HTTP while this node is a gateway; None is `node_ip:80`, an
    /// empty list nowhere.
    pub ingress_listen: Option<Vec<SocketAddr>>,
    /// The same for HTTPS; None is `node_ip:443`.
    pub ingress_https_listen: Option<Vec<SocketAddr>>,
    /// Proxies in front of the ingress whose `X-Forwarded-*` headers it keeps (appending to
    /// `X-Forwarded-For`) and whose forwarded client address it believes; from anyone else
    /// those headers are replaced.
    pub ingress_trusted_proxies: Vec<ipnet::IpNet>,
    /// Where the ingress appends a JSON line per request (`-` is standard output); None
    /// keeps no access log.
    pub ingress_access_log: Option<PathBuf>,
    /// How long a client connection to the ingress may go without a byte moving either way
    /// (and no request waiting for its endpoint) before it is closed.
    pub ingress_idle_timeout: Duration,
    /// The largest request body the ingress passes on, for routes that set none; 0 is no
    /// limit.
    pub ingress_max_body_size: u64,
    /// Client connections the ingress serves at once; past them, new ones get a 503.
    pub ingress_max_connections: usize,
    /// Threads the ingress serves connections on, each with its own runtime (nginx's
    /// worker processes); by default one per CPU.
    pub ingress_workers: usize,
}

/// The mesh link's default UDP port (the hub's is 7443).
pub const MESH_PORT: u16 = 7444;

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Config {
        let data_dir = data_dir.into();
        let node_name = node_name.into();
        Config {
            secret_dir: default_secret_dir(&data_dir, &node_name),
            data_dir,
            hub: None,
            token: None,
            node_name,
            node_ip: IpAddr::from([127, 0, 0, 1]),
            labels: BTreeMap::new(),
            cpu_millis: None,
            memory_bytes: None,
            heartbeat: Duration::from_secs(10),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            log_max_bytes: 1 << 20,
            max_instances: 1000,
            volume_refresh: Duration::from_secs(10),
            insecure_registries: Vec::new(),
            bridge: "flotilla0".into(),
            pod_cidr: None,
            pids_limit: 4096,
            image_gc: flotilla_oci::gc::Thresholds::default(),
            image_gc_period: Duration::from_secs(300),
            cluster_domain: "cluster.local".into(),
            dns_listen: None,
            mesh_listen: None,
            service_proxy: true,
            ingress_listen: None,
            ingress_https_listen: None,
            ingress_trusted_proxies: Vec::new(),
            ingress_access_log: None,
            ingress_idle_timeout: Duration::from_secs(60),
            ingress_max_body_size: 100 << 20,
            ingress_max_connections: 10_000,
            ingress_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A tmpfs when the system has one at /dev/shm; otherwise (with a warning at start) the data
/// directory.
fn default_secret_dir(data_dir: &std::path::Path, node_name: &str) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(format!("flotilla-{node_name}"))
    } else {
        data_dir.join("secrets")
    }
}
