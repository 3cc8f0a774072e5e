//! `fleet label`, `fleet taint`, `fleet cordon|uncordon`, `fleet scale`: small changes to one
//! object, made in one transaction so they never race a controller's or an agent's write of the
//! same object.
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{Object, ObjectKey, Taint};
use flotilla_proto::scheduling::{self, NO_EXECUTE};
use flotilla_proto::wire::Edit;

/// Applies `edit` to the object at `key`; returns the line kubectl would print.
pub fn apply(
    tx: &mut Tx<'_>,
    key: &ObjectKey,
    edit: &Edit,
    now: &str,
) -> Result<String, StoreError> {
    let Some(mut obj) = tx.get(key)? else {
        return Err(StoreError::NotFound(key.clone()));
    };
    let shown = format!("{}/{}", key.kind.resource(), key.name);
    let message = match edit {
        Edit::Labels {
            set,
            remove,
            overwrite,
        } => {
            let labels = &mut obj.meta_mut().labels;
            for (k, v) in set {
                flotilla_proto::manifest::check_label(k, v)
                    .or_else(|m| refuse(format!("{shown}: {m}")))?;
                match labels.get(k) {
                    Some(old) if old != v && !overwrite => {
                        return refuse(format!(
                            "'{k}' already has a value ({old}), and --overwrite is false"
                        ));
                    }
                    _ => {
                        labels.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in remove {
                labels.remove(k);
            }
            format!("{shown} labeled")
        }
        Edit::Taints {
            add,
            remove,
            overwrite,
        } => {
            let Object::Node(node) = &mut obj else {
                return refuse(format!("{shown}: only nodes have taints"));
            };
            let taints = &mut node.spec.taints;
            for (key, effect) in remove {
                let before = taints.len();
                taints.retain(|t| !(&t.key == key && (effect.is_empty() || &t.effect == effect)));
                if taints.len() == before {
                    let shown_taint = if effect.is_empty() {
                        key.clone()
                    } else {
                        format!("{key}:{effect}")
                    };
                    return refuse(format!("taint {shown_taint:?} not found"));
                }
            }
            for (k, v, effect) in add {
                let taint = Taint {
                    key: k.clone(),
                    value: v.clone(),
                    effect: effect.clone(),
                    time_added: (effect == NO_EXECUTE).then(|| now.to_string()),
                };
                match taints
                    .iter_mut()
                    .find(|t| &t.key == k && &t.effect == effect)
                {
                    Some(_) if !overwrite => {
                        return refuse(format!(
                            "{shown} already has {k} taint(s) with same effect(s) and --overwrite is false"
                        ));
                    }
                    Some(existing) => *existing = taint,
                    None => taints.push(taint),
                }
            }
            scheduling::validate_taints("spec.taints", taints)
                .or_else(|m| refuse(format!("{shown}: {m}")))?;
            if remove.is_empty() {
                format!("{shown} tainted")
            } else if add.is_empty() {
                format!("{shown} untainted")
            } else {
                format!("{shown} modified")
            }
        }
        Edit::Cordon(cordon) => {
            let Object::Node(node) = &mut obj else {
                return refuse(format!("{shown}: only nodes can be cordoned"));
            };
            let verb = if *cordon { "cordoned" } else { "uncordoned" };
            if node.spec.unschedulable == *cordon {
                return Ok(format!("{shown} already {verb}"));
            }
            node.spec.unschedulable = *cordon;
            format!("{shown} {verb}")
        }
        Edit::Replicas(n) => {
            let kind = key.kind.as_str().to_ascii_lowercase();
            if let Err(e) = flotilla_proto::manifest::check_replicas(Some(*n)) {
                return refuse(format!("{kind} {}: {e}", key.name));
            }
            let replicas = match &mut obj {
                Object::Deployment(d) => &mut d.spec.replicas,
                Object::ReplicaSet(rs) => &mut rs.spec.replicas,
                Object::StatefulSet(sts) => &mut sts.spec.replicas,
                _ => return refuse(format!("{shown}: a {kind} cannot be scaled")),
            };
            *replicas = Some(*n);
            format!("{shown} scaled")
        }
    };
    tx.put(obj)?;
    Ok(message)
}

fn refuse<T>(message: String) -> Result<T, StoreError> {
    Err(StoreError::Invalid(message))
}
