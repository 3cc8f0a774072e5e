//! The ingress: HTTP from outside the cluster to Services, by host and path, on the gateway
//! nodes (the same ones that serve LoadBalancer services).
//!
//! It listens on `ingress_listen` (default NODE_IP:80) for HTTP/1.1 and on
//! `ingress_https_listen` (default NODE_IP:443) for HTTPS with HTTP/2 or HTTP/1.1 by ALPN
//! (HTTP/2 without TLS too, for clients that start with its preface: h2c),
//! with certificates by SNI from the Ingresses' TLS Secrets ([`tls`]), while this node is a
//! gateway, and
//! routes each request by the [`routes`] of every Ingress that is ours to a Ready endpoint
//! of the backend Service, on any node: it picks the endpoint and reaches it the way the
//! mesh does (directly on this node, over the mesh link elsewhere, through the hub as a last
//! resort), trying the next endpoint when one cannot be connected. Connections to endpoints
//! are kept alive in a [`pool`]. Clients are served by `--ingress-workers` threads (one per
//! CPU by default), each with a single-threaded runtime and a pool of its own, as nginx's
//! worker processes are: a request and its endpoint connection stay on one thread.
//! Requests carry `X-Forwarded-For/-Host/-Proto/-Port`, `X-Real-IP` (the ingress's own
//! values: clients cannot forge them) and an `X-Request-Id` (the client's, or a new one).
//! WebSocket and other upgrades pass through.
//!
//! Bounds: request headers must arrive within [`HEADER_TIMEOUT`] and fit in
//! [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`] fields; a connection on which nothing moves for
//! the idle timeout (`--ingress-idle-timeout`) is closed; a request body may be as large as
//! its route allows (a buffering Middleware, the `proxy-body-size` annotation, else
//! `--ingress-max-body-size`); an endpoint has [`RESPONSE_TIMEOUT`] to answer; beyond
//! `--ingress-max-connections` open connections, new ones get a 503 and are closed.
pub mod access;
pub mod limits;
pub mod middleware;
pub mod pool;
pub mod routes;
pub mod tls;

