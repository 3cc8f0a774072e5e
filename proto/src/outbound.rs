//! Which hosts a WASI pod's outgoing wasi:http requests may reach. A WASI pod has no network
//! unless its pod (template) grants hosts with an annotation:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     flotilla.io/outbound-http: "web, *.svc.cluster.local, api.example.com"
//! ```
//!
//! An entry is a host name (matched without regard to case), `*.suffix` (any name ending in
//! `.suffix`), an IP address, or `*` (any host). A cluster name is granted by any name a pod
//! of its namespace could write for it: `web`, `web.default`, `web.default.svc` and
//! `web.default.svc.cluster.local` all grant a pod in `default` the Service `web`. Container pods have the network their
//! namespace gives them, as in Kubernetes; the annotation is for WASI pods.
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const OUTBOUND_HTTP_ANNOTATION: &str = "flotilla.io/outbound-http";

/// The hosts a pod may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    any: bool,
    /// Lowercase names and addresses.
    exact: Vec<String>,
    /// Lowercase, with their leading dot (`.example.com`).
    suffixes: Vec<String>,
}

impl Grant {
    /// The grant the annotations hold; `None` when there is none. Errors name the annotation
    /// under `at` (e.g. `spec.template.metadata.annotations`).
    pub fn from_annotations(
        at: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Grant>, String> {
        let Some(text) = annotations.get(OUTBOUND_HTTP_ANNOTATION) else {
            return Ok(None);
        };
        let at = format!("{at}[{OUTBOUND_HTTP_ANNOTATION}]");
        let mut grant = Grant::default();
        for entry in text.split(',').map(str::trim) {
            if entry == "*" {
                grant.any = true;
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                check_host(&at, entry, suffix)?;
                grant
                    .suffixes
                    .push(format!(".{}", suffix.to_ascii_lowercase()));
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                grant.exact.push(ip.to_string());
            } else {
                check_host(&at, entry, entry)?;
                grant
                    .exact
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        Ok(Some(grant))
    }

    /// Whether `host` (a name as written or resolved, or an address) is granted.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let host = host.trim_matches(['[', ']']).trim_end_matches('.');
        match host.parse::<IpAddr>() {
            // An address is granted only as itself (`*.0.1` is no grant of 10.0.0.1).
            Ok(ip) => self.exact.contains(&ip.to_string()),
            Err(_) => {
                let host = host.to_ascii_lowercase();
                self.exact.contains(&host)
                    || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
            }
        }
    }
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
    Err(format!(
        "{at}: {entry:?} is not a host name, an IP address, \"*.suffix\" or \"*\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Result<Option<Grant>, String> {
        let annotations = BTreeMap::from([(OUTBOUND_HTTP_ANNOTATION.to_owned(), text.to_owned())]);
        Grant::from_annotations("metadata.annotations", &annotations)
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
        let g = grant("*.0.1, *.1").unwrap().unwrap();
        for host in ["10.0.0.1", "127.0.0.1"] {
            assert!(!g.allows(host), "{host}");
        }
        assert!(grant("*").unwrap().unwrap().allows("anything.at.all"));
        assert_eq!(Grant::from_annotations("m", &BTreeMap::new()), Ok(None));
    }

    #[test]
    fn bad_entries_name_the_annotation() {
        for (text, bad) in [
            ("web,,db", ""),
            ("http://web", "http://web"),
            ("*.", "*."),
            ("a b", "a b"),
            ("-x", "-x"),
        ] {
            assert_eq!(
                grant(text),
                Err(format!(
                    "metadata.annotations[flotilla.io/outbound-http]: {bad:?} is not a host name, an IP address, \"*.suffix\" or \"*\""
                )),
                "{text}"
            );
        }
    }
}
