//! UDP service traffic. A frontend socket (cluster IP or node port) sorts what it receives by
//! the client's address and port into flows, as conntrack does for kube-proxy: a flow's
//! first datagram picks an endpoint, and the rest of it, both ways, goes to that endpoint
//! until neither side has sent anything for [`IDLE`]. The endpoint is reached with a socket
//! of its own when it is on this node, else over a mesh stream (or the hub's relay) carrying
//! one frame per datagram to an agent that does the same on its side. Answers leave from the
//! frontend socket, so the client sees them come from the address it sent to. A flow whose
//! endpoint leaves the service's Ready endpoints ends at once (kube-proxy clears its
//! conntrack entries), so the client's next datagram starts a flow to another one. An
//! endpoint that refuses a datagram fails its flow, on this node or (the far agent resets
//! the stream with [`REFUSED`]) on another.
use super::table::Backend;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Duration;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A flow ends after this long without a datagram either way (conntrack's UDP timeout).
pub const IDLE: Duration = Duration::from_secs(30);

/// Flows a frontend keeps at once; a new one beyond them ends the one quiet the longest.
const MAX_FLOWS: usize = 1024;

/// Datagrams held for a flow whose endpoint is still being reached; more are dropped, as a
/// full socket buffer would drop them.
const QUEUE: usize = 16;

/// How long a side may take to accept a datagram (a mesh stream whose far side reads
/// nothing) before the datagram is dropped and the flow reads on, so two sides that both
/// wait to send never wait on each other.
const SEND_WAIT: Duration = Duration::from_millis(200);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// The code a mesh stream is reset with when the endpoint on the answering side failed the
/// flow (refused a datagram), so the origin counts the failure against it.
pub const REFUSED: u32 = 1;

type MeshFramed =
    Framed<tokio::io::Join<quinn::RecvStream, quinn::SendStream>, LengthDelimitedCodec>;

/// One side of a flow.
pub enum Datagrams {
    /// A socket connected to the endpoint.
    Socket(UdpSocket),
    /// A mesh (or relayed) stream to the endpoint's node: a big-endian u16 length, then the
    /// datagram, each way; with the permit that counts it against the node's mesh flows.
    Stream(Box<MeshFramed>, Option<OwnedSemaphorePermit>),
    /// A client's share of a frontend socket: what the frontend received from it, and the
    /// socket that answers it.
    Client {
        socket: Arc<UdpSocket>,
        client: SocketAddr,
        rx: mpsc::Receiver<Bytes>,
    },
}

/// The datagram side of a mesh stream (holding `permit` while the flow lasts).
pub fn framed(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    permit: Option<OwnedSemaphorePermit>,
) -> Datagrams {
    let codec = LengthDelimitedCodec::builder()
        .length_field_type::<u16>()
        .max_frame_length(MAX_DATAGRAM)
        .new_codec();
    let framed = Framed::new(tokio::io::join(recv, send), codec);
    Datagrams::Stream(Box::new(framed), permit)
}

/// A socket connected to `target`, from an address of this host's choosing.
pub fn connect(target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(super::unspecified(target.ip()), 0))?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A datagram from `socket` (and who sent it). The 64 KiB buffer lives only between the
/// readiness and the read, so a waiting flow holds none. A connected socket's pending error
/// (the endpoint's port refused an earlier datagram) wakes it too, and is returned.
async fn recv_from(socket: &UdpSocket, connected: bool) -> io::Result<(Bytes, Option<SocketAddr>)> {
    loop {
        let ready = socket
            .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
            .await?;
        if ready.is_error() {
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
            // Taken already (a send returned it), and the readiness stays: wait for data.
            socket.readable().await?;
        }
        let mut buf = [0u8; MAX_DATAGRAM];
        let got = if connected {
            socket.try_recv(&mut buf).map(|n| (n, None))
        } else {
            socket.try_recv_from(&mut buf).map(|(n, a)| (n, Some(a)))
        };
        match got {
            Ok((n, from)) => return Ok((Bytes::copy_from_slice(&buf[..n]), from)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Datagrams {
    /// The next datagram; None once this side is done (its stream finished, or the
    /// frontend let go of the flow).
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Datagrams::Socket(s) => Ok(Some(recv_from(s, true).await?.0)),
            Datagrams::Stream(f, _) => f.next().await.transpose().map(|d| d.map(Bytes::from)),
            Datagrams::Client { rx, .. } => Ok(rx.recv().await),
        }
    }

    /// Tells a stream's far side that the flow is over.
    fn finish(&mut self) {
        if let Datagrams::Stream(f, _) = self {
            let _ = f.get_mut().writer_mut().finish();
        }
    }

    /// Tells a stream's far side that the flow failed at the endpoint.
    fn fail(&mut self) {
        if let Datagrams::Stream(f, _) = self {
            let _ = f.get_mut().writer_mut().reset(REFUSED.into());
        }
    }

    async fn send(&mut self, d: Bytes) -> io::Result<()> {
        match self {
            Datagrams::Socket(s) => s.send(&d).await.map(drop),
            Datagrams::Stream(f, _) => f.send(d).await,
            Datagrams::Client { socket, client, .. } => socket.send_to(&d, *client).await.map(drop),
        }
    }
}

/// Carries datagrams between the two sides until either ends or fails, neither has sent
/// one for [`IDLE`], or `gone` (the endpoint left the service). An error is `endpoint`'s
/// (refused by the endpoint, a broken stream); a stream on the client's side is then reset.
pub async fn pump(
    mut client: Datagrams,
    mut endpoint: Datagrams,
    gone: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle, gone);
    loop {
        tokio::select! {
            d = client.recv() => match d {
                Ok(Some(d)) => {
                    if let Err(e) = offer(&mut endpoint, d).await {
                        client.fail();
                        return Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "UDP flow's client side failed");
                    break;
                }
            },
            d = endpoint.recv() => match d {
                Ok(Some(d)) => {
                    if let Err(e) = offer(&mut client, d).await {
                        debug!(error = %e, "UDP flow's answer not delivered");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    client.fail();
                    return Err(e);
                }
            },
            _ = &mut idle => break,
            () = &mut gone => {
                debug!("UDP flow's endpoint left the service");
                break;
            }
        }
        idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
    }
    client.finish();
    endpoint.finish();
    Ok(())
}

/// Sends `d`, unless `side` does not take it within [`SEND_WAIT`]: then it is dropped.
async fn offer(side: &mut Datagrams, d: Bytes) -> io::Result<()> {
    tokio::time::timeout(SEND_WAIT, side.send(d))
        .await
        .unwrap_or(Ok(()))
}

/// A flow's way in: the frontend's queue to it, and when it last carried a datagram.
struct Flow {
    tx: mpsc::Sender<Bytes>,
    last: Instant,
}

/// Serves one UDP frontend until `stop`: each datagram joins its client's flow, or starts
/// one, which `start` connects to an endpoint and pumps.
pub async fn serve<F, Fut>(socket: UdpSocket, stop: CancellationToken, mut start: F)
where
    F: FnMut(SocketAddr, Datagrams) -> Option<Fut>,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    loop {
        let (d, client) = tokio::select! {
            _ = stop.cancelled() => break,
            r = recv_from(&socket, false) => match r {
                Ok((d, Some(client))) => (d, client),
                Ok((_, None)) => continue,
                Err(e) => {
                    warn!(error = %e, "UDP frontend receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        if let Some(f) = flows.get_mut(&client)
            && !f.tx.is_closed()
        {
            f.last = now;
            let _ = f.tx.try_send(d);
            continue;
        }
        if flows.len() >= MAX_FLOWS {
            flows.retain(|_, f| !f.tx.is_closed());
        }
        if flows.len() >= MAX_FLOWS
            && let Some(quiet) = flows.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a)
        {
            flows.remove(&quiet);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(d);
        let side = Datagrams::Client {
            socket: socket.clone(),
            client,
            rx,
        };
        if let Some(flow) = start(client, side) {
            flows.insert(client, Flow { tx, last: now });
            tokio::spawn(flow);
        }
    }
}

/// Reports how a flow to an endpoint went, for passive health: refused datagrams (the
/// endpoint's port is closed) count as a failure.
pub fn report(backend: &Backend, t: &super::table::Target, outcome: io::Result<()>) {
    let ok = match outcome {
        Ok(()) => true,
        Err(e) => {
            debug!(service = backend.service, endpoint = %t.addr, error = %e, "UDP flow failed");
            false
        }
    };
    backend.report(t, ok, Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bound() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// A frontend on loopback whose flows go to `endpoint`; the outcome of each flow is sent
    /// on the returned channel.
    async fn frontend(
        endpoint: SocketAddr,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<io::Result<()>>) {
        let socket = bound().await;
        let addr = socket.local_addr().unwrap();
        let (done, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(serve(socket, CancellationToken::new(), move |_, side| {
            let done = done.clone();
            Some(async move {
                let up = Datagrams::Socket(connect(endpoint).unwrap());
                let _ = done.send(pump(side, up, std::future::pending()).await);
            })
        }));
        (addr, outcomes)
    }

    #[tokio::test]
    async fn flows_carry_datagrams_both_ways_and_answers_come_from_the_frontend() {
        let echo = bound().await;
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 100];
            let mut seen = Vec::new();
            loop {
                let (n, from) = echo.recv_from(&mut buf).await.unwrap();
                if !seen.contains(&from) {
                    seen.push(from);
                }
                let flow = seen.iter().position(|a| *a == from).unwrap();
                let reply = format!("flow {flow}: {}", String::from_utf8_lossy(&buf[..n]));
                echo.send_to(reply.as_bytes(), from).await.unwrap();
            }
        });
        let (front, _) = frontend(echo_addr).await;
        let (a, b) = (bound().await, bound().await);
        let mut buf = [0u8; 100];
        for (client, msg, want) in [
            (&a, "one", "flow 0: one"),
            (&b, "two", "flow 1: two"),
            (&a, "three", "flow 0: three"),
        ] {
            client.send_to(msg.as_bytes(), front).await.unwrap();
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
            assert_eq!(from, front, "the answer's source");
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_refuses_fails_the_flow() {
        let closed = bound().await.local_addr().unwrap();
        let (front, mut outcomes) = frontend(closed).await;
        let client = bound().await;
        client.send_to(b"anyone?", front).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
            .await
            .expect("the flow ends")
            .expect("an outcome");
        let err = outcome.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }

    /// Both ends of a QUIC connection on loopback (a self-signed certificate: what is tested
    /// is the stream, not the mesh's TLS).
    async fn quic_pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
        flotilla_transport::install_crypto_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = quinn::ServerConfig::with_single_cert(vec![der.clone()], key).unwrap();
        let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
        );
        let addr = server.local_addr().unwrap();
        let (origin, answering) = tokio::join!(
            async { client.connect(addr, "localhost").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() }
        );
        (server, origin, answering)
    }

    #[tokio::test]
    async fn a_refusal_on_the_far_side_of_a_mesh_stream_fails_the_flow_at_the_origin() {
        let (_server, origin, answering) = quic_pair().await;
        let closed = bound().await.local_addr().unwrap();
        // Held here so the connection outlives the far side's task.
        let _answering = answering.clone();
        let far = tokio::spawn(async move {
            let (send, recv) = answering.accept_bi().await.unwrap();
            let up = Datagrams::Socket(connect(closed).unwrap());
            pump(framed(send, recv, None), up, std::future::pending()).await
        });
        let (send, recv) = origin.open_bi().await.unwrap();
        let mut stream = framed(send, recv, None);
        stream.send(Bytes::from_static(b"anyone?")).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("the flow ends")
            .expect_err("the far side's refusal");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let far = far.await.unwrap().expect_err("refused on the far side");
        assert_eq!(far.kind(), io::ErrorKind::ConnectionRefused, "{far}");
    }

    #[tokio::test]
    async fn a_flow_ends_when_its_endpoint_leaves() {
        let echo = bound().await;
        let echo_addr = echo.local_addr().unwrap();
        let (client, _rx_keep) = {
            let (tx, rx) = mpsc::channel(1);
            let socket = Arc::new(bound().await);
            (
                Datagrams::Client {
                    socket,
                    client: echo_addr,
                    rx,
                },
                tx,
            )
        };
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let flow = tokio::spawn(pump(
            client,
            Datagrams::Socket(connect(echo_addr).unwrap()),
            async move {
                let _ = left.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !flow.is_finished(),
            "the flow lasts while its endpoint serves"
        );
        leave.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), flow).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }
}
