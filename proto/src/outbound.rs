//! Which hosts a WASI pod may reach. A WASI pod has no network unless its pod (template)
//! grants hosts with an annotation: `flotilla.io/outbound-http` for its outgoing wasi:http
//! requests, `flotilla.io/outbound-network` for its wasi:sockets (TCP connections, UDP
//! datagrams and name lookups):
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     flotilla.io/outbound-http: "web, *.svc.cluster.local, api.example.com"
//!     flotilla.io/outbound-network: "db, 192.168.1.0/24"
//! ```
//!
//! An entry is a host name (matched without regard to case), `*.suffix` (any name ending in
//! `.suffix`), an IP address, an address range (`10.0.0.0/8`), or `*` (any host). A cluster
//! name is granted by any name a pod of its namespace could write for it: `web`,
//! `web.default`, `web.default.svc` and `web.default.svc.cluster.local` all grant a pod in
//! `default` the Service `web`. Container pods have the network their namespace gives them,
//! as in Kubernetes; the annotations are for WASI pods.
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const OUTBOUND_HTTP_ANNOTATION: &str = "flotilla.io/outbound-http";
pub const OUTBOUND_NETWORK_ANNOTATION: &str = "flotilla.io/outbound-network";

/// The hosts a pod may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The annotation that granted it, for messages.
    annotation: &'static str,
    any: bool,
    /// Lowercase names and addresses.
    exact: Vec<String>,
    /// Lowercase, with their leading dot (`.example.com`).
    suffixes: Vec<String>,
    /// Address ranges.
    ranges: Vec<IpNet>,
}

impl Grant {
    /// The outgoing wasi:http grant the annotations hold; `None` when there is none. Errors
    /// name the annotation under `at` (e.g. `spec.template.metadata.annotations`).
    pub fn http(at: &str, annotations: &BTreeMap<String, String>) -> Result<Option<Grant>, String> {
        Grant::from_annotation(at, annotations, OUTBOUND_HTTP_ANNOTATION)
    }

    /// The wasi:sockets grant the annotations hold, as [`Grant::http`].
    pub fn network(
        at: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Grant>, String> {
        Grant::from_annotation(at, annotations, OUTBOUND_NETWORK_ANNOTATION)
    }

    fn from_annotation(
        at: &str,
        annotations: &BTreeMap<String, String>,
        annotation: &'static str,
    ) -> Result<Option<Grant>, String> {
        let Some(text) = annotations.get(annotation) else {
            return Ok(None);
        };
        let at = format!("{at}[{annotation}]");
        let mut grant = Grant {
            annotation,
            ..Grant::default()
        };
        for entry in text.split(',').map(str::trim) {
            if entry == "*" {
                grant.any = true;
            } else if entry.contains('/') {
                let range = entry.parse::<IpNet>().map_err(|_| bad_entry(&at, entry))?;
                grant.ranges.push(range.trunc());
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                check_host(&at, entry, suffix)?;
                grant
                    .suffixes
                    .push(format!(".{}", suffix.to_ascii_lowercase()));
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                grant.exact.push(ip.to_canonical().to_string());
            } else {
                check_host(&at, entry, entry)?;
                grant
                    .exact
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        Ok(Some(grant))
    }

    /// The annotation this grant comes from.
    pub fn annotation(&self) -> &'static str {
        self.annotation
    }

    /// Whether `host` (a name as written or resolved, or an address) is granted.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let host = host.trim_matches(['[', ']']).trim_end_matches('.');
        match host.parse::<IpAddr>() {
            Ok(ip) => self.allows_ip(ip),
            Err(_) => {
                let host = host.to_ascii_lowercase();
                self.exact.contains(&host)
                    || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
            }
        }
    }

    /// Whether the address `ip` is granted: as itself or in a range (`*.0.1` is no grant of
    /// 10.0.0.1).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.any
            || self.exact.contains(&ip.to_string())
            || self.ranges.iter().any(|r| r.contains(&ip))
    }
}

