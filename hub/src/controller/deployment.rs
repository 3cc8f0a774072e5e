//! The Deployment controller: keeps `spec.replicas` pods of the current template. A template
//! change replaces the old pods (Recreate-style; rolling updates come with ReplicaSets).
use super::{BatchKind, next_batch};
use crate::Hub;
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{
    Deployment, DeploymentStatus, Kind, Object, ObjectKey, OwnerReference, Pod, PodStatus,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

pub async fn run(hub: Arc<Hub>, cancel: CancellationToken) {
    let mut rx = hub.store.subscribe();
    // Start with a full pass: the hub may have restarted with work pending.
    reconcile_all(&hub);
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            b = next_batch(&mut rx, Duration::from_secs(30), keys_of) => b,
        };
        match batch {
            None => return,
            Some(BatchKind::Resync) => reconcile_all(&hub),
            Some(BatchKind::Keys(keys)) => {
                for key in keys {
                    reconcile_logged(&hub, &key);
                }
            }
        }
    }
}

/// The deployments an event concerns: the deployment itself, or the owner of a pod.
fn keys_of(e: &crate::store::StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Deployment => vec![e.key.clone()],
        Kind::Pod => e
            .object
            .iter()
            .chain(e.prev.iter())
            .flat_map(|o| {
                o.meta()
                    .owner_references
                    .iter()
                    .filter(|r| r.kind == "Deployment")
            })
            .map(|r| ObjectKey::new(Kind::Deployment, &e.key.namespace, &r.name))
            .collect(),
        _ => vec![],
    }
}

fn reconcile_all(hub: &Hub) {
    match hub.store.list(Kind::Deployment, None) {
        Ok((deps, _)) => deps.iter().for_each(|d| reconcile_logged(hub, &d.key())),
        Err(e) => warn!(error = %e, "failed to list deployments"),
    }
}

fn reconcile_logged(hub: &Hub, key: &ObjectKey) {
    if let Err(e) = hub.store.write(|tx| reconcile(tx, key)) {
        // Retried by the next event or the periodic resync.
        warn!(deployment = %key, error = %e, "reconcile failed");
    }
}

/// A short, stable hash of the pod template, used in pod names and the pod-template-hash label.
pub fn template_hash(d: &Deployment) -> String {
    let json = serde_json::to_vec(&d.spec.template).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..5])
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Re-reads current state and converges it; idempotent. Runs inside one write transaction.
pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey) -> Result<(), StoreError> {
    let pods: Vec<Pod> = tx
        .list(Kind::Pod, Some(&key.namespace))?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect();
    let Some(Object::Deployment(d)) = tx.get(key)? else {
        // Deleted: garbage-collect pods still naming it as owner.
        for p in pods.iter().filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .any(|r| r.kind == "Deployment" && r.name == key.name)
        }) {
            tx.delete(&Object::Pod(p.clone()).key())?;
        }
        return Ok(());
    };
    let hash = template_hash(&d);
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .any(|r| r.uid == d.metadata.uid)
        })
        .collect();
    let want = d.spec.replicas.unwrap_or(1).max(0) as usize;
    let mut current = Vec::new();
    for p in owned {
        let up_to_date = p.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&hash);
        // Old-template pods and finished pods (a Deployment's pods should run forever) go.
        if !up_to_date || p.is_terminal() {
            tx.delete(&ObjectKey::new(Kind::Pod, &key.namespace, &p.metadata.name))?;
        } else {
            current.push(p);
        }
    }
    if current.len() > want {
        // Scale down the least valuable first: unscheduled, then not ready, then newest.
        current.sort_by_key(|p| {
            (
                p.spec.node_name.is_some(),
                p.is_ready(),
                std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
            )
        });
        for p in current.drain(..current.len() - want) {
            tx.delete(&ObjectKey::new(Kind::Pod, &key.namespace, &p.metadata.name))?;
        }
    }
    let mut created = 0;
    for _ in current.len()..want {
        let mut pod = Pod {
            metadata: d.spec.template.metadata.clone(),
            spec: d.spec.template.spec.clone(),
            ..Default::default()
        };
        pod.metadata.name = format!("{}-{hash}-{}", d.metadata.name, random_suffix());
        pod.metadata.namespace = Some(key.namespace.clone());
        pod.metadata
            .labels
            .insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
        pod.metadata.owner_references = vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: d.metadata.name.clone(),
            uid: d.metadata.uid.clone(),
            controller: Some(true),
        }];
        pod.status = PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        };
        tx.put(Object::Pod(pod))?;
        created += 1;
    }
    if created > 0 {
        info!(deployment = %key, created, "created pods");
    }
    let ready = current.iter().filter(|p| p.is_ready()).count() as i32;
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: (current.len() + created) as i32,
        updated_replicas: (current.len() + created) as i32,
        ready_replicas: ready,
        available_replicas: ready,
    };
    if d.status != status {
        let mut d = d;
        d.status = status;
        tx.put(Object::Deployment(d))?;
    }
    Ok(())
}
