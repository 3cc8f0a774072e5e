//! Node lifecycle, on the hub's clock only: a node whose agent has been silent for the grace
//! period is marked Ready=Unknown, so the scheduler stops placing pods there, and its pods are
//! shown as Unknown. They keep running on the agent (autonomy) and are neither evicted nor
//! duplicated, unless their workload opted into replacement (`proto::disconnect`): once the
//! node has been silent for `lost-after`, such a pod is declared lost (keep-original: its
//! controller starts a replacement and the original is kept as a candidate survivor) or deleted
//! (keep-replacement). If more than half of the nodes are silent at once, the hub assumes it is
//! the one cut off and declares nothing lost. Pods bound to nodes that no longer exist are
//! deleted (Kubernetes' pod garbage collector).
use super::{gc, parse_time, stamp};
use crate::Hub;
use crate::events;
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Condition, EventType, Kind, Node, Object, ObjectKey, Pod};
use flotilla_proto::disconnect::{self, NODE_LOST, Policy, Reconcile};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The source component of the node lifecycle's events (Kubernetes' name).
pub(crate) const COMPONENT: &str = "node-controller";

pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // When the hub last judged itself cut off: lost-after clocks restart from there, since
    // while cut off it could not tell a silent node from its own isolation.
    let mut last_cut_off: Option<SystemTime> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let grace = hub.config.node_grace;
        let result = hub.store.write(|tx| {
            let now = SystemTime::now();
            let silent_for = |node: &Node| -> Duration {
                hub.agents
                    .last_seen(&node.metadata.name)
                    .unwrap_or_else(|| {
                        // Not heard from since the hub started: judge by the stored heartbeat, but
                        // give agents one grace period to reconnect after a hub restart.
                        let stored = heartbeat(node)
                            .and_then(|t| now.duration_since(t).ok())
                            .unwrap_or(Duration::MAX);
                        stored.min(started.elapsed())
                    })
            };
            reconcile(tx, now, grace, last_cut_off, silent_for).map(|c| (c, now))
        });
        match result {
            Ok((cut_off, now)) => {
                if cut_off
                    && last_cut_off.is_none_or(|t| {
                        now.duration_since(t).unwrap_or_default() > Duration::from_secs(2)
                    })
                {
                    warn!("most nodes are silent: assuming the hub is cut off, replacing nothing");
                }
                if cut_off {
                    last_cut_off = Some(now);
                }
            }
            Err(e) => warn!(error = %e, "node lifecycle pass failed"),
        }
    }
}