use crate::Shared;
use crate::mesh::link::Link;
use crate::mesh::{Conn, table::Balancing, table::Table, table::Target};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pool::{Pool, PooledBody, Sender};
use routes::{BackendRef, Routes};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Slowloris guard: the whole request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head accepted (nginx's default large_client_header_buffers is 4×8k).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The most header fields a request may have (hyper's default for HTTP/1.1, applied to
/// HTTP/2 as well).
pub const MAX_HEADERS: usize = 100;
/// How long an endpoint may take to start its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// An endpoint's response, the ingress's own, or a same-node wasi:http pod's.
type Body = Either<PooledBody, Either<Full<Bytes>, HyperOutgoingBody>>;

/// How a request reaches the endpoint picked for it.
enum Via {
    /// A kept-alive connection from the pool.
    Pooled(Sender),
    /// The wasi:http pod is on this node: handed over in process.
    InProcess(crate::runtime::wasm::HttpHandler),
}

struct Ingress {
    shared: Arc<Shared>,
    link: Arc<Link>,
    routes: watch::Sender<Arc<Routes>>,
    /// The running workers' kept-alive endpoint connections, one pool each (a connection
    /// belongs to the runtime that opened it, so each start of the workers has new ones).
    pools: std::sync::Mutex<Vec<Arc<Pool>>>,
    connections: Arc<Semaphore>,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<middleware::State>,
    access: Option<access::AccessLog>,
    /// Proxies whose forwarding headers are believed.
    trusted: Vec<ipnet::IpNet>,
}

/// Where the ingress listens for HTTP and for HTTPS: the configured addresses, or NODE_IP
/// at 80 and 443.
fn listen_addrs(shared: &Shared) -> [(Vec<SocketAddr>, bool); 2] {
    let cfg = &shared.cfg;
    let or = |given: &Option<Vec<SocketAddr>>, port| {
        given
            .clone()
            .unwrap_or_else(|| vec![SocketAddr::new(cfg.node_ip, port)])
    };
    [
        (or(&cfg.ingress_listen, 80), false),
        (or(&cfg.ingress_https_listen, 443), true),
    ]
}

/// Follows the service table: rebuilds the routes on every change, and listens while this
/// node is a gateway.
pub async fn run(shared: Arc<Shared>, link: Arc<Link>, cancel: CancellationToken) {
    let addrs = listen_addrs(&shared);
    if addrs.iter().all(|(a, _)| a.is_empty()) {
        return;
    }
    let resolver = match tls::Resolver::new() {
        Ok(r) => Arc::new(r),
        Err(e) => {
            warn!(error = %e, "ingress cannot make its default certificate; it does not run");
            return;
        }
    };
    let mut tls_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let access = match &shared.cfg.ingress_access_log {
        None => None,
        Some(path) => match access::AccessLog::open(path, &shared.tracker).await {
            Ok(log) => Some(log),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot open the ingress access log; requests are not logged");
                None
            }
        },
    };
    let mut table_rx = shared.mesh_table.subscribe();
    let ingress = Arc::new(Ingress {
        shared: shared.clone(),
        link,
        routes: watch::channel(Arc::default()).0,
        pools: Default::default(),
        connections: Arc::new(Semaphore::new(shared.cfg.ingress_max_connections)),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls_config)),
        state: Arc::default(),
        access,
        trusted: shared.cfg.ingress_trusted_proxies.clone(),
    });
    let mut serving: Option<CancellationToken> = None;
    loop {
        let gateway = {
            let table = table_rx.borrow_and_update();
            let routes = Routes::build(&shared.discovery.borrow());
            ingress.routes.send_replace(Arc::new(routes));
            for pool in ingress
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                pool.retain(|t| {
                    table
                        .services
                        .values()
                        .flatten()
                        .any(|p| p.backend.tiers.iter().flatten().any(|x| x == t))
                });
            }
            table.gateway
        };
        match (&serving, gateway) {
            (None, true) => {
                let stop = cancel.child_token();
                let mut listeners = Vec::new();
                for (list, https) in &addrs {
                    for addr in list {
                        match std::net::TcpListener::bind(addr) {
                            Ok(l) => {
                                info!(%addr, https, "ingress listening");
                                listeners.push((l, *https));
                            }
                            Err(e) => warn!(%addr, error = %e, "ingress cannot listen here"),
                        }
                    }
                }
                // Without a listener there is nothing for workers to do.
                let workers = if listeners.is_empty() {
                    0
                } else {
                    shared.cfg.ingress_workers.max(1)
                };
                let pools: Vec<Arc<Pool>> = (0..workers).map(|_| Arc::default()).collect();
                *ingress.pools.lock().unwrap_or_else(|p| p.into_inner()) = pools.clone();
                for (worker, pool) in pools.into_iter().enumerate() {
                    if let Err(e) = start_worker(worker, &listeners, pool, &ingress, &stop) {
                        warn!(worker, error = %e, "cannot start an ingress worker");
                    }
                }
                shared.tracker.spawn(refresh_secrets(
                    shared.clone(),
                    resolver.clone(),
                    ingress.state.clone(),
                    stop.clone(),
                ));
                serving = Some(stop);
            }
            (Some(stop), false) => {
                info!("this node is no gateway any more: ingress stopped");
                stop.cancel();
                serving = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = table_rx.changed() => if changed.is_err() { break },
        }
    }
}

/// Keeps the certificates and the basicAuth users in step with the Ingresses and
/// Middlewares (at once) and their Secrets (every refresh period, as for secret volumes).
async fn refresh_secrets(
    shared: Arc<Shared>,
    resolver: Arc<tls::Resolver>,
    state: Arc<middleware::State>,
    stop: CancellationToken,
) {
    let mut objects = shared.discovery.subscribe();
    loop {
        let certs = tls::load(&shared).await;
        resolver.certs.store(Arc::new(certs));
        state
            .auth
            .users
            .store(Arc::new(middleware::load_users(&shared).await));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = objects.changed() => {}
            _ = tokio::time::sleep(shared.cfg.volume_refresh) => {}
        }
    }
}

