//! Per-node pod CIDRs (kube-controller-manager's node IPAM with `--allocate-node-cidrs`):
//! the hub splits its cluster CIDR into ranges of `--node-cidr-mask-size` and gives each
//! node one, as `spec.podCIDR`/`spec.podCIDRs`, when it registers.
//!
//! There is no allocator state besides the Nodes themselves: a range is taken exactly when a
//! stored Node has it. `assign` runs inside the node report's write transaction and reads
//! every other Node there, so two registrations can never get the same range (redb runs one
//! writer at a time), a deleted Node's range is free in the next transaction, and a hub
//! restart has nothing to rebuild.
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Kind, Node, Object, POD_CIDR_STATIC_ANNOTATION};
use ipnet::IpNet;
use std::net::IpAddr;

/// The event source of what this module records (kube-controller-manager's name for it).
pub const COMPONENT: &str = "cidrAllocator";

/// Beyond this many ranges per cluster CIDR the allocator refuses the config (Kubernetes'
/// limit: the mask may be at most 16 bits longer than the cluster's prefix).
const MAX_SPLIT_BITS: u8 = 16;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("--cluster-cidr {0:?}: not a CIDR (e.g. 10.42.0.0/16)")]
    NotACidr(String),
    #[error("--cluster-cidr {given}: host bits are set (the network is {network})")]
    HostBits { given: String, network: IpNet },
    #[error(
        "--node-cidr-mask-size {mask}: must be at least the prefix length of --cluster-cidr {cluster}"
    )]
    MaskTooShort { mask: u8, cluster: IpNet },
    #[error(
        "--node-cidr-mask-size {mask}: leaves no addresses for pods (at most {max} for {cluster})"
    )]
    MaskTooLong { mask: u8, max: u8, cluster: IpNet },
    #[error(
        "--node-cidr-mask-size {mask}: splits --cluster-cidr {cluster} into more than 2^16 node ranges (use at most /{max})"
    )]
    TooManyRanges { mask: u8, max: u8, cluster: IpNet },
}

/// The cluster CIDR and the size of each node's share of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    cluster: IpNet,
    mask: u8,
}

impl Allocator {
    pub fn new(cluster: &str, mask: u8) -> Result<Allocator, CidrError> {
        let net: IpNet = cluster
            .trim()
            .parse()
            .map_err(|_| CidrError::NotACidr(cluster.to_string()))?;
        if net.trunc() != net {
            return Err(CidrError::HostBits {
                given: cluster.to_string(),
                network: net.trunc(),
            });
        }
        if mask < net.prefix_len() {
            return Err(CidrError::MaskTooShort { mask, cluster: net });
        }
        // A node's range needs the bridge's gateway and at least one pod.
        let max = net.max_prefix_len() - 2;
        if mask > max {
            return Err(CidrError::MaskTooLong {
                mask,
                max,
                cluster: net,
            });
        }
        if mask - net.prefix_len() > MAX_SPLIT_BITS {
            return Err(CidrError::TooManyRanges {
                mask,
                max: net.prefix_len() + MAX_SPLIT_BITS,
                cluster: net,
            });
        }
        Ok(Allocator { cluster: net, mask })
    }

