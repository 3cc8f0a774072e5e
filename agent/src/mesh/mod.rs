//! The mesh: service traffic on every node, by an agent-side proxy.
//!
//! Each ClusterIP (and NodePort) service port is a listener (a UDP socket for UDP ports,
//! [`udp`]): on the cluster IP (made an address of this host by a `local` route of ours,
//! marked `proto 250`, so pods' packets to it are delivered here) and on the node IP at the
//! node port. A new connection (or UDP flow) goes to a Ready endpoint: on this node when
//! there is one, then in this node's zone, then anywhere (round robin, or sticky per client
//! with sessionAffinity ClientIP). Endpoints on this node are dialled directly; those on
//! other nodes through their agent over the mesh link ([`link`]), so no overlay network is
//! needed and nothing crosses between nodes in the clear. A connect failure tries the next
//! endpoint.
//!
//! The table follows the node's cached copy of Services, EndpointSlices and Nodes, so
//! traffic keeps flowing to the endpoints the node knows while the hub is away.
pub mod link;
pub mod table;
pub mod udp;

use crate::Shared;
use flotilla_proto::wire::MeshTarget;
use link::Link;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use table::{Backend, Table, Target};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Marks the routes the agent adds for cluster IPs (`ip route … proto 250`), so those left by a
/// crashed agent are found and flushed.
const ROUTE_PROTO: &str = "250";

/// Connections are tried on this many endpoints before the client's is closed.
pub const ATTEMPTS: usize = 3;

/// A connection to an endpoint: TCP, or a stream of the mesh link (or of the hub's relay).
pub type Upstream =
    tokio_util::either::Either<TcpStream, tokio::io::Join<quinn::RecvStream, quinn::SendStream>>;

fn mesh_stream(send: quinn::SendStream, recv: quinn::RecvStream) -> Upstream {
    tokio_util::either::Either::Right(tokio::io::join(recv, send))
}

/// Starts the mesh link on `socket` and, when the node proxies services, the listeners.
/// The table is published for both.
pub async fn start(
    shared: Arc<Shared>,
    id: &crate::identity::Identity,
    socket: Option<std::net::UdpSocket>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let serve = socket.is_some();
    let socket = match socket {
        Some(s) => s,
        // A node nobody can dial still dials out.
        None => std::net::UdpSocket::bind(SocketAddr::new(unspecified(shared.cfg.node_ip), 0))?,
    };
    socket.set_nonblocking(true)?;
    let link = Arc::new(Link::new(id, socket, serve)?);
    if serve {
        info!(addr = %link.local_addr()?, "mesh link serving");
        shared.tracker.spawn(
            link.clone()
                .serve(shared.mesh_table.subscribe(), cancel.clone()),
        );
    }
    shared.tracker.spawn(crate::ingress::run(
        shared.clone(),
        link.clone(),
        cancel.clone(),
    ));
    shared.tracker.spawn(run(shared.clone(), link, cancel));
    Ok(())
}

pub(crate) fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// Rebuilds the table on every change of the node's discovery objects and keeps the
/// listeners (and cluster IP routes) in step with it.
async fn run(shared: Arc<Shared>, link: Arc<Link>, cancel: CancellationToken) {
    let table_tx = &shared.mesh_table;
    let table_rx = table_tx.subscribe();
    let proxy = shared.cfg.service_proxy;
    if proxy {
        flush_routes().await;
    }
    let mut objects = shared.discovery.subscribe();
    let mut listeners = Listeners::default();
    let mut routes: BTreeSet<IpAddr> = BTreeSet::new();
    loop {
        let table = {
            let objects = objects.borrow_and_update();
            let me = table::Me {
                node: &shared.cfg.node_name,
                labels: &shared.cfg.labels,
                node_ip: shared.cfg.node_ip,
                zone: shared.cfg.labels.get(table::ZONE_LABEL).map(String::as_str),
            };
            Arc::new(table::build(&objects, &me, &table_tx.borrow()))
        };
        table_tx.send_replace(table.clone());
        if proxy {
            reconcile(
                &shared,
                &link,
                &table,
                &table_rx,
                &mut listeners,
                &mut routes,
                &cancel,
            )
            .await;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = objects.changed() => if changed.is_err() { break },
        }
    }
    for (_, stop) in listeners.tcp.into_iter().chain(listeners.udp) {
        stop.cancel();
    }
    for ip in routes {
        route("del", ip).await;
    }
}