/// How long a stopping worker lets its connections finish what they carry.
const DRAIN: Duration = Duration::from_secs(5);
/// Blocking threads per worker (bcrypt for basicAuth, mostly).
const BLOCKING_THREADS: usize = 16;

/// Starts ingress worker `worker`, nginx-style: a thread with a single-threaded runtime of
/// its own that accepts on its copies of `listeners` and serves each connection it accepts
/// to the end, endpoint connections included (`pool`), so a request never moves between
/// threads. The agent's task tracker waits for it to end after `stop`.
fn start_worker(
    worker: usize,
    listeners: &[(std::net::TcpListener, bool)],
    pool: Arc<Pool>,
    ingress: &Arc<Ingress>,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let mut mine = Vec::with_capacity(listeners.len());
    for (l, https) in listeners {
        let l = l.try_clone()?;
        l.set_nonblocking(true)?;
        mine.push((l, *https));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    let (ingress, stop) = (ingress.clone(), stop.clone());
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    ingress.shared.tracker.spawn(async move {
        let _ = ended.await;
    });
    std::thread::Builder::new()
        .name(format!("ingress-{worker}"))
        .spawn(move || {
            runtime.block_on(async {
                let connections = tokio_util::task::TaskTracker::new();
                for (l, https) in mine {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            tokio::spawn(accept(
                                l,
                                https,
                                ingress.clone(),
                                pool.clone(),
                                connections.clone(),
                                stop.clone(),
                            ));
                        }
                        Err(e) => warn!(worker, error = %e, "ingress worker cannot accept"),
                    }
                }
                stop.cancelled().await;
                connections.close();
                let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
            });
            // What is left (upgraded connections, endpoint connections) ends here.
            runtime.shutdown_timeout(Duration::from_secs(1));
            drop(done);
        })?;
    Ok(())
}

async fn accept(
    listener: TcpListener,
    https: bool,
    ingress: Arc<Ingress>,
    pool: Arc<Pool>,
    connections: tokio_util::task::TaskTracker,
    stop: CancellationToken,
) {
    while let Some((tcp, client)) = crate::mesh::next_connection(&listener, &stop).await {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(client);
        let ingress = ingress.clone();
        let pool = pool.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let permit = ingress.connections.clone().try_acquire_owned().ok();
            let at = Peers {
                client,
                local,
                https,
            };
            if !https {
                return serve(tcp, at, ingress, pool, permit, stop).await;
            }
            let tls = tokio::time::timeout(HEADER_TIMEOUT, ingress.tls.accept(tcp)).await;
            match tls {
                Ok(Ok(tls)) => serve(tls, at, ingress, pool, permit, stop).await,
                Ok(Err(e)) => debug!(%client, error = %e, "ingress TLS handshake failed"),
                Err(_) => debug!(%client, "ingress TLS handshake timed out"),
            }
        });
    }
}

/// The two ends of a client connection, and whether it is HTTPS.
#[derive(Clone, Copy)]
struct Peers {
    client: SocketAddr,
    local: SocketAddr,
    https: bool,
}

