//! The scheduler: binds pending pods to nodes. Each pass is snapshot -> plan -> apply inside one
//! redb write transaction, so a plan never acts on stale state. Placement itself is pure.
use crate::Hub;
use crate::controller::{BatchKind, next_batch};
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Condition, Kind, Node, Object, Pod};
use flotilla_proto::labels;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let mut rx = hub.store.subscribe();
    pass_logged(&hub);
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            b = next_batch(&mut rx, Duration::from_secs(10), None, |e| match e.key.kind {
                Kind::Pod | Kind::Node => vec![()],
                _ => vec![],
            }) => b,
        };
        match batch {
            None => return,
            Some(BatchKind::Resync | BatchKind::Keys(_)) => pass_logged(&hub),
        }
    }
}

fn pass_logged(hub: &Hub) {
    if let Err(e) = hub.store.write(pass) {
        warn!(error = %e, "scheduling pass failed");
    }
}

fn pass(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let nodes: Vec<Node> = tx
        .list(Kind::Node, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut pods: Vec<Pod> = tx
        .list(Kind::Pod, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut pending: Vec<usize> = (0..pods.len())
        .filter(|&i| pods[i].spec.node_name.is_none() && !pods[i].is_terminal())
        .collect();
    pending.sort_by(|&a, &b| {
        pods[a]
            .metadata
            .creation_timestamp
            .cmp(&pods[b].metadata.creation_timestamp)
    });
    for i in pending {
        let decision = place(&pods[i], &nodes, &pods);
        let pod = &mut pods[i];
        let changed = match decision {
            Ok(node) => {
                info!(pod = %pod.metadata.name, node = %node, "scheduled");
                pod.spec.node_name = Some(node);
                set_scheduled(pod, "True", None, None);
                true
            }
            Err(message) => set_scheduled(pod, "False", Some("Unschedulable"), Some(message)),
        };
        if changed {
            tx.put(Object::Pod(pod.clone()))?;
        }
    }
    Ok(())
}

/// Sets the PodScheduled condition; returns whether anything changed.
fn set_scheduled(
    pod: &mut Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> bool {
    let cond = Condition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        ..Default::default()
    };
    let conds = &mut pod.status.conditions;
    if let Some(existing) = conds.iter_mut().find(|c| c.type_ == "PodScheduled") {
        if existing.status == cond.status && existing.message == cond.message {
            return false;
        }
        *existing = Condition {
            last_transition_time: Some(crate::store::now_rfc3339()),
            ..cond
        };
    } else {
        conds.push(Condition {
            last_transition_time: Some(crate::store::now_rfc3339()),
            ..cond
        });
    }
    true
}

fn owner_uid(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Picks a node for `pod`, or explains (the kubectl way) why none fits.
pub fn place(pod: &Pod, nodes: &[Node], pods: &[Pod]) -> Result<String, String> {
    let (want_cpu, want_mem) = pod.spec.requests();
    let want_ports: Vec<i32> = pod.spec.host_ports().collect();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<((usize, u64), &str)> = None;
    for node in nodes {
        let name = node.metadata.name.as_str();
        let on_node: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(name) && !p.is_terminal())
            .collect();
        let reason = if !node.is_ready() {
            Some("node(s) were not ready")
        } else if node.spec.unschedulable {
            Some("node(s) were unschedulable")
        } else if !labels::matches(&pod.spec.node_selector, &node.metadata.labels) {
            Some("node(s) didn't match Pod's node affinity/selector")
        } else if on_node
            .iter()
            .flat_map(|p| p.spec.host_ports())
            .any(|hp| want_ports.contains(&hp))
        {
            Some("node(s) didn't have free ports for the requested pod ports")
        } else {
            let (alloc_cpu, alloc_mem) = node.allocatable();
            let (used_cpu, used_mem) = on_node.iter().fold((0, 0), |(c, m), p| {
                let (pc, pm) = p.spec.requests();
                (c + pc, m + pm)
            });
            if used_cpu + want_cpu > alloc_cpu {
                Some("Insufficient cpu")
            } else if used_mem + want_mem > alloc_mem {
                Some("Insufficient memory")
            } else {
                // Score: fewer siblings (same owner) first, then the least requested memory share.
                let siblings = owner_uid(pod).map_or(0, |u| {
                    on_node.iter().filter(|p| owner_uid(p) == Some(u)).count()
                });
                let load = ((used_mem + want_mem) * 1000)
                    .checked_div(alloc_mem)
                    .unwrap_or(0);
                let score = (siblings, load);
                if best.is_none_or(|(s, n)| score < s || (score == s && name < n)) {
                    best = Some((score, name));
                }
                None
            }
        };
        if let Some(r) = reason {
            *reasons.entry(r).or_default() += 1;
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_string()),
        None => {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            Err(format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                detail.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::{Container, ContainerPort, OwnerReference};
    use flotilla_proto::quantity::Quantity;

    fn node(name: &str, cpu: &str, mem: &str, arch: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.metadata
            .labels
            .insert("kubernetes.io/arch".into(), arch.into());
        n.status
            .allocatable
            .insert("cpu".into(), Quantity(cpu.into()));
        n.status
            .allocatable
            .insert("memory".into(), Quantity(mem.into()));
        n.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        });
        n
    }

    fn pod(
        name: &str,
        cpu: &str,
        mem: &str,
        host_port: Option<i32>,
        owner: &str,
        on: Option<&str>,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        let mut c = Container {
            name: "c".into(),
            image: "x".into(),
            ..Default::default()
        };
        c.resources
            .requests
            .insert("cpu".into(), Quantity(cpu.into()));
        c.resources
            .requests
            .insert("memory".into(), Quantity(mem.into()));
        if let Some(hp) = host_port {
            c.ports.push(ContainerPort {
                container_port: 80,
                host_port: Some(hp),
                ..Default::default()
            });
        }
        p.spec.containers.push(c);
        p.metadata.owner_references.push(OwnerReference {
            uid: owner.into(),
            controller: Some(true),
            ..Default::default()
        });
        p.spec.node_name = on.map(String::from);
        p
    }

    #[test]
    fn spreads_replicas_of_one_owner() {
        let nodes = [
            node("a", "4", "4Gi", "amd64"),
            node("b", "4", "4Gi", "amd64"),
            node("c", "4", "4Gi", "amd64"),
        ];
        let existing = [
            pod("w1", "100m", "64Mi", None, "web", Some("a")),
            pod("w2", "100m", "64Mi", None, "web", Some("b")),
        ];
        assert_eq!(
            place(
                &pod("w3", "100m", "64Mi", None, "web", None),
                &nodes,
                &existing
            ),
            Ok("c".into())
        );
    }

    #[test]
    fn explains_why_nothing_fits() {
        let nodes = [
            node("a", "1", "128Mi", "amd64"),
            node("b", "4", "4Gi", "arm64"),
            node("c", "4", "4Gi", "amd64"),
        ];
        let existing = [pod("x", "10m", "1Mi", Some(8080), "other", Some("c"))];
        let mut p = pod("p", "100m", "256Mi", Some(8080), "web", None);
        p.spec
            .node_selector
            .insert("kubernetes.io/arch".into(), "amd64".into());
        assert_eq!(
            place(&p, &nodes, &existing),
            Err("0/3 nodes are available: 1 Insufficient memory, 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) didn't match Pod's node affinity/selector.".into())
        );
        let mut not_ready = node("d", "4", "4Gi", "amd64");
        not_ready.status.conditions[0].status = "Unknown".into();
        assert!(place(&pod("q", "1", "1Mi", None, "o", None), &[not_ready], &[]).is_err());
    }
}
