//! The UDP receive loop: one thread per socket, blocking in `recv_from`, that answers from the
//! table without leaving the thread and hands only the queries that need the upstreams to a task
//! on the caller's runtime.
//!
//! Why not hickory-server's UDP loop: it spawns a task per datagram and sends the response
//! through a channel to the socket's task; at tens of thousands of queries a second that
//! scheduling costs more than the answer itself. Why a thread of its own rather than a task on
//! the agent's runtime: a blocking `recv_from` is one system call per query with no readiness
//! bookkeeping, and the agent's workers are not taken from its other work.
//!
//! Each thread also keeps the responses it has encoded, by the query's bytes after the ID: a
//! response depends only on those bytes and the table, so while the table stays the same a
//! repeated question is answered by copying its response and putting the new ID in.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::Queries;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::Error;
use crate::respond::{Decision, Reply, Responder};
use crate::table::Table;

/// The largest query read; the rest of a longer datagram is cut off (and fails to decode).
const RECEIVE_BUFFER: usize = 4096;
/// How often a thread waiting for queries looks at the cancellation token.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Responses kept per thread; when full, the cache starts over.
const CACHE_ENTRIES: usize = 1024;
/// Larger queries and responses are not kept, so a thread's cache stays under 2 MB.
const CACHE_MAX_QUERY: usize = 512;
const CACHE_MAX_RESPONSE: usize = 1232;
/// Bytes of the ID at the start of every DNS message.
const ID_LEN: usize = 2;

/// Everything the loop and its tasks share.
struct Loop {
    socket: UdpSocket,
    responder: Arc<Responder>,
    runtime: Handle,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Starts the loop for `socket` on a thread of its own. It stops when `cancel` fires; queries
/// that need the upstreams run as tasks on `runtime`, tracked by `tracker`.
pub(crate) fn spawn(
    socket: UdpSocket,
    responder: Arc<Responder>,
    runtime: Handle,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> io::Result<JoinHandle<Result<(), Error>>> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(CANCEL_POLL))?;
    let addr = socket.local_addr()?;
    let ctx = Arc::new(Loop {
        socket,
        responder,
        runtime,
        tracker,
        cancel,
    });
    std::thread::Builder::new()
        .name(format!("dns-udp-{addr}"))
        .spawn(move || run(&ctx))
}

/// The responses encoded from one table, by the query's bytes after the ID.
#[derive(Default)]
struct Cache {
    /// Held so that its address, compared with the current table's, cannot be reused.
    table: Option<Arc<Table>>,
    responses: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl Cache {
    /// Forgets everything if `current` is not the table the responses came from.
    fn follow(&mut self, current: &Arc<Table>) {
        if !self.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, current)) {
            self.table = Some(current.clone());
            self.responses.clear();
        }
    }

    /// Writes the response to `query` into `out` with `query`'s ID, if there is one.
    fn answer(&self, query: &[u8], out: &mut Vec<u8>) -> bool {
        let (Some(id), Some(key)) = (query.get(..ID_LEN), query.get(ID_LEN..)) else {
            return false;
        };
        let Some(response) = self.responses.get(key) else {
            return false;
        };
        out.clear();
        out.extend_from_slice(id);
        out.extend_from_slice(response.get(ID_LEN..).unwrap_or_default());
        true
    }

    fn keep(&mut self, query: &[u8], response: &[u8]) {
        let Some(key) = query.get(ID_LEN..) else {
            return;
        };
        if key.len() > CACHE_MAX_QUERY
            || response.len() > CACHE_MAX_RESPONSE
            || response.len() < ID_LEN
        {
            return;
        }
        if self.responses.len() >= CACHE_ENTRIES {
            self.responses.clear();
        }
        self.responses.insert(key.into(), response.into());
    }
}

