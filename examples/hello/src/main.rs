//! hello: wasi:http greeting component that reports which pod and node served the request, and
//! how many requests this instance has answered (the agent keeps answered instances warm),
//! the `x-` headers it was sent, and the size of the body of a POST, PUT or PATCH (read to
//! its end first).

use std::sync::atomic::{AtomicU64, Ordering};
use wstd::http::{Body, Error, Request, Response};

/// Requests answered by this instance; it starts at 1 again when the agent starts a new one.
static SERVED: AtomicU64 = AtomicU64::new(0);

fn env_or_unknown(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| "unknown".to_owned())
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let count = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let pod = env_or_unknown("FLOTILLA_POD_NAME");
    let node = env_or_unknown("FLOTILLA_NODE_NAME");
    let path = request.uri().path();
    let mut text = format!("hello from {pod} on {node}\npath: {path}\ncount: {count}\n");
    // What a proxy in front (the ingress) says about the request: its `x-` headers, sorted.
    let mut extra: Vec<String> = request
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .filter_map(|(name, v)| Some(format!("{name}: {}\n", v.to_str().ok()?)))
        .collect();
    extra.sort();
    text.extend(extra);
    if matches!(request.method().as_str(), "POST" | "PUT" | "PATCH") {
        let n = request.body_mut().contents().await?.len();
        text.push_str(&format!("body: {n} bytes\n"));
    }
    Ok(Response::new(text.into()))
}