    pub fn cluster(&self) -> IpNet {
        self.cluster
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many node ranges the cluster CIDR holds.
    pub fn capacity(&self) -> usize {
        1usize << (self.mask - self.cluster.prefix_len())
    }

    /// Whether `net` is one of the ranges this allocator hands out.
    pub fn fits(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.mask && net.trunc() == *net && self.cluster.contains(net)
    }

    /// The lowest range that overlaps none of `used` (ranges of any size, inside the
    /// cluster CIDR or not), or None when all are taken.
    pub fn first_free<'a>(&self, used: impl IntoIterator<Item = &'a IpNet>) -> Option<IpNet> {
        let mut taken = vec![false; self.capacity()];
        let shift = u32::from(self.cluster.max_prefix_len() - self.mask);
        let base = number(self.cluster.network());
        let last = number(self.cluster.broadcast());
        for u in used {
            if !overlaps(u, &self.cluster) {
                continue;
            }
            let from = number(u.network()).max(base);
            let to = number(u.broadcast()).min(last);
            let (a, b) = ((from - base) >> shift, (to - base) >> shift);
            for t in &mut taken[a as usize..=b as usize] {
                *t = true;
            }
        }
        let i = taken.iter().position(|t| !t)?;
        let start = base + ((i as u128) << shift);
        let addr = match self.cluster {
            IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(start as u32)),
            IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(start)),
        };
        IpNet::new(addr, self.mask).ok()
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Whether two ranges share an address (never across address families).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What the agent said about its range in its report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reported {
    /// Nothing (a new agent, or one from before pod CIDRs).
    Nothing,
    /// Its `--pod-cidr` flag: the node uses this range whatever the hub says.
    Static(IpNet),
    /// The range it was given before (and uses now, e.g. a hub that lost its database).
    Cached(IpNet),
}

impl Reported {
    pub fn of(node: &Node) -> Reported {
        let Some(net) = node
            .spec
            .pod_cidr
            .as_deref()
            .and_then(|s| s.parse::<IpNet>().ok())
        else {
            return Reported::Nothing;
        };
        let fixed = node
            .metadata
            .annotations
            .get(POD_CIDR_STATIC_ANNOTATION)
            .is_some_and(|v| v == "true");
        if fixed {
            Reported::Static(net)
        } else {
            Reported::Cached(net)
        }
    }
}

/// What a node's `spec.podCIDR` becomes, and why not, when it gets none it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub cidr: Option<IpNet>,
    /// (reason, message) of a Warning event on the Node.
    pub warning: Option<(&'static str, String)>,
}

/// The rules, without the store: `stored` is the node's recorded range, `others` every other
/// node's (name, range).
///
/// - A static range is recorded unless another node's range overlaps it (then the node has
///   none on record: it does not use what the hub would give it).
/// - Otherwise a recorded range that is one of ours stays (the hub's word wins over an
///   agent's cached one; the agent moves over when it can). One that is not (a
///   `--pod-cidr` since dropped, or from an earlier `--cluster-cidr`) is replaced.
/// - A node without one gets its cached range back if that is one of ours and free, else
///   the lowest free range, else none and a warning.
pub fn decide(
    alloc: &Allocator,
    node: &str,
    stored: Option<IpNet>,
    reported: &Reported,
    others: &[(String, IpNet)],
) -> Decision {
    let clash = |net: &IpNet| others.iter().find(|(_, o)| overlaps(o, net));
    let keep = |cidr| Decision {
        cidr,
        warning: None,
    };
    match reported {
        Reported::Static(net) if stored == Some(*net) => keep(stored),
        Reported::Static(net) => match clash(net) {
            Some((other, theirs)) => Decision {
                cidr: None,
                warning: Some((
                    "CIDRAssignmentFailed",
                    format!(
                        "node {node}: --pod-cidr {net} overlaps the pod CIDR {theirs} of node {other}; the hub records no pod CIDR for this node"
                    ),
                )),
            },
            None => keep(Some(*net)),
        },
        _ if stored.is_some_and(|s| alloc.fits(&s)) => keep(stored),
        Reported::Cached(net) if alloc.fits(net) && clash(net).is_none() => keep(Some(*net)),
        _ => match alloc.first_free(others.iter().map(|(_, n)| n)) {
            Some(net) => keep(Some(net)),
            None => Decision {
                cidr: None,
                warning: Some((
                    "CIDRNotAvailable",
                    format!(
                        "node {node}: no pod CIDR is free: all {} /{} ranges of the cluster CIDR {} are assigned",
                        alloc.capacity(),
                        alloc.mask,
                        alloc.cluster
                    ),
                )),
            },
        },
    }
}

