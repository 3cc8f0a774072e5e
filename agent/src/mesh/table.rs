//! The service table (pure): the addresses this node accepts service traffic on, the Ready
//! endpoints each service port balances over in order of preference (this node, this zone,
//! anywhere), which the ingress routes to as well, and where the other nodes' mesh links
//! answer. Built from the node's copy of the cluster's Services, EndpointSlices and Nodes on
//! every change.
use crate::discovery::Objects;
use flotilla_proto::Object;
pub use flotilla_proto::api::ZONE_LABEL;
use flotilla_proto::api::{EndpointSlice, SERVICE_NAME_LABEL, Service, ServiceBackendPort};
use flotilla_proto::wire::MeshTarget;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10_800);

#[derive(Default)]
pub struct Table {
    /// Where TCP connections are accepted (cluster IP and port, node IP and node port), and
    /// what they are balanced over.
    pub frontends: BTreeMap<SocketAddr, Arc<Backend>>,
    /// The same for UDP ports: where datagrams are accepted.
    pub udp_frontends: BTreeMap<SocketAddr, Arc<Backend>>,
    /// Every port of every Service with endpoints of its own (headless ones too), by
    /// namespace and name: what the ingress routes to (TCP ones).
    pub services: BTreeMap<(String, String), Vec<PortBackend>>,
    /// Other nodes' mesh links, by node name.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Endpoints on this node, TCP and UDP: all that other nodes may ask this node's mesh
    /// link for.
    pub local_targets: BTreeSet<MeshTarget>,
    /// Whether this node is a gateway: it serves LoadBalancer ports and the ingress.
    pub gateway: bool,
}

/// One port of a Service: its name and number, and the endpoints behind it (shared with the
/// port's frontends, so they balance as one).
pub struct PortBackend {
    pub name: Option<String>,
    pub port: u16,
    pub udp: bool,
    pub backend: Arc<Backend>,
}

impl Table {
    /// A service port by number or name, as an Ingress backend names it.
    pub fn service_port(
        &self,
        ns: &str,
        name: &str,
        port: &ServiceBackendPort,
    ) -> Option<&Arc<Backend>> {
        let ports = self.services.get(&(ns.to_string(), name.to_string()))?;
        ports
            .iter()
            .find(|p| !p.udp && port.matches(p.name.as_deref(), i32::from(p.port)))
            .map(|p| &p.backend)
    }
}

/// An endpoint: an address and the node it lives on (None for endpoints outside the
/// cluster, such as those of a user's own EndpointSlice without `nodeName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddr,
    pub node: Option<String>,
}

/// One service port's Ready endpoints, best tier first, and the balancing state that
/// outlives table rebuilds.
pub struct Backend {
    /// `namespace/name:port`, for logs.
    pub service: String,
    pub tiers: Vec<Vec<Target>>,
    /// sessionAffinity ClientIP's timeout; None without affinity.
    pub affinity: Option<Duration>,
    state: Arc<Balance>,
}

#[derive(Default)]
struct Balance {
    next: AtomicUsize,
    sticky: Mutex<HashMap<IpAddr, (Target, Instant)>>,
    /// Passive health and requests in flight, by endpoint (only those that have any).
    health: Mutex<HashMap<Target, Health>>,
}

/// What traffic has shown of one endpoint.
#[derive(Default, Debug)]
struct Health {
    /// Failures in a row (connects refused, requests broken, gateway errors).
    failures: u32,
    /// Left out of new picks until then.
    ejected_until: Option<Instant>,
    /// Requests or connections now in flight.
    outstanding: usize,
}

/// Failures in a row that eject an endpoint, and for how long (Envoy's outlier detection,
/// with its consecutive gateway failures).
pub const EJECT_AFTER: u32 = 3;
pub const EJECT_FOR: Duration = Duration::from_secs(10);

/// How a Backend picks among the endpoints of its best tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balancing {
    #[default]
    RoundRobin,
    /// The one with fewer requests in flight of two picked at random (power of two choices).
    LeastRequest,
}

