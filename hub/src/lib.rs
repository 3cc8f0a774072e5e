//! The Flotilla hub: desired state in redb, controllers, the scheduler, and the QUIC server that
//! agents and the CLI talk to. `main.rs` is a thin wrapper around [`start`].
pub mod blobs;
pub mod config;
pub mod controller;
pub mod edit;
pub mod events;
pub mod pki;
pub mod podcidr;
pub mod rollout;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod store;
pub mod tokens;

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Everything the hub's tasks share.
pub struct Hub {
    pub store: store::Store,
    pub pki: pki::Pki,
    pub blobs: blobs::BlobStore,
    pub agents: server::AgentRegistry,
    /// Recently deleted pods and their nodes, whose agents may still report events about them.
    pub deleted_pods: events::DeletedPods,
    /// Hands out node pod CIDRs (from `config.cluster_cidr`).
    pub pod_cidrs: podcidr::Allocator,
    /// Hands out Services' cluster IPs (from `config.service_cidr`).
    pub service_cidr: services::ServiceCidr,
    pub config: Config,
}

/// A running hub.
pub struct HubHandle {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub data_dir: PathBuf,
    cancel: CancellationToken,
    tracker: TaskTracker,
    endpoint: quinn::Endpoint,
}

impl HubHandle {
    /// Stops accepting, cancels every task, waits for them (bounded), closes QUIC.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.endpoint.close(0u32.into(), b"hub shutting down");
        self.tracker.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("hub tasks did not stop within 5s");
        }
        self.endpoint.wait_idle().await;
    }

    /// The CLI credential for this hub (also written to `<data>/admin.yaml`).
    pub fn client_config(&self) -> config::ClientFile {
        config::ClientFile::for_hub(&self.hub.pki, &self.addr.to_string())
    }
}

/// Starts the hub on an already bound UDP socket.
pub async fn start(config: Config, socket: std::net::UdpSocket) -> anyhow::Result<HubHandle> {
    flotilla_transport::install_crypto_provider();
    let config::Ranges {
        pod_cidrs,
        service_cidr,
    } = config.validate()?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("failed to create data dir {}", data_dir.display()))?;
    let pki = pki::Pki::load_or_init(&data_dir, &config.tls_san)
        .context("failed to load the hub's PKI")?;
    let sealing = config::load_or_create_key(&data_dir.join("secrets.key"))?;
    let store = store::Store::open(&data_dir.join("hub.redb"), &sealing)
        .context("failed to open the hub database")?;
    let blobs =
        blobs::BlobStore::open(data_dir.join("blobs")).context("failed to open the blob store")?;
    let addr = socket.local_addr()?;
    let advertise = config.advertise_address.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    });
    config::ClientFile::for_hub(&pki, &advertise).write(&data_dir.join("admin.yaml"))?;
    let server_cfg =
        flotilla_transport::server_config(&pki.ca_pem, &pki.server_chain_pem, &pki.server_key_pem)?;
    let endpoint = flotilla_transport::server_endpoint(socket, server_cfg)?;
    let hub = Arc::new(Hub {
        store,
        pki,
        blobs,
        agents: Default::default(),
        deleted_pods: Default::default(),
        pod_cidrs,
        service_cidr,
        config,
    });

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::serve(
        hub.clone(),
        endpoint.clone(),
        cancel.child_token(),
        tracker.clone(),
    ));
    for ctl in [
        controller::deployment::CONTROLLER,
        controller::replicaset::CONTROLLER,
        controller::daemonset::CONTROLLER,
        controller::statefulset::CONTROLLER,
        controller::job::CONTROLLER,
        controller::cronjob::CONTROLLER,
        controller::disruption::CONTROLLER,
        controller::taint::CONTROLLER,
        controller::endpointslice::CONTROLLER,
        controller::servicelb::CONTROLLER,
        controller::ingress::CONTROLLER,
    ] {
        tracker.spawn(controller::run(hub.clone(), ctl, cancel.child_token()));
    }
    tracker.spawn(scheduler::run(hub.clone(), cancel.child_token()));
    tracker.spawn(controller::node::run(hub.clone(), cancel.child_token()));
    tracker.spawn(events::run(hub.clone(), cancel.child_token()));
    tracker.spawn(store::flush_soft_writes(hub.clone(), cancel.child_token()));
    tracing::info!(addr = %addr, data_dir = %data_dir.display(), "hub started");
    Ok(HubHandle {
        addr,
        hub,
        data_dir,
        cancel,
        tracker,
        endpoint,
    })
}
