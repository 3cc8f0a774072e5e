//! Hub configuration and the CLI credential file (`admin.yaml`) the hub writes for `fleet`.
use crate::pki::{Pki, write_private};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Extra DNS names / IPs for the hub certificate.
    pub tls_san: Vec<String>,
    /// The address written into admin.yaml (defaults to the bound address).
    pub advertise_address: Option<String>,
    /// A node whose agent has not reported for this long becomes NotReady.
    pub node_grace: Duration,
    /// First delay before a failed Job pod is replaced (Kubernetes: 10 s, doubling to 6 min).
    pub job_backoff: Duration,
    /// The range node pod CIDRs are taken from (k3s' `--cluster-cidr`, default 10.42.0.0/16).
    pub cluster_cidr: String,
    /// The prefix length of each node's pod CIDR (default 24: 254 pods a node).
    pub node_cidr_mask_size: u8,
    /// The range Services' cluster IPs are taken from (k3s' `--service-cidr`, default
    /// 10.43.0.0/16).
    pub service_cidr: String,
}

/// The allocators a valid config yields.
pub struct Ranges {
    pub pod_cidrs: crate::podcidr::Allocator,
    pub service_cidr: crate::services::ServiceCidr,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            tls_san: Vec::new(),
            advertise_address: None,
            node_grace: Duration::from_secs(40),
            job_backoff: Duration::from_secs(10),
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            service_cidr: "10.43.0.0/16".into(),
        }
    }

    /// Checks what can be checked before anything is opened or bound.
    pub fn validate(&self) -> anyhow::Result<Ranges> {
        let pod_cidrs =
            crate::podcidr::Allocator::new(&self.cluster_cidr, self.node_cidr_mask_size)?;
        let service_cidr = crate::services::ServiceCidr::new(&self.service_cidr)?;
        let services = ipnet::IpNet::V4(service_cidr.net());
        if crate::podcidr::overlaps(&pod_cidrs.cluster(), &services) {
            anyhow::bail!(
                "--service-cidr {services} overlaps --cluster-cidr {}: pod and service addresses must differ",
                pod_cidrs.cluster()
            );
        }
        Ok(Ranges {
            pod_cidrs,
            service_cidr,
        })
    }
}

/// How `fleet` reaches and authenticates to a hub: like a kubeconfig, with the PEMs inline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientFile {
    pub hub: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl ClientFile {
    pub fn for_hub(pki: &Pki, hub: &str) -> ClientFile {
        ClientFile {
            hub: hub.to_string(),
            ca: pki.ca_pem.clone(),
            cert: pki.admin_cert_pem.clone(),
            key: pki.admin_key_pem.clone(),
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let text = serde_yaml_ng::to_string(self)?;
        write_private(path, text.as_bytes())
            .with_context(|| format!("failed to write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<ClientFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{}: invalid fleet config", path.display()))
    }
}

/// Reads a 32-byte key, creating it (mode 0600) on first use.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    flotilla_transport::seal::Sealer::load_or_create_key(path)
        .with_context(|| format!("failed to load the sealing key {}", path.display()))
}
