//! The server: binds UDP and TCP, answers from the current `Table`, forwards the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::Name;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::Error;
use crate::forward::Forwarder;
use crate::model::Service;
use crate::respond::Responder;
use crate::table::Table;
use crate::udp;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Binding port 0 picks the UDP port first; TCP may find it taken, so try again this often.
const BIND_ATTEMPTS: usize = 8;

/// The server's settings; see `Config::default` for the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The cluster domain, `cluster.local` by default.
    pub domain: String,
    /// Addresses to serve on, UDP and TCP each; port 0 picks a free port (the same for both).
    pub listen: Vec<SocketAddr>,
    /// Resolvers for names outside the cluster; none means those get REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of our records and of negative answers, 5 s by default as CoreDNS.
    pub ttl: u32,
    /// Bind even to addresses the host does not have yet (`IP_FREEBIND`), such as the pod
    /// bridge's gateway before the first pod brings the bridge up.
    pub freebind: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            domain: "cluster.local".to_owned(),
            listen: Vec::new(),
            upstreams: Vec::new(),
            ttl: 5,
            freebind: false,
        }
    }
}

/// A running server. Cancelling the token given to `start` stops it; `join` waits for that.
pub struct Dns {
    origin: Name,
    ttl: u32,
    serial: AtomicU32,
    responder: Arc<Responder>,
    local_addrs: Vec<SocketAddr>,
    /// hickory-server, serving TCP.
    tcp: JoinHandle<Result<(), Error>>,
    /// One thread per UDP socket (see `udp`).
    udp: Vec<std::thread::JoinHandle<Result<(), Error>>>,
    /// The UDP queries waiting for the upstreams.
    forwards: TaskTracker,
}

/// Validates `cfg`, binds every address (UDP and TCP), and serves until `cancel` fires.
/// Services are added with `Dns::update`; until then only the zone's own names exist.
pub async fn start(cfg: Config, cancel: CancellationToken) -> Result<Dns, Error> {
    let origin = parse_domain(&cfg.domain)?;
    if cfg.listen.is_empty() {
        return Err(Error::NoListenAddress);
    }
    let forwarder = if cfg.upstreams.is_empty() {
        None
    } else {
        Some(Forwarder::new(&cfg.upstreams)?)
    };
    let mut sockets = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        sockets.push(bind(*addr, cfg.freebind).await?);
    }
    let local_addrs = sockets.iter().map(|(addr, _, _)| *addr).collect();

    let serial = initial_serial();
    let responder = Arc::new(Responder::new(
        Table::build(&origin, cfg.ttl, serial, &[]),
        forwarder,
    ));
    let mut server = Server::new(Handler {
        responder: responder.clone(),
    });
    let forwards = TaskTracker::new();
    // The UDP threads' own token, so that a failed start stops them without touching `cancel`.
    let stop_udp = cancel.child_token();
    let mut udp_threads = Vec::with_capacity(sockets.len());
    for (addr, udp, tcp) in sockets {
        let thread = udp::spawn(
            udp,
            responder.clone(),
            tokio::runtime::Handle::current(),
            forwards.clone(),
            stop_udp.clone(),
        );
        match thread {
            Ok(thread) => udp_threads.push(thread),
            Err(e) => {
                stop_udp.cancel();
                return Err(Error::Server(format!(
                    "failed to start the udp thread for {addr}: {e}"
                )));
            }
        }
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let tcp = tokio::spawn(async move {
        let shutdown = server.shutdown_token().clone();
        let run = server.block_until_done();
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            () = cancel.cancelled() => {
                shutdown.cancel();
                run.await
            }
        };
        result.map_err(|e| Error::Server(e.to_string()))
    });
    Ok(Dns {
        origin,
        ttl: cfg.ttl,
        serial: AtomicU32::new(serial),
        responder,
        local_addrs,
        tcp,
        udp: udp_threads,
        forwards,
    })
}

impl Dns {
    /// Replaces every service with `services`: builds a new table and swaps it in at once;
    /// queries in flight keep the table they started with.
    pub fn update(&self, services: Vec<Service>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let table = Table::build(&self.origin, self.ttl, serial, &services);
        self.responder.table.store(Arc::new(table));
    }

    /// The addresses actually bound (with the ports picked for port 0), one per `listen` entry.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// Waits until the server has stopped after cancellation.
    pub async fn join(self) -> Result<(), Error> {
        let mut result = match self.tcp.await {
            Ok(result) => result,
            Err(e) => Err(Error::Server(e.to_string())),
        };
        for thread in self.udp {
            let stopped = tokio::task::spawn_blocking(move || thread.join()).await;
            let udp = match stopped {
                Ok(Ok(udp)) => udp,
                Ok(Err(_)) => Err(Error::Server("udp thread panicked".to_owned())),
                Err(e) => Err(Error::Server(e.to_string())),
            };
            result = result.and(udp);
        }
        self.forwards.close();
        self.forwards.wait().await;
        result
    }
}

pub(crate) fn parse_domain(domain: &str) -> Result<Name, Error> {
    let invalid = |reason: String| Error::InvalidDomain {
        domain: domain.to_owned(),
        reason,
    };
    let trimmed = domain.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(invalid("must not be empty or the root".to_owned()));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

async fn bind(
    addr: SocketAddr,
    freebind: bool,
) -> Result<(SocketAddr, std::net::UdpSocket, TcpListener), Error> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = socket(addr, socket2::Type::DGRAM, freebind)
            .map(std::net::UdpSocket::from)
            .map_err(|source| Error::Bind {
                addr,
                protocol: "udp",
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| Error::Bind {
            addr,
            protocol: "udp",
            source,
        })?;
        let tcp = socket(bound, socket2::Type::STREAM, freebind).and_then(|s| {
            s.listen(1024)?;
            TcpListener::from_std(s.into())
        });
        match tcp {
            Ok(tcp) => return Ok((bound, udp, tcp)),
            Err(source) => {
                last = Some(Error::Bind {
                    addr: bound,
                    protocol: "tcp",
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(Error::NoListenAddress))
}

/// A non-blocking socket bound to `addr` (TCP ones with `SO_REUSEADDR`, as tokio's own bind).
fn socket(
    addr: SocketAddr,
    kind: socket2::Type,
    freebind: bool,
) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, kind, None)?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => s.set_freebind_v4(true)?,
            SocketAddr::V6(_) => s.set_freebind_v6(true)?,
        }
    }
    if kind == socket2::Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

fn initial_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// hickory-server's TCP connections hand each parsed request here; `Responder` decides.
struct Handler {
    responder: Arc<Responder>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let table = self.responder.table.load_full();
        let reply = self.responder.respond(request, &table).await;
        match response
            .send_response(reply.message(&request.queries))
            .await
        {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "failed to send dns response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
