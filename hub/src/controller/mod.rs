//! Controllers: level-triggered reconcilers over the store (Kubernetes controller contract).
//! Each runs on [`run`]: store events become deduplicated key batches, every reconcile is one
//! write transaction, a reconcile may ask to be woken again later (minReadySeconds, progress
//! deadlines), and a periodic full resync retries anything a missed event or an error left.
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod ingress;
pub mod job;
pub mod node;
pub mod replicaset;
pub mod servicelb;
pub mod statefulset;
pub mod taint;

use crate::Hub;
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    EventType, Kind, Object, ObjectKey, ObjectMeta, OwnerReference, Pod, PodStatus, PodTemplateSpec,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

const RESYNC: Duration = Duration::from_secs(30);

/// What a reconcile asks for next: nothing (events will wake it), or a look again after a delay.
pub type Requeue = Option<Duration>;

/// One controller: the kind it owns, which keys an event concerns (or whether it concerns
/// every object of the kind, as a Node change does for DaemonSets), and its reconcile.
pub(crate) struct Controller {
    pub name: &'static str,
    pub kind: Kind,
    pub keys_of: fn(&StoreEvent) -> Vec<ObjectKey>,
    pub all_on: fn(&StoreEvent) -> bool,
    pub reconcile: fn(&mut Tx<'_>, &ObjectKey, &Ctx) -> Result<Requeue, StoreError>,
}

/// What a reconcile may know besides the store: the time, and the hub's tunables.
pub struct Ctx {
    pub now: SystemTime,
    /// First delay before a failed Job pod is replaced (doubles per failure, up to 6 min).
    pub job_backoff: Duration,
}

/// For controllers that never need a full pass on an event.
pub(crate) fn never(_: &StoreEvent) -> bool {
    false
}

pub(crate) async fn run(hub: Arc<Hub>, ctl: Controller, cancel: CancellationToken) {
    let mut rx = hub.store.subscribe();
    let mut wake: BTreeMap<ObjectKey, Instant> = BTreeMap::new();
    // Start with a full pass: the hub may have restarted with work pending.
    let mut keys = all_keys(&hub, &ctl);
    loop {
        for key in keys {
            wake.remove(&key);
            let ctx = Ctx {
                now: SystemTime::now(),
                job_backoff: hub.config.job_backoff,
            };
            match hub.store.write(|tx| (ctl.reconcile)(tx, &key, &ctx)) {
                Ok(Some(after)) => {
                    wake.insert(key, Instant::now() + after);
                }
                Ok(None) => {}
                Err(e) => {
                    // Retried after a short pause, and by the next event or resync anyway.
                    warn!(controller = ctl.name, key = %key, error = %e, "reconcile failed");
                    wake.insert(key, Instant::now() + Duration::from_secs(1));
                }
            }
        }
        let next_wake = wake.values().min().copied();
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            b = next_batch(&mut rx, RESYNC, next_wake, |e| {
                if (ctl.all_on)(e) { vec![None] } else { (ctl.keys_of)(e).into_iter().map(Some).collect() }
            }) => b,
        };
        keys = match batch {
            None => return,
            Some(BatchKind::Resync) => all_keys(&hub, &ctl),
            // `None` stands for "every object of the kind".
            Some(BatchKind::Keys(keys)) if keys.contains(&None) => all_keys(&hub, &ctl),
            Some(BatchKind::Keys(keys)) => {
                let now = Instant::now();
                let mut keys: BTreeSet<ObjectKey> = keys.into_iter().flatten().collect();
                keys.extend(
                    wake.iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(k, _)| k.clone()),
                );
                keys
            }
        };
    }
}

fn all_keys(hub: &Hub, ctl: &Controller) -> BTreeSet<ObjectKey> {
    match hub.store.list(ctl.kind, None) {
        Ok((objects, _)) => objects.iter().map(Object::key).collect(),
        Err(e) => {
            warn!(controller = ctl.name, error = %e, "failed to list objects");
            BTreeSet::new()
        }
    }
}

