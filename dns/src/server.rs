//! The server: binds UDP and TCP, answers from the current `Table`, forwards the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Error;
use crate::forward::{Forwarded, Forwarder};
use crate::model::Service;
use crate::table::{Answer, Outcome, Table};

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
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    task: JoinHandle<Result<(), Error>>,
}

struct Shared {
    origin: Name,
    ttl: u32,
    serial: AtomicU32,
    table: ArcSwap<Table>,
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
    let shared = Arc::new(Shared {
        table: ArcSwap::from_pointee(Table::build(&origin, cfg.ttl, serial, &[])),
        origin,
        ttl: cfg.ttl,
        serial: AtomicU32::new(serial),
    });
    let handler = Handler {
        shared: shared.clone(),
        forwarder,
    };
    let mut server = Server::new(handler);
    for (_, udp, tcp) in sockets {
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let task = tokio::spawn(async move {
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
        shared,
        local_addrs,
        task,
    })
}

impl Dns {
    /// Replaces every service with `services`: builds a new table and swaps it in at once;
    /// queries in flight keep the table they started with.
    pub fn update(&self, services: Vec<Service>) {
        let serial = self.shared.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let table = Table::build(&self.shared.origin, self.shared.ttl, serial, &services);
        self.shared.table.store(Arc::new(table));
    }

    /// The addresses actually bound (with the ports picked for port 0), one per `listen` entry.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// Waits until the server has stopped after cancellation.
    pub async fn join(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Server(e.to_string())),
        }
    }
}

fn parse_domain(domain: &str) -> Result<Name, Error> {
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
) -> Result<(SocketAddr, UdpSocket, TcpListener), Error> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = socket(addr, socket2::Type::DGRAM, freebind)
            .and_then(|s| UdpSocket::from_std(s.into()))
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

struct Handler {
    shared: Arc<Shared>,
    forwarder: Option<Forwarder>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        // EDNS: answer with our own OPT so that the client's UDP size applies (else 512).
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let builder = || {
            let mut b = MessageResponseBuilder::new(&request.queries, None);
            if let Some(edns) = &resp_edns {
                b.edns(edns);
            }
            b
        };
        let error = |rcode| (builder(), rcode);
        let refuse = match () {
            _ if request.edns.as_ref().is_some_and(|e| e.version() > 0) => {
                Some(error(ResponseCode::BADVERS))
            }
            _ if request.metadata.op_code != OpCode::Query => Some(error(ResponseCode::NotImp)),
            _ if request.queries.len() != 1 => Some(error(ResponseCode::FormErr)),
            _ => None,
        };
        if let Some((b, rcode)) = refuse {
            let msg = b.error_msg(&request.metadata, rcode);
            return send(&mut response, msg, &request.metadata).await;
        }
        let query = &request.queries.queries()[0];
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            let msg = builder().error_msg(&request.metadata, ResponseCode::Refused);
            return send(&mut response, msg, &request.metadata).await;
        }
        let qname: &Name = query.name();

        let table = self.shared.table.load_full();
        let outcome = table.lookup(qname, qtype);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.forwarder.is_some();
        match outcome {
            Outcome::Authoritative(answer) => {
                let chased = match (&answer.chase, &self.forwarder) {
                    (Some(target), Some(f)) => f.resolve(target.clone(), qtype).await.answers,
                    _ => Vec::new(),
                };
                metadata.authoritative = true;
                metadata.response_code = if answer.nxdomain {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                let Answer {
                    synthesized,
                    answers,
                    additionals,
                    ..
                } = &answer;
                let soa: Option<&Record> = (answer.is_empty()).then(|| table.soa());
                let msg = builder().build(
                    metadata,
                    synthesized
                        .iter()
                        .map(|r| &**r)
                        .chain(answers.iter().copied())
                        .chain(chased.iter()),
                    std::iter::empty(),
                    soa,
                    additionals.iter().copied(),
                );
                send(&mut response, msg, &request.metadata).await
            }
            Outcome::Forward => {
                let Some(forwarder) = &self.forwarder else {
                    let msg = builder().build(
                        {
                            metadata.response_code = ResponseCode::Refused;
                            metadata
                        },
                        std::iter::empty(),
                        std::iter::empty(),
                        std::iter::empty(),
                        std::iter::empty(),
                    );
                    return send(&mut response, msg, &request.metadata).await;
                };
                drop(table);
                let Forwarded {
                    rcode,
                    answers,
                    authorities,
                } = forwarder.resolve(qname.clone(), qtype).await;
                metadata.response_code = rcode;
                let msg = builder().build(
                    metadata,
                    answers.iter(),
                    authorities.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                send(&mut response, msg, &request.metadata).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, "failed to send dns response");
            let mut metadata = Metadata::response_from_request(request);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
