//! The plain input types the agent converts its Service and EndpointSlice objects into.

use std::net::IpAddr;

/// One Kubernetes-style Service with the endpoints that back it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// The service's ports; SRV records exist only for named ones.
    pub ports: Vec<Port>,
    /// The endpoints; only headless services publish them in DNS.
    pub endpoints: Vec<Endpoint>,
}

/// How a service is reached, which decides its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (v4 and/or v6): A/AAAA, SRV and PTR point at the service name.
    ClusterIp(Vec<IpAddr>),
    /// No virtual IP: A/AAAA list the ready endpoints, each of which gets its own name.
    Headless,
    /// A CNAME to a name outside the cluster.
    ExternalName(String),
}

/// A named or unnamed service or endpoint port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Empty for an unnamed port, which has no SRV record.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The SRV label, `_tcp` or `_udp`.
    pub(crate) fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
        }
    }
}

/// One backend of a service (a pod), as in an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// A StatefulSet pod's hostname (`web-0`); without it the endpoint is named after its address
    /// (`10-1-2-3`), as CoreDNS does.
    pub hostname: Option<String>,
    /// Not-ready endpoints are left out of DNS.
    pub ready: bool,
    /// The endpoint's (target) ports; when empty the service's ports are used.
    pub ports: Vec<Port>,
}
