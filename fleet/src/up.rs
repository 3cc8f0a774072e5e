//! `fleet up`: a hub (embedded redb) and a local agent in this process, the example deployed,
//! and a URL that answers. The same binaries' libraries run here as on real machines.
use crate::Client;
use anyhow::{Context as _, bail};
use flotilla_proto::api::{Kind, Object};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub config_path: PathBuf,
    pub node_name: String,
    /// The `examples/` directory; None skips deploying the example.
    pub examples: Option<PathBuf>,
}

pub struct Up {
    pub hub: flotilla_hub::HubHandle,
    pub agent: flotilla_agent::AgentHandle,
    pub url: Option<String>,
}

impl Up {
    pub async fn shutdown(self) {
        self.agent.shutdown().await;
        self.hub.shutdown().await;
    }
}

/// A minimal HTTP/1.1 GET for readiness checks: (status, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn example_wasm(examples: &Path, name: &str) -> PathBuf {
    examples
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

pub async fn up(opts: UpOptions, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Up> {
    let mut hub_cfg = flotilla_hub::Config::new(opts.data_dir.join("hub"));
    hub_cfg.advertise_address = Some(opts.listen.to_string());
    let socket = std::net::UdpSocket::bind(opts.listen)
        .with_context(|| format!("failed to bind {} (is another hub running?)", opts.listen))?;
    let hub = flotilla_hub::start(hub_cfg, socket).await?;
    let client_file = hub.client_config();
    client_file.write(&opts.config_path)?;
    progress(&format!(
        "hub listening on {} (data in {})",
        opts.listen,
        opts.data_dir.join("hub").display()
    ));
    let client = Client::connect(&client_file).await?;

    let agent_dir = opts.data_dir.join("agent");
    let mut agent_cfg = flotilla_agent::Config::new(&agent_dir, &opts.node_name);
    agent_cfg.hub = Some(opts.listen);
    if flotilla_agent::identity::Identity::load(&agent_dir)?.is_none() {
        agent_cfg.token = Some(client.create_token(Some(600), Some(1)).await?);
    }
    let agent = flotilla_agent::start(agent_cfg).await?;
    progress(&format!("agent {} started", opts.node_name));

    let mut url = None;
    if let Some(examples) = &opts.examples {
        let wasm = example_wasm(examples, "hello");
        let bytes = std::fs::read(&wasm).with_context(|| {
            format!(
                "{} is missing: run scripts/build-examples first",
                wasm.display()
            )
        })?;
        let digest = client.push(&bytes, "hello", "latest").await?;
        progress(&format!("pushed hello:latest ({digest})"));
        let manifest = examples.join("hello/deploy.yaml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("failed to read {}", manifest.display()))?;
        client.apply_text(&text).await?;
        progress("applied examples/hello/deploy.yaml; waiting for the pod");
        let started = Instant::now();
        let endpoint = loop {
            let pods = client.get(Kind::Pod, Some("default"), None).await?;
            let ready = pods.iter().find_map(|o| match o {
                Object::Pod(p)
                    if p.metadata.labels.get("app").map(String::as_str) == Some("hello")
                        && p.is_ready() =>
                {
                    p.status.endpoint.clone()
                }
                _ => None,
            });
            if let Some(e) = ready
                && matches!(http_get(&e, "/").await, Ok((200, _)))
            {
                break e;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the hello pod did not answer within 60s; see `fleet get pods` and `fleet logs`"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        url = Some(format!("http://{endpoint}/"));
    }
    client.close().await;
    Ok(Up { hub, agent, url })
}