impl Backend {
    /// The endpoint for a new connection or request from `client`, skipping those in
    /// `avoid` (already failed for it) and, while others are left, those ejected for
    /// failing: the client's sticky endpoint while it lasts, otherwise one of the best tier
    /// that has any, by `how`.
    pub fn pick(
        &self,
        client: IpAddr,
        avoid: &[Target],
        now: Instant,
        how: Balancing,
    ) -> Option<Target> {
        let health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
        let ejected = |t: &Target| {
            health
                .get(t)
                .and_then(|h| h.ejected_until)
                .is_some_and(|until| now < until)
        };
        let all = || self.tiers.iter().flatten().filter(|t| !avoid.contains(t));
        // Never eject everything: with every endpoint ejected, all are candidates again.
        let skip_ejected = all().any(|t| !ejected(t));
        let usable = |t: &Target| !avoid.contains(t) && (!skip_ejected || !ejected(t));
        if let Some(timeout) = self.affinity {
            let mut sticky = self.state.sticky.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, seen)) = sticky.get(&client)
                && now.duration_since(*seen) < timeout
                && usable(t)
                && self.tiers.iter().flatten().any(|x| x == t)
            {
                let t = t.clone();
                sticky.insert(client, (t.clone(), now));
                return Some(t);
            }
            sticky.retain(|_, (_, seen)| now.duration_since(*seen) < timeout);
        }
        let tier: Vec<&Target> = self
            .tiers
            .iter()
            .map(|tier| tier.iter().filter(|t| usable(t)).collect::<Vec<_>>())
            .find(|tier| !tier.is_empty())?;
        let t = match how {
            Balancing::LeastRequest if tier.len() > 1 => {
                let a = rand::random_range(0..tier.len());
                let b = (a + rand::random_range(1..tier.len())) % tier.len();
                let load = |t: &Target| health.get(t).map_or(0, |h| h.outstanding);
                if load(tier[b]) < load(tier[a]) {
                    tier[b].clone()
                } else {
                    tier[a].clone()
                }
            }
            _ => {
                let n = self.state.next.fetch_add(1, Ordering::Relaxed);
                tier[n % tier.len()].clone()
            }
        };
        drop(health);
        if self.affinity.is_some() {
            let mut sticky = self.state.sticky.lock().unwrap_or_else(|p| p.into_inner());
            sticky.insert(client, (t.clone(), now));
        }
        Some(t)
    }

    /// Records how a connection to or a request for `t` went: [`EJECT_AFTER`] failures in
    /// a row eject it for [`EJECT_FOR`] (again at each failure after that, until one
    /// succeeds).
    pub fn report(&self, t: &Target, ok: bool, now: Instant) {
        let mut health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            if let Some(h) = health.get_mut(t) {
                h.failures = 0;
                h.ejected_until = None;
                if h.outstanding == 0 {
                    health.remove(t);
                }
            }
            return;
        }
        let h = health.entry(t.clone()).or_default();
        h.failures += 1;
        if h.failures >= EJECT_AFTER {
            h.ejected_until = Some(now + EJECT_FOR);
        }
    }

    /// Counts a request to `t` as in flight until the guard is dropped.
    pub fn begin(&self, t: &Target) -> InFlight {
        let mut health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
        health.entry(t.clone()).or_default().outstanding += 1;
        InFlight {
            state: self.state.clone(),
            target: t.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Whether `t` is one of the Ready endpoints.
    pub fn serves(&self, t: &Target) -> bool {
        self.tiers.iter().flatten().any(|x| x == t)
    }
}

/// A request in flight to an endpoint, for least-request balancing.
pub struct InFlight {
    state: Arc<Balance>,
    target: Target,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut health = self.state.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = health.get_mut(&self.target) {
            h.outstanding = h.outstanding.saturating_sub(1);
            if h.outstanding == 0 && h.failures == 0 {
                health.remove(&self.target);
            }
        }
    }
}

/// Who this node is, for preferences and for what it listens on.
pub struct Me<'a> {
    pub node: &'a str,
    /// This node's labels (the cached Node object wins), for the gateway rule.
    pub labels: &'a BTreeMap<String, String>,
    /// Node ports answer here.
    pub node_ip: IpAddr,
    /// The zone label, when the node's own labels say (the cached Node object wins).
    pub zone: Option<&'a str>,
}

