//! The ReplicaSet controller: keeps `spec.replicas` pods of the template, replaces finished
//! ones, scales down the least valuable pods first, and reports replicas, ready and available
//! (Ready for `minReadySeconds`) counts.
use super::{
    Controller, Ctx, Requeue, availability, create_pod, delete_pod, gc, owner_keys,
    pod_from_template, pods_in, sooner,
};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{Kind, Object, ObjectKey, Pod, ReplicaSetStatus};
use flotilla_proto::disconnect;
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::Duration;
use tracing::info;

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "replicaset-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "replicaset",
    kind: Kind::ReplicaSet,
    keys_of,
    all_on: super::never,
    reconcile,
};

/// The ReplicaSets an event concerns: the ReplicaSet itself, or the owner of a pod.
fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::ReplicaSet => vec![e.key.clone()],
        Kind::Pod => owner_keys(e, Kind::ReplicaSet),
        _ => vec![],
    }
}

/// Re-reads current state and converges it; idempotent. Runs inside one write transaction.
pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let now = ctx.now;
    let Some(Object::ReplicaSet(rs)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let pods = pods_in(tx, &key.namespace)?;
    let mut current: Vec<&Pod> = Vec::new();
    // Pods declared lost with their node (proto::disconnect): replaced, but kept in case their
    // node comes back with them still running.
    let mut lost: Vec<&Pod> = Vec::new();
    let owner = Object::ReplicaSet(rs.clone());
    for p in pods
        .iter()
        .filter(|p| p.controller_uid() == Some(rs.metadata.uid.as_str()))
    {
        // A ReplicaSet's pods should run forever: a finished one is replaced.
        if p.is_terminal() {
            delete_pod(tx, &owner, p, COMPONENT, now)?;
        } else if disconnect::is_lost(p) {
            lost.push(p);
        } else {
            current.push(p);
        }
    }
    let want = rs.replicas() as usize;
    if current.len() > want {
        // A lost pod that came back (keep-original) outranks the pod started in its place.
        // Only an original that came back Running and Ready wins over its replacement.
        let names: BTreeSet<String> = current
            .iter()
            .filter(|p| p.is_ready() && p.status.phase == "Running")
            .map(|p| p.metadata.name.clone())
            .collect();
        let returned = |p: &Pod| {
            p.metadata
                .annotations
                .get(disconnect::REPLACES_ANNOTATION)
                .is_some_and(|orig| names.contains(orig))
        };
        current.sort_by_key(|p| (Reverse(returned(p)), deletion_rank(p)));
        for p in current.drain(..current.len() - want) {
            delete_pod(tx, &owner, p, COMPONENT, now)?;
        }
    }
    let created = want.saturating_sub(current.len());
    let mut unreplaced = lost.iter().filter(|l| {
        !current.iter().any(|p| {
            p.metadata.annotations.get(disconnect::REPLACES_ANNOTATION) == Some(&l.metadata.name)
        })
    });
    for _ in 0..created {
        let prefix = rs.metadata.name.clone();
        let mut pod = pod_from_template(&rs.spec.template, &rs.metadata, Kind::ReplicaSet, &prefix);
        if let Some(l) = unreplaced.next() {
            pod.metadata.annotations.insert(
                disconnect::REPLACES_ANNOTATION.into(),
                l.metadata.name.clone(),
            );
            info!(replicaset = %key, lost = %l.metadata.name, pod = %pod.metadata.name, "replacing a pod lost with its node");
        }
        create_pod(tx, &owner, pod, COMPONENT, now)?;
    }
    if created > 0 {
        info!(replicaset = %key, created, "created pods");
    }

    let min_ready = Duration::from_secs(rs.spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut requeue = None;
    let mut available = 0;
    for p in &current {
        let (ok, later) = availability(p, min_ready, now);
        available += ok as i32;
        requeue = sooner(requeue, later);
    }
    let status = ReplicaSetStatus {
        replicas: (current.len() + created) as i32,
        ready_replicas: current.iter().filter(|p| p.is_ready()).count() as i32,
        available_replicas: available,
        observed_generation: rs.metadata.generation,
    };
    if rs.status != status {
        let mut rs = rs;
        rs.status = status;
        tx.put(Object::ReplicaSet(rs))?;
    }
    Ok(requeue)
}

/// Kubernetes' order for scale-down (least valuable first): unscheduled before scheduled,
/// not running before running, not ready before ready, ready for less time before longer,
/// more restarts before fewer, newer before older.
pub(crate) fn deletion_rank(p: &Pod) -> impl Ord + use<> {
    (
        p.spec.node_name.is_some(),
        p.status.phase == "Running",
        p.is_ready(),
        Reverse(p.ready_since()),
        Reverse(p.restarts()),
        Reverse(p.metadata.creation_timestamp.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::{Condition, ObjectMeta};

    fn pod(name: &str, node: bool, ready: bool, restarts: i32, created: &str) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: name.into(),
                creation_timestamp: created.into(),
                ..Default::default()
            },
            ..Default::default()
        };
        if node {
            p.spec.node_name = Some("n".into());
            p.status.phase = "Running".into();
        }
        if ready {
            p.status.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            });
        }
        p.status
            .container_statuses
            .push(flotilla_proto::api::ContainerStatus {
                restart_count: restarts,
                ..Default::default()
            });
        p
    }

    #[test]
    fn scale_down_order() {
        let mut pods = [
            pod("ready-old", true, true, 0, "2026-01-01T00:00:00Z"),
            pod("unscheduled", false, false, 0, "2026-01-01T00:00:00Z"),
            pod("crashy", true, true, 5, "2026-01-01T00:00:00Z"),
            pod("unready", true, false, 0, "2026-01-01T00:00:00Z"),
            pod("ready-new", true, true, 0, "2026-01-02T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.as_str()).collect();
        assert_eq!(
            names,
            ["unscheduled", "unready", "crashy", "ready-new", "ready-old"]
        );
    }
}
