//! Where a WASI pod's outgoing traffic goes. A wasi:http request is refused unless the pod's
//! `flotilla.io/outbound-http` grant names the host, and a cluster name (`web`,
//! `web.ns.svc.cluster.local`, a headless service's pods) resolved in process from the node's
//! copy of the cluster's names, as a container pod's resolver would with the node DNS. The
//! request then dials the cluster address: a cluster IP is this host's (the mesh's listener
//! takes it), a headless service's endpoint is a pod. Other names are left to the node's
//! resolvers (the agent's own lookup, with the node's search list).
//!
//! wasi:sockets follow the `flotilla.io/outbound-network` grant the same way: a name lookup
//! answers only for granted names, from the same copy, and a socket may send to an address
//! the grant names or one a granted name resolved to for this pod.
//!
//! The node itself is reached only where a service is: an address of this host (the node
//! IP, a cluster IP, which is a local route here, loopback, unspecified) is dialled only at a
//! service port or an endpoint on this node, whatever the grant says, so a pod cannot reach
//! the node's own daemons through a name or address it was granted.
use crate::mesh::table::Table;
use flotilla_dns::{Names, Resolved};
use flotilla_proto::outbound::Grant;
use flotilla_proto::wire::MeshTarget;
use http::Uri;
use http::uri::{Authority, Scheme};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A pod's outbound grant and what it resolves names with.
pub struct Outbound {
    grant: Grant,
    namespace: String,
    names: watch::Receiver<Arc<Names>>,
    /// The service table: which ports of this host's addresses are services'.
    services: watch::Receiver<Arc<Table>>,
    node_ip: IpAddr,
    /// Turns over the addresses of a name with several (a headless service's pods).
    next: AtomicUsize,
    /// Addresses that granted names resolved to in the pod's wasi:sockets lookups: a socket
    /// may reach them as if they were granted.
    learned: Mutex<Learned>,
}

/// How many looked-up addresses a pod's grant remembers; past it the oldest learned go, and
/// a name looked up that long ago must be looked up again before it is dialled.
const MAX_LEARNED: usize = 1024;

/// Learned addresses, oldest first.
#[derive(Default)]
struct Learned {
    set: HashSet<IpAddr>,
    order: VecDeque<IpAddr>,
}

/// Why a request, connection or lookup was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The host, and the annotation whose grant does not name it.
    NotGranted(String, &'static str),
    /// A name inside the cluster domain that does not exist (or has no ready address).
    NotFound(String),
    /// TLS to a cluster address: its certificate could not be checked against the name.
    Tls(String),
    /// An address of this node at a port no service or endpoint of this node has.
    NodePort(SocketAddr),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotGranted(host, annotation) => {
                write!(
                    f,
                    "{host} is not granted by the pod's {annotation} annotation"
                )
            }
            Refusal::NotFound(host) => write!(f, "{host}: no such cluster name"),
            Refusal::Tls(host) => write!(
                f,
                "https to the cluster service {host} is not supported; use http (the mesh encrypts traffic between nodes)"
            ),
            Refusal::NodePort(addr) => write!(
                f,
                "{addr} is this node, where only service ports and this node's endpoints are reachable"
            ),
        }
    }
}

/// What a name a pod may use stands for.
enum Found {
    /// A cluster name and its addresses.
    Cluster { name: String, addrs: Vec<IpAddr> },
    /// A name outside the cluster, to be used as it is.
    Outside,
    /// An ExternalName service's target (granted itself).
    Alias(String),
}

/// What a wasi:sockets name lookup gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The name's addresses, known here.
    Addresses(Vec<IpAddr>),
    /// A granted name outside the cluster: the node's resolvers answer it (then
    /// [`Outbound::learn`] their answer).
    Outside(String),
}

impl Outbound {
    pub fn new(
        grant: Grant,
        namespace: &str,
        names: watch::Receiver<Arc<Names>>,
        services: watch::Receiver<Arc<Table>>,
        node_ip: IpAddr,
    ) -> Outbound {
        Outbound {
            grant,
            namespace: namespace.to_owned(),
            names,
            services,
            node_ip,
            next: AtomicUsize::new(0),
            learned: Mutex::new(Learned::default()),
        }
    }

