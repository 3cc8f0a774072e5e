//! The DaemonSet controller: one pod of the template on every eligible node (its
//! `nodeSelector` and required node affinity match the node's labels, and it tolerates the
//! node's NoSchedule and NoExecute taints), bound to the node directly; a new node gets one,
//! a node that leaves or stops matching loses it. Template changes roll out node by node
//! within maxUnavailable (or maxSurge, starting the new pod before removing the old), or wait
//! for pods to be deleted by hand with OnDelete.
use super::deployment::template_hash;
use super::{
    Controller, Ctx, Requeue, availability, create_pod, delete_pod, gc, owner_keys,
    pod_from_template, sooner,
};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    CONTROLLER_REVISION_LABEL, DaemonSet, DaemonSetStatus, Kind, Node, Object, ObjectKey, Pod,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::info;

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "daemonset-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "daemonset",
    kind: Kind::DaemonSet,
    keys_of,
    all_on,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::DaemonSet => vec![e.key.clone()],
        Kind::Pod => owner_keys(e, Kind::DaemonSet),
        _ => vec![],
    }
}

/// Nodes coming, going or changing labels or taints concern every DaemonSet.
fn all_on(e: &StoreEvent) -> bool {
    if e.key.kind != Kind::Node {
        return false;
    }
    let placement = |o: &Option<Object>| match o {
        Some(Object::Node(n)) => Some((n.metadata.labels.clone(), n.spec.taints.clone())),
        _ => None,
    };
    e.prev.is_none() || e.object.is_none() || placement(&e.prev) != placement(&e.object)
}

/// The pods of one node, split by template.
#[derive(Default)]
struct OnNode<'a> {
    new: Vec<&'a Pod>,
    old: Vec<&'a Pod>,
}

pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let Some(Object::DaemonSet(mut ds)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let original = ds.clone();
    let hash = template_hash(&ds.spec.template);
    let eligible: BTreeSet<String> = tx
        .list(Kind::Node, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) if wants(&ds, &n) => Some(n.metadata.name),
            _ => None,
        })
        .collect();
    let pods: Vec<Pod> = super::owned(tx, Kind::Pod, &key.namespace, &ds.metadata.uid)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect();
    let owner = Object::DaemonSet(ds.clone());
    let now = ctx.now;
    let min_ready = Duration::from_secs(ds.spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut requeue = None;
    let mut available = |p: &Pod| {
        let (ok, later) = availability(p, min_ready, ctx.now);
        requeue = sooner(requeue, later);
        ok
    };

    let mut by_node: BTreeMap<String, OnNode> = BTreeMap::new();
    let mut misscheduled = 0;
    for p in &pods {
        let node = p.spec.node_name.clone().unwrap_or_default();
        if p.is_terminal() || !eligible.contains(&node) {
            // Finished (a daemon should not finish), or on a node that no longer wants it.
            misscheduled += !p.is_terminal() as i32;
            delete_pod(tx, &owner, p, COMPONENT, now)?;
            continue;
        }
        let slot = by_node.entry(node).or_default();
        if p.metadata.labels.get(CONTROLLER_REVISION_LABEL) == Some(&hash) {
            slot.new.push(p);
        } else {
            slot.old.push(p);
        }
    }
    // One pod per template and node: extras go.
    for slot in by_node.values_mut() {
        for list in [&mut slot.new, &mut slot.old] {
            list.sort_by_key(|p| std::cmp::Reverse(super::replicaset::deletion_rank(p)));
            for p in list.drain(1.min(list.len())..) {
                delete_pod(tx, &owner, p, COMPONENT, now)?;
            }
        }
    }

    // Nodes without a pod get one of the current template.
    let mut created = 0;
    for node in &eligible {
        if by_node
            .get(node)
            .is_none_or(|s| s.new.is_empty() && s.old.is_empty())
        {
            create_pod(tx, &owner, daemon_pod(&ds, &hash, node), COMPONENT, now)?;
            created += 1;
        }
    }
    if created > 0 {
        info!(daemonset = %key, created, "created pods");
    }

    // Rolling update of nodes still on an old template.
    if !ds.is_on_delete() {
        let (surge, max_unavailable) = ds.surge_and_unavailable(eligible.len() as i32);
        let mut unavailable = eligible.len() as i32
            - by_node
                .values()
                .filter(|s| {
                    s.new
                        .first()
                        .or(s.old.first())
                        .is_some_and(|p| available(p))
                })
                .count() as i32;
        let mut surging = by_node
            .values()
            .filter(|s| !s.new.is_empty() && !s.old.is_empty())
            .count() as i32;
        for (node, slot) in &by_node {
            let Some(old) = slot.old.first() else {
                continue;
            };
            match slot.new.first() {
                // Surge: the new pod runs beside the old one until it is available.
                Some(new) if available(new) => {
                    delete_pod(tx, &owner, old, COMPONENT, now)?;
                }
                Some(_) => {}
                None if surge > 0 => {
                    if surging < surge {
                        create_pod(tx, &owner, daemon_pod(&ds, &hash, node), COMPONENT, now)?;
                        surging += 1;
                    }
                }
                None => {
                    // An unavailable old pod costs nothing to replace; an available one
                    // only within maxUnavailable.
                    if !available(old) {
                        delete_pod(tx, &owner, old, COMPONENT, now)?;
                    } else if unavailable < max_unavailable {
                        delete_pod(tx, &owner, old, COMPONENT, now)?;
                        unavailable += 1;
                    }
                }
            }
        }
    }

    fn current<'a>(s: &OnNode<'a>) -> Option<&'a Pod> {
        s.new.first().or(s.old.first()).copied()
    }
    ds.status = DaemonSetStatus {
        desired_number_scheduled: eligible.len() as i32,
        current_number_scheduled: (by_node.len() + created) as i32,
        number_misscheduled: misscheduled,
        number_ready: by_node
            .values()
            .filter(|s| current(s).is_some_and(|p| p.is_ready()))
            .count() as i32,
        updated_number_scheduled: by_node.values().filter(|s| !s.new.is_empty()).count() as i32,
        number_available: by_node
            .values()
            .filter(|s| current(s).is_some_and(&mut available))
            .count() as i32,
        number_unavailable: 0,
        observed_generation: ds.metadata.generation,
    };
    ds.status.number_unavailable =
        (ds.status.desired_number_scheduled - ds.status.number_available).max(0);
    if ds != original {
        tx.put(Object::DaemonSet(ds))?;
    }
    Ok(requeue)
}

/// Whether the DaemonSet's pods belong on `node`.
fn wants(ds: &DaemonSet, node: &Node) -> bool {
    flotilla_proto::scheduling::daemon_fits(&ds.spec.template.spec, node)
}

fn daemon_pod(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let mut pod = pod_from_template(
        &ds.spec.template,
        &ds.metadata,
        Kind::DaemonSet,
        &ds.metadata.name,
    );
    pod.metadata
        .labels
        .insert(CONTROLLER_REVISION_LABEL.into(), hash.into());
    pod.spec.node_name = Some(node.into());
    pod
}
