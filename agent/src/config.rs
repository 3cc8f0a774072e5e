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
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Config {
        Config {
            data_dir: data_dir.into(),
            hub: None,
            token: None,
            node_name: node_name.into(),
            node_ip: IpAddr::from([127, 0, 0, 1]),
            labels: BTreeMap::new(),
            cpu_millis: None,
            memory_bytes: None,
            heartbeat: Duration::from_secs(10),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            log_max_bytes: 1 << 20,
            max_instances: 1000,
        }
    }
}
