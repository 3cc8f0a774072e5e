//! Events (core/v1 `Event`): [`record`] writes one inside the caller's transaction, folding a
//! repeat (same object, type, reason, message and source) into the existing Event by bumping
//! `count` and `lastTimestamp`, as Kubernetes' event correlator does; [`expire`] deletes events
//! older than [`TTL`] (Kubernetes' default `--event-ttl`) and keeps at most [`MAX_EVENTS`]
//! (oldest go first); [`run`] is the hub task that expires every minute and remembers recently
//! deleted pods, so an agent's last events about a pod it stops are still accepted.
use crate::Hub;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    Event, EventSource, EventType, Kind, Object, ObjectKey, ObjectReference,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long an event is kept after it last happened (Kubernetes' default `--event-ttl`).
pub const TTL: Duration = Duration::from_secs(3600);
/// The most events the store holds; past it the oldest go, so a crash loop across many pods
/// cannot grow the store without limit.
pub const MAX_EVENTS: u64 = 5000;
/// Trimming goes below the bound by a tenth, so it runs once per many new events.
const TRIM_TO: u64 = MAX_EVENTS - MAX_EVENTS / 10;
/// The source component of events the agents report (Kubernetes' kubelet); `host` is the node.
pub const AGENT: &str = "agent";
/// The longest message kept (longer ones from agents are cut, at a character boundary).
const MAX_MESSAGE: usize = 1024;
/// How long a deleted pod's node may still report events about it.
const DELETED_POD_GRACE: Duration = Duration::from_secs(600);
/// Deleted pods remembered at most (the oldest are forgotten first).
const DELETED_PODS_MAX: usize = 10_000;

/// The deterministic name of the Event for one kind of happening to one object:
/// `<object name>.<16 hex digits of a hash of everything that makes it the same event>`.
pub fn event_name(
    involved: &ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
    source: &EventSource,
) -> String {
    let mut h = Sha256::new();
    for part in [
        involved.kind.as_str(),
        &involved.namespace,
        &involved.name,
        &involved.uid,
        type_.as_str(),
        reason,
        message,
        &source.component,
        &source.host,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{}.{}", involved.name, hex::encode(&h.finalize()[..8]))
}

/// `message` cut to [`MAX_MESSAGE`] bytes.
pub fn truncate(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(t).ok()
}

/// Records that something happened to `involved` at `now`, in the caller's transaction. Events
/// of cluster-scoped objects (nodes) live in the `default` namespace, as in Kubernetes.
#[allow(clippy::too_many_arguments)]
pub fn record(
    tx: &mut Tx<'_>,
    involved: &ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
    component: &str,
    host: &str,
    now: SystemTime,
) -> Result<(), StoreError> {
    let source = EventSource {
        component: component.into(),
        host: host.into(),
    };
    let name = event_name(involved, type_, reason, message, &source);
    let namespace = match involved.namespace.as_str() {
        "" => "default",
        ns => ns,
    };
    let key = ObjectKey::new(Kind::Event, namespace, &name);
    let at = stamp(now);
    if let Some(Object::Event(mut e)) = tx.get(&key)? {
        e.count = e.count.saturating_add(1);
        // Reports may arrive out of order (an agent's backlog after a reconnect).
        if parse(&e.last_timestamp).is_none_or(|last| now > last) {
            e.last_timestamp = at;
        }
        tx.put(Object::Event(e))?;
        return Ok(());
    }
    let mut e = Event {
        involved_object: involved.clone(),
        reason: reason.into(),
        message: message.into(),
        type_,
        count: 1,
        first_timestamp: at.clone(),
        last_timestamp: at,
        source,
        ..Default::default()
    };
    e.metadata.name = name;
    e.metadata.namespace = Some(namespace.into());
    tx.put(Object::Event(e))?;
    if tx.count(Kind::Event)? > MAX_EVENTS {
        trim(tx, TRIM_TO)?;
    }
    Ok(())
}

/// An event from a hub component (no host) about a stored object.
pub fn about(
    tx: &mut Tx<'_>,
    obj: &Object,
    type_: EventType,
    reason: &str,
    message: &str,
    component: &str,
    now: SystemTime,
) -> Result<(), StoreError> {
    record(
        tx,
        &obj.reference(),
        type_,
        reason,
        message,
        component,
        "",
        now,
    )
}

fn all_events(tx: &Tx<'_>) -> Result<Vec<Event>, StoreError> {
    Ok(tx
        .list(Kind::Event, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Event(e) => Some(e),
            _ => None,
        })
        .collect())
}

fn event_key(e: &Event) -> ObjectKey {
    ObjectKey::new(
        Kind::Event,
        e.metadata.namespace.as_deref().unwrap_or("default"),
        &e.metadata.name,
    )
}

/// Deletes the events that last happened longest ago until at most `keep` remain.
fn trim(tx: &mut Tx<'_>, keep: u64) -> Result<usize, StoreError> {
    let mut events = all_events(tx)?;
    let extra = events.len().saturating_sub(keep as usize);
    if extra == 0 {
        return Ok(0);
    }
    events.sort_by_cached_key(|e| (parse(&e.last_timestamp), e.metadata.name.clone()));
    for e in &events[..extra] {
        tx.delete(&event_key(e))?;
    }
    debug!(deleted = extra, "trimmed events beyond the bound");
    Ok(extra)
}

/// Deletes events that last happened [`TTL`] or more before `now` (and any whose time cannot
/// be read), then enforces [`MAX_EVENTS`]. Returns how many went.
pub fn expire(tx: &mut Tx<'_>, now: SystemTime) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for e in all_events(tx)? {
        let expired = parse(&e.last_timestamp).is_none_or(|last| last + TTL <= now);
        if expired {
            tx.delete(&event_key(&e))?;
            deleted += 1;
        }
    }
    if tx.recount(Kind::Event)? > MAX_EVENTS {
        deleted += trim(tx, MAX_EVENTS)?;
    }
    Ok(deleted)
}

