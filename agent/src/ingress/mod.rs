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
//! are kept alive in a [`pool`]. Requests carry `X-Forwarded-For/-Host/-Proto/-Port`,
//! `X-Real-IP` (the ingress's own values: clients cannot forge them) and an `X-Request-Id`
//! (the client's, or a new one). WebSocket and other upgrades pass through.
//!
//! Bounds: request headers must arrive within [`HEADER_TIMEOUT`] and fit in
//! [`MAX_HEADER_BYTES`]; an endpoint has [`RESPONSE_TIMEOUT`] to answer; beyond
//! [`MAX_CONNECTIONS`] open connections, new ones get a 503 and are closed.
pub mod pool;
pub mod routes;
pub mod tls;

use crate::Shared;
use crate::mesh::link::Link;
use crate::mesh::{Conn, table::Table, table::Target};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pool::{Pool, PooledBody, Sender};
use routes::Routes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Slowloris guard: the whole request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head accepted (nginx's default large_client_header_buffers is 4×8k).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// How long an endpoint may take to start its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Open client connections the ingress serves at once.
pub const MAX_CONNECTIONS: usize = 10_000;

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
    pool: Arc<Pool>,
    connections: Arc<Semaphore>,
    tls: tokio_rustls::TlsAcceptor,
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
    let mut table_rx = shared.mesh_table.subscribe();
    let ingress = Arc::new(Ingress {
        shared: shared.clone(),
        link,
        routes: watch::channel(Arc::default()).0,
        pool: Arc::default(),
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls_config)),
    });
    let mut serving: Option<CancellationToken> = None;
    loop {
        let gateway = {
            let table = table_rx.borrow_and_update();
            let routes = Routes::build(&shared.discovery.borrow());
            ingress.routes.send_replace(Arc::new(routes));
            ingress.pool.retain(|t| {
                table
                    .services
                    .values()
                    .flatten()
                    .any(|p| p.backend.tiers.iter().flatten().any(|x| x == t))
            });
            table.gateway
        };
        match (&serving, gateway) {
            (None, true) => {
                let stop = cancel.child_token();
                for (list, https) in &addrs {
                    for addr in list {
                        match TcpListener::bind(addr).await {
                            Ok(l) => {
                                info!(%addr, https, "ingress listening");
                                shared.tracker.spawn(accept(
                                    l,
                                    *https,
                                    ingress.clone(),
                                    stop.clone(),
                                ));
                            }
                            Err(e) => warn!(%addr, error = %e, "ingress cannot listen here"),
                        }
                    }
                }
                shared.tracker.spawn(refresh_certs(
                    shared.clone(),
                    resolver.clone(),
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

/// Keeps the certificates in step with the Ingresses (at once) and their Secrets (every
/// refresh period, as for secret volumes).
async fn refresh_certs(shared: Arc<Shared>, resolver: Arc<tls::Resolver>, stop: CancellationToken) {
    let mut objects = shared.discovery.subscribe();
    loop {
        let certs = tls::load(&shared).await;
        resolver.certs.store(Arc::new(certs));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = objects.changed() => {}
            _ = tokio::time::sleep(shared.cfg.volume_refresh) => {}
        }
    }
}

async fn accept(
    listener: TcpListener,
    https: bool,
    ingress: Arc<Ingress>,
    stop: CancellationToken,
) {
    while let Some((tcp, client)) = crate::mesh::next_connection(&listener, &stop).await {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(client);
        let ingress = ingress.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let permit = ingress.connections.clone().try_acquire_owned().ok();
            let at = Peers {
                client,
                local,
                https,
            };
            if !https {
                return serve(TokioIo::new(tcp), at, ingress, permit, stop).await;
            }
            let tls = tokio::time::timeout(HEADER_TIMEOUT, ingress.tls.accept(tcp)).await;
            match tls {
                Ok(Ok(tls)) => serve(TokioIo::new(tls), at, ingress, permit, stop).await,
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
    io: TokioIo<I>,
    at: Peers,
    ingress: Arc<Ingress>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let overloaded = permit.is_none();
    let service = hyper::service::service_fn(move |req| {
        let ingress = ingress.clone();
        async move {
            let resp = if overloaded {
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "ingress overloaded\n");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            } else {
                ingress.handle(req, at).await
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // hyper's read buffer bounds the head only roughly; `head_size` is exact.
        .max_buf_size(2 * MAX_HEADER_BYTES);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let conn = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        debug!(client = %at.client, error = %e, "ingress connection ended with an error");
    }
    drop(permit);
}

impl Ingress {
    async fn handle(&self, mut req: Request<Incoming>, at: Peers) -> Response<Body> {
        if head_size(&req) > MAX_HEADER_BYTES {
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
        let routes = self.routes.borrow().clone();
        let Some(to) = routes.find(&host, req.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "no route for this host and path\n");
        };
        let table: Arc<Table> = self.shared.mesh_table.borrow().clone();
        let service = format!("{}/{}", to.namespace, to.service);
        let Some(backend) = table.service_port(&to.namespace, &to.service, &to.port) else {
            debug!(service, port = ?to.port, "ingress backend has no such service port");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("service {service} does not exist or has no such port\n"),
            );
        };
        let upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        forward_headers(&mut req, &host, at, upgrade.is_some());
        let picked = crate::mesh::connect(
            &self.shared,
            &self.link,
            &table,
            backend,
            at.client.ip(),
            |t| self.held(t, upgrade.is_none()),
        )
        .await;
        let Some((target, conn)) = picked else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoint of service {service} is available\n"),
            );
        };
        let sender = match conn {
            Conn::Held(Via::InProcess(pod)) => {
                return pod
                    .handle(req)
                    .await
                    .map(|b| Either::Right(Either::Right(b)));
            }
            Conn::Held(Via::Pooled(s)) => s,
            Conn::New(up) => match handshake(up).await {
                Ok(s) => s,
                Err(e) => return bad_gateway(&service, &e),
            },
        };
        let mut sender = sender;
        if let Err(e) = sender.ready().await {
            return bad_gateway(&service, &e);
        }
        let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return bad_gateway(&service, &e),
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("service {service} did not answer in time\n"),
                );
            }
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
        let body = PooledBody::new(body, self.pool.clone(), target, sender);
        Response::from_parts(parts, Either::Left(body))
    }
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
    /// on this node (not for upgrades, which need a socket), else a pooled connection.
    fn held(&self, t: &Target, in_process: bool) -> Option<Via> {
        let cfg = &self.shared.cfg;
        let here = t.node.as_deref() == Some(cfg.node_name.as_str()) && t.addr.ip() == cfg.node_ip;
        if in_process
            && here
            && let Some(pod) = self.shared.runtime.in_process(t.addr.port())
        {
            return Some(Via::InProcess(pod));
        }
        self.pool.take(t).map(Via::Pooled)
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

fn bad_gateway(service: &str, e: &dyn std::fmt::Display) -> Response<Body> {
    debug!(service, error = %e, "ingress request to the endpoint failed");
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
/// headers, with the forwarding headers set by the ingress (those the client sent are
/// replaced) and a request id.
fn forward_headers(req: &mut Request<Incoming>, host: &str, at: Peers, upgrade: bool) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h, upgrade);
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        h.insert(header::HOST, v);
    }
    let ip = HeaderValue::from_str(&at.client.ip().to_string()).ok();
    let proto = if at.https { "https" } else { "http" };
    for (name, value) in [
        (&X_FORWARDED_FOR, ip.clone()),
        (&X_REAL_IP, ip),
        (&X_FORWARDED_HOST, HeaderValue::from_str(host).ok()),
        (&X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto))),
        (
            &X_FORWARDED_PORT,
            HeaderValue::from_str(&at.local.port().to_string()).ok(),
        ),
    ] {
        h.remove(name);
        if let Some(v) = value {
            h.insert(name.clone(), v);
        }
    }
    let keep_id = h
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty() && v.len() <= 200);
    if !keep_id {
        let id: [u8; 16] = rand::random();
        if let Ok(v) = HeaderValue::from_str(&hex::encode(id)) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
    }
}