/// The frontends being served, each stopped by its token.
#[derive(Default)]
struct Listeners {
    tcp: BTreeMap<SocketAddr, CancellationToken>,
    udp: BTreeMap<SocketAddr, CancellationToken>,
}

/// Stops the listeners of frontends no longer in `want`; the frontends not yet listened on.
fn unserved(
    listeners: &mut BTreeMap<SocketAddr, CancellationToken>,
    want: &BTreeMap<SocketAddr, Arc<Backend>>,
) -> Vec<SocketAddr> {
    listeners.retain(|addr, stop| {
        let keep = want.contains_key(addr);
        if !keep {
            stop.cancel();
        }
        keep
    });
    want.keys()
        .filter(|a| !listeners.contains_key(a))
        .copied()
        .collect()
}

async fn reconcile(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    table: &Table,
    table_rx: &watch::Receiver<Arc<Table>>,
    listeners: &mut Listeners,
    routes: &mut BTreeSet<IpAddr>,
    cancel: &CancellationToken,
) {
    let node_ip = shared.cfg.node_ip;
    let want: BTreeSet<IpAddr> = table
        .frontends
        .keys()
        .chain(table.udp_frontends.keys())
        .map(SocketAddr::ip)
        .filter(|ip| *ip != node_ip)
        .collect();
    let tcp = unserved(&mut listeners.tcp, &table.frontends);
    let udp = unserved(&mut listeners.udp, &table.udp_frontends);
    for ip in routes.difference(&want).copied().collect::<Vec<_>>() {
        route("del", ip).await;
        routes.remove(&ip);
    }
    for ip in want.difference(routes).copied().collect::<Vec<_>>() {
        if route("replace", ip).await {
            routes.insert(ip);
        }
    }
    let refused = |addr: SocketAddr, backend: &Backend, e: std::io::Error| warn!(%addr, service = backend.service, error = %e, "cannot accept service traffic here");
    for addr in tcp {
        debug!(%addr, service = table.frontends[&addr].service, "service listener");
        match TcpListener::bind(addr).await {
            Ok(l) => {
                let stop = cancel.child_token();
                listeners.tcp.insert(addr, stop.clone());
                shared.tracker.spawn(accept(
                    l,
                    addr,
                    shared.clone(),
                    link.clone(),
                    table_rx.clone(),
                    stop,
                ));
            }
            Err(e) => refused(addr, &table.frontends[&addr], e),
        }
    }
    for addr in udp {
        debug!(%addr, service = table.udp_frontends[&addr].service, "UDP service socket");
        match UdpSocket::bind(addr).await {
            Ok(socket) => {
                let stop = cancel.child_token();
                listeners.udp.insert(addr, stop.clone());
                shared.tracker.spawn(serve_udp(
                    socket,
                    addr,
                    shared.clone(),
                    link.clone(),
                    table_rx.clone(),
                    stop,
                ));
            }
            Err(e) => refused(addr, &table.udp_frontends[&addr], e),
        }
    }
}

/// Adds (`replace`) or removes the local route that makes `ip` an address of this host.
async fn route(op: &str, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    let args = [
        "route",
        op,
        "local",
        &ip,
        "dev",
        "lo",
        "table",
        "local",
        "proto",
        ROUTE_PROTO,
    ];
    match crate::network::run("ip", &args).await {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "cluster IP route");
            false
        }
    }
}

/// Removes the cluster IP routes an earlier run of the agent left behind.
async fn flush_routes() {
    let args = ["route", "flush", "table", "local", "proto", ROUTE_PROTO];
    if let Err(e) = crate::network::run("ip", &args).await {
        debug!(error = %e, "no cluster IP routes flushed");
    }
}

