//! chaos: wasi:http component that misbehaves on demand (spin, grow memory, panic) for tests,
//! with a `/healthz` that fails while the pod's env has `CHAOS_UNHEALTHY` set (probe tests),
//! and file access through its preopened volumes: `/read?path=P`, `/write?path=P&data=D`,
//! `/ls?path=P` (volume tests), and an outgoing request, `/fetch?url=U`, answered with the
//! upstream's status and body, or 502 and the error (outbound network tests).

use std::hint::black_box;
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

const DEFAULT_GROW_MIB: usize = 256;
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    match request.uri().path() {
        "/" => Ok(Response::new("chaos ok\n".into())),
        "/healthz" if std::env::var_os("CHAOS_UNHEALTHY").is_some() => {
            status(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
        }
        "/healthz" => Ok(Response::new("healthy\n".into())),
        "/loop" => spin(),
        "/grow" => match grow_mib(request.uri().query()) {
            Some(mb) => Ok(Response::new(grow(mb).into())),
            None => status(StatusCode::BAD_REQUEST, "bad mb\n"),
        },
        "/panic" => panic!("chaos: /panic requested"),
        "/read" => match std::fs::read_to_string(param(&request, "path")) {
            Ok(text) => Ok(Response::new(text.into())),
            Err(e) => status(StatusCode::NOT_FOUND, &format!("read failed: {e}\n")),
        },
        "/write" => match std::fs::write(param(&request, "path"), param(&request, "data")) {
            Ok(()) => Ok(Response::new("written\n".into())),
            Err(e) => status(StatusCode::FORBIDDEN, &format!("write failed: {e}\n")),
        },
        "/ls" => match std::fs::read_dir(param(&request, "path")) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Ok(Response::new(format!("{}\n", names.join("\n")).into()))
            }
            Err(e) => status(StatusCode::NOT_FOUND, &format!("ls failed: {e}\n")),
        },
        "/fetch" => match fetch(param(&request, "url")).await {
            Ok(response) => Ok(response),
            Err(e) => status(StatusCode::BAD_GATEWAY, &format!("fetch failed: {e:?}\n")),
        },
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn status(code: StatusCode, body: &str) -> Result<Response<Body>, Error> {
    Ok(Response::builder().status(code).body(body.into())?)
}

/// GETs `url` and answers with what came back.
async fn fetch(url: &str) -> Result<Response<Body>, Error> {
    let request = Request::get(url).body(Body::empty())?;
    let mut upstream = Client::new().send(request).await?;
    let body = upstream.body_mut().contents().await?.to_vec();
    Ok(Response::builder()
        .status(upstream.status())
        .body(body.into())?)
}

/// A query parameter's raw value (tests send plain values), or "".
fn param<'a>(request: &'a Request<Body>, name: &str) -> &'a str {
    request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
}

/// Burns CPU forever; `black_box` keeps the optimizer from eliding the loop.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Reads `mb=N` from the query string; `None` if present but unparsable.
fn grow_mib(query: Option<&str>) -> Option<usize> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("mb="));
    match value {
        Some(v) => v.parse().ok(),
        None => Some(DEFAULT_GROW_MIB),
    }
}

/// Allocates `mb` MiB and writes to every page so the memory is really committed.
fn grow(mb: usize) -> String {
    let mut buf = vec![0u8; mb.saturating_mul(MIB)];
    for page in buf.chunks_mut(PAGE) {
        page[0] = 1;
    }
    black_box(&mut buf);
    format!("grew {mb} MiB\n")
}