/// Serves one client connection, HTTP/1.1 or HTTP/2 (by ALPN, or a cleartext client's
/// HTTP/2 preface); without a connection permit, every request on it gets a 503.
async fn serve<I>(
    io: I,
    at: Peers,
    ingress: Arc<Ingress>,
    pool: Arc<Pool>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let overloaded = permit.is_none();
    let activity = Arc::new(limits::Activity::default());
    let idle_timeout = ingress.shared.cfg.ingress_idle_timeout;
    let waiting = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let ingress = ingress.clone();
        let pool = pool.clone();
        let waiting = waiting.waiting();
        async move {
            let resp = if overloaded {
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "ingress overloaded\n");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            } else {
                ingress.handle(req, at, &pool).await
            };
            drop(waiting);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(MAX_HEADERS)
        // hyper's read buffer bounds the head only roughly; `head_size` is exact.
        .max_buf_size(2 * MAX_HEADER_BYTES);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let io = TokioIo::new(limits::Watched::new(io, activity.clone()));
    let conn = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = limits::idle(&activity, idle_timeout) => {
            debug!(client = %at.client, "ingress connection idle: closed");
            conn.as_mut().graceful_shutdown();
            // Nothing was moving: what is left gets a moment, not another timeout.
            tokio::time::timeout(Duration::from_secs(1), conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = r {
        debug!(client = %at.client, error = %e, "ingress connection ended with an error");
    }
    drop(permit);
}

impl Ingress {
    /// Answers a request, and writes it to the access log when there is one.
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        at: Peers,
        pool: &Arc<Pool>,
    ) -> Response<Body> {
        let id = request_id(req.headers_mut());
        let Some(log) = &self.access else {
            return self.respond(req, at, pool).await;
        };
        let started = Instant::now();
        let line = access::Line::of(
            &req,
            at.client.ip(),
            at.https,
            id.to_str().unwrap_or_default(),
        );
        let resp = self.respond(req, at, pool).await;
        log.write(&line.finish(resp.status(), started.elapsed()));
        resp
    }

    async fn respond(&self, req: Request<Incoming>, at: Peers, pool: &Arc<Pool>) -> Response<Body> {
        if head_size(&req) > MAX_HEADER_BYTES || req.headers().len() > MAX_HEADERS {
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            );
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_string();
        let name = routes::host_name(&host);
        let routes = self.routes.borrow().clone();
        let Some(dest) = routes.find(&name, req.uri().path(), at.https) else {
            return text(StatusCode::NOT_FOUND, "no route for this host and path\n");
        };
        let limit = dest
            .chain
            .max_body
            .unwrap_or(self.shared.cfg.ingress_max_body_size);
        if limit > 0 && req.body().size_hint().lower() > limit {
            return too_large(limit);
        }
        let mut req = req.map(|b| limits::capped(b, limit));
        let peer = at.client.ip();
        let trusted = self.trusted.iter().any(|n| n.contains(&peer));
        let forwarded = if trusted {
            forwarded_for(req.headers())
        } else {
            Vec::new()
        };
        let ctx = middleware::Ctx {
            https: at.https,
            host: &name,
            authority: &host,
            client: if trusted {
                client_ip(&forwarded, &self.trusted).unwrap_or(peer)
            } else {
                peer
            },
            forwarded_for: &forwarded,
            trusted,
        };
        let origin = req.headers().get(header::ORIGIN).cloned();
        let https = at.https || (trusted && dest.chain.proxied_https(req.headers()));
        let mut resp = match dest.chain.request(&mut req, &ctx, &self.state).await {
            Ok(()) => {
                let upgrade = wants_upgrade(req.headers());
                forward_headers(&mut req, &host, at, &ctx, trusted, upgrade);
                self.forward(req, dest.pick(), dest.how, pool, upgrade, ctx.client)
                    .await
            }
            Err(answer) => answer.map(|b| Either::Right(Either::Left(Full::new(b)))),
        };
        dest.chain
            .response(resp.headers_mut(), origin.as_ref(), https);
        resp
    }

    /// Sends a request from `client` to an endpoint of `to` (on a connection from the worker's
    /// `pool` when one is idle) and streams its response back (or, for an upgrade, passes the
    /// connection through).
    async fn forward(
        &self,
        mut req: Request<limits::Capped>,
        to: &BackendRef,
        how: Balancing,
        pool: &Arc<Pool>,
        upgrade: bool,
        client: IpAddr,
    ) -> Response<Body> {
        let table: Arc<Table> = self.shared.mesh_table.borrow().clone();
        let service = Service(to);
        let Some(backend) = table.service_port(&to.namespace, &to.service, &to.port) else {
            debug!(%service, port = ?to.port, "ingress backend has no such service port");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("service {service} does not exist or has no such port\n"),
            );
        };
        let upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // An idempotent request without a body can be sent again, to another endpoint, when
        // the first one fails before answering (as nginx's proxy_next_upstream does).
        // With a single endpoint there is nowhere else to send it, and no head to keep.
        let elsewhere = backend.tiers.iter().map(Vec::len).sum::<usize>() > 1;
        let replay = (elsewhere
            && upgrade.is_none()
            && idempotent(req.method())
            && req.body().is_end_stream())
        .then(|| head_of(&req));
        let mut fresh = Some(req);
        // A request a connection handed back unsent.
        let mut unsent: Option<Request<ReqBody>> = None;
        let mut avoid: Vec<Target> = Vec::new();
        // A kept-alive connection may turn out closed when the request is handed to it;
        // the request then goes on a new one.
        let mut pooled_ok = true;
        let mut failure: Option<String> = None;
        let outcome = loop {
            if avoid.len() > crate::mesh::ATTEMPTS {
                break None;
            }
            let pick = crate::mesh::Pick {
                client,
                how,
                avoid: &avoid,
            };
            // Only the client's own request can be handed to a pod in process.
            let in_process = fresh.is_some() && upgrade.is_none();
            let picked =
                crate::mesh::connect(&self.shared, &self.link, &table, backend, pick, |t| {
                    self.held(t, in_process, pooled_ok.then_some(pool))
                })
                .await;
            let Some((target, conn)) = picked else {
                break None;
            };
            let (mut sender, pooled) = match conn {
                Conn::Held(Via::InProcess(pod)) => match fresh.take() {
                    Some(req) => {
                        return pod
                            .handle(req)
                            .await
                            .map(|b| Either::Right(Either::Right(b)));
                    }
                    None => continue,
                },
                Conn::Held(Via::Pooled(s)) => (s, true),
                Conn::New(up) => match handshake(up).await {
                    Ok(s) => (s, false),
                    Err(e) => {
                        backend.report(&target, false, Instant::now());
                        failure = Some(e.to_string());
                        avoid.push(target);
                        continue;
                    }
                },
            };
            if sender.ready().await.is_err() {
                if !pooled {
                    avoid.push(target);
                }
                pooled_ok = false;
                continue;
            }
            let Some(req) = unsent
                .take()
                .or_else(|| fresh.take().map(|r| r.map(http_body_util::Either::Left)))
                .or_else(|| replay.as_ref().map(again))
            else {
                break None;
            };
            let in_flight = backend.begin(&target);
            match tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(req)).await {
                Ok(Ok(r)) => {
                    let gateway_error = matches!(
                        r.status(),
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    backend.report(&target, !gateway_error, Instant::now());
                    break Some((target, r, sender, in_flight));
                }
                Ok(Err(mut e)) => {
                    if let Some(back) = e.take_message() {
                        // Not sent: the connection was closed already.
                        unsent = Some(back);
                        pooled_ok = false;
                        if !pooled {
                            avoid.push(target);
                        }
                        continue;
                    }
                    if let Some(limit) = limits::too_large(e.error()) {
                        // The client's fault, not the endpoint's.
                        return too_large(limit);
                    }
                    backend.report(&target, false, Instant::now());
                    if replay.is_none() {
                        return bad_gateway(service, e.error());
                    }
                    debug!(%service, endpoint = %target.addr, error = %e.error(), "request failed; sending it to the next endpoint");
                    failure = Some(e.error().to_string());
                    avoid.push(target);
                }
                Err(_) => {
                    backend.report(&target, false, Instant::now());
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("service {service} did not answer in time\n"),
                    );
                }
            }
        };
        let Some((target, resp, sender, in_flight)) = outcome else {
            return match &failure {
                Some(e) => bad_gateway(service, e),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no endpoint of service {service} is available\n"),
                ),
            };
        };
        let (mut parts, body) = resp.into_parts();
        if let Some(down) = upgrade
            && parts.status == StatusCode::SWITCHING_PROTOCOLS
        {
            let up = hyper::upgrade::on(Response::from_parts(parts.clone(), body));
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = (down.await, up.await) else {
                    return;
                };
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
            return Response::from_parts(parts, Either::Right(Either::Left(Full::default())));
        }
        strip_hop_by_hop(&mut parts.headers, false);
        let body = PooledBody::new(body, pool.clone(), target, sender, in_flight);
        Response::from_parts(parts, Either::Left(body))
    }
}

