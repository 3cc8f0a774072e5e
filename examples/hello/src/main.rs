//! hello: wasi:http greeting component that reports which pod and node served the request.

use wstd::http::{Body, Error, Request, Response};

fn env_or_unknown(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| "unknown".to_owned())
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let pod = env_or_unknown("FLOTILLA_POD_NAME");
    let node = env_or_unknown("FLOTILLA_NODE_NAME");
    let path = request.uri().path();
    Ok(Response::new(
        format!("hello from {pod} on {node}\npath: {path}\n").into(),
    ))
}