fn recorded(node: &Node) -> Option<IpNet> {
    node.spec.pod_cidr.as_deref().and_then(|s| s.parse().ok())
}

/// Applies [`decide`] to `next` (the node about to be stored) inside the node report's
/// transaction; returns the warning to record, if any. Other Nodes are read only when the
/// node's range may change.
pub fn assign(
    tx: &Tx<'_>,
    alloc: &Allocator,
    next: &mut Node,
    reported: &Reported,
) -> Result<Option<(&'static str, String)>, StoreError> {
    let stored = recorded(next);
    let settled = match reported {
        Reported::Static(net) => stored == Some(*net),
        _ => stored.is_some_and(|s| alloc.fits(&s)),
    };
    if settled {
        set(next, stored);
        return Ok(None);
    }
    let mut others = Vec::new();
    for obj in tx.list(Kind::Node, None)? {
        if let Object::Node(n) = obj
            && n.metadata.name != next.metadata.name
            && let Some(net) = recorded(&n)
        {
            others.push((n.metadata.name, net));
        }
    }
    let decision = decide(alloc, &next.metadata.name, stored, reported, &others);
    if decision.cidr != stored {
        tracing::info!(
            node = %next.metadata.name,
            pod_cidr = ?decision.cidr.map(|c| c.to_string()),
            "pod CIDR assigned"
        );
    }
    set(next, decision.cidr);
    Ok(decision.warning)
}

