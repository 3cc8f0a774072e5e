//! The agent-to-agent link: QUIC with mutual TLS, both sides presenting node certificates
//! from the hub's CA. A stream opened on it asks the receiving node for a TCP connection to
//! (or a UDP flow with) one of its own endpoints ([`MeshOpen`]), then carries that
//! connection's bytes (or the flow's datagrams, [`super::udp`]).
use super::table::Table;
use crate::identity::Identity;
use anyhow::Context as _;
use flotilla_proto::wire::{MeshOpen, MeshOpened, MeshTarget};
use flotilla_transport::{recv_frame, send_frame};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a connection to a peer or an endpoint may take before the next endpoint is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a node whose mesh link did not answer is reached through the hub instead.
pub const RETRY_DIRECT: Duration = Duration::from_secs(30);

/// UDP flows this node keeps on mesh streams at once (each holds a stream for as long as
/// it lasts), well under a connection's 1,024 streams, so TCP traffic and the hub link's
/// own requests always find room.
pub const MAX_UDP_FLOWS: usize = 256;

pub struct Link {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    /// Nodes that did not answer, until when they are not dialled again.
    lost: Mutex<HashMap<String, Instant>>,
    /// Permits for UDP flows on mesh streams ([`MAX_UDP_FLOWS`]).
    udp_flows: Arc<tokio::sync::Semaphore>,
    /// The agent's main runtime. quinn runs a connection's driver on the runtime that dials
    /// it, and an ingress worker's runtime ends with the worker, so peers are dialled here.
    runtime: tokio::runtime::Handle,
}

/// Why a stream to a peer's endpoint was not had.
pub enum Dial {
    /// The peer's link did not answer: the hub may relay.
    Unreachable(anyhow::Error),
    /// The peer answered and refused or failed to connect the endpoint.
    Refused(anyhow::Error),
}

/// Waits for the answer to a `MeshOpen` (directly or relayed): Ok once connected. Silence
/// (a link that died without a word) is `Unreachable`, a refusal `Refused`.
pub async fn opened<E: Into<anyhow::Error>>(
    node: &str,
    target: MeshTarget,
    answer: impl std::future::Future<Output = Result<Option<MeshOpened>, E>>,
) -> Result<(), Dial> {
    // The peer's own connect attempt is bounded by CONNECT_TIMEOUT.
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), answer).await {
        Err(_) => Err(Dial::Unreachable(anyhow::anyhow!(
            "node {node} did not answer for {target} in time"
        ))),
        Ok(Err(e)) => Err(Dial::Unreachable(e.into())),
        Ok(Ok(Some(MeshOpened::Connected))) => Ok(()),
        Ok(Ok(Some(MeshOpened::Refused { reason }))) => {
            Err(Dial::Refused(anyhow::anyhow!("node {node}: {reason}")))
        }
        Ok(Ok(None)) => Err(Dial::Refused(anyhow::anyhow!(
            "node {node} closed the stream"
        ))),
    }
}

impl From<Dial> for anyhow::Error {
    fn from(d: Dial) -> anyhow::Error {
        match d {
            Dial::Unreachable(e) | Dial::Refused(e) => e,
        }
    }
}

impl Link {
    /// The link on an already bound UDP socket, serving peers when `serve` (a node without
    /// a reachable socket still dials out).
    pub fn new(id: &Identity, socket: std::net::UdpSocket, serve: bool) -> anyhow::Result<Link> {
        let server = serve
            .then(|| flotilla_transport::mesh_server_config(&id.ca_pem, &id.cert_pem, &id.key_pem))
            .transpose()?;
        let quinn_runtime = quinn::default_runtime().context("no async runtime")?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket,
            quinn_runtime,
        )?;
        Ok(Link {
            endpoint,
            client: flotilla_transport::mesh_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem)?,
            conns: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            udp_flows: Arc::new(tokio::sync::Semaphore::new(MAX_UDP_FLOWS)),
            runtime: tokio::runtime::Handle::try_current().context("no async runtime")?,
        })
    }

    /// A permit for one more UDP flow over a mesh stream (direct or relayed), if the node
    /// has fewer than [`MAX_UDP_FLOWS`].
    pub fn udp_flow(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.udp_flows.clone().try_acquire_owned().ok()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A stream to `target` on node `node` (whose link answers at `addr`), connected. A node
    /// that did not answer is not dialled again for a while ([`RETRY_DIRECT`]): its traffic
    /// goes through the hub meanwhile.
    pub async fn open(
        &self,
        node: &str,
        addr: SocketAddr,
        target: MeshTarget,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Dial> {
        if self.lost_until(node).is_some_and(|t| t > Instant::now()) {
            return Err(Dial::Unreachable(anyhow::anyhow!(
                "node {node} did not answer lately"
            )));
        }
        let stream = async {
            let conn = self.connection(node, addr).await?;
            anyhow::Ok(match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => {
                    // A link that went away since: forget it and dial once more.
                    debug!(node, error = %e, "mesh link lost; reconnecting");
                    self.forget(node, &conn);
                    self.connection(node, addr).await?.open_bi().await?
                }
            })
        };
        let result = async {
            let (mut send, mut recv) = tokio::time::timeout(CONNECT_TIMEOUT, stream)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("node {node}: no stream in time")))
                .map_err(Dial::Unreachable)?;
            send_frame(&mut send, &MeshOpen { target })
                .await
                .map_err(|e| Dial::Unreachable(e.into()))?;
            opened(node, target, recv_frame::<MeshOpened>(&mut recv)).await?;
            Ok((send, recv))
        }
        .await;
        if let Err(Dial::Unreachable(_)) = &result {
            self.lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.to_string(), Instant::now() + RETRY_DIRECT);
            if let Some(c) = self.cached(node) {
                self.forget(node, &c);
            }
        }
        result
    }

    fn lost_until(&self, node: &str) -> Option<Instant> {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
    }

    async fn connection(&self, node: &str, addr: SocketAddr) -> anyhow::Result<quinn::Connection> {
        if let Some(c) = self.cached(node)
            && c.close_reason().is_none()
            && c.remote_address() == addr
        {
            return Ok(c);
        }
        let name = flotilla_transport::mesh_server_name(node);
        let connecting = {
            let _main = self.runtime.enter();
            self.endpoint
                .connect_with(self.client.clone(), addr, &name)?
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .with_context(|| format!("node {node}'s mesh link at {addr} did not answer"))??;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), conn.clone());
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
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
                    tokio::spawn(serve_stream(send, recv, table.clone(), peer.clone()));
                }
            });
        }
        self.endpoint.close(0u32.into(), b"agent stopping");
    }
}

