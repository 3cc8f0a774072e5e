//! Service admission: the defaults the API server fills in, and the allocation of cluster
//! IPs (from `--service-cidr`, default 10.43.0.0/16 as in k3s) and node ports (30000–32767).
//!
//! As with pod CIDRs, there is no allocator state besides the Services themselves: `admit`
//! runs inside the apply's write transaction and reads every other Service there, so two
//! services never get the same address or node port, and a deleted Service's are free in
//! the next transaction.
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{CLUSTER_IP_NONE, IntOrString, Kind, Object, ObjectKey, Service};
use flotilla_proto::service::NODE_PORT_RANGE;
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceCidrError {
    #[error("--service-cidr {0:?}: not an IPv4 CIDR (e.g. 10.43.0.0/16)")]
    NotACidr(String),
    #[error("--service-cidr {given}: host bits are set (the network is {network})")]
    HostBits { given: String, network: Ipv4Net },
    #[error("--service-cidr {0}: too small (at least a /28)")]
    TooSmall(Ipv4Net),
}

/// The range cluster IPs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCidr {
    net: Ipv4Net,
}

impl ServiceCidr {
    pub fn new(cidr: &str) -> Result<ServiceCidr, ServiceCidrError> {
        let net: Ipv4Net = cidr
            .trim()
            .parse()
            .map_err(|_| ServiceCidrError::NotACidr(cidr.to_string()))?;
        if net.trunc() != net {
            return Err(ServiceCidrError::HostBits {
                given: cidr.to_string(),
                network: net.trunc(),
            });
        }
        if net.prefix_len() > 28 {
            return Err(ServiceCidrError::TooSmall(net));
        }
        Ok(ServiceCidr { net })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// Addresses a service may get: not the network or broadcast address, and not the
    /// first host, which Kubernetes keeps for the `kubernetes` service.
    fn usable(&self) -> (u32, u32) {
        let first = u32::from(self.net.network()) + 2;
        let last = u32::from(self.net.broadcast()) - 1;
        (first, last)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.usable();
        (first..=last).contains(&u32::from(ip))
    }
}

/// Fills in what the API server defaults and allocates what the Service needs, keeping what
/// it had (`old`): cluster IPs and node ports are immutable once given.
pub fn admit(
    tx: &Tx<'_>,
    cidr: &ServiceCidr,
    key: &ObjectKey,
    old: Option<&Service>,
    svc: &mut Service,
) -> Result<(), StoreError> {
    let invalid = |m: String| StoreError::Invalid(format!("{key}: {m}"));
    let others: Vec<Service> = tx
        .list(Kind::Service, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .filter(|s| {
            s.metadata.name != key.name || s.metadata.namespace.as_deref() != Some(&key.namespace)
        })
        .collect();
    let s = &mut svc.spec;
    s.type_.get_or_insert_with(|| "ClusterIP".into());
    s.session_affinity.get_or_insert_with(|| "None".into());
    for p in &mut s.ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
        p.target_port.get_or_insert(IntOrString::Int(p.port));
    }
    if s.type_str() == "ExternalName" {
        s.cluster_ip = None;
        s.cluster_ips.clear();
        return Ok(());
    }
    s.ip_families = vec!["IPv4".into()];
    s.ip_family_policy
        .get_or_insert_with(|| "SingleStack".into());
    s.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    let was = old
        .and_then(|o| o.spec.cluster_ip.clone())
        .filter(|ip| !ip.is_empty());
    let asked = s.cluster_ip.clone().filter(|ip| !ip.is_empty());
    let ip = match (was, asked) {
        (Some(was), Some(asked)) if was != asked => {
            return Err(invalid(format!(
                "spec.clusterIP: Invalid value: {asked:?}: field is immutable (it is {was:?})"
            )));
        }
        (Some(was), _) => was,
        (None, Some(asked)) if asked == CLUSTER_IP_NONE => asked,
        (None, Some(asked)) => {
            let ip: Ipv4Addr = asked.parse().map_err(|_| {
                invalid(format!(
                    "spec.clusterIP: Invalid value: {asked:?}: not an IPv4 address"
                ))
            })?;
            if !cidr.contains(ip) {
                return Err(invalid(format!(
                    "spec.clusterIP: Invalid value: {asked:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                    cidr.net()
                )));
            }
            if others
                .iter()
                .any(|o| o.spec.cluster_ip.as_deref() == Some(&asked))
            {
                return Err(invalid(format!(
                    "spec.clusterIP: Invalid value: {asked:?}: provided IP is already allocated"
                )));
            }
            asked
        }
        (None, None) => {
            let used: BTreeSet<u32> = others
                .iter()
                .filter_map(|o| o.spec.cluster_ip.as_deref()?.parse::<Ipv4Addr>().ok())
                .map(u32::from)
                .collect();
            let (first, last) = cidr.usable();
            let ip = probe(key, first, last, |n| !used.contains(&n)).ok_or_else(|| {
                invalid(format!(
                    "spec.clusterIP: failed to allocate a cluster IP: range {} is full",
                    cidr.net()
                ))
            })?;
            Ipv4Addr::from(ip).to_string()
        }
    };
    s.cluster_ips = vec![ip.clone()];
    s.cluster_ip = Some(ip);
    if !s.wants_node_ports() {
        if let Some(i) = s.ports.iter().position(|p| p.node_port.is_some()) {
            return Err(invalid(format!(
                "spec.ports[{i}].nodePort: Forbidden: may not be used when type is {}",
                s.type_str()
            )));
        }
        return Ok(());
    }
    let mut used: BTreeSet<(i32, String)> = others
        .iter()
        .flat_map(|o| &o.spec.ports)
        .filter_map(|p| Some((p.node_port?, p.protocol_str().to_string())))
        .collect();
    let kept = |port: i32, protocol: &str| {
        old.into_iter()
            .flat_map(|o| &o.spec.ports)
            .find(|p| p.port == port && p.protocol_str() == protocol)
            .and_then(|p| p.node_port)
    };
    for (i, p) in s.ports.iter_mut().enumerate() {
        let protocol = p.protocol_str().to_string();
        let port = match p.node_port.or_else(|| kept(p.port, &protocol)) {
            Some(np) => {
                if used.contains(&(np, protocol.clone())) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Invalid value: {np}: provided port is already allocated"
                    )));
                }
                np
            }
            None => {
                let (first, last) = (*NODE_PORT_RANGE.start(), *NODE_PORT_RANGE.end());
                let salt =
                    ObjectKey::new(Kind::Service, &key.namespace, &format!("{}/{i}", key.name));
                let n = probe(&salt, first as u32, last as u32, |n| {
                    !used.contains(&(n as i32, protocol.clone()))
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "spec.ports[{i}].nodePort: failed to allocate a node port: {first}-{last} are all in use"
                    ))
                })?;
                n as i32
            }
        };
        used.insert((port, protocol));
        p.node_port = Some(port);
    }
    Ok(())
}