/// Collects keys to reconcile from store events, deduplicated. Returns early at `wake` (with
/// whatever keys arrived, possibly none) and asks for a full resync every `resync`.
pub(crate) async fn next_batch<K: Ord>(
    rx: &mut broadcast::Receiver<StoreEvent>,
    resync: Duration,
    wake: Option<Instant>,
    mut keys_of: impl FnMut(&StoreEvent) -> Vec<K>,
) -> Option<BatchKind<K>> {
    let mut keys = BTreeSet::new();
    let deadline = tokio::time::sleep(resync);
    tokio::pin!(deadline);
    let woken = async {
        match wake {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(woken);
    loop {
        tokio::select! {
            _ = &mut deadline => return Some(BatchKind::Resync),
            _ = &mut woken => return Some(BatchKind::Keys(keys)),
            e = rx.recv() => match e {
                Ok(e) => keys.extend(keys_of(&e)),
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(BatchKind::Resync),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
        // Drain what is already queued so a burst becomes one batch.
        while let Ok(e) = rx.try_recv() {
            keys.extend(keys_of(&e));
        }
        if !keys.is_empty() {
            return Some(BatchKind::Keys(keys));
        }
    }
}

pub(crate) enum BatchKind<K> {
    Keys(BTreeSet<K>),
    Resync,
}

/// The keys of `kind` that own the object in an event (before or after it changed) through a
/// controller owner reference of `owner_kind`.
pub(crate) fn owner_keys(e: &StoreEvent, owner_kind: Kind) -> Vec<ObjectKey> {
    e.object
        .iter()
        .chain(e.prev.iter())
        .flat_map(|o| {
            o.meta()
                .owner_references
                .iter()
                .filter(move |r| r.kind == owner_kind.as_str() && r.controller == Some(true))
        })
        .map(|r| ObjectKey::new(owner_kind, &e.key.namespace, &r.name))
        .collect()
}

/// The pods of a namespace, for reconciles that count them.
pub(crate) fn pods_in(tx: &Tx<'_>, namespace: &str) -> Result<Vec<Pod>, StoreError> {
    Ok(tx
        .list(Kind::Pod, Some(namespace))?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect())
}

/// Every Node in the store.
pub(crate) fn nodes(tx: &Tx<'_>) -> Result<Vec<flotilla_proto::api::Node>, StoreError> {
    Ok(tx
        .list(Kind::Node, None)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect())
}

/// Whether a pod counts as available (Ready for at least `min_ready`), and if it is Ready but
/// not yet available, how long until it will be.
pub(crate) fn availability(pod: &Pod, min_ready: Duration, now: SystemTime) -> (bool, Requeue) {
    if !pod.is_ready() || pod.is_terminal() {
        return (false, None);
    }
    if min_ready.is_zero() {
        return (true, None);
    }
    let Some(since) = pod.ready_since() else {
        // Ready without a transition time: count it from now on, like a fresh transition.
        return (false, Some(min_ready));
    };
    let ready_for = now.duration_since(since).unwrap_or_default();
    if ready_for >= min_ready {
        (true, None)
    } else {
        (false, Some(min_ready - ready_for))
    }
}

/// Whether the pod is bound to a node that exists and is not Ready (silent): what runs there
/// is not known, so identity-bound controllers leave such pods alone.
pub(crate) fn on_silent_node(tx: &Tx<'_>, pod: &Pod) -> Result<bool, StoreError> {
    let Some(node) = pod.spec.node_name.as_deref() else {
        return Ok(false);
    };
    Ok(matches!(
        tx.get(&ObjectKey::new(Kind::Node, "", node))?,
        Some(Object::Node(n)) if !n.is_ready()
    ))
}

/// The earlier of two requeue requests.
pub(crate) fn sooner(a: Requeue, b: Requeue) -> Requeue {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A pod from a controller's template, owned by it (controller reference), named
/// `<prefix>-<5 chars>`, Pending until scheduled.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    owner: &ObjectMeta,
    owner_kind: Kind,
    prefix: &str,
) -> Pod {
    let mut pod = Pod {
        metadata: template.metadata.clone(),
        spec: template.spec.clone(),
        status: PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    pod.metadata.name = format!("{prefix}-{}", random_suffix());
    pod.metadata.namespace = owner.namespace.clone();
    pod.metadata.owner_references = vec![OwnerReference {
        api_version: owner_kind.api_version().into(),
        kind: owner_kind.as_str().into(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        controller: Some(true),
    }];
    pod
}

/// Creates a controller's pod and records `SuccessfulCreate` on the controller, in the same
/// transaction (Kubernetes' wording, shared by the ReplicaSet, DaemonSet and Job controllers).
pub(crate) fn create_pod(
    tx: &mut Tx<'_>,
    owner: &Object,
    pod: Pod,
    component: &str,
    now: SystemTime,
) -> Result<(), StoreError> {
    let message = format!("Created pod: {}", pod.metadata.name);
    tx.put(Object::Pod(pod))?;
    events::about(
        tx,
        owner,
        EventType::Normal,
        "SuccessfulCreate",
        &message,
        component,
        now,
    )
}

/// Deletes a controller's pod and records `SuccessfulDelete` on the controller.
pub(crate) fn delete_pod(
    tx: &mut Tx<'_>,
    owner: &Object,
    p: &Pod,
    component: &str,
    now: SystemTime,
) -> Result<(), StoreError> {
    if tx
        .delete(&ObjectKey::new(
            Kind::Pod,
            &owner.key().namespace,
            &p.metadata.name,
        ))?
        .is_some()
    {
        events::about(
            tx,
            owner,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("Deleted pod: {}", p.metadata.name),
            component,
            now,
        )?;
    }
    Ok(())
}

/// Objects of `kind` in `namespace` whose controller is `owner_uid`.
pub(crate) fn owned(
    tx: &Tx<'_>,
    kind: Kind,
    namespace: &str,
    owner_uid: &str,
) -> Result<Vec<Object>, StoreError> {
    Ok(tx
        .list(kind, Some(namespace))?
        .into_iter()
        .filter(|o| o.meta().controller_uid() == Some(owner_uid))
        .collect())
}

/// A time as Kubernetes writes it in status (RFC 3339, seconds).
pub(crate) fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A status time back; None when absent or unreadable.
pub(crate) fn parse_time(t: Option<&str>) -> Option<SystemTime> {
    t.and_then(|t| humantime::parse_rfc3339(t).ok())
}

/// Five characters from Kubernetes' name alphabet (no vowels, no look-alikes).
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
