//! The ingress's bounds on a client connection besides those hyper keeps (the header read
//! timeout, the head's size and count): a connection on which nothing moves for the idle
//! timeout is closed, and request bodies are cut off at the route's limit.
//!
//! Idleness is counted on the socket, not per request: [`Watched`] bumps a counter on every
//! read or write that moves bytes, and [`idle`] ends once the counter has stood still
//! for the whole timeout while no request waits for its endpoint's answer. That covers a
//! kept-alive connection between requests, a client that connects and says nothing (which
//! hyper's header timeout never sees, since the HTTP version is not known yet), HTTP/2
//! connections (which have no header timeout), and a body that stalls halfway.
use bytes::Bytes;
use http_body_util::Limited;
use hyper::body::Incoming;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many parts of the idle timeout the watcher wakes for: a connection is closed between
/// one and 1 + 1/TICKS timeouts after it went quiet.
const TICKS: u32 = 4;

/// What is moving on one client connection.
#[derive(Debug, Default)]
pub struct Activity {
    /// Reads and writes that moved bytes.
    moves: AtomicU64,
    /// Requests waiting for their answer's head.
    waiting: AtomicU64,
}

impl Activity {
    /// Counts a request as waiting for its answer until the guard is dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self.clone())
    }
}

pub struct Waiting(Arc<Activity>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends when nothing has moved on the connection for `timeout` and no request is waiting
/// for its endpoint (whose time is bounded by the response timeout instead). A zero
/// timeout never ends.
pub async fn idle(activity: &Activity, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let tick = timeout / TICKS;
    let mut last = activity.moves.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.moves.load(Ordering::Relaxed);
        if now != last || activity.waiting.load(Ordering::Relaxed) > 0 {
            last = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet >= TICKS {
            return;
        }
    }
}

/// A client socket whose reads and writes are counted in an [`Activity`].
pub struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Watched<I> {
        Watched { io, activity }
    }

    fn moved(&self) {
        self.activity.moves.fetch_add(1, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the request body: {0}")]
    Client(BoxError),
}

impl From<std::convert::Infallible> for BodyError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

impl From<BodyError> for wasmtime_wasi_http::Error {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
            }
            BodyError::Client(e) => match e.downcast::<hyper::Error>() {
                Ok(e) => wasmtime_wasi_http::Error::Hyper(*e),
                Err(e) => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
            },
        }
    }
}

/// What [`Limited`] fails with.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A client's request body, cut off after the route's limit ([`Limited`], whose boxed
/// error is sorted into a [`BodyError`] that wasi:http and the endpoint's client can take).
pub struct Capped {
    body: Limited<Incoming>,
    limit: u64,
}

/// `body` with at most `limit` bytes (0 is no limit).
pub fn capped(body: Incoming, limit: u64) -> Capped {
    let most = if limit == 0 {
        usize::MAX
    } else {
        usize::try_from(limit).unwrap_or(usize::MAX)
    };
    Capped {
        body: Limited::new(body, most),
        limit,
    }
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let limit = this.limit;
        Pin::new(&mut this.body).poll_frame(cx).map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge(limit)
            } else {
                BodyError::Client(e)
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The limit `e` (an error sending a request) says a body went over, if that is what it is.
pub fn too_large(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(BodyError::TooLarge(limit)) = e.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        at = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_ends_only_when_nothing_moves_and_nothing_waits() {
        let a = Arc::new(Activity::default());
        let timeout = Duration::from_millis(400);
        // Moving bytes more often than the timeout keeps it open.
        let busy = async {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                a.moves.fetch_add(1, Ordering::Relaxed);
            }
        };
        tokio::select! {
            _ = idle(&a, timeout) => panic!("closed while bytes moved"),
            _ = busy => {}
        }
        // A request waiting for its endpoint keeps it open too.
        let waiting = a.waiting();
        tokio::select! {
            _ = idle(&a, timeout) => panic!("closed while a request waited"),
            _ = tokio::time::sleep(Duration::from_millis(1200)) => {}
        }
        drop(waiting);
        let started = std::time::Instant::now();
        idle(&a, timeout).await;
        let took = started.elapsed();
        assert!(took >= timeout, "closed after {took:?}");
        // A zero timeout is none.
        tokio::select! {
            _ = idle(&a, Duration::ZERO) => panic!("a zero timeout closed it"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