/// The first number in `first..=last` that is `free`, starting at a point derived from the
/// key, so allocations spread over the range (as Kubernetes' random pick does) while
/// staying reproducible.
fn probe(key: &ObjectKey, first: u32, last: u32, free: impl Fn(u32) -> bool) -> Option<u32> {
    let size = u64::from(last - first) + 1;
    let digest = Sha256::digest(format!("{}/{}", key.namespace, key.name));
    let start = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) % size;
    (0..size)
        .map(|i| first + ((start + i) % size) as u32)
        .find(|n| free(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidrs_are_checked() {
        assert!(ServiceCidr::new("10.43.0.0/16").is_ok());
        assert_eq!(
            ServiceCidr::new("10.43.0.1/16").unwrap_err().to_string(),
            "--service-cidr 10.43.0.1/16: host bits are set (the network is 10.43.0.0/16)"
        );
        assert!(ServiceCidr::new("10.43.0.0/30").is_err());
        assert!(ServiceCidr::new("fd00::/108").is_err());
    }

    #[test]
    fn probing_skips_what_is_taken_and_wraps() {
        let key = ObjectKey::new(Kind::Service, "default", "web");
        let start = probe(&key, 10, 19, |_| true).unwrap();
        assert!((10..=19).contains(&start));
        let next = probe(&key, 10, 19, |n| n != start).unwrap();
        assert_eq!(next, if start == 19 { 10 } else { start + 1 });
        assert_eq!(probe(&key, 10, 19, |_| false), None);
    }
}
