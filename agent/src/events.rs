//! The agent's event queue: what happened to its pods (pulls, starts, probe failures,
//! back-off, stops), in order, until the sync session has delivered it to the hub. Events of a
//! time offline wait for the next connection. Bounded: past [`QUEUE_MAX`] the oldest are
//! dropped, so a crash loop far from the hub costs bounded memory.
use flotilla_proto::api::{EventType, Pod};
use flotilla_proto::wire::EventReport;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// The most events kept for the hub.
pub const QUEUE_MAX: usize = 512;

#[derive(Default)]
pub struct EventQueue {
    inner: Mutex<Inner>,
    /// Wakes the sync session when something was queued.
    queued: Notify,
}

#[derive(Default)]
struct Inner {
    /// (sequence number, event), oldest first.
    items: VecDeque<(u64, EventReport)>,
    next: u64,
    dropped: u64,
}

impl EventQueue {
    /// Queues an event about `pod`, now.
    pub fn push(&self, pod: &Pod, event_type: EventType, reason: &str, message: String) {
        let report = EventReport {
            namespace: pod.namespace().to_string(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            event_type,
            reason: reason.to_string(),
            message,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.enqueue(report);
    }

    fn enqueue(&self, report: EventReport) {
        {
            let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if q.items.len() >= QUEUE_MAX {
                q.items.pop_front();
                q.dropped += 1;
                if q.dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = q.dropped,
                        "event queue full: dropping the oldest events"
                    );
                }
            }
            let seq = q.next;
            q.next += 1;
            q.items.push_back((seq, report));
        }
        self.queued.notify_one();
    }

    /// Queues an event about this node itself (image garbage collection). On the wire it is
    /// an event with an empty namespace and uid, named after the node; the hub records it on
    /// the Node of the reporting certificate (an older hub drops it).
    pub fn push_node(&self, node: &str, event_type: EventType, reason: &str, message: String) {
        let report = EventReport {
            namespace: String::new(),
            name: node.to_string(),
            uid: String::new(),
            event_type,
            reason: reason.to_string(),
            message,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.enqueue(report);
    }

    /// Up to `max` of the oldest events and the sequence number to [`ack`](Self::ack) once
    /// the hub has them; None when there are none.
    pub fn batch(&self, max: usize) -> Option<(u64, Vec<EventReport>)> {
        let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<&(u64, EventReport)> = q.items.iter().take(max).collect();
        let last = items.last()?.0;
        Some((last, items.into_iter().map(|(_, e)| e.clone()).collect()))
    }

    /// Forgets the events up to sequence number `upto` (delivered).
    pub fn ack(&self, upto: u64) {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while q.items.front().is_some_and(|(seq, _)| *seq <= upto) {
            q.items.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until an event is queued (returns at once if one was queued since the last wait).
    pub async fn queued(&self) {
        self.queued.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.uid = format!("uid-{name}");
        p
    }

    #[test]
    fn bounded_in_order_and_acked_by_sequence() {
        let q = EventQueue::default();
        for i in 0..QUEUE_MAX + 3 {
            q.push(&pod("web"), EventType::Normal, "Pulled", format!("m{i}"));
        }
        assert_eq!(q.len(), QUEUE_MAX);
        let (upto, batch) = q.batch(2).unwrap();
        assert_eq!(batch[0].message, "m3", "the oldest were dropped");
        assert_eq!(batch[0].namespace, "default");
        // Pushed meanwhile (and more dropped): acking the batch removes only what was sent.
        q.push(&pod("web"), EventType::Warning, "BackOff", "late".into());
        q.ack(upto);
        let (_, next) = q.batch(1).unwrap();
        assert_eq!(next[0].message, "m5");
        q.ack(u64::MAX);
        assert!(q.batch(10).is_none());
    }
}
