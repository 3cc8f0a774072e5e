//! NoExecute taints: pods on a node with a NoExecute taint they do not tolerate are evicted at
//! once; pods that tolerate it for `tolerationSeconds` are evicted when that time has passed
//! since the taint was added. Their controllers then replace them elsewhere.
use super::{Controller, Ctx, Requeue, gc, never, parse_time, sooner};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{EventType, Kind, Object, ObjectKey, Pod, Taint};
use flotilla_proto::scheduling::NO_EXECUTE;
use std::time::{Duration, SystemTime};
use tracing::info;

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "taint-eviction-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "taint-eviction",
    kind: Kind::Node,
    keys_of,
    all_on: never,
    reconcile,
};

/// A node's taints changing, or a pod landing on a node.
fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match (&e.prev, &e.object) {
        (prev, Some(Object::Node(n))) => {
            let before = match prev {
                Some(Object::Node(p)) => p.spec.taints.as_slice(),
                _ => &[],
            };
            if before != n.spec.taints.as_slice() {
                vec![e.key.clone()]
            } else {
                vec![]
            }
        }
        (prev, Some(Object::Pod(p))) => {
            let was = match prev {
                Some(Object::Pod(old)) => old.spec.node_name.as_deref(),
                _ => None,
            };
            match p.spec.node_name.as_deref() {
                Some(node) if was != Some(node) => vec![ObjectKey::new(Kind::Node, "", node)],
                _ => vec![],
            }
        }
        _ => vec![],
    }
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let Some(Object::Node(node)) = tx.get(key)? else {
        return Ok(None);
    };
    let taints: Vec<&Taint> = node
        .spec
        .taints
        .iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .collect();
    if taints.is_empty() {
        return Ok(None);
    }
    let pods: Vec<Pod> = tx
        .list(Kind::Pod, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) if p.spec.node_name.as_deref() == Some(key.name.as_str()) => Some(p),
            _ => None,
        })
        .collect();
    let mut requeue = None;
    for pod in pods.iter().filter(|p| !p.is_terminal()) {
        match eviction_time(pod, &taints) {
            None => {}
            Some(at) if at <= ctx.now => {
                info!(pod = %pod.metadata.name, node = %key.name, "evicting pod: untolerated NoExecute taint");
                let pod_key = ObjectKey::new(
                    Kind::Pod,
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    &pod.metadata.name,
                );
                let message = format!(
                    "Marking for deletion Pod {}/{}",
                    pod_key.namespace, pod_key.name
                );
                gc::delete_cascade(tx, &pod_key)?;
                events::about(
                    tx,
                    &Object::Pod(pod.clone()),
                    EventType::Normal,
                    "TaintManagerEviction",
                    &message,
                    COMPONENT,
                    ctx.now,
                )?;
            }
            Some(at) => {
                let wait = at.duration_since(ctx.now).unwrap_or_default();
                requeue = sooner(requeue, Some(wait));
            }
        }
    }
    Ok(requeue)
}

/// When the pod must leave: now for a taint it does not tolerate; otherwise after the shortest
/// `tolerationSeconds` among the tolerations that match (Kubernetes' rule: limited tolerations
/// win over unlimited ones); never if no matching toleration has a limit.
fn eviction_time(pod: &Pod, taints: &[&Taint]) -> Option<SystemTime> {
    let mut at: Option<SystemTime> = None;
    for taint in taints {
        let matching: Vec<_> = pod
            .spec
            .tolerations
            .iter()
            .filter(|t| t.tolerates(taint))
            .collect();
        let due = if matching.is_empty() {
            SystemTime::UNIX_EPOCH
        } else {
            let Some(secs) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
                continue;
            };
            let added = parse_time(taint.time_added.as_deref()).unwrap_or(SystemTime::UNIX_EPOCH);
            added + Duration::from_secs(secs.max(0) as u64)
        };
        at = Some(at.map_or(due, |a| a.min(due)));
    }
    at
}