/// Pods deleted a short while ago and the node each was bound to: the agent hears of the
/// delete after it happened and reports stopping the pod then.
#[derive(Default)]
pub struct DeletedPods {
    /// uid -> ("node/namespace/name" it had, when it was deleted)
    inner: Mutex<HashMap<String, (String, Instant)>>,
}

impl DeletedPods {
    /// Notes a bound pod's deletion from a store event.
    pub fn note(&self, e: &StoreEvent) {
        if e.key.kind != Kind::Pod || e.object.is_some() {
            return;
        }
        let Some(Object::Pod(p)) = &e.prev else {
            return;
        };
        let Some(node) = p.spec.node_name.clone() else {
            return;
        };
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DELETED_PODS_MAX {
            let oldest = m
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                m.remove(&k);
            }
        }
        let place = format!("{node}/{}/{}", p.namespace(), p.metadata.name);
        m.insert(p.metadata.uid.clone(), (place, Instant::now()));
    }

    /// Whether the pod `namespace/name` with `uid` was bound to `node` when it was deleted,
    /// recently.
    pub fn was_on(&self, uid: &str, node: &str, namespace: &str, name: &str) -> bool {
        let place = format!("{node}/{namespace}/{name}");
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|(n, t)| *n == place && t.elapsed() < DELETED_POD_GRACE)
    }

    fn prune(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, t)| t.elapsed() < DELETED_POD_GRACE);
    }
}

