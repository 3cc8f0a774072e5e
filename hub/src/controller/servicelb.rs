//! The LoadBalancer controller (k3s's ServiceLB in spirit, without pods): a LoadBalancer
//! service is served by the agents of the gateway nodes (`service::is_gateway`) on its own
//! port and on its node ports, and its `status.loadBalancer.ingress` lists the InternalIPs
//! of those of them that are Ready. Other services carry no ingress. Ingresses get the same
//! addresses (`controller::ingress`): the gateways are the cluster's front doors.
use super::{Controller, Ctx, Requeue};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{Kind, LoadBalancerIngress, Node, Object, ObjectKey};
use flotilla_proto::service::{GATEWAY_LABEL, is_gateway};

pub(crate) const CONTROLLER: Controller = Controller {
    name: "servicelb",
    kind: Kind::Service,
    keys_of,
    all_on: gateways_changed,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Service => vec![e.key.clone()],
        _ => vec![],
    }
}

/// A node coming, going, turning Ready or not, moving address or gateway label: the
/// addresses of every LoadBalancer service (and Ingress) may change.
pub(crate) fn gateways_changed(e: &StoreEvent) -> bool {
    let view = |o: &Option<Object>| match o {
        Some(Object::Node(n)) => Some((
            n.is_ready(),
            n.internal_ip().map(str::to_string),
            n.metadata.labels.get(GATEWAY_LABEL).cloned(),
        )),
        _ => None,
    };
    e.key.kind == Kind::Node && view(&e.object) != view(&e.prev)
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, _: &Ctx) -> Result<Requeue, StoreError> {
    let Some(Object::Service(mut svc)) = tx.get(key)? else {
        return Ok(None);
    };
    let want = if svc.spec.type_str() == "LoadBalancer" {
        ingress(&super::nodes(tx)?)
    } else {
        Vec::new()
    };
    if svc.status.load_balancer.ingress != want {
        svc.status.load_balancer.ingress = want;
        tx.put(Object::Service(svc))?;
    }
    Ok(None)
}

/// The addresses a LoadBalancer service answers on (pure): Ready gateways' InternalIPs.
pub fn ingress(nodes: &[Node]) -> Vec<LoadBalancerIngress> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| n.is_ready() && is_gateway(n, nodes))
        .filter_map(|n| n.internal_ip().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip),
            hostname: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: bool, gateway: bool) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        if gateway {
            n.metadata
                .labels
                .insert(GATEWAY_LABEL.into(), "true".into());
        }
        n.status.addresses = vec![flotilla_proto::api::NodeAddress {
            type_: "InternalIP".into(),
            address: ip.into(),
        }];
        n.status.conditions = vec![flotilla_proto::api::Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }];
        n
    }

    fn ips(nodes: &[Node]) -> Vec<String> {
        ingress(nodes).into_iter().filter_map(|i| i.ip).collect()
    }

    #[test]
    fn ingress_is_the_ready_gateways_or_every_ready_node() {
        let plain = [
            node("a", "10.0.0.2", true, false),
            node("b", "10.0.0.1", true, false),
            node("c", "10.0.0.3", false, false),
        ];
        assert_eq!(ips(&plain), ["10.0.0.1", "10.0.0.2"]);
        let labelled = [
            node("a", "10.0.0.2", true, false),
            node("b", "10.0.0.1", true, true),
            node("c", "10.0.0.3", false, true),
        ];
        assert_eq!(ips(&labelled), ["10.0.0.1"]);
    }
}
