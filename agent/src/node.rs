//! What the agent says about its machine: labels, capacity, addresses, system info, the
//! container runtime and its known vulnerabilities, and the images it holds.
use crate::Shared;
use crate::config::Config;
use flotilla_proto::api::{Node, NodeAddress, NodeSystemInfo};
use flotilla_proto::quantity::Quantity;

/// Kubernetes' architecture names (GOARCH) for Rust's.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Total memory from /proc/meminfo (bytes); a conservative 1 GiB if unreadable.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

/// The node status the agent reports: [`describe`] plus runc's version and condition and
/// the images on the node.
pub fn status(shared: &Shared) -> Node {
    let mut node = describe(&shared.cfg);
    if let Ok(rt) = &shared.containers {
        node.status.node_info.container_runtime_version = rt.runc_version.runtime_version();
        node.status
            .conditions
            .push(crate::runtime::runc_cves::condition(&rt.runc_version));
    }
    node.status.images = shared.images.status(shared);
    node.status.daemon_endpoints.mesh_endpoint = shared
        .mesh_port
        .map(|port| flotilla_proto::api::DaemonEndpoint { port: port.into() });
    node
}

pub fn describe(cfg: &Config) -> Node {
    let cpu = cfg.cpu_millis.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1)
            * 1000
    });
    let mem = cfg.memory_bytes.unwrap_or_else(total_memory);
    let mut node = Node::default();
    node.metadata.name = cfg.node_name.clone();
    let labels = &mut node.metadata.labels;
    labels.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    labels.insert("kubernetes.io/arch".into(), arch().into());
    labels.insert("kubernetes.io/os".into(), std::env::consts::OS.into());
    labels.extend(cfg.labels.clone());
    let res = [
        ("cpu".to_string(), Quantity::from_millicores(cpu)),
        ("memory".to_string(), Quantity::from_bytes(mem)),
        ("pods".to_string(), Quantity("110".into())),
    ];
    node.status.capacity = res.clone().into();
    node.status.allocatable = res.into();
    node.status.addresses = vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: cfg.node_ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: cfg.node_name.clone(),
        },
    ];
    node.status.node_info = NodeSystemInfo {
        architecture: arch().into(),
        operating_system: std::env::consts::OS.into(),
        kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        kubelet_version: format!("flotilla-agent/{}", flotilla_proto::VERSION),
        container_runtime_version: String::new(),
    };
    node
}
