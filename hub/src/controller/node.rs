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
use std::time::{Duration, Instant, SystemTime};
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
    let mut passes: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let grace = hub.config.node_grace;
        let silent_for = |node: &Node, now: SystemTime| -> Duration {
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
        // A durable write every second would cost an fsync and the write lock for nothing:
        // the full pass runs when some node is silent or NotReady, and every 30 s for pods of
        // deleted nodes.
        passes += 1;
        let quiet = match hub.store.list(Kind::Node, None) {
            Ok((nodes, _)) => nodes.iter().all(|o| match o {
                Object::Node(n) => n.is_ready() && silent_for(n, SystemTime::now()) < grace / 2,
                _ => true,
            }),
            Err(_) => false,
        };
        if quiet && !passes.is_multiple_of(30) {
            continue;
        }
        let result = hub.store.write(|tx| {
            let now = SystemTime::now();
            reconcile(tx, now, grace, last_cut_off, |n| silent_for(n, now)).map(|c| (c, now))
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
    let mut silence: BTreeMap<String, Duration> = BTreeMap::new();
    let mut dropping = 0;
    for o in tx.list(Kind::Node, None)? {
        let Object::Node(mut node) = o else { continue };
        let silent = silent_for(&node);
        silence.insert(node.metadata.name.clone(), silent);
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
        // Lost once the hub itself has not heard the node for grace + lost-after (so a hub
        // that just restarted judges by what it observed, not by stored times), counted
        // afresh from the end of a cut-off; and only pods that were there before the node
        // went silent (a pod bound to it since, e.g. a DaemonSet's, never ran there).
        let since_cut_off =
            last_cut_off.map_or(Duration::MAX, |t| now.duration_since(t).unwrap_or_default());
        let silent = silence.get(&node_name).copied().unwrap_or_default();
        let went_silent = not_ready_since(node).unwrap_or(now);
        let predates = parse_time(Some(&pod.metadata.creation_timestamp))
            .is_some_and(|created| created < went_silent);
        let policy = Policy::of(&pod);
        let lost = match policy {
            Some(p) if !cut_off && predates => {
                silent >= grace.saturating_add(p.lost_after) && since_cut_off >= p.lost_after
            }
            _ => false,
        };
        // Declared lost now: keep-replacement deletes it, keep-original marks it.
        let newly_lost = lost && !disconnect::is_lost(&pod);
        if newly_lost {
            let message = format!(
                "Node {node_name} which was running pod {} is unresponsive",
                pod.metadata.name
            );
            let obj = Object::Pod(pod.clone());
            events::about(
                tx,
                &obj,
                EventType::Warning,
                NODE_LOST,
                &message,
                COMPONENT,
                now,
            )?;
        }
        match (lost, policy.map(|p| p.reconcile)) {
            (true, Some(Reconcile::KeepReplacement)) => {
                info!(pod = %key, node = %node_name, "pod lost with its node: deleting it for a replacement");
                gc::delete_cascade(tx, &key)?;
            }
            _ => {
                let mut updated = pod.clone();
                show_unknown(&mut updated, &node_name, now);
                if newly_lost {
                    info!(pod = %key, node = %node_name, "pod lost with its node: replacing it, keeping the original");
                    updated
                        .status
                        .conditions
                        .push(disconnect::lost_condition(&node_name, &stamp(now)));
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

#[cfg(test)]
mod tests {
    //! The lifecycle pass against a real store, with the clock and each node's silence
    //! injected.
    use super::*;
    use crate::store::Store;
    use flotilla_proto::disconnect::{LOST_AFTER_ANNOTATION, RECONCILE_ANNOTATION};

    const GRACE: Duration = Duration::from_secs(10);

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        t0: SystemTime,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb"), &[9u8; 32]).unwrap();
            let t0 = SystemTime::now();
            store
                .write(|tx| {
                    for name in ["n0", "n1", "n2"] {
                        let mut n = Node::default();
                        n.metadata.name = name.into();
                        let mut c = Condition::new("Ready", "True", "AgentReady", "");
                        c.last_transition_time = Some(stamp(t0));
                        n.status.conditions.push(c);
                        tx.put(Object::Node(n))?;
                    }
                    for (name, annotations) in [
                        ("plain", vec![]),
                        ("opt", vec![(LOST_AFTER_ANNOTATION, "10s")]),
                        (
                            "repl",
                            vec![
                                (LOST_AFTER_ANNOTATION, "10s"),
                                (RECONCILE_ANNOTATION, "keep-replacement"),
                            ],
                        ),
                    ] {
                        let mut p = Pod::default();
                        p.metadata.name = name.into();
                        p.metadata.namespace = Some("default".into());
                        for (k, v) in annotations {
                            p.metadata.annotations.insert(k.into(), v.into());
                        }
                        p.spec.node_name = Some("n1".into());
                        p.status.phase = "Running".into();
                        tx.put(Object::Pod(p))?;
                    }
                    Ok(())
                })
                .unwrap();
            Fixture {
                _dir: dir,
                store,
                t0,
            }
        }

        /// A pass `at` seconds after the start, with the nodes in `silent` quiet for
        /// `silent_secs`; returns (cut off, whether anything was written).
        fn pass(
            &self,
            at: u64,
            silent: &[&str],
            silent_secs: u64,
            last_cut_off: Option<u64>,
        ) -> (bool, bool) {
            let before = self.store.revision().unwrap();
            let now = self.t0 + Duration::from_secs(at);
            let cut = last_cut_off.map(|s| self.t0 + Duration::from_secs(s));
            let cut_off = self
                .store
                .write(|tx| {
                    reconcile(tx, now, GRACE, cut, |n| {
                        if silent.contains(&n.metadata.name.as_str()) {
                            Duration::from_secs(silent_secs)
                        } else {
                            Duration::ZERO
                        }
                    })
                })
                .unwrap();
            (cut_off, self.store.revision().unwrap() != before)
        }

        fn pod(&self, name: &str) -> Option<Pod> {
            match self
                .store
                .get(&ObjectKey::new(Kind::Pod, "default", name))
                .unwrap()
            {
                Some(Object::Pod(p)) => Some(p),
                _ => None,
            }
        }
    }

    #[test]
    fn a_silent_node_goes_unknown_once_and_opted_in_pods_are_lost_later() {
        let f = Fixture::new();
        assert_eq!(
            f.pass(1, &["n1"], 5, None),
            (false, false),
            "within the grace"
        );
        assert_eq!(f.pass(6, &["n1"], 11, None), (false, true));
        for name in ["plain", "opt", "repl"] {
            let p = f.pod(name).unwrap();
            assert_eq!(p.status.phase, "Unknown", "{name}");
            assert!(!disconnect::is_lost(&p), "{name}");
        }
        assert_eq!(
            f.pass(7, &["n1"], 12, None),
            (false, false),
            "a settled pass writes nothing"
        );
        // Silent for grace + lost-after: keep-original marks, keep-replacement deletes.
        assert_eq!(f.pass(16, &["n1"], 21, None), (false, true));
        assert!(!disconnect::is_lost(&f.pod("plain").unwrap()));
        assert!(disconnect::is_lost(&f.pod("opt").unwrap()));
        assert!(f.pod("repl").is_none());
        assert_eq!(f.pass(17, &["n1"], 22, None), (false, false));
    }

    #[test]
    fn nothing_is_lost_while_most_nodes_are_silent_nor_right_after() {
        let f = Fixture::new();
        // Two of three silent: the hub is the one cut off.
        assert!(f.pass(20, &["n1", "n2"], 30, None).0);
        assert!(!disconnect::is_lost(&f.pod("opt").unwrap()));
        assert!(f.pod("repl").is_some());
        // n2 is back (its heartbeat marks it Ready); n1 still silent, but the cut-off ended a
        // moment ago (second 20).
        f.store
            .write(|tx| {
                let key = ObjectKey::new(Kind::Node, "", "n2");
                let Some(Object::Node(mut n)) = tx.get(&key)? else {
                    panic!("n2")
                };
                n.status.conditions = vec![Condition::new("Ready", "True", "AgentReady", "")];
                tx.put(Object::Node(n)).map(|_| ())
            })
            .unwrap();
        let (cut_off, _) = f.pass(25, &["n1"], 35, Some(20));
        assert!(!cut_off);
        assert!(!disconnect::is_lost(&f.pod("opt").unwrap()));
        // A full lost-after after the cut-off: now it is lost.
        f.pass(31, &["n1"], 41, Some(20));
        assert!(disconnect::is_lost(&f.pod("opt").unwrap()));
    }
}