    /// The URI to dial for a request to `uri`: a cluster address in place of a cluster name
    /// (the Host header keeps the name), an ExternalName service's outside name, or `uri`
    /// itself.
    pub fn target(&self, uri: &Uri) -> Result<Option<Uri>, Refusal> {
        let Some(host) = uri.host() else {
            return Ok(None);
        };
        let port = uri
            .port_u16()
            .unwrap_or(match uri.scheme() == Some(&Scheme::HTTPS) {
                true => 443,
                false => 80,
            });
        if let Some(ip) = literal(host) {
            if !self.grant.allows_ip(ip) {
                return Err(self.not_granted(host));
            }
            return self
                .reachable(SocketAddr::new(ip, port), false)
                .map(|_| None);
        }
        match self.find(host)? {
            Found::Cluster { name, addrs } => {
                if uri.scheme() == Some(&Scheme::HTTPS) {
                    return Err(Refusal::Tls(name));
                }
                let ip = addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()];
                let addr = self.reachable(SocketAddr::new(ip, port), false)?;
                with_authority(uri, &addr.to_string()).ok_or_else(|| self.not_granted(&name))
            }
            Found::Outside => Ok(None),
            Found::Alias(alias) => {
                if let Ok(ip) = alias.parse::<IpAddr>() {
                    self.reachable(SocketAddr::new(ip, port), false)?;
                }
                let authority = match uri.port_u16() {
                    Some(port) => format!("{alias}:{port}"),
                    None => alias.clone(),
                };
                with_authority(uri, &authority).ok_or_else(|| self.not_granted(&alias))
            }
        }
    }

    /// A wasi:sockets lookup of `name`: a cluster name's addresses (remembered as granted),
    /// an address as itself, or a granted outside name for the node's resolvers.
    pub fn lookup(&self, name: &str) -> Result<Lookup, Refusal> {
        if let Some(ip) = literal(name) {
            return Ok(Lookup::Addresses(vec![ip]));
        }
        match self.find(name)? {
            Found::Cluster { addrs, .. } => {
                self.learn(&addrs);
                Ok(Lookup::Addresses(addrs))
            }
            Found::Outside => Ok(Lookup::Outside(name.to_owned())),
            Found::Alias(alias) => match alias.parse::<IpAddr>() {
                Ok(ip) => {
                    self.learn(&[ip]);
                    Ok(Lookup::Addresses(vec![ip]))
                }
                Err(_) => Ok(Lookup::Outside(alias)),
            },
        }
    }

    /// Remembers addresses a granted name resolved to, so sockets may reach them.
    pub fn learn(&self, addrs: &[IpAddr]) {
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        for ip in addrs.iter().map(|ip| ip.to_canonical()) {
            if learned.set.insert(ip) {
                learned.order.push_back(ip);
            }
        }
        while learned.order.len() > MAX_LEARNED {
            if let Some(old) = learned.order.pop_front() {
                learned.set.remove(&old);
            }
        }
    }

    /// Whether a socket may send to (or hear from) `addr`: an address the grant names, or one
    /// a granted name resolved to, and on this node only a service port or a local endpoint.
    pub fn permits(&self, addr: SocketAddr, udp: bool) -> Result<(), Refusal> {
        let ip = addr.ip().to_canonical();
        let learned = || {
            self.learned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set
                .contains(&ip)
        };
        if !self.grant.allows_ip(ip) && !learned() {
            return Err(self.not_granted(&ip.to_string()));
        }
        self.reachable(SocketAddr::new(ip, addr.port()), udp)
            .map(|_| ())
    }

    /// What `host`, a name, stands for, if the grant lets the pod use it.
    fn find(&self, host: &str) -> Result<Found, Refusal> {
        let granted = |name: &str| self.grant.allows(host) || self.grant.allows(name);
        let resolved = self.names.borrow().resolve(host, &self.namespace);
        match resolved {
            Resolved::Cluster { name, addrs } => {
                if !self.aliases(&name).any(|n| granted(&n)) {
                    return Err(self.not_granted(host));
                }
                Ok(Found::Cluster { name, addrs })
            }
            Resolved::NotFound if granted(host) => Err(Refusal::NotFound(host.to_owned())),
            Resolved::NotFound => Err(self.not_granted(host)),
            Resolved::Outside(name) if !granted(&name) => Err(self.not_granted(host)),
            Resolved::Outside(name) if name.eq_ignore_ascii_case(host) => Ok(Found::Outside),
            // An ExternalName service: what it points at must be granted itself.
            Resolved::Outside(alias) if !self.grant.allows(&alias) => Err(self.not_granted(&alias)),
            Resolved::Outside(alias) => Ok(Found::Alias(alias)),
        }
    }

    fn not_granted(&self, host: &str) -> Refusal {
        Refusal::NotGranted(host.to_owned(), self.grant.annotation())
    }

    /// `addr`, unless it is this node's at a port that is no service's or local endpoint's
    /// (for TCP, or for UDP). This node is any address of its own: the node IP, loopback, a
    /// cluster IP, the pod bridge's gateway, any other address the kernel says is local.
    fn reachable(&self, addr: SocketAddr, udp: bool) -> Result<SocketAddr, Refusal> {
        // `::ffff:10.0.0.5` is 10.0.0.5 to a dual-stack socket.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let ip = addr.ip();
        let table = self.services.borrow();
        let (frontends, target) = match udp {
            true => (&table.udp_frontends, MeshTarget::Udp(addr)),
            false => (&table.frontends, MeshTarget::tcp(addr)),
        };
        // A service port or a local endpoint may be reached wherever it is, so the costlier
        // questions (a cluster IP's other ports, the kernel's bind test) are asked only of
        // the rest.
        if frontends.contains_key(&addr) || table.local_targets.contains(&target) {
            return Ok(addr);
        }
        let ports = SocketAddr::new(ip, 0)..=SocketAddr::new(ip, u16::MAX);
        let cluster_ip = || {
            [&table.frontends, &table.udp_frontends]
                .iter()
                .any(|f| f.range(ports.clone()).next().is_some())
        };
        let this_node = ip == self.node_ip
            || ip.is_loopback()
            || ip.is_unspecified()
            || cluster_ip()
            || is_local(ip);
        match this_node {
            true => Err(Refusal::NodePort(addr)),
            false => Ok(addr),
        }
    }

    /// The names a pod of this namespace may write for the cluster name `fqdn`
    /// (`web.ns.svc.D`: itself, `web.ns.svc`, `web.ns`, and in `ns` itself `web`).
    fn aliases<'a>(&'a self, fqdn: &'a str) -> impl Iterator<Item = String> + 'a {
        let domain = self.names.borrow().domain().to_owned();
        let base = fqdn.strip_suffix(&format!(".svc.{domain}"));
        let local = base.and_then(|b| b.strip_suffix(&format!(".{}", self.namespace)));
        [Some(fqdn.to_owned()), base.map(|b| format!("{b}.svc"))]
            .into_iter()
            .chain([base, local].map(|b| b.map(str::to_owned)))
            .flatten()
    }
}