/// What a request to an endpoint carries: the client's body, or none for a request sent
/// again.
pub type ReqBody = http_body_util::Either<limits::Capped, http_body_util::Empty<Bytes>>;

/// 413, naming the route's limit.
fn too_large(limit: u64) -> Response<Body> {
    let mut r = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than this route's limit of {limit} bytes\n"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Methods RFC 9110 calls idempotent: a request of these may be sent twice.
fn idempotent(m: &http::Method) -> bool {
    use http::Method as M;
    matches!(
        *m,
        M::GET | M::HEAD | M::OPTIONS | M::TRACE | M::PUT | M::DELETE
    )
}

/// A request's head, to send it again without a body.
fn head_of<B>(req: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

fn again(head: &Request<()>) -> Request<ReqBody> {
    head_of(head).map(|()| http_body_util::Either::Right(http_body_util::Empty::new()))
}

/// A backend Service as messages name it: `namespace/name`.
#[derive(Clone, Copy)]
struct Service<'a>(&'a BackendRef);

impl std::fmt::Display for Service<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.namespace, self.0.service)
    }
}

/// The addresses of a request's X-Forwarded-For headers, left to right (unreadable ones
/// left out).
fn forwarded_for(h: &HeaderMap) -> Vec<IpAddr> {
    h.get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The client's address a trusted proxy forwarded: the rightmost forwarded address that is
/// no trusted proxy itself (the leftmost when all are); None when it forwarded none.
fn client_ip(forwarded: &[IpAddr], trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(*ip)))
        .or(forwarded.first())
        .copied()
}

