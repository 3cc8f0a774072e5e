//! Where a WASI pod's outgoing wasi:http request goes: refused unless the pod's
//! `flotilla.io/outbound-http` grant names the host, and a cluster name (`web`,
//! `web.ns.svc.cluster.local`, a headless service's pods) resolved in process from the node's
//! copy of the cluster's names, as a container pod's resolver would with the node DNS. The
//! request then dials the cluster address: a cluster IP is this host's (the mesh's listener
//! takes it), a headless service's endpoint is a pod. Other names are left to the node's
//! resolvers.
use flotilla_dns::{Names, Resolved};
use flotilla_proto::outbound::Grant;
use http::Uri;
use http::uri::{Authority, Scheme};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// A pod's outbound grant and what it resolves names with.
pub struct Outbound {
    grant: Grant,
    namespace: String,
    names: watch::Receiver<Arc<Names>>,
    /// Turns over the addresses of a name with several (a headless service's pods).
    next: AtomicUsize,
}

/// Why a request was not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotGranted(String),
    /// A name inside the cluster domain that does not exist (or has no ready address).
    NotFound(String),
    /// TLS to a cluster address: its certificate could not be checked against the name.
    Tls(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotGranted(host) => write!(
                f,
                "{host} is not granted by the pod's {} annotation",
                flotilla_proto::outbound::OUTBOUND_HTTP_ANNOTATION
            ),
            Refusal::NotFound(host) => write!(f, "{host}: no such cluster name"),
            Refusal::Tls(host) => write!(
                f,
                "https to the cluster service {host} is not supported; use http (the mesh encrypts traffic between nodes)"
            ),
        }
    }
}

impl Outbound {
    pub fn new(grant: Grant, namespace: &str, names: watch::Receiver<Arc<Names>>) -> Outbound {
        Outbound {
            grant,
            namespace: namespace.to_owned(),
            names,
            next: AtomicUsize::new(0),
        }
    }

    /// The URI to dial for a request to `uri`: a cluster address in place of a cluster name
    /// (the Host header keeps the name), an ExternalName service's outside name, or `uri`
    /// itself.
    pub fn target(&self, uri: &Uri) -> Result<Option<Uri>, Refusal> {
        let Some(host) = uri.host() else {
            return Ok(None);
        };
        let granted = |name: &str| self.grant.allows(host) || self.grant.allows(name);
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return match granted(host) {
                true => Ok(None),
                false => Err(Refusal::NotGranted(host.to_owned())),
            };
        }
        let resolved = self.names.borrow().resolve(host, &self.namespace);
        match resolved {
            Resolved::Cluster { name, addrs } => {
                if !self.aliases(&name).any(|n| granted(&n)) {
                    return Err(Refusal::NotGranted(host.to_owned()));
                }
                if uri.scheme() == Some(&Scheme::HTTPS) {
                    return Err(Refusal::Tls(name));
                }
                let ip = addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()];
                let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
                Ok(Some(with_authority(uri, &addr.to_string())))
            }
            Resolved::NotFound if granted(host) => Err(Refusal::NotFound(host.to_owned())),
            Resolved::NotFound => Err(Refusal::NotGranted(host.to_owned())),
            Resolved::Outside(name) if !granted(&name) => Err(Refusal::NotGranted(host.to_owned())),
            Resolved::Outside(name) if name.eq_ignore_ascii_case(host) => Ok(None),
            Resolved::Outside(alias) => {
                let authority = match uri.port_u16() {
                    Some(port) => format!("{alias}:{port}"),
                    None => alias,
                };
                Ok(Some(with_authority(uri, &authority)))
            }
        }
    }

    /// The names a pod of this namespace may write for the cluster name `fqdn`
    /// (`web.ns.svc.D`: itself, `web.ns.svc`, `web.ns`, and in `ns` itself `web`).
    fn aliases<'a>(&'a self, fqdn: &'a str) -> impl Iterator<Item = String> + 'a {
        let base = fqdn.split_once(".svc.").map(|(base, _)| base);
        let local = base.and_then(|b| b.strip_suffix(&format!(".{}", self.namespace)));
        [Some(fqdn.to_owned()), base.map(|b| format!("{b}.svc"))]
            .into_iter()
            .chain([base, local].map(|b| b.map(str::to_owned)))
            .flatten()
    }
}

/// `uri` with its authority replaced (`authority` comes from a resolved name or address).
fn with_authority(uri: &Uri, authority: &str) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.authority = authority.parse::<Authority>().ok().or(parts.authority);
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_dns::{Service, ServiceKind};
    use std::collections::BTreeMap;

    fn outbound(grant: &str) -> Outbound {
        let ip = |s: &str| s.parse().unwrap();
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
            headless,
        ];
        let names = Names::build("cluster.local", &services).unwrap();
        let annotations = BTreeMap::from([(
            flotilla_proto::outbound::OUTBOUND_HTTP_ANNOTATION.to_owned(),
            grant.to_owned(),
        )]);
        let grant = Grant::from_annotations("m", &annotations).unwrap().unwrap();
        Outbound::new(grant, "default", watch::channel(Arc::new(names)).1)
    }

    fn target(o: &Outbound, uri: &str) -> Result<Option<String>, Refusal> {
        o.target(&uri.parse().unwrap())
            .map(|u| u.map(|u| u.to_string()))
    }

    #[test]
    fn cluster_names_dial_their_address_and_others_go_as_they_are() {
        let o = outbound("web, pods, db, example.org, 10.0.0.7");
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
    }

    #[test]
    fn ungranted_missing_and_tls_cluster_hosts_are_refused() {
        let o = outbound("web, ghost.default.svc.cluster.local");
        let refused = |r: fn(String) -> Refusal, h: &str| Err(r(h.to_owned()));
        assert_eq!(
            target(&o, "http://pods/"),
            refused(Refusal::NotGranted, "pods")
        );
        assert_eq!(
            target(&o, "http://example.org/"),
            refused(Refusal::NotGranted, "example.org")
        );
        assert_eq!(
            target(&o, "http://10.96.0.10/"),
            refused(Refusal::NotGranted, "10.96.0.10")
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
}