fn set(node: &mut Node, cidr: Option<IpNet>) {
    node.spec.pod_cidr = cidr.map(|c| c.to_string());
    node.spec.pod_cidrs = node.spec.pod_cidr.iter().cloned().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn others(list: &[(&str, &str)]) -> Vec<(String, IpNet)> {
        list.iter().map(|(n, c)| (n.to_string(), net(c))).collect()
    }

    #[test]
    fn configs_are_validated() {
        let a = Allocator::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(a.capacity(), 256);
        assert_eq!(Allocator::new("fd00:42::/56", 64).unwrap().capacity(), 256);
        let err = |c: &str, m| Allocator::new(c, m).unwrap_err().to_string();
        assert_eq!(
            err("10.42.0.0", 24),
            "--cluster-cidr \"10.42.0.0\": not a CIDR (e.g. 10.42.0.0/16)"
        );
        assert_eq!(
            err("10.42.1.0/16", 24),
            "--cluster-cidr 10.42.1.0/16: host bits are set (the network is 10.42.0.0/16)"
        );
        assert_eq!(
            err("10.42.0.0/16", 8),
            "--node-cidr-mask-size 8: must be at least the prefix length of --cluster-cidr 10.42.0.0/16"
        );
        assert_eq!(
            err("10.42.0.0/16", 31),
            "--node-cidr-mask-size 31: leaves no addresses for pods (at most 30 for 10.42.0.0/16)"
        );
        assert_eq!(
            err("10.0.0.0/8", 25),
            "--node-cidr-mask-size 25: splits --cluster-cidr 10.0.0.0/8 into more than 2^16 node ranges (use at most /24)"
        );
        // One range for the one node is allowed.
        assert_eq!(Allocator::new("10.42.0.0/24", 24).unwrap().capacity(), 1);
    }

    #[test]
    fn the_lowest_free_range_is_taken_and_freed_ones_are_reused() {
        let a = Allocator::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(a.first_free([]), Some(net("10.42.0.0/24")));
        let used = [
            net("10.42.0.0/24"),
            net("10.42.1.0/24"),
            net("10.42.3.0/24"),
        ];
        assert_eq!(a.first_free(&used), Some(net("10.42.2.0/24")));
        // 10.42.1.0/24 freed (its node deleted): it is the next one handed out.
        let used = [
            net("10.42.0.0/24"),
            net("10.42.2.0/24"),
            net("10.42.3.0/24"),
        ];
        assert_eq!(a.first_free(&used), Some(net("10.42.1.0/24")));
        // Ranges of other sizes and outside the cluster CIDR count by what they cover.
        let used = [
            net("10.42.0.0/23"),
            net("10.42.2.128/25"),
            net("192.168.0.0/24"),
        ];
        assert_eq!(a.first_free(&used), Some(net("10.42.3.0/24")));
        let used = [net("10.0.0.0/8")];
        assert_eq!(a.first_free(&used), None);
        let a6 = Allocator::new("fd00:42::/56", 64).unwrap();
        assert_eq!(
            a6.first_free(&[net("fd00:42::/64"), net("10.42.0.0/24")]),
            Some(net("fd00:42:0:1::/64"))
        );
    }

    #[test]
    fn an_exhausted_cluster_cidr_gives_none_and_says_why() {
        let a = Allocator::new("10.89.0.0/23", 24).unwrap();
        let full = others(&[("a", "10.89.0.0/24"), ("b", "10.89.1.0/24")]);
        assert_eq!(a.first_free(full.iter().map(|(_, n)| n)), None);
        let d = decide(&a, "c", None, &Reported::Nothing, &full);
        assert_eq!(d.cidr, None);
        assert_eq!(
            d.warning,
            Some((
                "CIDRNotAvailable",
                "node c: no pod CIDR is free: all 2 /24 ranges of the cluster CIDR 10.89.0.0/23 are assigned".to_string()
            ))
        );
        // Once a node is deleted, the waiting one gets its range.
        let d = decide(&a, "c", None, &Reported::Nothing, &full[1..]);
        assert_eq!(d.cidr, Some(net("10.89.0.0/24")));
        assert_eq!(d.warning, None);
    }

    #[test]
    fn decisions() {
        let a = Allocator::new("10.42.0.0/16", 24).unwrap();
        let rest = others(&[("a", "10.42.0.0/24"), ("b", "10.42.2.0/24")]);
        let decide = |stored: Option<&str>, reported: Reported| {
            decide(&a, "n", stored.map(net), &reported, &rest)
        };
        // A recorded range stays, whatever the agent cached.
        let d = decide(Some("10.42.5.0/24"), Reported::Cached(net("10.42.7.0/24")));
        assert_eq!(d.cidr, Some(net("10.42.5.0/24")));
        // A node without one gets its cached one back when it is free and ours...
        let d = decide(None, Reported::Cached(net("10.42.7.0/24")));
        assert_eq!(d.cidr, Some(net("10.42.7.0/24")));
        // ...and the lowest free one when it is taken or not one of ours.
        for cached in ["10.42.2.0/24", "10.43.0.0/24", "10.42.7.0/25"] {
            let d = decide(None, Reported::Cached(net(cached)));
            assert_eq!(d.cidr, Some(net("10.42.1.0/24")), "cached {cached}");
        }
        // A recorded range that is not one of ours (a --pod-cidr since dropped) is replaced.
        let d = decide(
            Some("192.168.7.0/24"),
            Reported::Cached(net("192.168.7.0/24")),
        );
        assert_eq!(d.cidr, Some(net("10.42.1.0/24")));
        // A static range is recorded when free, inside the cluster CIDR or not, replacing
        // an assigned one.
        let d = decide(
            Some("10.42.1.0/24"),
            Reported::Static(net("192.168.7.0/24")),
        );
        assert_eq!(d.cidr, Some(net("192.168.7.0/24")));
        // One that overlaps another node's is not, and the node is told why.
        let d = decide(Some("10.42.1.0/24"), Reported::Static(net("10.42.0.0/16")));
        assert_eq!(d.cidr, None);
        assert_eq!(
            d.warning.unwrap().1,
            "node n: --pod-cidr 10.42.0.0/16 overlaps the pod CIDR 10.42.0.0/24 of node a; the hub records no pod CIDR for this node"
        );
    }
}