async fn accept(
    listener: TcpListener,
    frontend: SocketAddr,
    shared: Arc<Shared>,
    link: Arc<Link>,
    table: watch::Receiver<Arc<Table>>,
    stop: CancellationToken,
) {
    while let Some((tcp, client)) = next_connection(&listener, &stop).await {
        let peers = table.borrow().clone();
        let Some(backend) = peers.frontends.get(&frontend).cloned() else {
            continue;
        };
        let link = link.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let pick = Pick {
                client: client.ip(),
                how: table::Balancing::RoundRobin,
                avoid: &[],
            };
            match connect(&shared, &link, &peers, &backend, pick, |_| None::<()>).await {
                Some((t, Conn::New(up))) => {
                    backend.report(&t, true, Instant::now());
                    splice(tcp, up).await
                }
                Some((_, Conn::Held(()))) => {}
                None => {
                    debug!(service = backend.service, %client, "no endpoint took the connection")
                }
            }
        });
    }
}

/// Serves a UDP frontend: each new flow goes to an endpoint picked as for a connection.
async fn serve_udp(
    socket: UdpSocket,
    frontend: SocketAddr,
    shared: Arc<Shared>,
    link: Arc<Link>,
    table: watch::Receiver<Arc<Table>>,
    stop: CancellationToken,
) {
    udp::serve(socket, stop, |client, side| {
        let peers = table.borrow().clone();
        let backend = peers.udp_frontends.get(&frontend)?.clone();
        let (shared, link, table) = (shared.clone(), link.clone(), table.clone());
        Some(async move {
            let pick = Pick {
                client: client.ip(),
                how: table::Balancing::RoundRobin,
                avoid: &[],
            };
            let dialled = attempts(&backend, pick, |t| {
                let (shared, link, peers) = (&shared, &link, &peers);
                async move { dial_udp(shared, link, peers, &t).await }
            })
            .await;
            match dialled {
                Some((t, up)) => {
                    let gone = left(table, frontend, t.clone());
                    udp::report(&backend, &t, udp::pump(side, up, gone).await)
                }
                None => debug!(service = backend.service, %client, "no endpoint took the flow"),
            }
        })
    })
    .await
}

/// Resolves once `t` is no Ready endpoint of the UDP `frontend` any more (or the frontend
/// is gone): its flows end, as kube-proxy clears their conntrack entries.
async fn left(mut table: watch::Receiver<Arc<Table>>, frontend: SocketAddr, t: table::Target) {
    loop {
        if table.changed().await.is_err() {
            // The table's sender is gone: the agent is stopping, and the flow with it.
            return std::future::pending().await;
        }
        let current = table.borrow_and_update().clone();
        if !current
            .udp_frontends
            .get(&frontend)
            .is_some_and(|b| b.serves(&t))
        {
            return;
        }
    }
}

/// What [`connect`] got: a connection the caller already held to the endpoint, or a new one.
pub enum Conn<T> {
    Held(T),
    New(Upstream),
}

/// Who a connection is for, and how its endpoint is picked.
pub struct Pick<'a> {
    pub client: IpAddr,
    pub how: table::Balancing,
    /// Endpoints that already failed this request.
    pub avoid: &'a [Target],
}

/// A connection for a client to one of `backend`'s endpoints, trying the next one on a
/// connect failure ([`ATTEMPTS`] in all), each failure counted against the endpoint's
/// passive health (a success is the caller's to report: a connection that opens may still
/// fail the request). `reuse` may offer a connection it already holds to the picked
/// endpoint (the ingress's pool), which is taken instead of dialling. None when no endpoint
/// took it.
pub async fn connect<T>(
    shared: &Shared,
    link: &Link,
    table: &Table,
    backend: &table::Backend,
    pick: Pick<'_>,
    mut reuse: impl FnMut(&Target) -> Option<T>,
) -> Option<(Target, Conn<T>)> {
    attempts(backend, pick, |t| {
        let held = reuse(&t);
        async move {
            match held {
                Some(held) => Ok(Conn::Held(held)),
                None => dial(shared, link, table, &t).await.map(Conn::New),
            }
        }
    })
    .await
}

/// Picks an endpoint and `dial`s it, the next one on a failure ([`ATTEMPTS`] in all), each
/// failure counted against the endpoint's passive health.
async fn attempts<U, F>(
    backend: &Backend,
    pick: Pick<'_>,
    mut dial: impl FnMut(Target) -> F,
) -> Option<(Target, U)>
where
    F: std::future::Future<Output = anyhow::Result<U>>,
{
    let mut failed: Vec<Target> = pick.avoid.to_vec();
    for _ in 0..ATTEMPTS {
        let t = backend.pick(pick.client, &failed, Instant::now(), pick.how)?;
        match dial(t.clone()).await {
            Ok(up) => return Some((t, up)),
            Err(e) => {
                debug!(service = backend.service, endpoint = %t.addr, error = %e, "endpoint unreachable; trying the next");
                backend.report(&t, false, Instant::now());
                failed.push(t);
            }
        }
    }
    None
}

