//! hello: wasi:http greeting component that reports which pod and node served the request, and
//! how many requests this instance has answered (the agent keeps answered instances warm).

use std::sync::atomic::{AtomicU64, Ordering};
use wstd::http::{Body, Error, Request, Response};

/// Request headers echoed back when present.
const FORWARDED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// Requests answered by this instance; it starts at 1 again when the agent starts a new one.
static SERVED: AtomicU64 = AtomicU64::new(0);

fn env_or_unknown(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| "unknown".to_owned())
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let count = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let pod = env_or_unknown("FLOTILLA_POD_NAME");
    let node = env_or_unknown("FLOTILLA_NODE_NAME");
    let path = request.uri().path();
    let mut text = format!("hello from {pod} on {node}\npath: {path}\ncount: {count}\n");
    // What a proxy in front (the ingress) says about the request.
    for name in FORWARDED {
        if let Some(v) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            text.push_str(&format!("{name}: {v}\n"));
        }
    }
    Ok(Response::new(text.into()))
}