/// One pass in one transaction (so an agent's report committed meanwhile is never overwritten
/// with a stale verdict). Returns whether the hub considers itself cut off.
///
/// Nodes that drop together are not all detected in the same pass (their last heartbeats
/// were up to one interval apart), so for the cut-off rule a node counts as dropping once it
/// has been silent for half the grace period, not only once it is marked NotReady. And once the
/// hub hears most nodes again, the ones still silent get a full `lost-after` from that moment
/// (`last_cut_off`): nodes come back one by one.
pub(crate) fn reconcile(
    tx: &mut Tx<'_>,
    now: SystemTime,
    grace: Duration,
    last_cut_off: Option<SystemTime>,
    silent_for: impl Fn(&Node) -> Duration,
) -> Result<bool, StoreError> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut dropping = 0;
    for o in tx.list(Kind::Node, None)? {
        let Object::Node(mut node) = o else { continue };
        let silent = silent_for(&node);
        if node.is_ready() && silent >= grace {
            info!(node = %node.metadata.name, "node stopped reporting");
            mark_unknown(&mut node, now);
            let stored = tx.put(Object::Node(node.clone()))?;
            let message = format!("Node {} status is now: NodeNotReady", node.metadata.name);
            events::about(
                tx,
                &stored,
                EventType::Normal,
                "NodeNotReady",
                &message,
                COMPONENT,
                now,
            )?;
        }
        if !node.is_ready() || silent >= grace / 2 {
            dropping += 1;
        }
        nodes.insert(node.metadata.name.clone(), node);
    }
    let cut_off = dropping * 2 > nodes.len();
    for o in tx.list(Kind::Pod, None)? {
        let Object::Pod(pod) = o else { continue };
        let Some(node_name) = pod.spec.node_name.clone() else {
            continue;
        };
        let key = pod_key(&pod);
        let Some(node) = nodes.get(&node_name) else {
            info!(pod = %key, node = %node_name, "deleting pod of a node that no longer exists");
            gc::delete_cascade(tx, &key)?;
            continue;
        };
        if node.is_ready() || pod.is_terminal() {
            continue;
        }
        let silent_since = not_ready_since(node)
            .unwrap_or(now)
            .max(last_cut_off.unwrap_or(UNIX_EPOCH));
        let lost = match Policy::of(&pod) {
            Some(p) if !cut_off => {
                now.duration_since(silent_since).unwrap_or_default() >= p.lost_after
            }
            _ => false,
        };
        let lost_message = || {
            format!(
                "Node {node_name} which was running pod {} is unresponsive",
                pod.metadata.name
            )
        };
        match (lost, Policy::of(&pod).map(|p| p.reconcile)) {
            (true, Some(Reconcile::KeepReplacement)) => {
                info!(pod = %key, node = %node_name, "pod lost with its node: deleting it for a replacement");
                gc::delete_cascade(tx, &key)?;
                let obj = Object::Pod(pod.clone());
                events::about(
                    tx,
                    &obj,
                    EventType::Warning,
                    NODE_LOST,
                    &lost_message(),
                    COMPONENT,
                    now,
                )?;
            }
            _ => {
                let mut updated = pod.clone();
                show_unknown(&mut updated, &node_name, now);
                if lost && !disconnect::is_lost(&updated) {
                    info!(pod = %key, node = %node_name, "pod lost with its node: replacing it, keeping the original");
                    updated
                        .status
                        .conditions
                        .push(disconnect::lost_condition(&node_name, &stamp(now)));
                    let obj = Object::Pod(pod.clone());
                    events::about(
                        tx,
                        &obj,
                        EventType::Warning,
                        NODE_LOST,
                        &lost_message(),
                        COMPONENT,
                        now,
                    )?;
                }
                if updated.status != pod.status {
                    tx.put(Object::Pod(updated))?;
                }
            }
        }
    }
    Ok(cut_off)
}

fn pod_key(p: &Pod) -> ObjectKey {
    ObjectKey::new(
        Kind::Pod,
        p.metadata.namespace.as_deref().unwrap_or("default"),
        &p.metadata.name,
    )
}

fn heartbeat(node: &Node) -> Option<SystemTime> {
    parse_time(
        node.status
            .conditions
            .iter()
            .find_map(|c| c.last_heartbeat_time.as_deref()),
    )
}

/// When the node's Ready condition last left True (the hub wrote that time, on its clock).
fn not_ready_since(node: &Node) -> Option<SystemTime> {
    parse_time(
        node.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.as_deref()),
    )
}

fn mark_unknown(node: &mut Node, now: SystemTime) {
    for c in node
        .status
        .conditions
        .iter_mut()
        .filter(|c| c.type_ == "Ready")
    {
        c.status = "Unknown".into();
        c.reason = Some("NodeStatusUnknown".into());
        c.message = Some("agent stopped posting node status".into());
        c.last_transition_time = Some(stamp(now));
    }
}

/// A pod on a silent node: phase Unknown and Ready Unknown, as Kubernetes shows it. The agent's
/// next report replaces the whole status again.
fn show_unknown(pod: &mut Pod, node: &str, now: SystemTime) {
    pod.status.phase = "Unknown".into();
    pod.status.reason = Some(disconnect::NODE_LOST.into());
    pod.status.message = Some(format!(
        "node {node} is not reporting; the pod is believed to be still running there"
    ));
    match pod
        .status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == "Ready")
    {
        Some(c) if c.status == "Unknown" => {}
        Some(c) => {
            c.status = "Unknown".into();
            c.reason = Some("NodeNotReady".into());
            c.last_transition_time = Some(stamp(now));
        }
        None => {
            let mut c = Condition::new("Ready", "Unknown", "NodeNotReady", "");
            c.message = None;
            c.last_transition_time = Some(stamp(now));
            pod.status.conditions.push(c);
        }
    }
}