fn run(ctx: &Arc<Loop>) -> Result<(), Error> {
    let mut query = vec![0u8; RECEIVE_BUFFER];
    let mut response = Vec::with_capacity(RECEIVE_BUFFER);
    let mut cache = Cache::default();
    while !ctx.cancel.is_cancelled() {
        match ctx.socket.recv_from(&mut query) {
            Ok((len, src)) => {
                // A bug that one datagram can trigger must not stop the loop for everyone.
                let answered = panic::catch_unwind(AssertUnwindSafe(|| {
                    handle(ctx, &mut cache, &query[..len], src, &mut response)
                }));
                if answered.is_err() {
                    error!(%src, "dns query handling panicked; query dropped");
                    cache = Cache::default();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(Error::Server(format!("udp socket closed: {e}")));
            }
            // Such as ECONNREFUSED left by an ICMP error for an earlier response.
            Err(error) => debug!(%error, "failed to receive dns query"),
        }
    }
    Ok(())
}

/// Answers one datagram, or drops it: shorter than a header, a response, or from an address
/// that cannot be answered. A query whose header is readable but whose body is not gets FORMERR.
fn handle(
    ctx: &Arc<Loop>,
    cache: &mut Cache,
    bytes: &[u8],
    src: SocketAddr,
    response: &mut Vec<u8>,
) {
    if !answerable(src) {
        debug!(%src, "dns query from an address that cannot be answered");
        return;
    }
    let table = ctx.responder.table.load();
    cache.follow(&table);
    if cache.answer(bytes, response) {
        send(&ctx.socket, response, src);
        return;
    }
    let request = match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
                return;
            };
            debug!(%error, %src, "malformed dns query");
            let Ok(no_queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return;
            };
            Reply::error(&header.metadata, ResponseCode::FormErr).encode_udp(&no_queries, response);
            send(&ctx.socket, response, src);
            return;
        }
    };
    // Never answer responses: that would let anyone bounce traffic between two servers.
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    match ctx.responder.decide(&request, &table) {
        Decision::Reply(reply) => {
            reply.encode_udp(&request.queries, response);
            send(&ctx.socket, response, src);
            cache.keep(bytes, response);
        }
        Decision::Pending(_) => {
            let task = ctx.clone();
            ctx.tracker.spawn_on(
                async move {
                    tokio::select! {
                        () = task.cancel.cancelled() => {}
                        () = forward(&task, request, src) => {}
                    }
                },
                &ctx.runtime,
            );
        }
    }
}

/// Answers a query that needs the upstreams (deciding again, on the table current by now).
async fn forward(ctx: &Loop, request: Request, src: SocketAddr) {
    let table = ctx.responder.table.load_full();
    let reply = ctx.responder.respond(&request, &table).await;
    let mut response = Vec::new();
    reply.encode_udp(&request.queries, &mut response);
    // A UDP send does not wait for the peer; on a blocking socket it returns at once unless the
    // send buffer is full.
    send(&ctx.socket, &response, src);
}

fn send(socket: &UdpSocket, response: &[u8], dst: SocketAddr) {
    if let Err(error) = socket.send_to(response, dst) {
        debug!(%error, %dst, "failed to send dns response");
    }
}

/// Port 0, the unspecified and the broadcast address cannot be answered (nor should be).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::rr::Name;

    use super::Cache;
    use crate::table::Table;

    #[test]
    fn cache_puts_the_new_id_in_and_forgets_an_old_table() {
        let origin = Name::from_ascii("cluster.local.").unwrap();
        let first = Arc::new(Table::build(&origin, 5, 1, &[]));
        let mut cache = Cache::default();
        cache.follow(&first);
        cache.keep(b"\x00\x01question", b"\x00\x01answer");
        let mut out = Vec::new();
        assert!(cache.answer(b"\xab\xcdquestion", &mut out));
        assert_eq!(out, b"\xab\xcdanswer");
        assert!(!cache.answer(b"\xab\xcdother", &mut out));
        assert!(!cache.answer(b"\xab", &mut out));
        cache.follow(&first);
        assert!(cache.answer(b"\x00\x02question", &mut out));
        let second = Arc::new(Table::build(&origin, 5, 2, &[]));
        cache.follow(&second);
        assert!(!cache.answer(b"\x00\x02question", &mut out));
    }
}