/// The next connection on `listener`, or None once `stop` is cancelled. Accept errors
/// (out of file descriptors, mostly) are logged and retried after a pause.
pub async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            a = listener.accept() => match a {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(addr = ?listener.local_addr().ok(), error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// A connection to an endpoint: directly when it is on this node (or outside the cluster,
/// or on a node without a mesh link), otherwise through its node's agent, and through the
/// hub when that agent's link does not answer.
async fn dial(shared: &Shared, link: &Link, table: &Table, t: &Target) -> anyhow::Result<Upstream> {
    match peer(table, t) {
        Some((node, addr)) => {
            let (send, recv) = open(shared, link, node, addr, MeshTarget::tcp(t.addr)).await?;
            Ok(mesh_stream(send, recv))
        }
        None => {
            let tcp = tokio::time::timeout(link::CONNECT_TIMEOUT, TcpStream::connect(t.addr))
                .await
                .map_err(|_| anyhow::anyhow!("connect {}: timed out", t.addr))??;
            let _ = tcp.set_nodelay(true);
            Ok(tokio_util::either::Either::Left(tcp))
        }
    }
}

/// The UDP side of a flow to an endpoint, reached as [`dial`] reaches one.
async fn dial_udp(
    shared: &Shared,
    link: &Link,
    table: &Table,
    t: &Target,
) -> anyhow::Result<udp::Datagrams> {
    match peer(table, t) {
        Some((node, addr)) => {
            let permit = link.udp_flow().ok_or_else(|| {
                anyhow::anyhow!("{} UDP flows already cross the mesh", link::MAX_UDP_FLOWS)
            })?;
            let (send, recv) = open(shared, link, node, addr, MeshTarget::Udp(t.addr)).await?;
            Ok(udp::framed(send, recv, Some(permit)))
        }
        None => Ok(udp::Datagrams::Socket(udp::connect(t.addr)?)),
    }
}

/// The node an endpoint lives on and where its mesh link answers, unless it is this node
/// (or outside the cluster, or a node without a mesh link).
fn peer<'a>(table: &Table, t: &'a Target) -> Option<(&'a str, SocketAddr)> {
    let node = t.node.as_deref()?;
    table.peers.get(node).map(|addr| (node, *addr))
}

/// A mesh stream to `target` on `node`: over the link, or through the hub when the link
/// does not answer.
async fn open(
    shared: &Shared,
    link: &Link,
    node: &str,
    addr: SocketAddr,
    target: MeshTarget,
) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    match link.open(node, addr, target).await {
        Ok(s) => Ok(s),
        Err(link::Dial::Refused(e)) => Err(e),
        Err(link::Dial::Unreachable(e)) => {
            debug!(node, error = %e, "no direct mesh link; relaying through the hub");
            relay(shared, node, target).await
        }
    }
}

/// A stream to `target` on `node` through the hub (`Request::Relay`).
async fn relay(
    shared: &Shared,
    node: &str,
    target: MeshTarget,
) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    use flotilla_proto::wire::{MeshOpened, RelayRequest, Request};
    let hub = shared.hub.borrow().clone();
    let hub = hub.ok_or_else(|| {
        anyhow::anyhow!("node {node}'s mesh link does not answer and the hub is unreachable")
    })?;
    let (mut send, mut recv) = hub.open_bi().await?;
    let req = Request::Relay(RelayRequest {
        node: node.to_string(),
        target,
    });
    flotilla_transport::send_frame(&mut send, &req).await?;
    link::opened(
        node,
        target,
        flotilla_transport::recv_frame::<MeshOpened>(&mut recv),
    )
    .await
    .map_err(anyhow::Error::from)?;
    Ok((send, recv))
}

/// Carries bytes both ways until both sides are done.
pub async fn splice(mut tcp: TcpStream, mut up: Upstream) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut up).await {
        debug!(error = %e, "service connection ended with an error");
    }
}