/// `host` when it is an address (`10.0.0.1`, `[fd00::1]`, `fd00::1`) rather than a name.
fn literal(host: &str) -> Option<IpAddr> {
    host.trim_matches(['[', ']']).parse().ok()
}

/// Whether `ip` is an address of this host: it can be bound only then. Only "not an
/// address here" counts as not local; any other failure (out of descriptors) counts as local,
/// and so does everything under `ip_nonlocal_bind`: refused but at service ports, failing
/// closed.
fn is_local(ip: IpAddr) -> bool {
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::EADDRNOTAVAIL),
    }
}

/// `uri` with its authority replaced (`authority` comes from a resolved name or address);
/// None when that makes no URI.
fn with_authority(uri: &Uri, authority: &str) -> Option<Option<Uri>> {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.parse::<Authority>().ok()?);
    Some(Some(Uri::from_parts(parts).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_dns::{Service, ServiceKind};
    use std::collections::BTreeMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn outbound(grant: &str) -> Outbound {
        let service = |name: &str, kind| Service {
            namespace: "default".into(),
            name: name.into(),
            kind,
            ports: Vec::new(),
            endpoints: Vec::new(),
        };
        let mut headless = service("pods", ServiceKind::Headless);
        headless.endpoints = ["10.1.0.1", "10.1.0.2"]
            .into_iter()
            .map(|a| flotilla_dns::Endpoint {
                addresses: vec![ip(a)],
                hostname: None,
                ready: true,
                ports: Vec::new(),
            })
            .collect();
        let services = [
            service("web", ServiceKind::ClusterIp(vec![ip("10.96.0.10")])),
            service("db", ServiceKind::ExternalName("db.example.com".into())),
            service("lo", ServiceKind::ExternalName("127.0.0.1".into())),
            headless,
            Service {
                namespace: "svc".into(),
                ..service("web", ServiceKind::ClusterIp(vec![ip("10.96.0.11")]))
            },
        ];
        let names = Names::build("cluster.local", &services).unwrap();
        let annotations = BTreeMap::from([(
            flotilla_proto::outbound::OUTBOUND_HTTP_ANNOTATION.to_owned(),
            grant.to_owned(),
        )]);
        let grant = Grant::http("m", &annotations).unwrap().unwrap();
        // web's cluster IP serves port 80 and 8080; a WASI pod on this node (10.0.0.5)
        // serves 31000.
        let ports = ["10.96.0.10:80", "10.96.0.10:8080", "10.0.0.5:30080"].map(addr);
        let table = crate::mesh::table::with_frontends(&ports, &[addr("10.0.0.5:31000")]);
        let names = watch::channel(Arc::new(names)).1;
        let services = watch::channel(Arc::new(table)).1;
        Outbound::new(grant, "default", names, services, ip("10.0.0.5"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn not_granted(host: &str) -> Refusal {
        Refusal::NotGranted(
            host.to_owned(),
            flotilla_proto::outbound::OUTBOUND_HTTP_ANNOTATION,
        )
    }

    fn target(o: &Outbound, uri: &str) -> Result<Option<String>, Refusal> {
        o.target(&uri.parse().unwrap())
            .map(|u| u.map(|u| u.to_string()))
    }

    #[test]
    fn cluster_names_dial_their_address_and_others_go_as_they_are() {
        let o = outbound("web, pods, db, db.example.com, example.org, 10.0.0.7, 10.0.0.5");
        let web = Ok(Some("http://10.96.0.10:8080/x?y=1".to_owned()));
        assert_eq!(target(&o, "http://web:8080/x?y=1"), web);
        assert_eq!(
            target(&o, "http://web.default.svc.cluster.local/"),
            Ok(Some("http://10.96.0.10:80/".to_owned()))
        );
        // A headless service's pods take turns.
        let turns: Vec<_> = (0..4).map(|_| target(&o, "http://pods/")).collect();
        let one = |ip: &str| Ok(Some(format!("http://{ip}:80/")));
        assert_eq!(
            turns,
            [
                one("10.1.0.1"),
                one("10.1.0.2"),
                one("10.1.0.1"),
                one("10.1.0.2")
            ]
        );
        assert_eq!(
            target(&o, "https://db/"),
            Ok(Some("https://db.example.com/".to_owned()))
        );
        assert_eq!(target(&o, "https://example.org/"), Ok(None));
        assert_eq!(target(&o, "http://10.0.0.7:81/"), Ok(None));
        // This node at a node port and at a local endpoint.
        assert_eq!(target(&o, "http://10.0.0.5:30080/"), Ok(None));
        assert_eq!(target(&o, "http://10.0.0.5:31000/"), Ok(None));
    }

    #[test]
    fn this_node_aliases_and_other_namespaces_are_not_reached_through_a_grant() {
        let o = outbound("web, db, lo, 127.0.0.1, 10.0.0.5, *");
        let node_port = |a: &str| Err(Refusal::NodePort(addr(a)));
        // Only the cluster IP's service ports: the others are this host's.
        assert_eq!(target(&o, "http://web:22/"), node_port("10.96.0.10:22"));
        assert_eq!(
            target(&o, "http://10.96.0.10:22/"),
            node_port("10.96.0.10:22")
        );
        assert_eq!(target(&o, "http://10.0.0.5:22/"), node_port("10.0.0.5:22"));
        assert_eq!(
            target(&o, "http://127.0.0.1:8080/"),
            node_port("127.0.0.1:8080")
        );
        assert_eq!(target(&o, "http://[::1]/"), node_port("[::1]:80"));
        // An IPv4-mapped address is the IPv4 address it maps.
        assert_eq!(
            target(&o, "http://[::ffff:10.0.0.5]:22/"),
            node_port("10.0.0.5:22")
        );
        // Addresses the kernel holds as this host's are this node too.
        assert!(is_local(ip("127.0.0.1")) && !is_local(ip("192.0.2.1")));
        assert_eq!(target(&o, "http://lo/"), node_port("127.0.0.1:80"));
        // What an ExternalName points at must be granted itself.
        let o = outbound("db, web");
        let refused = Err(not_granted("db.example.com"));
        assert_eq!(target(&o, "http://db/"), refused);
        // `web.svc` is the Service web of the namespace svc, not this namespace's web.
        let refused = Err(not_granted("web.svc"));
        assert_eq!(target(&o, "http://web.svc/"), refused);
        let o = outbound("web.svc");
        assert_eq!(
            target(&o, "http://web.svc/"),
            Ok(Some("http://10.96.0.11:80/".to_owned()))
        );
    }

    #[test]
    fn ungranted_missing_and_tls_cluster_hosts_are_refused() {
        let o = outbound("web, ghost.default.svc.cluster.local");
        let refused = |r: fn(String) -> Refusal, h: &str| Err(r(h.to_owned()));
        assert_eq!(target(&o, "http://pods/"), Err(not_granted("pods")));
        assert_eq!(
            target(&o, "http://example.org/"),
            Err(not_granted("example.org"))
        );
        assert_eq!(
            target(&o, "http://10.96.0.10/"),
            Err(not_granted("10.96.0.10"))
        );
        let ghost = "ghost.default.svc.cluster.local";
        let url = format!("http://{ghost}/");
        assert_eq!(target(&o, &url), refused(Refusal::NotFound, ghost));
        assert_eq!(
            target(&o, "https://web/"),
            refused(Refusal::Tls, "web.default.svc.cluster.local")
        );
        // The fully qualified name of a granted service is granted.
        let o = outbound("web.default.svc.cluster.local");
        assert_eq!(
            target(&o, "http://web/"),
            Ok(Some("http://10.96.0.10:80/".to_owned()))
        );
        let o = outbound("*.svc.cluster.local");
        assert!(target(&o, "http://web/").is_ok());
        assert!(target(&o, "http://example.org/").is_err());
    }

    #[test]
    fn socket_lookups_answer_granted_names_and_teach_their_addresses() {
        let o = outbound("web, pods, db, db.example.com, example.org, 10.0.0.7, 192.168.0.0/16");
        let addresses =
            |a: &[&str]| Ok::<_, Refusal>(Lookup::Addresses(a.iter().map(|a| ip(a)).collect()));
        // Before any lookup, a cluster IP is no granted address.
        assert_eq!(
            o.permits(addr("10.96.0.10:80"), false),
            Err(not_granted("10.96.0.10"))
        );
        assert_eq!(o.lookup("web"), addresses(&["10.96.0.10"]));
        assert_eq!(o.lookup("pods"), addresses(&["10.1.0.1", "10.1.0.2"]));
        assert_eq!(o.lookup("10.9.9.9"), addresses(&["10.9.9.9"]));
        assert_eq!(o.lookup("db"), Ok(Lookup::Outside("db.example.com".into())));
        assert_eq!(
            o.lookup("example.org"),
            Ok(Lookup::Outside("example.org".into()))
        );
        assert_eq!(o.lookup("example.net"), Err(not_granted("example.net")));
        assert_eq!(
            o.lookup("ghost.default.svc.cluster.local"),
            Err(not_granted("ghost.default.svc.cluster.local"))
        );
        // What the lookups found may be reached, at service ports only where it is this host.
        assert_eq!(o.permits(addr("10.96.0.10:80"), false), Ok(()));
        assert_eq!(
            o.permits(addr("10.96.0.10:22"), false),
            Err(Refusal::NodePort(addr("10.96.0.10:22")))
        );
        assert_eq!(o.permits(addr("10.1.0.2:5432"), false), Ok(()));
        assert_eq!(o.permits(addr("10.1.0.2:53"), true), Ok(()));
        // Granted addresses and ranges; the node only at its services and endpoints.
        assert_eq!(o.permits(addr("10.0.0.7:1"), true), Ok(()));
        assert_eq!(o.permits(addr("[::ffff:192.168.4.4]:5432"), false), Ok(()));
        assert_eq!(
            o.permits(addr("10.0.0.8:1"), false),
            Err(not_granted("10.0.0.8"))
        );
        // An outside name's answer, once the node's resolvers gave it.
        assert_eq!(
            o.permits(addr("93.184.215.14:443"), false),
            Err(not_granted("93.184.215.14"))
        );
        o.learn(&[ip("93.184.215.14")]);
        assert_eq!(o.permits(addr("93.184.215.14:443"), false), Ok(()));
        let o = outbound("*");
        assert_eq!(o.permits(addr("10.0.0.5:30080"), false), Ok(()));
        assert_eq!(
            o.permits(addr("10.0.0.5:30080"), true),
            Err(Refusal::NodePort(addr("10.0.0.5:30080")))
        );
        assert_eq!(
            o.permits(addr("127.0.0.1:53"), true),
            Err(Refusal::NodePort(addr("127.0.0.1:53")))
        );
    }
}