/// The size of a request's head as sent: request line and header lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    // As `uri.to_string()` would print it, without allocating on every request.
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| q.len() + 1);
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

impl Ingress {
    /// What the ingress already has for endpoint `t`: the wasi:http pod itself when it runs
    /// on this node (not for upgrades, which need a socket), else a connection from `pool`
    /// (when given).
    fn held(&self, t: &Target, in_process: bool, pool: Option<&Arc<Pool>>) -> Option<Via> {
        let cfg = &self.shared.cfg;
        let here = t.node.as_deref() == Some(cfg.node_name.as_str()) && t.addr.ip() == cfg.node_ip;
        if in_process
            && here
            && let Some(pod) = self.shared.runtime.in_process(t.addr.port())
        {
            return Some(Via::InProcess(pod));
        }
        pool.and_then(|p| p.take(t)).map(Via::Pooled)
    }
}

/// An HTTP/1.1 client connection over a fresh endpoint connection.
async fn handshake(up: crate::mesh::Upstream) -> Result<Sender, hyper::Error> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "endpoint connection ended with an error");
        }
    });
    Ok(sender)
}

fn bad_gateway(service: Service<'_>, e: &dyn std::fmt::Display) -> Response<Body> {
    debug!(%service, error = %e, "ingress request to the endpoint failed");
    text(
        StatusCode::BAD_GATEWAY,
        &format!("service {service}'s endpoint failed: {e}\n"),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Either::Left(Full::new(Bytes::from(
        body.to_string(),
    )))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the headers that belong to one hop (RFC 9110 §7.6.1), keeping `Connection:
/// upgrade` and `Upgrade` when the request is an upgrade.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes a client's request one for an endpoint: origin-form, HTTP/1.1, without hop-by-hop
/// headers, with the forwarding headers. From a trusted proxy, its
/// `X-Forwarded-*` are kept and the peer appended to `X-Forwarded-For`; from anyone else
/// they are replaced by the ingress's own.
fn forward_headers<B>(
    req: &mut Request<B>,
    host: &str,
    at: Peers,
    ctx: &middleware::Ctx<'_>,
    trusted: bool,
    upgrade: bool,
) {
    let mut origin_form = http::uri::Parts::default();
    origin_form.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    *req.uri_mut() = Uri::from_parts(origin_form).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h, upgrade);
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        h.insert(header::HOST, v);
    }
    let peer = at.client.ip();
    let mut chain = String::new();
    for ip in ctx.forwarded_for.iter().chain([&peer]) {
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        let _ = write!(chain, "{ip}");
    }
    let proto = if at.https { "https" } else { "http" };
    for (name, value) in [
        (&X_FORWARDED_FOR, HeaderValue::from_str(&chain).ok()),
        (
            &X_REAL_IP,
            HeaderValue::from_str(&ctx.client.to_string()).ok(),
        ),
        (&X_FORWARDED_HOST, HeaderValue::from_str(host).ok()),
        (&X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto))),
        (&X_FORWARDED_PORT, Some(HeaderValue::from(at.local.port()))),
    ] {
        let keep = trusted && name != X_FORWARDED_FOR && name != X_REAL_IP && h.contains_key(name);
        if keep {
            continue;
        }
        h.remove(name);
        if let Some(v) = value {
            h.insert(name.clone(), v);
        }
    }
}

