//! The supervisor: one loop over a closed set of events. It compares the desired pods (from the
//! cache) with the running workers through the pure `plan`, and collects pod statuses for sync.
use crate::Shared;
use flotilla_proto::api::{EventType, Pod, PodStatus};
use flotilla_proto::wire::PodReport;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub enum Event {
    /// The desired set in the cache changed.
    Desired,
    /// A worker's view of its pod.
    Status { uid: String, status: Box<PodStatus> },
    /// A worker finished (its pod was removed, or it stopped for good).
    Exited { uid: String },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Start(String),
    Stop(String),
}

/// What to start and stop. Pod specs are immutable, so a pod is identified by its uid alone:
/// a pod that keeps its uid keeps running, which is why a reconnect restarts nothing.
pub fn plan(desired: &BTreeSet<String>, running: &BTreeSet<String>) -> Vec<Op> {
    let stops = running.difference(desired).map(|u| Op::Stop(u.clone()));
    let starts = desired.difference(running).map(|u| Op::Start(u.clone()));
    stops.chain(starts).collect()
}

/// Status reports keyed by pod uid; sync sends them to the hub.
pub type Reports = BTreeMap<String, PodReport>;

struct Worker {
    cancel: CancellationToken,
    pod: Pod,
}

pub async fn run(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    reports: watch::Sender<Reports>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    // Stopping workers are kept until they exit so their logs can be removed afterwards.
    let mut stopping: BTreeMap<String, Pod> = BTreeMap::new();
    let _ = events_tx.send(Event::Desired);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = events.recv() => match e { Some(e) => e, None => break },
        };
        match event {
            Event::Desired => {
                let desired = match shared.cache.pods() {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "failed to read desired pods from the cache");
                        continue;
                    }
                };
                let running: BTreeSet<String> = workers.keys().cloned().collect();
                let wanted: BTreeSet<String> = desired.keys().cloned().collect();
                for op in plan(&wanted, &running) {
                    match op {
                        Op::Start(uid) => {
                            let pod = desired[&uid].clone();
                            info!(pod = %pod.metadata.name, pod.uid = %uid, "starting pod");
                            let c = cancel.child_token();
                            tracker.spawn(crate::pod::run(
                                shared.clone(),
                                pod.clone(),
                                events_tx.clone(),
                                c.clone(),
                            ));
                            workers.insert(uid, Worker { cancel: c, pod });
                        }
                        Op::Stop(uid) => {
                            if let Some(w) = workers.remove(&uid) {
                                info!(pod = %w.pod.metadata.name, pod.uid = %uid, "stopping pod");
                                // A finished pod's container is not running any more.
                                let finished = reports.borrow().get(&uid).is_some_and(|r| {
                                    serde_json::from_str::<PodStatus>(&r.status).is_ok_and(|s| {
                                        matches!(s.phase.as_str(), "Succeeded" | "Failed")
                                    })
                                });
                                // The containers, then the sidecars (which stop after them).
                                let running = w.pod.spec.serving_containers();
                                for c in running.filter(|_| !finished) {
                                    shared.events.push(
                                        &w.pod,
                                        EventType::Normal,
                                        "Killing",
                                        format!("Stopping container {}", c.name),
                                    );
                                }
                                w.cancel.cancel();
                                stopping.insert(uid.clone(), w.pod);
                            }
                            reports.send_modify(|r| {
                                r.remove(&uid);
                            });
                        }
                    }
                }
            }
            Event::Status { uid, status } => {
                if let Some(w) = workers.get(&uid) {
                    let report = PodReport {
                        namespace: w.pod.namespace().to_string(),
                        name: w.pod.metadata.name.clone(),
                        uid: uid.clone(),
                        status: serde_json::to_string(&*status).unwrap_or_default(),
                    };
                    reports.send_if_modified(|r| {
                        if r.get(&uid) == Some(&report) {
                            return false;
                        }
                        r.insert(uid, report);
                        true
                    });
                }
            }
            Event::Exited { uid } => {
                if let Some(pod) = stopping.remove(&uid) {
                    shared.forget_log(&pod);
                    crate::volumes::remove(&shared, &uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_starts_and_stops_by_uid() {
        assert_eq!(
            plan(&set(&["a", "b"]), &set(&["b", "c"])),
            vec![Op::Stop("c".into()), Op::Start("a".into())]
        );
        assert_eq!(plan(&set(&["a"]), &set(&["a"])), vec![]);
        assert_eq!(plan(&set(&[]), &set(&["a"])), vec![Op::Stop("a".into())]);
    }
}