/// One stream from a peer: its request, then [`answer`].
async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    table: watch::Receiver<Arc<Table>>,
    peer: String,
) {
    match recv_frame::<MeshOpen>(&mut recv).await {
        Ok(Some(open)) => answer(open, send, recv, table, &peer).await,
        Ok(None) => {}
        Err(e) => debug!(peer, error = %e, "unreadable mesh request"),
    }
}

/// What a mesh stream was connected to.
enum Reached {
    Tcp(TcpStream),
    Udp(tokio::net::UdpSocket),
}

/// Connects the endpoint a peer (or the hub, relaying) asks for, if it is one of this
/// node's, and carries the connection's bytes on the stream.
pub async fn answer(
    open: MeshOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    table: watch::Receiver<Arc<Table>>,
    peer: &str,
) {
    let refuse = |reason: String| MeshOpened::Refused { reason };
    let target = open.target;
    let allowed = table.borrow().local_targets.contains(&target);
    let reply = if !allowed {
        warn!(peer, %target, "refused a mesh stream to an address that is no endpoint here");
        Err(refuse(format!("{target} is not an endpoint on this node")))
    } else if target.is_udp() {
        super::udp::connect(target.addr())
            .map(Reached::Udp)
            .map_err(|e| refuse(format!("{target}: {e}")))
    } else {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr())).await {
            Ok(Ok(tcp)) => Ok(Reached::Tcp(tcp)),
            Ok(Err(e)) => Err(refuse(format!("connect {target}: {e}"))),
            Err(_) => Err(refuse(format!("connect {target}: timed out"))),
        }
    };
    match reply {
        Ok(reached) => {
            if send_frame(&mut send, &MeshOpened::Connected).await.is_err() {
                return;
            }
            match reached {
                Reached::Tcp(tcp) => super::splice(tcp, super::mesh_stream(send, recv)).await,
                Reached::Udp(socket) => {
                    let flow = super::udp::Datagrams::Socket(socket);
                    let stream = super::udp::framed(send, recv, None);
                    let flow = super::udp::pump(stream, flow, std::future::pending());
                    if let Err(e) = flow.await {
                        debug!(peer, %target, error = %e, "UDP flow ended with an error");
                    }
                }
            }
        }
        Err(r) => {
            let _ = send_frame(&mut send, &r).await;
            let _ = send.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `node`'s identity, its certificate signed by `pki` as the hub signs joining nodes'.
    fn identity(pki: &flotilla_hub::pki::Pki, node: &str) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        Identity {
            node_name: node.into(),
            hub: "127.0.0.1:7443".parse().unwrap(),
            ca_pem: pki.ca_pem.clone(),
            cert_pem: pki.sign_node(node, &csr).unwrap(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A peer first dialled from a runtime that has ended since (an ingress worker's) still
    /// answers on that connection: it is driven by the runtime the link was made on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_outlives_the_runtime_that_dialled_it() {
        flotilla_transport::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = flotilla_hub::pki::Pki::load_or_init(dir.path(), &[]).unwrap();
        let socket = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = Arc::new(Link::new(&identity(&pki, "a"), socket(), false).unwrap());
        let b = Arc::new(Link::new(&identity(&pki, "b"), socket(), true).unwrap());
        let b_addr = b.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (_table, table) = watch::channel(Arc::new(Table::default()));
        tokio::spawn(b.clone().serve(table, cancel.clone()));
        let dialler = a.clone();
        let dialled = tokio::task::spawn_blocking(move || {
            let worker = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            worker.block_on(dialler.connection("b", b_addr)).unwrap()
        })
        .await
        .unwrap();
        // b has no endpoints: an answer on the kept connection is a refusal, while a
        // connection left without its driver would stay silent (Unreachable).
        let nowhere = MeshTarget::tcp("127.0.0.1:9".parse().unwrap());
        let answer = a.open("b", b_addr, nowhere).await;
        assert!(
            matches!(answer, Err(Dial::Refused(_))),
            "b should refuse over the kept connection, got {}",
            match answer {
                Ok(_) => "a stream".to_string(),
                Err(Dial::Refused(e)) => format!("refused: {e:#}"),
                Err(Dial::Unreachable(e)) => format!("unreachable: {e:#}"),
            }
        );
        let kept = a.cached("b").expect("a keeps its connection to b");
        assert_eq!(
            (kept.stable_id(), kept.close_reason()),
            (dialled.stable_id(), None),
            "the connection dialled from the ended runtime should be the one in use, open"
        );
        cancel.cancel();
    }
}
