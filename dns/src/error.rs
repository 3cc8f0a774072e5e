//! The crate's one error type.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dns config: domain {domain:?} is not a valid domain name: {reason}")]
    InvalidDomain { domain: String, reason: String },
    #[error("dns config: listen must name at least one address")]
    NoListenAddress,
    #[error("failed to bind dns {protocol} socket on {addr}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up forwarding to upstreams {upstreams:?}: {reason}")]
    Forwarder {
        upstreams: Vec<SocketAddr>,
        reason: String,
    },
    #[error("dns server stopped: {0}")]
    Server(String),
}
