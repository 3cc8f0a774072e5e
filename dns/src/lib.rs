//! The agent's per-node DNS server for Kubernetes-style service discovery.
//!
//! The agent turns its Service and EndpointSlice objects into this crate's plain [`Service`]
//! values and hands the whole list to [`Dns::update`] whenever it changes; pods get the node's
//! address as their nameserver with `search ns.svc.D svc.D D` and `ndots:5`.
//!
//! Inside the cluster domain `D` (and for the reverse names of cluster addresses) the server is
//! authoritative and answers from an immutable table built by `update` (see `table` for why a
//! prebuilt hash map rather than a hickory zone): A/AAAA/SRV/PTR/CNAME as the Kubernetes DNS
//! specification 1.1.0 says, NXDOMAIN with the SOA for names that do not exist, so the search
//! list expansions of outside names (`example.com.default.svc.cluster.local`) are answered
//! locally at once. Everything else goes to the upstream resolvers, with a cache.
//!
//! [`Names`] answers the same A and AAAA questions in process, for the agent's own clients.
//!
//! UDP is served by a loop of our own (`udp`), TCP by hickory-server; both take their answer
//! from `respond`. hickory-server logs every TCP request at `info` (target `hickory_server`); the
//! agent's filter should keep that at `warn`.

mod error;
mod forward;
mod model;
mod names;
mod resolv_conf;
mod respond;
mod server;
mod table;
mod udp;

pub use error::Error;
pub use model::{Endpoint, Port, Protocol, Service, ServiceKind};
pub use names::{Names, Resolved};
pub use resolv_conf::upstreams_from_resolv_conf;
pub use server::{Config, Dns, start};
