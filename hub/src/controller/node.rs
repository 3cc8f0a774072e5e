//! Node lifecycle: a node whose agent stopped reporting for longer than the grace period is
//! marked Ready=Unknown, so the scheduler stops placing pods there. Its pods keep running on
//! the agent (autonomy); eviction policy belongs to the workloads issue.
use crate::Hub;
use flotilla_proto::api::{Kind, Object};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let grace = hub.config.node_grace;
        let Ok((nodes, _)) = hub.store.list(Kind::Node, None) else {
            continue;
        };
        for obj in nodes {
            let Object::Node(mut node) = obj else {
                continue;
            };
            if !node.is_ready() {
                continue;
            }
            let silent_for = hub
                .agents
                .last_seen(&node.metadata.name)
                .unwrap_or_else(|| {
                    // Not heard from since the hub started: judge by the stored heartbeat, but give
                    // agents one grace period to reconnect after a hub restart.
                    let stored = node
                        .status
                        .conditions
                        .iter()
                        .find_map(|c| c.last_heartbeat_time.as_deref())
                        .and_then(|t| humantime::parse_rfc3339(t).ok())
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .unwrap_or(Duration::MAX);
                    stored.min(started.elapsed())
                });
            if silent_for < grace {
                continue;
            }
            info!(node = %node.metadata.name, silent_secs = silent_for.as_secs(), "node stopped reporting");
            for c in node
                .status
                .conditions
                .iter_mut()
                .filter(|c| c.type_ == "Ready")
            {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("agent stopped posting node status".into());
                c.last_transition_time = Some(crate::store::now_rfc3339());
            }
            if let Err(e) = hub
                .store
                .write(|tx| tx.put(Object::Node(node.clone())).map(|_| ()))
            {
                warn!(error = %e, "failed to update node status");
            }
        }
    }
}
