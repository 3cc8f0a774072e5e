//! `flotilla-hub`: parses flags, starts the hub, waits for a signal, shuts down.
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "flotilla-hub",
    version,
    about = "The Flotilla hub: desired state, controllers, scheduler"
)]
struct Args {
    /// Where the database, CA and blobs live.
    #[arg(
        long,
        env = "FLOTILLA_HUB_DATA",
        default_value = "/var/lib/flotilla/hub"
    )]
    data_dir: PathBuf,
    /// UDP address for the QUIC listener (agents and the CLI).
    #[arg(long, env = "FLOTILLA_HUB_LISTEN", default_value = "0.0.0.0:7443")]
    listen: std::net::SocketAddr,
    /// Address written into admin.yaml for `fleet` (default: the listen address).
    #[arg(long)]
    advertise_address: Option<String>,
    /// Extra names for the hub certificate.
    #[arg(long)]
    tls_san: Vec<String>,
    /// A node whose agent is silent this long is marked NotReady (keep it several agent
    /// heartbeats long, and longer than the 15 s QUIC idle timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "40s")]
    node_grace: std::time::Duration,
    /// The range every node's pod CIDR is taken from.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The range Services' cluster IPs are taken from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = flotilla_hub::Config::new(args.data_dir);
    config.advertise_address = args.advertise_address;
    config.tls_san = args.tls_san;
    config.node_grace = args.node_grace;
    config.cluster_cidr = args.cluster_cidr;
    config.node_cidr_mask_size = args.node_cidr_mask_size;
    config.service_cidr = args.service_cidr;
    config.validate()?;
    if args.node_grace < flotilla_transport::IDLE_TIMEOUT {
        tracing::warn!(
            grace = ?args.node_grace,
            "--node-grace is shorter than the QUIC idle timeout: nodes may be marked NotReady while their link still looks alive"
        );
    }
    let socket = std::net::UdpSocket::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("failed to bind {}: {e}", args.listen))?;
    let hub = flotilla_hub::start(config, socket).await?;
    tracing::info!(admin = %hub.data_dir.join("admin.yaml").display(), "CLI credential written");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}
