//! The agent-to-agent link: QUIC with mutual TLS, both sides presenting node certificates
//! from the hub's CA. A stream opened on it asks the receiving node for a TCP connection to
//! one of its own endpoints ([`MeshOpen`]), then carries that connection's bytes.
use super::table::Table;
use crate::identity::Identity;
use anyhow::{Context as _, bail};
use flotilla_proto::wire::{MeshOpen, MeshOpened};
use flotilla_transport::{recv_frame, send_frame};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a connection to a peer or an endpoint may take before the next endpoint is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Link {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<String, quinn::Connection>>,
}

impl Link {
    /// The link on an already bound UDP socket, serving peers when `serve` (a node without
    /// a reachable socket still dials out).
    pub fn new(id: &Identity, socket: std::net::UdpSocket, serve: bool) -> anyhow::Result<Link> {
        let server = serve
            .then(|| flotilla_transport::mesh_server_config(&id.ca_pem, &id.cert_pem, &id.key_pem))
            .transpose()?;
        let runtime = quinn::default_runtime().context("no async runtime")?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)?;
        Ok(Link {
            endpoint,
            client: flotilla_transport::mesh_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem)?,
            conns: Mutex::new(HashMap::new()),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A stream to `target` on node `node` (whose link answers at `addr`), connected.
    pub async fn open(
        &self,
        node: &str,
        addr: SocketAddr,
        target: SocketAddr,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let conn = self.connection(node, addr).await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                // A link that went away since: forget it and dial once more.
                debug!(node, error = %e, "mesh link lost; reconnecting");
                self.forget(node, &conn);
                self.connection(node, addr).await?.open_bi().await?
            }
        };
        send_frame(&mut send, &MeshOpen { target }).await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, recv_frame::<MeshOpened>(&mut recv)).await {
            Err(_) => bail!("node {node} did not connect {target} in time"),
            Ok(r) => match r? {
                Some(MeshOpened::Connected) => Ok((send, recv)),
                Some(MeshOpened::Refused { reason }) => bail!("node {node}: {reason}"),
                None => bail!("node {node} closed the stream"),
            },
        }
    }

    async fn connection(&self, node: &str, addr: SocketAddr) -> anyhow::Result<quinn::Connection> {
        if let Some(c) = self.cached(node)
            && c.close_reason().is_none()
            && c.remote_address() == addr
        {
            return Ok(c);
        }
        let name = flotilla_transport::mesh_server_name(node);
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &name)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .with_context(|| format!("node {node}'s mesh link at {addr} did not answer"))??;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), conn.clone());
        Ok(conn)
    }

    fn cached(&self, node: &str) -> Option<quinn::Connection> {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    fn forget(&self, node: &str, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns
            .get(node)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(node);
        }
    }

    /// Serves peers until cancelled: only nodes get in, and only to this node's endpoints.
    pub async fn serve(
        self: Arc<Self>,
        table: watch::Receiver<Arc<Table>>,
        cancel: CancellationToken,
    ) {
        loop {
            let incoming = tokio::select! {
                _ = cancel.cancelled() => break,
                i = self.endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let table = table.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return debug!(error = %e, "mesh handshake failed"),
                };
                let peer = match flotilla_transport::peer_identity(&conn) {
                    flotilla_transport::Identity::Node(n) => n,
                    other => {
                        warn!(from = %conn.remote_address(), identity = ?other, "refused a mesh link from a non-node");
                        return conn.close(1u32.into(), b"nodes only");
                    }
                };
                debug!(peer, "mesh link up");
                loop {
                    let (send, recv) = tokio::select! {
                        _ = cancel.cancelled() => return,
                        s = conn.accept_bi() => match s {
                            Ok(s) => s,
                            Err(e) => return debug!(peer, error = %e, "mesh link down"),
                        },
                    };
                    tokio::spawn(answer(send, recv, table.clone(), peer.clone()));
                }
            });
        }
        self.endpoint.close(0u32.into(), b"agent stopping");
    }
}

/// One stream from a peer: connects the endpoint it names, if it is one of this node's.
async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    table: watch::Receiver<Arc<Table>>,
    peer: String,
) {
    let open = match recv_frame::<MeshOpen>(&mut recv).await {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => return debug!(peer, error = %e, "unreadable mesh request"),
    };
    let refuse = |reason: String| MeshOpened::Refused { reason };
    let allowed = table.borrow().local_targets.contains(&open.target);
    let reply = if !allowed {
        warn!(peer, target = %open.target, "refused a mesh stream to an address that is no endpoint here");
        Err(refuse(format!(
            "{} is not an endpoint on this node",
            open.target
        )))
    } else {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(open.target)).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(refuse(format!("connect {}: {e}", open.target))),
            Err(_) => Err(refuse(format!("connect {}: timed out", open.target))),
        }
    };
    match reply {
        Ok(tcp) => {
            if send_frame(&mut send, &MeshOpened::Connected).await.is_ok() {
                super::splice(tcp, super::Upstream::Mesh(send, recv)).await;
            }
        }
        Err(r) => {
            let _ = send_frame(&mut send, &r).await;
            let _ = send.finish();
        }
    }
}
