//! The ingress's access log: one JSON object per request, written by a task of its own so
//! a slow disk never holds a request up (lines beyond [`QUEUE`] waiting are dropped, and
//! counted in the log's own warnings).
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::warn;

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

pub struct AccessLog {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: AtomicU64,
}

/// What the log says of a request.
#[derive(Serialize)]
pub struct Line {
    /// RFC 3339, UTC, when the request arrived.
    pub time: String,
    pub client: String,
    pub method: String,
    pub host: String,
    /// The request target as the client sent it (path and query).
    pub uri: String,
    pub protocol: &'static str,
    pub tls: bool,
    pub status: u16,
    /// Until the response head was ready.
    pub duration_ms: f64,
    pub request_id: String,
    pub user_agent: String,
}

impl Line {
    /// The request's part of a line; `finish` adds the answer's.
    pub fn of<B>(req: &http::Request<B>, client: std::net::IpAddr, tls: bool, id: &str) -> Line {
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| header(http::header::HOST));
        Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client: client.to_string(),
            method: req.method().as_str().to_string(),
            host,
            uri: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            tls,
            status: 0,
            duration_ms: 0.0,
            request_id: id.to_string(),
            user_agent: header(http::header::USER_AGENT),
        }
    }

    pub fn finish(mut self, status: http::StatusCode, took: Duration) -> Line {
        self.status = status.as_u16();
        self.duration_ms = (took.as_secs_f64() * 1e6).round() / 1e3;
        self
    }
}

impl AccessLog {
    /// Appends to `path` (`-` is standard output).
    pub async fn open(
        path: &Path,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<AccessLog> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if path == Path::new("-") {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            )
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(write(out, rx));
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn write(&self, line: &Line) {
        let Ok(mut bytes) = serde_json::to_vec(line) else {
            return;
        };
        bytes.push(b'\n');
        if self.tx.try_send(bytes).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(
                    dropped = n,
                    "ingress access log cannot keep up; lines dropped"
                );
            }
        }
    }
}

/// Writes what comes, flushing whenever no more is waiting.
async fn write(
    mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(line) = rx.recv().await {
        buf.extend_from_slice(&line);
        while buf.len() < 64 * 1024
            && let Ok(more) = rx.try_recv()
        {
            buf.extend_from_slice(&more);
        }
        if let Err(e) = async {
            out.write_all(&buf).await?;
            out.flush().await
        }
        .await
        {
            warn!(error = %e, "cannot write the ingress access log");
        }
        buf.clear();
    }
}