/// A request's X-Request-Id: the client's (when it is printable and at most 200 bytes), or a
/// new one put in its place.
fn request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 200
        && v.to_str().is_ok()
    {
        return v.clone();
    }
    let id: [u8; 16] = rand::random();
    // Hex digits are always a valid header value; the bytes move in without a copy.
    let v = HeaderValue::from_maybe_shared(Bytes::from(hex::encode(id)))
        .unwrap_or(HeaderValue::from_static("-"));
    h.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarding headers an endpoint gets for a request from `peer` carrying
    /// `sent`, with `trusted` proxies.
    fn forwarded(peer: &str, sent: &[(&str, &str)], trusted: &[&str]) -> String {
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        let mut req = Request::get("/p").body(()).unwrap();
        for (k, v) in sent {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let at = Peers {
            client: SocketAddr::new(peer.parse().unwrap(), 5555),
            local: "10.0.0.1:80".parse().unwrap(),
            https: false,
        };
        let ip = at.client.ip();
        let is_trusted = trusted.iter().any(|n| n.contains(&ip));
        let list = if is_trusted {
            forwarded_for(req.headers())
        } else {
            Vec::new()
        };
        let ctx = middleware::Ctx {
            https: false,
            host: "a.example",
            authority: "a.example",
            client: if is_trusted {
                client_ip(&list, &trusted).unwrap_or(ip)
            } else {
                ip
            },
            forwarded_for: &list,
            trusted: is_trusted,
        };
        forward_headers(&mut req, "a.example", at, &ctx, is_trusted, false);
        let h = req.headers();
        [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
        ]
        .map(|k| format!("{k}={}", h.get(k).map_or("-", |v| v.to_str().unwrap())))
        .join(" ")
    }

    #[test]
    fn forwarding_headers_are_believed_from_trusted_proxies_only() {
        let sent = [
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.1.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "forged.example"),
        ];
        let got = [
            forwarded("198.51.100.1", &sent, &[]),
            forwarded("10.1.0.9", &sent, &["10.1.0.0/16"]),
            forwarded("10.1.0.9", &[], &["10.1.0.0/16"]),
            forwarded(
                "10.1.0.9",
                &[("x-forwarded-for", "10.1.0.7")],
                &["10.1.0.0/16"],
            ),
        ];
        expect_test::expect![[r#"
            x-forwarded-for=198.51.100.1 x-real-ip=198.51.100.1 x-forwarded-proto=http x-forwarded-host=a.example
            x-forwarded-for=6.6.6.6, 203.0.113.7, 10.1.0.5, 10.1.0.9 x-real-ip=203.0.113.7 x-forwarded-proto=https x-forwarded-host=forged.example
            x-forwarded-for=10.1.0.9 x-real-ip=10.1.0.9 x-forwarded-proto=http x-forwarded-host=a.example
            x-forwarded-for=10.1.0.7, 10.1.0.9 x-real-ip=10.1.0.7 x-forwarded-proto=http x-forwarded-host=a.example"#]].assert_eq(&got.join("\n"));
    }
}
