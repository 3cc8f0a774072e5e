//! `flotilla-agent`: parses flags, starts the agent, waits for a signal, shuts down.
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "flotilla-agent",
    version,
    about = "The Flotilla agent: runs a node's WASI workloads and OCI containers"
)]
struct Args {
    /// The hub's QUIC address (needed for the first join; remembered afterwards).
    #[arg(long, env = "FLOTILLA_HUB")]
    hub: Option<std::net::SocketAddr>,
    /// Join token from `fleet token create` (first start only).
    #[arg(long, env = "FLOTILLA_TOKEN")]
    token: Option<String>,
    /// Node name (default: the host name).
    #[arg(long, env = "FLOTILLA_NODE_NAME")]
    node_name: Option<String>,
    #[arg(
        long,
        env = "FLOTILLA_AGENT_DATA",
        default_value = "/var/lib/flotilla/agent"
    )]
    data_dir: PathBuf,
    /// Address to serve workloads on and report as the node's InternalIP.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: std::net::IpAddr,
    /// Extra node labels, KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Where secret volumes are written; should be a tmpfs (default /dev/shm/flotilla-NODE).
    #[arg(long, env = "FLOTILLA_SECRET_DIR")]
    secret_dir: Option<PathBuf>,
    /// How often the node reports to the hub (the hub's --node-grace should be several times
    /// this).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    heartbeat: std::time::Duration,
    /// A registry (`host[:port]`) to reach over plain HTTP instead of HTTPS; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The bridge container pods attach to.
    #[arg(long, default_value = "flotilla0")]
    bridge: String,
    /// A static pod CIDR for container pods (default: the range the hub assigns this node
    /// from its --cluster-cidr).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The pids limit of each container.
    #[arg(long, default_value_t = 4096)]
    pids_limit: i64,
    /// Disk usage (percent, of the data dir's filesystem) at which unused images are removed;
    /// 100 disables image garbage collection.
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Disk usage (percent) image garbage collection brings usage down to.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// The domain the node DNS answers for.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where the node DNS answers the host and other nodes (default NODE_IP:53); repeatable;
    /// `none` for nowhere. Container pods reach it on their bridge's gateway either way.
    #[arg(long = "dns-listen")]
    dns_listen: Vec<String>,
    /// Where the mesh link (QUIC, UDP) answers other nodes (default NODE_IP:7444).
    #[arg(long)]
    mesh_listen: Option<std::net::SocketAddr>,
    /// Do not carry service traffic on this node (no cluster IP or node port listeners).
    #[arg(long)]
    no_service_proxy: bool,
    /// Where the ingress answers HTTP while this node is a gateway (default NODE_IP:80);
    /// repeatable; `none` for nowhere.
    #[arg(long = "ingress-listen")]
    ingress_listen: Vec<String>,
    /// Where the ingress answers HTTPS while this node is a gateway (default NODE_IP:443);
    /// repeatable; `none` for nowhere.
    #[arg(long = "ingress-https-listen")]
    ingress_https_listen: Vec<String>,
    /// A proxy in front of the ingress (an address or CIDR block) whose X-Forwarded-For and
    /// other forwarding headers are believed; repeatable. From others they are replaced.
    #[arg(long = "ingress-trusted-proxy", value_parser = trusted_proxy)]
    ingress_trusted_proxies: Vec<ipnet::IpNet>,
    /// Append a JSON line per ingress request to this file (`-` for standard output).
    #[arg(long)]
    ingress_access_log: Option<PathBuf>,
    /// Close an ingress client connection on which nothing moved for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    ingress_idle_timeout: std::time::Duration,
    /// The largest request body the ingress passes on (such as 512k, 100m or 1g; 0 for no
    /// limit), for routes whose Ingress or Middlewares set none.
    #[arg(long, value_parser = body_size, default_value = "100m")]
    ingress_max_body_size: u64,
    /// Client connections the ingress serves at once; past them, new ones get a 503.
    #[arg(long, default_value_t = 10_000)]
    ingress_max_connections: usize,
    /// Threads the ingress serves connections on, each with its own event loop (as nginx's
    /// worker_processes); one per CPU when not given.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    ingress_workers: Option<u16>,
}

fn body_size(s: &str) -> Result<u64, String> {
    flotilla_proto::ingress::parse_size(s)
        .ok_or_else(|| format!("{s:?}: expected a size such as 512k, 100m or 1g, or 0"))
}

fn trusted_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    flotilla_proto::ingress::parse_net("--ingress-trusted-proxy", s)
}

/// `ADDRESS:PORT` values of a repeatable flag, where `none` stands for nowhere.
fn listen_list(flag: &str, values: &[String]) -> anyhow::Result<Option<Vec<std::net::SocketAddr>>> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut listen = Vec::new();
    for a in values.iter().filter(|a| *a != "none") {
        listen.push(
            a.parse()
                .map_err(|_| anyhow::anyhow!("{flag} {a:?}: expected ADDRESS:PORT or none"))?,
        );
    }
    Ok(Some(listen))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // hickory's server logs every query at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg =
        flotilla_agent::Config::new(args.data_dir, args.node_name.unwrap_or_else(hostname));
    cfg.hub = args.hub;
    cfg.token = args.token;
    cfg.node_ip = args.node_ip;
    cfg.heartbeat = args.heartbeat;
    cfg.insecure_registries = args.insecure_registries;
    cfg.bridge = args.bridge;
    cfg.pod_cidr = args.pod_cidr;
    cfg.pids_limit = args.pids_limit;
    cfg.image_gc = flotilla_oci::gc::Thresholds {
        high: args.image_gc_high_threshold,
        low: args.image_gc_low_threshold,
    };
    cfg.image_gc.validate().map_err(|e| anyhow::anyhow!(e))?;
    cfg.cluster_domain = args.cluster_domain;
    cfg.dns_listen = listen_list("--dns-listen", &args.dns_listen)?;
    cfg.ingress_listen = listen_list("--ingress-listen", &args.ingress_listen)?;
    cfg.ingress_https_listen = listen_list("--ingress-https-listen", &args.ingress_https_listen)?;
    cfg.ingress_trusted_proxies = args.ingress_trusted_proxies;
    cfg.ingress_access_log = args.ingress_access_log;
    cfg.ingress_idle_timeout = args.ingress_idle_timeout;
    cfg.ingress_max_body_size = args.ingress_max_body_size;
    cfg.ingress_max_connections = args.ingress_max_connections;
    if let Some(n) = args.ingress_workers {
        cfg.ingress_workers = n.into();
    }
    cfg.mesh_listen = args.mesh_listen;
    cfg.service_proxy = !args.no_service_proxy;
    if let Some(d) = args.secret_dir {
        cfg.secret_dir = d;
    }
    let mut labels = BTreeMap::new();
    for l in args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    cfg.labels = labels;
    let agent = flotilla_agent::start(cfg).await?;
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}