/// The hub's event housekeeping: expiry once a minute (and at start), and the memory of
/// recently deleted pods.
pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let mut rx = hub.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                match hub.store.write(|tx| expire(tx, SystemTime::now())) {
                    Ok(0) => {}
                    Ok(n) => debug!(deleted = n, "expired events"),
                    Err(e) => warn!(error = %e, "event expiry failed"),
                }
                hub.deleted_pods.prune();
            }
            e = rx.recv() => match e {
                Ok(e) => hub.deleted_pods.note(&e),
                // Missed deletions only mean a stopped pod's last events may be dropped.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("hub.redb"), &[3u8; 32]).unwrap();
        (dir, s)
    }

    fn pod(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn events(s: &Store) -> Vec<Event> {
        s.list(Kind::Event, None)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|o| match o {
                Object::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_repeat_bumps_count_and_last_timestamp() {
        let (_d, s) = store();
        let web = pod("web-1");
        let rec = |tx: &mut Tx<'_>, reason: &str, msg: &str, t: SystemTime| {
            record(
                tx,
                &web,
                EventType::Warning,
                reason,
                msg,
                "agent",
                "node-0",
                t,
            )
        };
        s.write(|tx| rec(tx, "BackOff", "Back-off restarting failed container", at(0)))
            .unwrap();
        s.write(|tx| {
            rec(
                tx,
                "BackOff",
                "Back-off restarting failed container",
                at(30),
            )
        })
        .unwrap();
        // Out of order: counted, but the last time stays the latest.
        s.write(|tx| {
            rec(
                tx,
                "BackOff",
                "Back-off restarting failed container",
                at(10),
            )
        })
        .unwrap();
        s.write(|tx| rec(tx, "Unhealthy", "Readiness probe failed", at(40)))
            .unwrap();
        let mut evs = events(&s);
        evs.sort_by_key(|e| e.reason.clone());
        assert_eq!(evs.len(), 2);
        let e = &evs[0];
        assert_eq!((e.reason.as_str(), e.count), ("BackOff", 3));
        assert_eq!(e.first_timestamp, stamp(at(0)));
        assert_eq!(e.last_timestamp, stamp(at(30)));
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.source.host, "node-0");
        assert_eq!(e.involved_object, web);
        assert!(e.metadata.name.starts_with("web-1."), "{}", e.metadata.name);
        assert_eq!(e.metadata.name.len(), "web-1.".len() + 16);
        assert_eq!(evs[1].count, 1);
        // A different uid (a re-created pod of the same name) is a different event.
        let mut again = web.clone();
        again.uid = "uid-other".into();
        s.write(|tx| {
            record(
                tx,
                &again,
                EventType::Warning,
                "BackOff",
                "Back-off restarting failed container",
                "agent",
                "node-0",
                at(50),
            )
        })
        .unwrap();
        assert_eq!(events(&s).len(), 3);
    }

    #[test]
    fn events_expire_after_the_ttl() {
        let (_d, s) = store();
        s.write(|tx| {
            record(
                tx,
                &pod("old"),
                EventType::Normal,
                "Pulled",
                "m",
                "agent",
                "n",
                at(0),
            )?;
            record(
                tx,
                &pod("new"),
                EventType::Normal,
                "Pulled",
                "m",
                "agent",
                "n",
                at(3000),
            )
        })
        .unwrap();
        // Bumped within the hour: kept as long as it keeps happening.
        s.write(|tx| {
            record(
                tx,
                &pod("old"),
                EventType::Normal,
                "Pulled",
                "m",
                "agent",
                "n",
                at(3500),
            )
        })
        .unwrap();
        assert_eq!(s.write(|tx| expire(tx, at(3599 + 1000))).unwrap(), 0);
        assert_eq!(s.write(|tx| expire(tx, at(3600 + 3000))).unwrap(), 1);
        let left = events(&s);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].involved_object.name, "old");
        assert_eq!(s.write(|tx| expire(tx, at(3600 + 3500))).unwrap(), 1);
        assert!(events(&s).is_empty());
        assert_eq!(s.write(|tx| tx.count(Kind::Event)).unwrap(), 0);
    }

    #[test]
    fn the_total_is_bounded_and_the_oldest_go_first() {
        let (_d, s) = store();
        let n = MAX_EVENTS + 1;
        s.write(|tx| {
            for i in 0..n {
                record(
                    tx,
                    &pod(&format!("p{i}")),
                    EventType::Normal,
                    "Scheduled",
                    "m",
                    "default-scheduler",
                    "",
                    at(i),
                )?;
            }
            Ok(())
        })
        .unwrap();
        let left = events(&s);
        assert_eq!(left.len() as u64, TRIM_TO);
        assert_eq!(s.write(|tx| tx.count(Kind::Event)).unwrap(), TRIM_TO);
        let oldest = left
            .iter()
            .map(|e| parse(&e.last_timestamp).unwrap())
            .min()
            .unwrap();
        assert_eq!(
            oldest,
            at(n - TRIM_TO),
            "the newest events are the ones kept"
        );
    }

    #[test]
    fn deleted_pods_are_remembered_with_their_node() {
        let deleted = DeletedPods::default();
        let mut p = flotilla_proto::api::Pod::default();
        p.metadata.name = "web-1".into();
        p.metadata.uid = "u1".into();
        p.spec.node_name = Some("node-0".into());
        deleted.note(&StoreEvent {
            revision: 9,
            key: ObjectKey::new(Kind::Pod, "default", "web-1"),
            object: None,
            prev: Some(Object::Pod(p)),
        });
        assert!(deleted.was_on("u1", "node-0", "default", "web-1"));
        assert!(!deleted.was_on("u1", "node-1", "default", "web-1"));
        assert!(!deleted.was_on("u2", "node-0", "default", "web-1"));
        // The uid alone does not let a node write events under another pod's name.
        assert!(!deleted.was_on("u1", "node-0", "kube-system", "web-1"));
        assert!(!deleted.was_on("u1", "node-0", "default", "other"));
    }
}