fn bad_entry(at: &str, entry: &str) -> String {
    format!(
        "{at}: {entry:?} is not a host name, an IP address, an address range, \"*.suffix\" or \"*\""
    )
}

/// `name` must be a DNS name: dot-separated labels of letters, digits and inner hyphens.
fn check_host(at: &str, entry: &str, name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        return Ok(());
    }
    Err(bad_entry(at, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Result<Option<Grant>, String> {
        let annotations = BTreeMap::from([(OUTBOUND_HTTP_ANNOTATION.to_owned(), text.to_owned())]);
        Grant::http("metadata.annotations", &annotations)
    }

    #[test]
    fn hosts_suffixes_addresses_and_any() {
        let g = grant("web, *.Example.com , 10.0.0.1, [fd00::1], api.test.")
            .unwrap()
            .unwrap();
        for host in [
            "web",
            "WEB",
            "a.example.com",
            "b.a.example.com.",
            "10.0.0.1",
            "[fd00::1]",
            "api.test",
        ] {
            assert!(g.allows(host), "{host}");
        }
        for host in [
            "web2",
            "example.com",
            "aexample.com",
            "10.0.0.2",
            "fd00::2",
            "test",
        ] {
            assert!(!g.allows(host), "{host}");
        }
        // A mapped address is granted as the IPv4 address it maps.
        let g = grant("::ffff:10.0.0.3").unwrap().unwrap();
        assert!(g.allows("10.0.0.3") && g.allows("[::ffff:10.0.0.3]"));
        let g = grant("*.0.1, *.1").unwrap().unwrap();
        for host in ["10.0.0.1", "127.0.0.1"] {
            assert!(!g.allows(host), "{host}");
        }
        assert!(grant("*").unwrap().unwrap().allows("anything.at.all"));
        assert_eq!(Grant::http("m", &BTreeMap::new()), Ok(None));
    }

    #[test]
    fn ranges_grant_their_addresses_and_network_grants_name_their_annotation() {
        let annotations = BTreeMap::from([(
            OUTBOUND_NETWORK_ANNOTATION.to_owned(),
            "192.168.1.7/24, fd00::/64, db".to_owned(),
        )]);
        let g = Grant::network("m", &annotations).unwrap().unwrap();
        assert_eq!(g.annotation(), OUTBOUND_NETWORK_ANNOTATION);
        for host in [
            "192.168.1.1",
            "192.168.1.255",
            "fd00::9",
            "db",
            "::ffff:192.168.1.3",
        ] {
            assert!(g.allows(host), "{host}");
        }
        for host in ["192.168.2.1", "fd01::1", "web"] {
            assert!(!g.allows(host), "{host}");
        }
        // The other annotation grants nothing here.
        assert_eq!(Grant::http("m", &annotations), Ok(None));
        let bad = BTreeMap::from([(
            OUTBOUND_NETWORK_ANNOTATION.to_owned(),
            "db, 10/8".to_owned(),
        )]);
        assert_eq!(
            Grant::network("spec.template.metadata.annotations", &bad),
            Err("spec.template.metadata.annotations[flotilla.io/outbound-network]: \"10/8\" is not a host name, an IP address, an address range, \"*.suffix\" or \"*\"".to_owned())
        );
    }

    #[test]
    fn bad_entries_name_the_annotation() {
        for (text, bad) in [
            ("web,,db", ""),
            ("http://web", "http://web"),
            ("*.", "*."),
            ("a b", "a b"),
            ("-x", "-x"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("web/24", "web/24"),
        ] {
            assert_eq!(
                grant(text),
                Err(format!(
                    "metadata.annotations[flotilla.io/outbound-http]: {bad:?} is not a host name, an IP address, an address range, \"*.suffix\" or \"*\""
                )),
                "{text}"
            );
        }
    }
}
