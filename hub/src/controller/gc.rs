//! Garbage collection by owner reference: deleting an owner deletes what it owns, recursively,
//! in the same transaction (Kubernetes' background cascade, done eagerly so nothing dangles).
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Kind, Object, ObjectKey};

/// Kinds whose objects can have owners.
const DEPENDENT_KINDS: [Kind; 5] = [
    Kind::ReplicaSet,
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