/// Builds the table, carrying balancing state over from `prev` for frontends that stay.
pub fn build(objects: &Objects, me: &Me, prev: &Table) -> Table {
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    let mut peers = BTreeMap::new();
    let mut zone = me.zone.map(str::to_string);
    let mut own = flotilla_proto::api::Node::default();
    own.metadata.labels = me.labels.clone();
    let mut nodes = Vec::new();
    for o in objects.values() {
        match o {
            Object::EndpointSlice(s) => {
                if let Some(svc) = s.metadata.labels.get(SERVICE_NAME_LABEL) {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                    slices.entry((ns, svc.as_str())).or_default().push(s);
                }
            }
            Object::Node(n) if n.metadata.name == me.node => {
                if let Some(z) = n.metadata.labels.get(ZONE_LABEL) {
                    zone = Some(z.clone());
                }
                own = n.clone();
            }
            Object::Node(n) => {
                if let Some(addr) = n.mesh_addr() {
                    peers.insert(n.metadata.name.clone(), addr);
                }
                nodes.push(n);
            }
            _ => {}
        }
    }
    // Until the node has heard of itself (a first start, before the hub's snapshot), it
    // cannot know whether others are labelled: it is no gateway yet.
    let knows_itself = objects
        .keys()
        .any(|k| k.kind == flotilla_proto::Kind::Node && k.name == me.node);
    let gateway =
        knows_itself && flotilla_proto::service::is_gateway(&own, nodes.into_iter().chain([&own]));
    let mut table = Table {
        peers,
        ..Default::default()
    };
    for s in slices.values().flatten() {
        for e in &s.endpoints {
            if e.node_name.as_deref() != Some(me.node) {
                continue;
            }
            for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                for p in &s.ports {
                    let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    let addr = SocketAddr::new(ip, port);
                    table.local_targets.insert(match p.protocol.as_deref() {
                        Some("UDP") => MeshTarget::Udp(addr),
                        _ => MeshTarget::tcp(addr),
                    });
                }
            }
        }
    }
    table.gateway = gateway;
    for o in objects.values() {
        let Object::Service(svc) = o else { continue };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let key = (ns.to_string(), svc.metadata.name.clone());
        let slices_of = slices
            .get(&(ns, svc.metadata.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let prev_ports = prev.services.get(&key);
        let ports: Vec<PortBackend> = port_backends(svc, ns, slices_of, me, zone.as_deref())
            .into_iter()
            .map(|(port, name, udp, backend)| {
                let state = prev_ports
                    .and_then(|ps| ps.iter().find(|p| p.port == port && p.udp == udp))
                    .map(|p| p.backend.state.clone())
                    .unwrap_or_default();
                PortBackend {
                    name,
                    port,
                    udp,
                    backend: Arc::new(Backend { state, ..backend }),
                }
            })
            .collect();
        for p in &ports {
            let into = if p.udp {
                &mut table.udp_frontends
            } else {
                &mut table.frontends
            };
            for addr in frontends(svc, p.port, p.udp, me, gateway) {
                into.insert(addr, p.backend.clone());
            }
        }
        if !ports.is_empty() {
            table.services.insert(key, ports);
        }
    }
    table
}

/// The endpoints of each port of a service (and whether it is UDP), tiered for this node
/// (none for ExternalName services, which have no endpoints of their own).
fn port_backends(
    svc: &Service,
    ns: &str,
    slices: &[&EndpointSlice],
    me: &Me,
    zone: Option<&str>,
) -> Vec<(u16, Option<String>, bool, Backend)> {
    let spec = &svc.spec;
    if spec.type_str() == "ExternalName" {
        return Vec::new();
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_AFFINITY, Duration::from_secs)
    });
    let mut out = Vec::new();
    for p in &spec.ports {
        let udp = match p.protocol_str() {
            "TCP" => false,
            "UDP" => true,
            _ => continue,
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let name = p.name.as_deref().unwrap_or_default();
        let mut tiers: [Vec<Target>; 3] = Default::default();
        for (t, endpoint_zone) in targets(slices, name) {
            let tier = if t.node.as_deref() == Some(me.node) {
                0
            } else if zone.is_some() && endpoint_zone.as_deref() == zone {
                1
            } else {
                2
            };
            tiers[tier].push(t);
        }
        let backend = Backend {
            service: format!(
                "{ns}/{}:{port}{}",
                svc.metadata.name,
                if udp { "/UDP" } else { "" }
            ),
            tiers: tiers.into_iter().filter(|t| !t.is_empty()).collect(),
            affinity,
            state: Default::default(),
        };
        out.push((port, p.name.clone(), udp, backend));
    }
    out
}

/// Where a service port (TCP, or UDP when `udp`) accepts traffic on this node: on each
/// cluster IP, on the node IP at its node port, and for a LoadBalancer service on a gateway
/// node, at the port itself. Headless services have none.
fn frontends(svc: &Service, port: u16, udp: bool, me: &Me, gateway: bool) -> Vec<SocketAddr> {
    let spec = &svc.spec;
    if spec.is_headless() {
        return Vec::new();
    }
    let mut out: Vec<SocketAddr> = spec
        .cluster_ip_list()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    let protocol = if udp { "UDP" } else { "TCP" };
    let Some(p) = spec
        .ports
        .iter()
        .find(|p| p.port == i32::from(port) && p.protocol_str() == protocol)
    else {
        return out;
    };
    if spec.wants_node_ports()
        && let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok())
    {
        out.push(SocketAddr::new(me.node_ip, np));
    }
    if gateway && spec.type_str() == "LoadBalancer" {
        out.push(SocketAddr::new(me.node_ip, port));
    }
    out
}

/// The Ready endpoints of a service port (slice ports match service ports by name), with
/// their zones; sorted, so every node balances over the same order.
fn targets(slices: &[&EndpointSlice], port_name: &str) -> Vec<(Target, Option<String>)> {
    let mut out = Vec::new();
    for s in slices {
        if !s.address_type.is_empty() && s.address_type != "IPv4" {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s.endpoints.iter().filter(|e| e.is_ready()) {
            for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let t = Target {
                    addr: SocketAddr::new(ip, port),
                    node: e.node_name.clone(),
                };
                out.push((t, e.zone.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A table with these frontends (and no endpoints) and local targets, for other modules'
/// tests.
#[cfg(test)]
pub fn with_frontends(frontends: &[SocketAddr], local_targets: &[SocketAddr]) -> Table {
    let backend = || {
        Arc::new(Backend {
            service: "test".into(),
            tiers: Vec::new(),
            affinity: None,
            state: Arc::default(),
        })
    };
    Table {
        frontends: frontends.iter().map(|a| (*a, backend())).collect(),
        local_targets: local_targets.iter().copied().map(MeshTarget::tcp).collect(),
        ..Table::default()
    }
}

#[cfg(test)]
mod tests;
