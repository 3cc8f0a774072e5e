//! Garbage collection by owner reference: deleting an owner deletes what it owns, recursively,
//! in the same transaction (Kubernetes' background cascade, done eagerly so nothing dangles);
//! or, with the orphan policy, deletes the owner alone and takes its reference off what it
//! owned, in the same transaction, so nothing names a deleted owner.
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Kind, Object, ObjectKey};

/// Kinds whose objects can have owners.
const DEPENDENT_KINDS: [Kind; 6] = [
    Kind::ReplicaSet,
    Kind::EndpointSlice,
    Kind::Job,
    Kind::Pod,
    Kind::ControllerRevision,
    Kind::PersistentVolumeClaim,
];

/// Deletes `key` and everything it owns, directly or through its children.
pub fn delete_cascade(tx: &mut Tx<'_>, key: &ObjectKey) -> Result<Option<Object>, StoreError> {
    let Some(obj) = tx.delete(key)? else {
        return Ok(None);
    };
    delete_dependents(tx, &key.namespace, |o| {
        o.meta()
            .owner_references
            .iter()
            .any(|r| r.uid == obj.meta().uid)
    })?;
    Ok(Some(obj))
}

/// Deletes `key` only (`--cascade=orphan`): its direct dependents lose their owner reference
/// to it and stay, with what they own in turn.
pub fn delete_orphaning(tx: &mut Tx<'_>, key: &ObjectKey) -> Result<Option<Object>, StoreError> {
    let Some(obj) = tx.delete(key)? else {
        return Ok(None);
    };
    let uid = &obj.meta().uid;
    for kind in DEPENDENT_KINDS {
        for mut o in tx.list(kind, Some(&key.namespace))? {
            let refs = &mut o.meta_mut().owner_references;
            let before = refs.len();
            refs.retain(|r| &r.uid != uid);
            if refs.len() != before {
                tx.put(o)?;
            }
        }
    }
    Ok(Some(obj))
}

/// Deletes (with their dependents) the objects that still name a deleted owner: the owner's
/// delete may have happened while the hub was down, or before a controller created them.
pub fn delete_orphans_of(tx: &mut Tx<'_>, owner: &ObjectKey) -> Result<(), StoreError> {
    delete_dependents(tx, &owner.namespace, |o| {
        o.meta()
            .owner_references
            .iter()
            .any(|r| r.kind == owner.kind.as_str() && r.name == owner.name)
    })
}

fn delete_dependents(
    tx: &mut Tx<'_>,
    namespace: &str,
    owned: impl Fn(&Object) -> bool,
) -> Result<(), StoreError> {
    for kind in DEPENDENT_KINDS {
        for o in tx.list(kind, Some(namespace))? {
            if owned(&o) {
                delete_cascade(tx, &o.key())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Ctx, replicaset};
    use crate::store::Store;
    use std::time::{Duration, SystemTime};

    fn owned_by(kind: &str, name: &str, owner: Option<&Object>) -> serde_json::Value {
        let mut meta =
            serde_json::json!({"name": name, "namespace": "default", "labels": {"app": "web"}});
        if let Some(o) = owner {
            meta["ownerReferences"] = serde_json::json!([{
                "apiVersion": o.kind().api_version(), "kind": o.kind().as_str(),
                "name": o.meta().name, "uid": o.meta().uid, "controller": true,
            }]);
        }
        serde_json::json!({"kind": kind, "metadata": meta})
    }

    /// A Deployment owning a ReplicaSet of two pods.
    fn fixture(s: &Store) -> (Object, Object) {
        s.write(|tx| {
            let template = serde_json::json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "hello"}]}});
            let mut d = owned_by("Deployment", "web", None);
            d["spec"] = serde_json::json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template});
            let d = tx.put(Object::from_json(d).unwrap())?;
            let mut rs = owned_by("ReplicaSet", "web-abc", Some(&d));
            rs["spec"] = serde_json::json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template});
            let rs = tx.put(Object::from_json(rs).unwrap())?;
            for p in ["web-abc-1", "web-abc-2"] {
                let mut pod = owned_by("Pod", p, Some(&rs));
                pod["spec"] = template["spec"].clone();
                pod["status"] = serde_json::json!({"phase": "Running"});
                tx.put(Object::from_json(pod).unwrap())?;
            }
            Ok((d, rs))
        })
        .unwrap()
    }

    fn count(s: &Store, kind: Kind) -> usize {
        s.list(kind, Some("default")).unwrap().0.len()
    }

    #[test]
    fn orphan_keeps_dependents_without_the_owner_and_nothing_claims_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), &[1u8; 32]).unwrap();
        let (d, rs) = fixture(&s);
        s.write(|tx| delete_orphaning(tx, &d.key())).unwrap();
        let Some(left) = s.get(&rs.key()).unwrap() else {
            panic!("the replica set was deleted with its deployment")
        };
        assert!(left.meta().owner_references.is_empty());
        assert_eq!(count(&s, Kind::Pod), 2);
        // What the Deployment controller does when it finds its object gone, and what the
        // ReplicaSet controller then does: neither touches the orphans.
        s.write(|tx| delete_orphans_of(tx, &d.key())).unwrap();
        let ctx = Ctx {
            now: SystemTime::now(),
            job_backoff: Duration::from_secs(10),
        };
        s.write(|tx| replicaset::reconcile(tx, &rs.key(), &ctx))
            .unwrap();
        assert_eq!(count(&s, Kind::ReplicaSet), 1);
        let pods = s.list(Kind::Pod, Some("default")).unwrap().0;
        assert_eq!(pods.len(), 2);
        assert!(
            pods.iter()
                .all(|p| p.meta().controller_uid() == Some(rs.meta().uid.as_str())),
            "pods keep their replica set"
        );
    }

    #[test]
    fn cascade_deletes_dependents_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), &[1u8; 32]).unwrap();
        let (d, _) = fixture(&s);
        s.write(|tx| delete_cascade(tx, &d.key())).unwrap();
        assert_eq!(count(&s, Kind::ReplicaSet), 0);
        assert_eq!(count(&s, Kind::Pod), 0);
    }
}
