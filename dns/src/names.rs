//! Cluster names resolved in process, with no DNS query: the addresses the node's server
//! answers for A and AAAA, for clients inside the agent (a WASI pod's outgoing wasi:http
//! requests), looked up the way a container pod's resolver would with the resolv.conf it
//! gets (`search ns.svc.D svc.D D`, `ndots:5`).

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use crate::Error;
use crate::model::Service;
use crate::server::parse_domain;
use crate::table::{Outcome, Table};

/// A name with fewer dots than this tries the search list before itself, as `ndots:5`.
const NDOTS: usize = 5;

/// The cluster's names, built from the same services as the server's table.
#[derive(Debug)]
pub struct Names {
    table: Table,
    /// The cluster domain, lowercase, without the trailing dot.
    domain: String,
}

/// What a host name resolves to. The deprecated `a-b-c-d.ns.pod.D` names, which the server
/// answers with whatever address they spell, are NotFound here: a client in the agent must
/// not reach an address through a name that merely spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A cluster name: the fully qualified name found (no trailing dot) and its addresses.
    Cluster { name: String, addrs: Vec<IpAddr> },
    /// A name inside the cluster domain that does not exist (or has no ready address).
    NotFound,
    /// Not a cluster name (no search expansion was one either): this name is for the node's
    /// resolvers. An ExternalName service resolves to its outside name here.
    Outside(String),
}

impl Names {
    /// The names of `services` in cluster domain `domain`.
    pub fn build(domain: &str, services: &[Service]) -> Result<Names, Error> {
        let origin = parse_domain(domain)?;
        Ok(Names {
            domain: origin.to_string().trim_end_matches('.').to_owned(),
            table: Table::build(&origin, 0, 0, services),
        })
    }

    /// The cluster domain (`cluster.local`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// An empty cluster, for before the first list of services.
    pub fn empty(domain: &str) -> Result<Names, Error> {
        Names::build(domain, &[])
    }

    /// Resolves `host` (a name, not an address) as a pod in `namespace` would: a relative
    /// name with fewer than five dots tries `host.namespace.svc.D`, `host.svc.D` and `host.D`
    /// before `host` itself; one with more tries itself first. A trailing dot means only
    /// `host`.
    pub fn resolve(&self, host: &str, namespace: &str) -> Resolved {
        let absolute = host.strip_suffix('.');
        let bare = absolute.unwrap_or(host);
        let itself = format!("{bare}.");
        let origin = self.table.origin();
        let search = [
            format!("{bare}.{namespace}.svc.{origin}"),
            format!("{bare}.svc.{origin}"),
            format!("{bare}.{origin}"),
        ];
        let candidates: Vec<&String> = match absolute {
            Some(_) => vec![&itself],
            None if bare.matches('.').count() < NDOTS => search.iter().chain([&itself]).collect(),
            None => [&itself].into_iter().chain(&search).collect(),
        };
        for candidate in candidates {
            let Ok(name) = Name::from_ascii(candidate) else {
                continue;
            };
            match self.addresses(&name) {
                Some(Ok(addrs)) => {
                    let name = candidate.trim_end_matches('.').to_ascii_lowercase();
                    return Resolved::Cluster { name, addrs };
                }
                Some(Err(alias)) => return Resolved::Outside(alias),
                None => {}
            }
        }
        match Name::from_ascii(&itself) {
            Ok(name) if self.table.in_zone(&name) => Resolved::NotFound,
            _ => Resolved::Outside(bare.to_owned()),
        }
    }

    /// The A and AAAA addresses of `name` (Ok), the outside name an alias ends in (Err), or
    /// None when the table has neither.
    fn addresses(&self, name: &Name) -> Option<Result<Vec<IpAddr>, String>> {
        let mut addrs = Vec::new();
        for qtype in [RecordType::A, RecordType::AAAA] {
            let Outcome::Authoritative(answer) = self.table.lookup(name, qtype) else {
                return None;
            };
            if let Some(target) = answer.chase {
                return Some(Err(target.to_string().trim_end_matches('.').to_owned()));
            }
            // Not the made-up `a-b-c-d.ns.pod` answers: they name any address at all.
            addrs.extend(answer.answers.into_iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        (!addrs.is_empty()).then_some(Ok(addrs))
    }
}

#[cfg(test)]
mod tests;
